"""Stage 1 sources: importers for local copies of other UHR datasets.

One generic importer -- a folder of images plus a metadata file (CSV or JSONL) -- with presets
for the two datasets the paper draws subsets from.  Each metadata row names an image (relative to
the dataset's root) and may carry a caption, a licence, an origin URL and an author; the
importer checks that every listed file exists inside the root, keeps the dataset's captions and
licences in its own table (``results/collect/import_<name>.parquet``, joined to later stages by
root + relpath) and writes a manifest in the index's format, so the images then go through the
same screening and cross-source deduplication as every other source.

Presets (``preset:`` in config; ``metadata:``, ``images_dir:`` and ``columns:`` override them) follow
the layout each dataset's own users read it in, from their published code:

* ``aesthetic_train_v2``: ``metadata.jsonl`` at the root, ``file_name`` (relative to the root) and
  ``text``, as the Diffusion-4K authors' training script reads it (zhang0jhon/diffusion-4k
  ``train_flux_4k_wavelet.py``, ``CustomDataset``).  The release ships its images as tar parts:
  extract them first; a copy whose file is ``metadata_v2.jsonl`` sets ``metadata:``.
* ``ultrahr_100k``: ``metadata.csv`` at the root beside ``images/``, DiffSynth-Studio's columns
  ``image`` (relative to ``images/``) and ``prompt``, as the PixVerve authors' own L2P training reads
  it (PixVerve-95K ``L2P-ZImage-HR/train_run_ds.sh`` and its README's dataset format).  The release
  is a split zip: join and extract it first.

Neither release was opened here (no hub access): a missing column is an error naming the columns
the file has, and a missing file a row with its reason.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

PRESETS = {
    "aesthetic_train_v2": {
        "metadata": "metadata.jsonl",
        "images_dir": "",
        "columns": {"path": "file_name", "caption": "text"},
        "licence": "Aesthetic-4K (Aesthetic-Train-V2) licence: see the dataset card",
    },
    "ultrahr_100k": {
        "metadata": "metadata.csv",
        "images_dir": "images",
        "columns": {"path": "image", "caption": "prompt"},
        "licence": "UltraHR-100K licence: see the dataset card",
    },
    "generic": {"metadata": "metadata.csv", "images_dir": "", "columns": {"path": "path"}, "licence": ""},
}
FIELDS = ("path", "caption", "licence", "url", "author")


def _rows(path: Path):
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            yield from csv.DictReader(fh)


def import_dataset(name: str, spec: dict, config: dict, base_dir=".", log=print):
    """(table with captions and decisions, manifest rows) for one configured import."""
    import pandas as pd

    from pixverve.core.paths import Unresolvable, resolve_inside, roots_from_config

    preset = PRESETS[spec.get("preset", "generic")]
    columns = {**preset["columns"], **(spec.get("columns") or {})}
    roots = roots_from_config(config, base_dir)
    if spec["root"] not in roots:
        raise ValueError(
            f"config key imports.{name}.root: {spec['root']!r} is not one of sources.roots {sorted(roots)}"
        )
    root = roots[spec["root"]]
    metadata = Path(spec.get("metadata") or root.path / preset["metadata"])
    if not metadata.is_absolute() and spec.get("metadata"):
        metadata = Path(base_dir) / metadata
    if not metadata.is_file():
        raise FileNotFoundError(f"config key imports.{name}.metadata: {metadata} does not exist")
    default_licence = spec.get("licence") or preset["licence"] or root.licence
    images_dir = spec.get("images_dir", preset["images_dir"])  # the folder the path column is relative to
    rows, seen = [], set()
    for n, rec in enumerate(_rows(metadata), 1):
        if n == 1:
            missing = [f"{field} -> {col!r}" for field, col in columns.items() if col not in rec]
            if missing:
                raise ValueError(
                    f"{metadata}: column(s) {missing} not found; the file has {sorted(rec)} "
                    f"(set imports.{name}.columns)"
                )
        value = {field: str(rec.get(col) or "") for field, col in columns.items()}
        rel = os.path.normpath(os.path.join(images_dir, value["path"]))
        row = {
            "dataset": name,
            "root": root.name,
            "relpath": rel,
            "caption": value.get("caption", ""),
            "licence": value.get("licence") or default_licence,
            "url": value.get("url", ""),
            "author": value.get("author", ""),
            "passed": True,
            "reason": "",
            "reason_detail": "",
        }
        if rel in seen:
            row.update(passed=False, reason="listed_twice", reason_detail=f"{metadata.name} row {n} repeats {rel}")
        else:
            seen.add(rel)
            try:
                if not resolve_inside(root.path, rel).is_file():
                    row.update(
                        passed=False,
                        reason="missing_file",
                        reason_detail=f"{metadata.name} row {n}: no file {rel} in {root.path}",
                    )
            except Unresolvable as exc:  # a symlink loop: a row, the import goes on
                row.update(passed=False, reason="unresolvable", reason_detail=str(exc))
            except ValueError as exc:
                row.update(passed=False, reason="outside_roots", reason_detail=str(exc))
        rows.append(row)
    table = pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "root",
            "relpath",
            "caption",
            "licence",
            "url",
            "author",
            "passed",
            "reason",
            "reason_detail",
        ],
    )
    kept = table[table["passed"]]
    log(f"import {name}: {len(kept)} of {len(table)} listed images found in root {root.name}")
    manifest = [
        {
            "path": r["relpath"],
            "source": spec.get("source", name),
            "licence": r["licence"],
            "url": r["url"],
            "author": r["author"],
        }
        for r in kept.to_dict("records")
    ]
    return table, manifest
