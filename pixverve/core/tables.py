"""Stage tables: one parquet file per shard and stage, one row per image.

Every stage table has ``image_id``, ``passed`` (bool), ``reason`` (a stable code, empty when
passed) and ``reason_detail`` (a sentence a person can read), plus the scores it computed and
the thresholds it used.  Writing is deterministic (sorted rows, fixed column order, no
timestamps) so that re-running a stage on the same inputs gives byte-identical files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

COMMON_COLUMNS = ["image_id", "passed", "reason", "reason_detail"]


def write_table(df: pd.DataFrame, path: str | os.PathLike, sort_by: list[str] | None = None) -> None:
    """Write a stage table atomically (temp file + rename), rows sorted for determinism."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sort_by is None:
        sort_by = [c for c in ("image_id", "root", "relpath") if c in df.columns]
    if sort_by and len(df):
        df = df.sort_values(sort_by, kind="mergesort")
    df = df.reset_index(drop=True)
    first = [c for c in COMMON_COLUMNS if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first]]
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")
    os.replace(tmp, path)


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """A stage table; ``columns``: only those (a gather over 95K images need not load raw replies)."""
    return pd.read_parquet(path, engine="pyarrow", columns=columns)


def read_tables(paths, columns: list[str] | None = None) -> pd.DataFrame:
    frames = [read_table(p, columns) for p in paths]
    frames = [f for f in frames if len(f)]
    if not frames:
        return read_table(paths[0], columns) if paths else pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)


def fail(row: dict, code: str, detail: str) -> dict:
    """Mark a row as rejected with a reason code and its explanation."""
    row["passed"] = False
    row["reason"] = code
    row["reason_detail"] = detail
    return row


def ok(row: dict) -> dict:
    row["passed"] = True
    row["reason"] = ""
    row["reason_detail"] = ""
    return row


# What a model raises on one image (a CUDA out-of-memory is a RuntimeError, a prompt the model
# cannot take a RuntimeError/ValueError): that image's row records it, the shard goes on.
MODEL_ERRORS = (RuntimeError, ValueError, IndexError)
MODEL_ERROR = "model_error"


def model_error_text(step: str, exc: BaseException) -> str:
    return f"{step}: {type(exc).__name__}: {str(exc)[:500]}"


def id_columns(rec: dict) -> dict:
    """The columns that identify an image's row in every per-image table after the index."""
    return {k: rec[k] for k in ("image_id", "root", "relpath", "shard")}


def chunks(items: list, size: int):
    """Consecutive slices of ``size`` items (the last may be shorter): the batches of a shard."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
