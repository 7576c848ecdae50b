"""PixVerve-Bench's MLLM-judged scores: MSFI's views and patches, and the formulas.

Checked against the published evaluation code (github HaojunChen663/PixVerve-95K, ``eval/``):
``util/image_process.py`` (views, patch choice), ``msfi_evaluator.py`` (MSFI arithmetic and what is
left out), ``ics_evaluator.py`` (ICS view and arithmetic).

MSFI (multi-scale fidelity): a global call scores the whole image on four dimensions and each of
the 10 local calls scores one patch on five (1-5).  A call's score S is the weighted mean of its
dimensions (weights below, the published keys ``SC-global`` / ``SC-local``); a dimension missing
from a reply counts as 3, a reply whose values are not all numbers scores 3 as a whole, as
published.  S_l is the mean over the local calls that returned JSON (failed calls are left out,
not counted); an image without a global reply or without any local reply has no MSFI and is left
out of the method's mean.  MSFI = S_g + (S_g / 5) * S_l.

ICS (instance-centric compliance): IEV, AAA and SRA from one call with the long caption;
ICS = sqrt(IEV / 10) * (0.6 AAA + 0.4 SRA); a reply without all three numbers is no ICS (left out).
"""

from __future__ import annotations

import math

MSFI_GLOBAL_WEIGHTS = {"SC-global": 5, "PI": 3, "LC": 2, "CH": 2}
MSFI_LOCAL_WEIGHTS = {"NGE": 2, "GA": 3, "TF": 5, "MGC": 2, "SC-local": 2}
MSFI_MISSING = 3
ICS_KEYS = ("IEV", "AAA", "SRA")


def weighted_score(scores, weights: dict[str, int]) -> tuple[float, list[str]]:
    """(weighted mean, dimensions missing from the reply and counted as 3).

    A reply that is not a mapping, or has a value ``float()`` cannot read, scores 3 as a whole
    (every dimension is then reported as defaulted)."""
    if not isinstance(scores, dict):
        return float(MSFI_MISSING), list(weights)
    try:
        values = [float(scores.get(dim, MSFI_MISSING)) for dim in weights]
    except (TypeError, ValueError):
        return float(MSFI_MISSING), list(weights)
    total = sum(v * w for v, w in zip(values, weights.values(), strict=True))
    return total / sum(weights.values()), [dim for dim in weights if dim not in scores]


def msfi(global_scores, local_scores: list) -> dict:
    """MSFI of one image.  ``global_scores``: the parsed global reply (None: the call failed);
    ``local_scores``: one parsed reply per patch (None: that call failed, left out of S_l).

    ``included`` is False -- and msfi NaN -- when the global reply is missing (or empty) or no
    local call returned anything: such an image is left out of the method's mean."""
    valid = [s for s in local_scores if s is not None]
    if not global_scores or not valid:
        nan = float("nan")
        return {
            "msfi": nan,
            "s_global": nan,
            "s_local": nan,
            "defaulted_global": [],
            "defaulted_local": 0,
            "valid_patches": len(valid),
            "included": False,
        }
    s_g, g_missing = weighted_score(global_scores, MSFI_GLOBAL_WEIGHTS)
    locals_ = [weighted_score(s, MSFI_LOCAL_WEIGHTS) for s in valid]
    s_l = sum(s for s, _ in locals_) / len(locals_)
    return {
        "msfi": s_g + (s_g / 5.0) * s_l,
        "s_global": s_g,
        "s_local": s_l,
        "defaulted_global": g_missing,
        "defaulted_local": sum(len(m) for _, m in locals_),
        "valid_patches": len(valid),
        "included": True,
    }


def ics(scores) -> float:
    """ICS from one parsed judge reply; raises ValueError when it is not one (the image is then
    left out of the method's mean)."""
    if not scores or not isinstance(scores, dict) or any(k not in scores for k in ICS_KEYS):
        raise ValueError(f"ICS needs {', '.join(ICS_KEYS)} in the reply, got {scores!r}")
    try:
        iev, aaa, sra = (float(scores[k]) for k in ICS_KEYS)
        return math.sqrt(iev / 10.0) * (0.6 * aaa + 0.4 * sra)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ICS needs numbers for {', '.join(ICS_KEYS)}: {exc}") from None


