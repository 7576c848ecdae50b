"""``python -m pixverve audit IMAGE_ID``: one image's path through every stage that ran.

Reads the stage tables under ``results/`` and prints, per stage in pipeline order, the row(s)
of that image: decision, reason, every score and threshold, and any output file it names.
Stages are found from the folders under ``results/``: a stage added later appears without
changes here (known stages are printed in pipeline order, others after them, alphabetically).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from pixverve.atlas import records

SHORT_ID = 6


class AuditError(Exception):
    pass


def find_images(results: Path, key: str) -> pd.DataFrame:
    """Index rows matching an image_id (or a unique prefix of >= 6 hex digits) or a file path."""
    index_path = results / "index" / "index.parquet"
    if not index_path.exists():
        raise AuditError(f"{index_path} does not exist: run the workflow (at least the index) first")
    index = pd.read_parquet(index_path)
    rows = index[index["image_id"] == key]
    if rows.empty and len(key) >= SHORT_ID:
        rows = index[index["image_id"].str.startswith(key)]
    if rows.empty:
        full = index["root"] + "/" + index["relpath"]
        rows = index[(full == key) | full.str.endswith("/" + key.lstrip("/"))]
    if rows.empty:
        raise AuditError(f"no image with id or path {key!r} in {index_path}")
    if rows["image_id"].nunique() > 1:
        listing = "\n".join(f"  {r.image_id}  {r.root}/{r.relpath}" for r in rows.itertuples())
        raise AuditError(f"{key!r} matches several images; use a longer id:\n{listing}")
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def audit(results: str | Path, key: str, out=sys.stdout) -> int:
    """Print the image's rows in every stage; return how many stage rows were found."""
    results = Path(results)
    rows = find_images(results, key)
    image_id = rows["image_id"].iloc[0]
    shards = set(rows["shard"]) - {""}
    print(f"image {image_id}", file=out)
    for r in rows.itertuples():
        print(f"  file: {r.root}/{r.relpath}  (source {r.source}, licence {r.licence or '?'})", file=out)
    found = 0
    # the same reader the atlas draws from (pixverve/atlas/records.py), every table in stage order
    for image in records.read_shard(results, "", [image_id]).values():
        for stage, table, rec in image["rows"]:
            found += 1
            if "passed" not in rec:  # a step that records, not decides (stage 5 tables)
                verdict = ""
            else:
                verdict = "PASSED" if rec.get("passed") else f"REJECTED: {rec.get('reason', '?')}"
            where = f"{rec.get('root', '')}/{rec.get('relpath', '')}".strip("/")
            print(f"\n== {stage}  [{table}]  {verdict}  {where}", file=out)
            if rec.get("reason_detail"):
                print(f"   why: {rec['reason_detail']}", file=out)
            for col, value in rec.items():
                if col in ("image_id", "passed", "reason", "reason_detail", "root", "relpath"):
                    continue
                if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
                    continue
                label = "output" if col.endswith("_path") else col
                print(f"   {label:<22} {_fmt(value)}", file=out)
    found += _print_record(results, image_id, shards, out)
    if found == 0:
        print("(no stage tables found)", file=out)
    return found


def _print_record(results: Path, image_id: str, shards: set[str], out) -> int:
    """The image's annotation record (stage 5), summarised: where it is, captions, counts."""
    import json

    for shard in sorted(shards):
        path = results / "caption" / "records" / f"{shard}.jsonl"
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec["image_id"] != image_id:
                continue
            print(
                f"\n== annotation record  [{path.relative_to(results)}]{'  SMOKE: ' + ','.join(rec['smoke_steps']) if rec['smoke'] else ''}",
                file=out,
            )
            print(f"   {'tags':<22} {', '.join(rec['tags'])}", file=out)
            print(f"   {'instances':<22} {len(rec['instances'])} (mask grid {rec['mask_grid']})", file=out)
            for inst in rec["instances"]:
                print(
                    f"     #{inst['instance']} {inst['label']} box {inst['box']} importance {inst['importance']}: {inst['description']}",
                    file=out,
                )
            print(f"   {'long_caption':<22} {rec['long_caption']}", file=out)
            print(f"   {'short_caption':<22} {rec['short_caption']}", file=out)
            return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixverve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("audit", help="print one image's path through every stage")
    p.add_argument("image", help="image_id, a unique prefix (>= 6 hex digits), or root/relpath of the file")
    p.add_argument("--results", default="results", help="the workflow's results folder (default: results)")
    args = parser.parse_args(argv)
    try:
        audit(args.results, args.image)
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
