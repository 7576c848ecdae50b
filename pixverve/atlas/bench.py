"""The atlas's bench page data (``notes/atlas-contract.md``, bench.js): per benchmark image the real
image and each method's image as pyramids, the MSFI patches with their judge scores and replies,
and the per-method table (``paper_figures/bench_table.csv``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pixverve.atlas.pyramid import PyramidError, build_pyramid

TILES = Path("tiles") / "bench"


def _tiles(src: Path, site_dir: Path, folder: str, max_megapixels, tile_size: int) -> dict | None:
    if not src.exists():
        return None
    rel = TILES / folder
    try:
        tiles = build_pyramid(src, Path(site_dir) / rel, src.stem, max_megapixels, tile_size=tile_size)
    except PyramidError as exc:
        return {"error": str(exc)}
    return tiles | {"url": f"{rel.as_posix()}/{tiles.pop('files')}", "label": folder}


def patch_scores(row: dict) -> list[dict]:
    """The judged MSFI patches of one image: box, how it was picked, the judge's status, its
    weighted local score (when the reply parsed) and the raw reply text."""
    from pixverve.bench.scores import MSFI_LOCAL_WEIGHTS, weighted_score
    from pixverve.models.vlm import extract_json

    patches = json.loads(row.get("patches") or "[]")
    statuses = json.loads(row.get("local_statuses") or "[]")
    replies = json.loads(row.get("replies") or "{}")
    out = []
    for i, p in enumerate(patches):
        texts = replies.get(f"{row['name']}:{p['x']},{p['y']}") or []
        status = statuses[i] if i < len(statuses) else "missing"
        score = None
        if status == "ok" and texts:
            try:
                value, _ = weighted_score(extract_json(texts[-1]), MSFI_LOCAL_WEIGHTS)
                score = None if math.isnan(value) else round(float(value), 3)
            except (ValueError, TypeError, AttributeError):
                score = None
        out.append(
            {
                "x": p["x"],
                "y": p["y"],
                "w": p["w"],
                "h": p["h"],
                "picked": p.get("picked", ""),
                "status": status,
                "score": score,
                "reply": "\n\n".join(str(t) for t in texts),
            }
        )
    return out


def bench_data(
    benchmark_rows: list[dict],
    real_dir,
    method_dirs: dict[str, str],
    judged: dict[str, str | None],
    table_rows: list[dict],
    site_dir,
    max_megapixels=None,
    tile_size: int = 510,
) -> dict:
    """bench.js's content; pyramids written under ``site_dir/tiles/bench/``."""
    import pandas as pd

    judged_rows = {}
    for method, path in judged.items():
        if path and Path(path).exists():
            judged_rows[method] = {r["name"]: r for r in pd.read_parquet(path).to_dict("records")}
    images = []
    for r in benchmark_rows:
        stem = Path(r["file_name"]).stem
        item = {
            "stem": stem,
            "caption": r.get("long_caption", ""),
            "real": _tiles(Path(real_dir) / r["file_name"], site_dir, "real", max_megapixels, tile_size),
            "methods": {},
            "patches": {},
        }
        for method, folder in method_dirs.items():
            item["methods"][method] = _tiles(Path(folder) / f"{stem}.jpg", site_dir, method, max_megapixels, tile_size)
            row = judged_rows.get(method, {}).get(stem)
            item["patches"][method] = patch_scores(row) if row else []
        images.append(item)
    table = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in table_rows]
    return {"methods": list(method_dirs), "table": table, "images": images}
