"""Stage 2, preliminary purification: the four classical measures and the pool-level decisions.

Definitions (the paper names the measures; where it is silent, what we compute is stated here):

* **pixel value / grey**: BT.601 luma, 8-bit (``images.grey_luma``).  For JPEG files the stored
  luma plane (the Y of JFIF's YCbCr, defined with the same BT.601 weights) is decoded directly,
  skipping the colour conversion; it differs from converting the decoded RGB by rounding only.
* **exposure**: share of grey pixels with value > 250 or < 5; dropped if the share > 20 %.
* **sharpness**: variance (population, ddof=0) of the 3x3 Laplacian ``[[0,1,0],[1,-4,1],[0,1,0]]``
  of the grey image, borders mirrored (reflect-101, OpenCV's default); dropped if < 10.
* **flatness**: the grey image is cut into non-overlapping square patches (``flatness.patch_px``
  at the 100 MP reference, scaled with the side; partial patches at the right/bottom edge are
  ignored); per patch, the variance of the Sobel gradient magnitude ``sqrt(gx^2 + gy^2)`` (3x3
  Sobel, unnormalised, reflect-101 borders); a patch is smooth if that variance is below
  ``flatness.smooth_variance``; dropped if the smooth share > 97.5 %.
* **content richness**: Shannon entropy in bits of the 256-bin grey histogram; the pool's top
  60 % by entropy are kept.

All four come from one decode and one grey image, in one pass of row bands (a band plus one halo
row above and below for the 3x3 filters): the Laplacian and Sobel outputs never exist at full size.
Arithmetic: int16 filter outputs, int64/float64 accumulators per band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pixverve.core.config import side_scale
from pixverve.core.health import MODEL_FAILED, required_steps

LAPLACIAN_KSIZE = 1  # OpenCV's ksize=1 is the 3x3 kernel [[0,1,0],[1,-4,1],[0,1,0]]


@dataclass(frozen=True)
class ClassicalParams:
    exposure_low: int = 5
    exposure_high: int = 250
    patch_px: int = 240
    smooth_variance: float = 800.0
    band_rows: int = 0  # rows per band, rounded down to whole patches (0: ~256)


def classical_params(config: dict) -> ClassicalParams:
    p = config["purify"]
    patch = max(8, round(p["flatness"]["patch_px"] * side_scale(config)))
    return ClassicalParams(
        exposure_low=int(p["exposure"]["low_value"]),
        exposure_high=int(p["exposure"]["high_value"]),
        patch_px=patch,
        smooth_variance=float(p["flatness"]["smooth_variance"]),
    )


@dataclass
class ClassicalScores:
    exposure_share: float
    laplacian_var: float
    flat_share: float
    flat_patches: int
    total_patches: int
    entropy_bits: float


def _band_rows(patch: int, band_rows: int) -> int:
    """Bands hold whole patch rows, so every patch lies inside one band."""
    return max(patch, ((band_rows or 256) // patch) * patch)


def classical_scores(grey: np.ndarray, params: ClassicalParams) -> ClassicalScores:
    """The four classical measures of a 2-D uint8 grey image, in row bands."""
    import cv2

    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise ValueError("classical_scores needs a 2-D uint8 grey image")
    h, w = grey.shape
    n = h * w
    hist = cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    p = hist[hist > 0] / n
    entropy = float(-(p * np.log2(p)).sum())
    exposure = float((hist[: params.exposure_low].sum() + hist[params.exposure_high + 1 :].sum()) / n)

    patch = params.patch_px
    ny, nx = h // patch, w // patch
    band = _band_rows(patch, params.band_rows)
    lap_sum = 0
    lap_sq = 0
    smooth = 0
    for top in range(0, h, band):
        bottom = min(h, top + band)
        # one halo row each side so the 3x3 filters see the real neighbours; at the image edges
        # OpenCV's reflect-101 border on the band equals reflect-101 on the whole image
        lo, hi = max(0, top - 1), min(h, bottom + 1)
        chunk = grey[lo:hi]
        inner = slice(top - lo, top - lo + (bottom - top))
        lap = cv2.Laplacian(chunk, cv2.CV_16S, ksize=LAPLACIAN_KSIZE)[inner]
        lap_sum += int(lap.sum(dtype=np.int64))
        lap32 = lap.astype(np.int32)
        lap_sq += int(np.einsum("ij,ij->", lap32, lap32, dtype=np.int64))
        # Sobel magnitude only over whole patches of this band
        p_top, p_bottom = top, min(bottom, ny * patch)
        if p_bottom > p_top and nx:
            gx = cv2.Sobel(chunk, cv2.CV_16S, 1, 0, ksize=3)[inner][p_top - top : p_bottom - top, : nx * patch]
            gy = cv2.Sobel(chunk, cv2.CV_16S, 0, 1, ksize=3)[inner][p_top - top : p_bottom - top, : nx * patch]
            mag = cv2.magnitude(gx.astype(np.float32), gy.astype(np.float32))
            blocks = mag.reshape(-1, patch, nx, patch).astype(np.float64)
            s1 = blocks.sum(axis=(1, 3))
            s2 = np.einsum("aibj,aibj->ab", blocks, blocks)
            var = s2 / (patch * patch) - (s1 / (patch * patch)) ** 2
            smooth += int((var < params.smooth_variance).sum())
    mean = lap_sum / n
    lap_var = lap_sq / n - mean * mean
    total = ny * nx
    return ClassicalScores(
        exposure_share=exposure,
        laplacian_var=float(lap_var),
        flat_share=float(smooth / total) if total else 1.0,
        flat_patches=smooth,
        total_patches=total,
        entropy_bits=entropy,
    )


def reference_scores(grey: np.ndarray, params: ClassicalParams) -> ClassicalScores:
    """The same four numbers computed the straightforward way (float64, scipy / scikit-image).

    For tests and ``benchmarks/purify_100mp.py`` only: whole-image float64 arrays.
    """
    from scipy import ndimage
    from skimage.measure import shannon_entropy

    g = grey.astype(np.float64)
    exposure = float(np.mean((g > params.exposure_high) | (g < params.exposure_low)))
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
    lap_var = float(ndimage.convolve(g, kernel, mode="mirror").var())
    gx = ndimage.sobel(g, axis=1, mode="mirror")
    gy = ndimage.sobel(g, axis=0, mode="mirror")
    mag = np.hypot(gx, gy)
    patch = params.patch_px
    ny, nx = grey.shape[0] // patch, grey.shape[1] // patch
    smooth = 0
    for i in range(ny):
        for j in range(nx):
            if mag[i * patch : (i + 1) * patch, j * patch : (j + 1) * patch].var() < params.smooth_variance:
                smooth += 1
    total = ny * nx
    return ClassicalScores(
        exposure_share=exposure,
        laplacian_var=lap_var,
        flat_share=smooth / total if total else 1.0,
        flat_patches=smooth,
        total_patches=total,
        entropy_bits=float(shannon_entropy(grey, base=2)),
    )


def top_fraction(scores: np.ndarray, ids: np.ndarray, fraction: float) -> tuple[np.ndarray, float]:
    """Which images rank in the pool's top ``fraction`` by score (ties broken by image_id).

    The pool is the images that have a score: exactly ceil(fraction * N_scored) of them are kept;
    returns (kept mask, the lowest kept score).  A NaN score (a model that could not score the
    image) is never "top" and takes no slot: that image's failure is decided on its own.
    """
    scored = ~np.isnan(scores)
    n = int(scored.sum())
    kept = np.zeros(len(scores), dtype=bool)
    if n == 0:
        return kept, math.nan
    keep_n = math.ceil(fraction * n - 1e-9)
    key = np.where(scored, scores, -np.inf)
    order = np.lexsort((ids, -key))[:n]  # descending score, then ascending id; the NaNs sort last
    kept[order[:keep_n]] = True
    cutoff = float(key[order[keep_n - 1]]) if keep_n else math.nan
    return kept, cutoff


# --- per-shard scoring and the pool-level decision -------------------------------------------

FILTER_ORDER = ["exposure", "sharpness", "flatness", "entropy", "aesthetics"]  # the paper's order


def score_classical_shard(rows, config: dict, base_dir=".", threads: int = 1):
    """Classical measures for the images of one shard that survived deduplication.

    Each row also carries the absolute filters' verdicts (exposure, sharpness, flatness) and the
    thresholds used; pool-relative ones (entropy, aesthetics) are decided by :func:`decide`.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd
    from tqdm import tqdm

    from pixverve.core import images
    from pixverve.core.paths import image_path, roots_from_config
    from pixverve.core.tables import fail, ok

    params = classical_params(config)
    p = config["purify"]
    roots = roots_from_config(config, base_dir)
    cap = config["io"]["max_megapixels"]
    background = tuple(config["io"]["alpha_background"])

    def blank(rec):
        return {
            "image_id": rec["image_id"],
            "root": rec["root"],
            "relpath": rec["relpath"],
            "shard": rec["shard"],
            "exposure_share": math.nan,
            "laplacian_var": math.nan,
            "flat_share": math.nan,
            "flat_patches": 0,
            "total_patches": 0,
            "entropy_bits": math.nan,
            "exposure_ok": False,
            "sharpness_ok": False,
            "flatness_ok": False,
            "grey_source": "",
            "exposure_low_value": params.exposure_low,
            "exposure_high_value": params.exposure_high,
            "exposure_max_share": float(p["exposure"]["max_share"]),
            "sharpness_min_laplacian_var": float(p["sharpness"]["min_laplacian_var"]),
            "flatness_patch_px": params.patch_px,
            "flatness_smooth_variance": params.smooth_variance,
            "flatness_max_smooth_share": float(p["flatness"]["max_smooth_share"]),
        }

    def work(rec):
        row = blank(rec)
        try:
            grey, info = images.read_grey(image_path(roots, rec["root"], rec["relpath"]), cap, background=background)
        except images.ImageError as exc:
            return fail(row, exc.code, exc.detail)
        s = classical_scores(grey, params)
        row.update(
            exposure_share=s.exposure_share,
            laplacian_var=s.laplacian_var,
            flat_share=s.flat_share,
            flat_patches=s.flat_patches,
            total_patches=s.total_patches,
            entropy_bits=s.entropy_bits,
            grey_source=",".join(info.conversion) or "bt601 luma of rgb",
            exposure_ok=s.exposure_share <= row["exposure_max_share"],
            sharpness_ok=s.laplacian_var >= row["sharpness_min_laplacian_var"],
            flatness_ok=s.flat_share <= row["flatness_max_smooth_share"],
        )
        failed = [f for f in ("exposure", "sharpness", "flatness") if not row[f"{f}_ok"]]
        if failed:
            return fail(row, failed[0], _explain(row, failed))
        return ok(row)

    recs = rows.to_dict("records")
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        out = list(tqdm(pool.map(work, recs), total=len(recs), desc="purify", unit="img", mininterval=2))
    # no image in the shard: the same columns, so the pool-level decision reads an empty table
    return pd.DataFrame(
        out, columns=list(ok(blank(dict.fromkeys(("image_id", "root", "relpath", "shard"), ""))).keys())
    )


