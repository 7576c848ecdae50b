"""Stage 1 resolution screening (the paper's two criteria) and a full-decode check.

Paper, stage 1: keep an image when (i) it has more than 25 MP and a shorter side >= 3000 px, or
(ii) it has 10-25 MP and a shorter side >= 1500 px.  Thresholds are config keys written at the
100 MP reference and scaled by ``target_megapixels`` (see :mod:`pixverve.core.config`).

The screen decides from the header first (no decode for images that fail), then decodes the
images that pass -- at a reduced JPEG scale, which still reads every byte -- so truncated or
corrupt files are rejected here with their reason, and the perceptual hash for deduplication
comes from the same decode.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pixverve.core import images
from pixverve.core.config import check_resolution, screening_criteria, sr_tiers, tier_for
from pixverve.core.paths import Unresolvable, file_sha256, image_path, roots_from_config
from pixverve.core.tables import fail, ok
from pixverve.ingest.dedup import phash

# The pHash only needs ~32 px; decoding JPEGs at >= 256 px keeps it stable across DCT scales.
HASH_DECODE_MIN_SIDE = 256


def _changed_since_index(rec: dict, path: Path) -> tuple[str, str] | None:
    """Whether the file is still the one the index identified: gone, unreadable, or other bytes
    (the image_id is the content's hash, so a changed file must not pass under the old id)."""
    try:
        size = path.stat().st_size
        if size != int(rec["bytes"]):
            return "changed_since_index", f"{size} bytes now, {int(rec['bytes'])} when indexed"
        if rec.get("sha256") and file_sha256(path) != rec["sha256"]:
            return "changed_since_index", "the content's SHA-256 differs from the index's"
    except FileNotFoundError as exc:
        return "vanished_since_index", str(exc)
    except OSError as exc:
        return "unreadable", str(exc)
    return None


def _screen_one(rec: dict, path: Path | None, criteria, tiers, max_megapixels: float, background, problem=None) -> dict:
    w, h = int(rec["width"]), int(rec["height"])
    row = {
        "image_id": rec["image_id"],
        "root": rec["root"],
        "relpath": rec["relpath"],
        "shard": rec["shard"],
        "width": w,
        "height": h,
        "bytes": int(rec["bytes"]),
        "megapixels": round(w * h / 1e6, 6),
        "min_side": min(w, h),
        "criterion": "",
        "sr_tier": "",
        "sr_scale": 0,
        "phash": "",
        "decoded_width": 0,
        "decoded_height": 0,
        "conversion": "",
        "criteria_used": "; ".join(c.describe() for c in criteria),
    }
    name, code, detail = check_resolution(w, h, criteria)
    if name is None:
        return fail(row, code, detail)
    row["criterion"] = name
    tier = tier_for(w * h, tiers)
    if tier is not None:
        row["sr_tier"], row["sr_scale"] = tier.name, tier.scale
    changed = problem or _changed_since_index(rec, path)
    if changed:
        return fail(row, *changed)
    try:
        rgb, info = images.read_rgb(
            path, max_megapixels, reduce_to_min_side=HASH_DECODE_MIN_SIDE, background=background
        )
    except images.ImageError as exc:
        return fail(row, exc.code, exc.detail)
    row["decoded_height"], row["decoded_width"] = rgb.shape[:2]
    row["conversion"] = ",".join(info.conversion)
    if (rgb.shape[1] >= rgb.shape[0]) != (w >= h) and w != h:
        return fail(row, "orientation_mismatch", f"header says {w}x{h}, decoded {rgb.shape[1]}x{rgb.shape[0]}")
    row["phash"] = f"{phash(images.grey_luma(rgb)):016x}"
    return ok(row)


def screen_shard(shard: pd.DataFrame, config: dict, base_dir=".", threads: int = 1) -> pd.DataFrame:
    images.set_pixel_cap(config["io"]["max_megapixels"])
    criteria = screening_criteria(config)
    tiers = sr_tiers(config)
    roots = roots_from_config(config, base_dir)
    background = tuple(config["io"]["alpha_background"])
    recs = shard.to_dict("records")

    def work(rec):
        try:
            path = image_path(roots, rec["root"], rec["relpath"])
        except ValueError as exc:  # the path turned into a loop or now points outside its root
            path, problem = None, ("unresolvable" if isinstance(exc, Unresolvable) else "outside_roots", str(exc))
        else:
            problem = None
        return _screen_one(rec, path, criteria, tiers, config["io"]["max_megapixels"], background, problem)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        rows = list(tqdm(pool.map(work, recs), total=len(recs), desc="screen", unit="img", mininterval=2))
    return pd.DataFrame(rows)
