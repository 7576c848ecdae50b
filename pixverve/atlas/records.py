"""The one reader of the stage tables: every image's path through the stages that ran.

``python -m pixverve audit IMAGE`` prints it, the atlas draws it (``notes/atlas-contract.md``).
A shard is read table by table, once: each stage table under ``results/`` that can hold the
shard's images (its own shard tables and the stage's pool-level tables) is filtered to them, so a
95K-image run is read in shard-sized pieces.  Stages are found from the folders under
``results/``: one added later appears without changes here.

Where an image left the workflow comes from each stage's *decision* tables, the ones Table 1
and ``rejections_by_reason`` count (``pixverve/caption/dataset.py``); the other tables of a stage
are its measurements, shown beside the decision.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

# Pipeline order of the stage folders under results/; unknown folders come after these.
STAGE_ORDER = [
    "collect",
    "index",
    "screen",
    "dedup",
    "purify",
    "upscale",
    "verify",
    "caption",
    "dataset",
    "train",
    "bench",
]
SKIP_DIRS = {"summary", "benchmarks", "cache", "bundles", "atlas", "envs"}
# Per stage, the tables whose `passed`/`reason` decide whether an image goes on ({shard}: its shard).
DECISION_TABLES = {
    "index": ["index/index.parquet"],
    "screen": ["screen/{shard}.parquet"],
    "dedup": ["dedup/decisions.parquet"],
    "purify": ["purify/decisions.parquet"],
    "upscale": ["upscale/{shard}.parquet"],
    "verify": ["verify/verified.parquet", "verify/instances/{shard}.parquet"],
    "caption": ["caption/records/{shard}.rejected.parquet"],
}
FUNNEL_STAGES = list(DECISION_TABLES)
ROW_KEYS = ("image_id", "passed", "reason", "reason_detail", "root", "relpath", "shard")


def _is_shard_name(stem: str) -> bool:
    return stem.startswith("s") and stem[1:].isdigit()


def stage_dirs(results: Path) -> list[Path]:
    dirs = [d for d in results.iterdir() if d.is_dir() and d.name not in SKIP_DIRS and not d.name.startswith(".")]
    known = {name: i for i, name in enumerate(STAGE_ORDER)}
    return sorted(dirs, key=lambda d: (known.get(d.name, len(known)), d.name))


def stage_tables(stage_dir: Path, shards: set[str]) -> list[Path]:
    """The tables of one stage that can hold these shards' images: their shard tables
    (``<shard>.parquet``, ``<shard>.rejected.parquet``) and the stage's pool-level tables."""
    out = []
    for p in sorted(stage_dir.rglob("*.parquet")):
        if p.parent.name == "shards" and stage_dir.name == "index":
            continue  # the index's shard manifests repeat index.parquet
        stem = p.name.split(".")[0]
        if _is_shard_name(stem) and stem not in shards:
            continue
        out.append(p)
    return out


def read_rows(path: Path, image_ids: list[str], files: set[tuple[str, str]] = frozenset()) -> pd.DataFrame:
    """Rows of these images: by image_id, or -- in tables written before the index existed (the
    source rules' collect/import tables) -- by (root, relpath)."""
    try:
        return pd.read_parquet(path, filters=[("image_id", "in", list(image_ids))])
    except Exception:  # no image_id column (or an empty table without a schema for it)
        df = pd.read_parquet(path)
        if "image_id" in df.columns:
            return df[df["image_id"].isin(image_ids)]
        if {"root", "relpath"} <= set(df.columns) and files:
            return df[[(r, p) in files for r, p in zip(df["root"], df["relpath"], strict=True)]].assign(image_id=None)
        return df.iloc[0:0]