def _explain(row: dict, failed: list[str]) -> str:
    parts = []
    for f in failed:
        if f == "exposure":
            parts.append(
                f"exposure: {row['exposure_share']:.1%} of pixels > {row['exposure_high_value']} or < "
                f"{row['exposure_low_value']} (max {row['exposure_max_share']:.0%})"
            )
        elif f == "sharpness":
            parts.append(
                f"sharpness: Laplacian variance {row['laplacian_var']:.3g} < {row['sharpness_min_laplacian_var']:g}"
            )
        elif f == "flatness":
            parts.append(
                f"flatness: {row['flat_share']:.1%} of {row['total_patches']} patches of {row['flatness_patch_px']} px are "
                f"smooth (Sobel magnitude variance < {row['flatness_smooth_variance']:g}; max {row['flatness_max_smooth_share']:.1%})"
            )
    return "; ".join(parts)


def decide(classical, aesthetics, config: dict):
    """Pool-level decision: absolute filters, the top-fraction cuts, and their intersection.

    Returns (decisions table, cut-offs table).  ``aesthetics`` may be empty (no aesthetic
    backend configured), in which case the aesthetics filter is recorded as not applied.
    """
    import pandas as pd

    p = config["purify"]
    df = classical.copy()
    readable = df["reason"].isin(["", "exposure", "sharpness", "flatness"])
    ids = df["image_id"].to_numpy()
    cutoffs = []

    ent_keep, ent_cut = top_fraction(
        np.where(readable, df["entropy_bits"].to_numpy(float), np.nan), ids, p["entropy"]["keep_top_fraction"]
    )
    df["entropy_ok"] = ent_keep & readable.to_numpy()
    df["entropy_cutoff"] = ent_cut
    cutoffs.append(
        _cut_row("entropy", "entropy_bits", ent_cut, p["entropy"]["keep_top_fraction"], len(df), ent_keep.sum(), False)
    )

    frac = p["aesthetics"]["keep_top_fraction"]
    score_cols = []
    if aesthetics is not None and len(aesthetics):
        keep_cols = [
            c for c in aesthetics.columns if c.endswith(("_score", "_smoke", "_status", "_error")) or c == "image_id"
        ]
        df = df.merge(aesthetics[keep_cols], on="image_id", how="left")
        score_cols = [c for c in aesthetics.columns if c.endswith("_score")]
    required = required_steps(p, [c.removesuffix("_score") for c in score_cols], "purify")
    any_top = np.zeros(len(df), dtype=bool)
    model_failed = [[] for _ in range(len(df))]  # per image: "predictor: status: error" of each failed required one
    for col in score_cols:
        name = col.removesuffix("_score")
        status = (
            df[f"{name}_status"].fillna("not_scored")
            if f"{name}_status" in df
            else pd.Series(np.where(df[col].isna(), "not_scored", "ok"), index=df.index)
        )
        good = (status == "ok").to_numpy() & ~df[col].isna().to_numpy()
        kept, cut = top_fraction(np.where(good, df[col].to_numpy(float), np.nan), ids, frac)
        df[f"{col}_top"] = kept
        any_top |= kept
        errors = df[f"{name}_error"].fillna("") if f"{name}_error" in df else pd.Series([""] * len(df), index=df.index)
        for i in np.flatnonzero(~good & readable.to_numpy()):
            if name in required:
                model_failed[i].append(f"{name}: {status.iloc[i]}: {errors.iloc[i]}".rstrip(": "))
        smoke = bool(df.get(col.replace("_score", "_smoke"), pd.Series([False])).any())
        cutoffs.append(_cut_row("aesthetics", col, cut, frac, int(good.sum()), kept.sum(), smoke, int((~good).sum())))
    df["aesthetics_ok"] = any_top if score_cols else True
    df["aesthetics_applied"] = bool(score_cols)
    df["model_ok"] = [not m for m in model_failed]
    df["model_failures"] = ["; ".join(m) for m in model_failed]

    oks = {f: df[f"{f}_ok"].to_numpy(bool) for f in FILTER_ORDER}
    passed = readable.to_numpy() & df["model_ok"].to_numpy(bool) & np.logical_and.reduce([oks[f] for f in FILTER_ORDER])
    failed_lists = [[f for f in FILTER_ORDER if not oks[f][i]] for i in range(len(df))]
    df["failed_filters"] = [",".join(f) for f in failed_lists]
    reasons, details = [], []
    for i, rec in enumerate(df.to_dict("records")):
        if not readable.iloc[i]:
            reasons.append(rec["reason"])
            details.append(rec["reason_detail"])
            continue
        fl = failed_lists[i]
        if rec["model_failures"]:  # a check that did not run decides nothing: the image leaves for that
            reasons.append(MODEL_FAILED)
            details.append(f"aesthetic model failed ({rec['model_failures']})")
            continue
        reasons.append(fl[0] if fl else "")
        text = [_explain(rec, [f for f in fl if f in ("exposure", "sharpness", "flatness")])] if fl else []
        if "entropy" in fl:
            text.append(
                f"entropy: {rec['entropy_bits']:.3f} bits below the pool's top-{p['entropy']['keep_top_fraction']:.0%} cut-off {ent_cut:.3f}"
            )
        if "aesthetics" in fl:
            text.append(
                "aesthetics: "
                + ", ".join(f"{c} {rec[c]:.3f}" for c in score_cols)
                + f" all outside the pool's top {frac:.0%}"
            )
        details.append("; ".join(t for t in text if t))
    df["passed"] = passed
    df["reason"] = reasons
    df["reason_detail"] = details
    return df, pd.DataFrame(cutoffs)


def _cut_row(filter_name, score, cutoff, fraction, pool, kept, smoke, failed=0):
    return {
        "filter": filter_name,
        "score": score,
        "keep_top_fraction": float(fraction),
        "cutoff": float(cutoff),
        "pool_size": int(pool),
        "kept": int(kept),
        "smoke": bool(smoke),
        "failed": int(failed),  # images the model could not score: outside the pool, rejected on their own
    }
