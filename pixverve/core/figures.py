"""Paper figures built from the stage tables (matplotlib/seaborn, Agg backend)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

THUMB_PX = 220


def _thumbnail(path, max_megapixels: float) -> np.ndarray | None:
    import cv2

    from pixverve.core import images

    try:
        rgb, _ = images.read_rgb(path, max_megapixels, reduce_to_min_side=THUMB_PX)
    except images.ImageError:
        return None
    scale = THUMB_PX / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return rgb


def fig4_purification(
    decisions: pd.DataFrame, cutoffs: pd.DataFrame, resolve_path, max_megapixels: float, out_png, out_pdf
):
    """Per filter: the pool's score distribution with its threshold, and the lowest/highest image.

    ``resolve_path(root, relpath)`` gives the file of an image (for thumbnails).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = decisions[decisions["reason"].isin(["", "exposure", "sharpness", "flatness", "entropy", "aesthetics"])]
    panels = [
        (
            "exposure",
            "exposure_share",
            "share of pixels > 250 or < 5",
            float(df["exposure_max_share"].iloc[0]),
            "above",
            False,
        ),
        (
            "sharpness",
            "laplacian_var",
            "Laplacian variance",
            float(df["sharpness_min_laplacian_var"].iloc[0]),
            "below",
            True,
        ),
        (
            "flatness",
            "flat_share",
            "share of smooth patches",
            float(df["flatness_max_smooth_share"].iloc[0]),
            "above",
            False,
        ),
        (
            "entropy",
            "entropy_bits",
            "Shannon entropy (bits)",
            float(cutoffs.set_index("score").loc["entropy_bits", "cutoff"]),
            "below",
            False,
        ),
    ]
    for row in cutoffs[cutoffs["filter"] == "aesthetics"].itertuples():
        label = f"{row.score} ({'SMOKE: tiny model' if row.smoke else 'model score'})"
        panels.append(("aesthetics", row.score, label, float(row.cutoff), "below", False))

    fig, axes = plt.subplots(len(panels), 3, figsize=(13, 3.1 * len(panels)), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    axes = np.atleast_2d(axes)
    for r, (name, col, label, threshold, side, logx) in enumerate(panels):
        ax = axes[r, 0]
        values = df[col].astype(float)
        data = np.log10(values.clip(lower=1e-3)) if logx else values
        sns.histplot(data, bins=min(30, max(5, len(df))), ax=ax, color="tab:blue")
        thr = math.log10(max(threshold, 1e-3)) if logx else threshold
        ax.axvline(thr, color="tab:red", lw=2)
        ax.set_xlabel(("log10 " if logx else "") + label)
        rule = "drop " + side + f" {threshold:.3g}"
        title = f"{name}: {rule}" + (" (pool cut-off)" if name in ("entropy", "aesthetics") else "")
        if "SMOKE" in label:
            title = "SMOKE, not a result: " + title
        ax.set_title(title, fontsize=10, color="tab:red" if "SMOKE" in label else "black")
        order = df.sort_values(col, kind="mergesort")
        worst = order.iloc[-1] if side == "above" else order.iloc[0]
        kept = order[order["passed"].astype(bool)]
        best = (kept.iloc[0] if side == "above" else kept.iloc[-1]) if len(kept) else worst
        worst_label = f"fails {name}" if not rec_ok(worst, name) else f"worst, passes {name}"
        for c, (rec, kind) in enumerate(((worst, worst_label), (best, "kept (best of candidates)"))):
            axi = axes[r, c + 1]
            axi.axis("off")
            thumb = _thumbnail(resolve_path(rec["root"], rec["relpath"]), max_megapixels)
            if thumb is not None:
                axi.imshow(thumb)
            axi.set_title(f"{kind}: {rec['relpath'][:28]}\n{col} = {rec[col]:.3g}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    fig.savefig(out_pdf, metadata={"CreationDate": None})
    plt.close(fig)


def rec_ok(rec, name: str) -> bool:
    return bool(rec.get(f"{name}_ok", True))