def _plain(value):
    """A JSON-able scalar (numpy and pandas values, NaN as None)."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, bool)) else str(value)


def _entry(stage: str, table: str, rec: dict, decides: bool) -> dict:
    if "passed" in rec and rec["passed"] is not None:
        verdict = "passed" if bool(rec["passed"]) else "rejected"
    else:
        verdict = None
    fields = {k: _plain(v) for k, v in rec.items() if k not in ROW_KEYS}
    fields = {k: v for k, v in fields.items() if v is not None and v != ""}
    return {
        "stage": stage,
        "table": table,
        "decides": decides,
        "verdict": verdict,
        "reason": _plain(rec.get("reason")) or "",
        "detail": _plain(rec.get("reason_detail")) or "",
        "fields": fields,
    }


def read_shard(results, shard: str, image_ids: list[str] | None = None) -> dict[str, dict]:
    """Every indexed file of ``shard`` (or of ``image_ids``), keyed by its page key (the image_id;
    a second file with the same content -- an exact duplicate -- gets ``<image_id>-2``, ...): its
    index row, its stage entries in pipeline order (tables with several rows per image --
    patches, instances -- become ``items``), where it left, and its annotation record.  A row
    naming root/relpath belongs to that file; a row naming only the image_id to those of its
    files still in the workflow at that stage."""
    results = Path(results)
    index = pd.read_parquet(results / "index" / "index.parquet")
    index = index[index["shard"] == shard] if image_ids is None else index[index["image_id"].isin(image_ids)]
    images, by_file, by_id = {}, {}, {}
    for row in index.to_dict("records"):
        n = len(by_id.setdefault(row["image_id"], []))
        key = row["image_id"] if n == 0 else f"{row['image_id']}-{n + 1}"
        images[key] = {
            "key": key,
            "image_id": row["image_id"],
            "index": row,
            "stages": [],
            "items": {},
            "left": None,
            "record": None,
            "rows": [],
        }  # rows: (stage, table, row) in reading order, for audit
        by_file[(row["root"], row["relpath"])] = key
        by_id[row["image_id"]].append(key)
    ids = list(by_id)
    shards = {shard} | set(index["shard"]) - {""}
    decision_paths = {
        (stage, t.format(shard=s)) for stage, tables in DECISION_TABLES.items() for t in tables for s in shards
    }
    for stage_dir in stage_dirs(results):
        for path in stage_tables(stage_dir, shards):
            rel = path.relative_to(results).as_posix()
            df = read_rows(path, ids, set(by_file))
            if df.empty:
                continue
            decides = (stage_dir.name, rel) in decision_paths
            named = {"root", "relpath"} <= set(df.columns)
            per_file = df.groupby(["root", "relpath"]).size() if named else df.groupby("image_id").size()
            for rec in df.to_dict("records"):
                if named and (rec["root"], rec["relpath"]) in by_file:
                    keys = [by_file[(rec["root"], rec["relpath"])]]
                    several = per_file.get((rec["root"], rec["relpath"]), 1) > 1
                else:
                    keys = [k for k in by_id.get(rec.get("image_id"), []) if images[k]["left"] is None]
                    several = per_file.get(rec.get("image_id"), 1) > 1 if not named else False
                for key in keys:
                    image = images[key]
                    image["rows"].append((stage_dir.name, rel, rec))
                    if several and not decides:
                        image["items"].setdefault(rel, []).append({k: _plain(v) for k, v in rec.items()})
                        continue
                    entry = _entry(stage_dir.name, rel, rec, decides)
                    image["stages"].append(entry)
                    if decides and entry["verdict"] == "rejected" and image["left"] is None:
                        image["left"] = {"stage": stage_dir.name, "reason": entry["reason"], "detail": entry["detail"]}
    for rec in _records(results, shards):
        for key in by_id.get(rec["image_id"], []):
            if images[key]["left"] is None:
                images[key]["record"] = rec
    return images


def _records(results: Path, shards: set[str]):
    for shard in sorted(shards):
        path = results / "caption" / "records" / f"{shard}.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    yield json.loads(line)


def status_of(image: dict) -> str:
    """kept: in the dataset (an annotation record); rejected: a stage's decision dropped it;
    pending: neither yet (a stage after its last one has not run)."""
    if image["left"] is not None:
        return "rejected"
    return "kept" if image["record"] is not None else "pending"


def summary(image: dict) -> dict:
    """What the run's index page needs of one image: the stages that decided on it and where it
    left (stage 5 decides by its annotation record, or its rejected table)."""
    decided = list(dict.fromkeys(e["stage"] for e in image["stages"] if e["decides"]))
    if image["record"] is not None and "caption" not in decided:
        decided.append("caption")
    left = image["left"] or {}
    return {"decided": decided, "left_stage": left.get("stage"), "left_reason": left.get("reason")}


def funnel(summaries) -> list[dict]:
    """Per stage that decided anything: images entering, kept, and rejected by reason -- counted
    from the images' own decision rows (``summary``), as Table 1 counts its sequential steps."""
    rows = {s: {"stage": s, "entering": 0, "kept": 0, "rejected": {}} for s in FUNNEL_STAGES}
    for image in summaries:
        for stage in FUNNEL_STAGES:
            if stage not in image["decided"]:
                continue
            rows[stage]["entering"] += 1
            if image["left_stage"] == stage:
                reason = image["left_reason"] or "(none)"
                rows[stage]["rejected"][reason] = rows[stage]["rejected"].get(reason, 0) + 1
                break
            rows[stage]["kept"] += 1
    return [r for r in rows.values() if r["entering"]]


# Table 1's sequential steps (pixverve/caption/dataset.py data_flow) that open and close each
# funnel stage: the stage's entering is the first's, its kept the last's.
TABLE1_STEPS = {
    "index": ("index", "index"),
    "screen": ("screen", "screen"),
    "dedup": ("dedup", "dedup"),
    "purify": ("candidates (all five)", "candidates (all five)"),
    "upscale": ("SR output written", "SR output written"),
    "verify": ("seam", "instances"),
    "caption": ("model steps ok (required steps)", "annotation record"),
}


def funnel_mismatch(funnel_rows: list[dict], table1: list[dict]) -> list[str]:
    """Where the atlas's per-stage counts differ from Table 1's; empty when they agree."""
    steps = {row["step"]: row for row in table1 if str(row.get("sequential")).lower() == "true"}
    out = []
    for row in funnel_rows:
        first, last = TABLE1_STEPS.get(row["stage"], (None, None))
        if first not in steps or last not in steps:
            continue
        expected = (int(steps[first]["entering"]), int(steps[last]["kept"]))
        if expected != (row["entering"], row["kept"]):
            out.append(f"{row['stage']}: {row['entering']} -> {row['kept']}, Table 1: {expected[0]} -> {expected[1]}")
    return out