def mean_over_included(values) -> tuple[float, int]:
    """(mean of the non-NaN values, how many): the published means cover only the scored images."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return (sum(kept) / len(kept) if kept else float("nan")), len(kept)


# ----------------------------------------------------------------------------- MSFI's inputs


def msfi_patch_size(width: int, height: int) -> int:
    """Local patch side in full-resolution pixels: 512, or 1024 when the long edge >= 7680."""
    return 1024 if max(width, height) >= 7680 else 512


def long_edge_copy(img, long_edge: int):
    """PIL Lanczos copy whose long edge is ``long_edge`` (up or down), the short side truncated to
    an integer; a square counts as "height is the long edge" (as published)."""
    from PIL import Image

    w, h = img.size
    size = (long_edge, int(h * (long_edge / w))) if w > h else (int(w * (long_edge / h)), long_edge)
    return img.resize(size, resample=Image.LANCZOS)


def sobel_variance(grey_patch) -> float:
    """Variance of the 3x3 Sobel gradient magnitude of one grey patch taken on its own (float64)."""
    import cv2
    import numpy as np

    gx = cv2.Sobel(grey_patch, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey_patch, cv2.CV_64F, 0, 1, ksize=3)
    return float(np.var(np.sqrt(gx**2 + gy**2)))


def msfi_layout(
    img, seed: int, n_sobel: int = 6, n_random: int = 4, analysis_long_edge: int = 2048, global_long_edge: int = 2048
):
    """(global view, patches) of one RGB PIL image, the published preprocessing.

    The analysis copy (Lanczos to ``analysis_long_edge``, then PIL "L") is cut into whole
    non-overlapping squares of side ``int(patch * scale)`` (scale = analysis width / width),
    row-major; each scores the variance of its Sobel magnitude; the ``n_sobel`` highest (ties in
    grid order) are kept, then ``n_random`` of the rest.  Each square maps back to
    ``round(a / scale)``, is clamped into the image and keeps the full patch side where it fits.

    The random ones: the published code draws them with ``random.sample`` from a module-level
    ``random.seed(42)``, image after image in the directory's listing order -- which differs
    between machines and file systems, so it cannot be reproduced.  Ours: ``numpy`` ``default_rng``
    seeded per image (``seed``), drawing from the remaining squares in grid order.

    Each patch: dict with ``box`` (left, top, right, bottom) in full-resolution pixels,
    ``relative`` [x_min, y_min, x_max, y_max] rounded to 6 places, ``picked`` sobel | random.
    """
    import numpy as np

    width, height = img.size
    side = msfi_patch_size(width, height)
    global_view = long_edge_copy(img, global_long_edge)
    analysis = long_edge_copy(img, analysis_long_edge)
    grey = np.array(analysis.convert("L"))
    scale = analysis.size[0] / width
    step = int(side * scale)
    cells = []
    if step > 0:
        ah, aw = grey.shape
        cells = [(x, y) for y in range(0, ah - step + 1, step) for x in range(0, aw - step + 1, step)]
    scores = [sobel_variance(grey[y : y + step, x : x + step]) for x, y in cells]
    ranked = sorted(range(len(cells)), key=lambda i: -scores[i])  # stable: ties keep grid order
    top, rest = ranked[:n_sobel], sorted(ranked[n_sobel:])
    drawn = []
    if rest:
        rng = np.random.default_rng(seed)
        drawn = sorted(int(i) for i in rng.choice(rest, size=min(n_random, len(rest)), replace=False))
    patches = []
    for index, why in [(i, "sobel") for i in top] + [(i, "random") for i in drawn]:
        ax, ay = cells[index]
        right = min(int(round(ax / scale)) + side, width)
        bottom = min(int(round(ay / scale)) + side, height)
        left, top_ = max(0, right - side), max(0, bottom - side)
        rel = [round(left / width, 6), round(top_ / height, 6), round(right / width, 6), round(bottom / height, 6)]
        patches.append({"box": (left, top_, right, bottom), "relative": rel, "picked": why})
    return global_view, patches


def ics_view(img, long_edge: int = 3072):
    """ICS's copy: Lanczos down to ``long_edge`` (sides truncated to integers) only when larger."""
    from PIL import Image

    w, h = img.size
    if max(w, h) <= long_edge:
        return img
    scale = long_edge / max(w, h)
    return img.resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS)
