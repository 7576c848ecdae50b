"""PixVerve-Bench's MLLM-judged scores, from the judge's per-dimension answers (formulas only).

MSFI (multi-scale fidelity): a global call scores the whole image on four dimensions and each of
the 10 local calls scores one patch on five, all as integers 1-5.  Each call's score S is the
weighted mean of its dimensions (weights below, as published), a missing or invalid dimension
counting as 3; S_l is the mean of the local calls' S.  MSFI = S_g + (S_g / 5) * S_l, at most 10.

ICS (instance-centric compliance): IEV, AAA and SRA in 1-10 from one call with the long caption;
ICS = sqrt(IEV / 10) * (0.6 AAA + 0.4 SRA).
"""

from __future__ import annotations

import math

MSFI_GLOBAL_WEIGHTS = {"SC": 5, "PI": 3, "LC": 2, "CH": 2}
MSFI_LOCAL_WEIGHTS = {"NGE": 2, "GA": 3, "TF": 5, "MGC": 2, "SC": 2}
MSFI_MISSING = 3
ICS_KEYS = ("IEV", "AAA", "SRA")


def _valid(value, low: int, high: int) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high and float(value).is_integer()


def weighted_score(scores: dict | None, weights: dict[str, int]) -> tuple[float, list[str]]:
    """(weighted mean, dimensions that were missing or invalid and counted as 3)."""
    scores = scores or {}
    total, defaulted = 0.0, []
    for dim, w in weights.items():
        value = scores.get(dim)
        if not _valid(value, 1, 5):
            defaulted.append(dim)
            value = MSFI_MISSING
        total += w * float(value)
    return total / sum(weights.values()), defaulted


def msfi(global_scores: dict | None, local_scores: list[dict | None]) -> dict:
    """MSFI and its parts; ``local_scores``: one dict per judged patch (None = no valid reply)."""
    s_g, g_missing = weighted_score(global_scores, MSFI_GLOBAL_WEIGHTS)
    locals_ = [weighted_score(s, MSFI_LOCAL_WEIGHTS) for s in local_scores]
    s_l = sum(s for s, _ in locals_) / len(locals_) if locals_ else float(MSFI_MISSING)
    return {
        "msfi": s_g + (s_g / 5.0) * s_l,
        "s_global": s_g,
        "s_local": s_l,
        "defaulted_global": g_missing,
        "defaulted_local": sum(len(m) for _, m in locals_),
    }


def ics(scores: dict) -> float:
    """ICS from one judge reply with IEV, AAA, SRA (integers 1-10); raises on a missing score."""
    for key in ICS_KEYS:
        if not _valid(scores.get(key), 1, 10):
            raise ValueError(f"ICS needs {key} as an integer 1-10, got {scores.get(key)!r}")
    return math.sqrt(scores["IEV"] / 10.0) * (0.6 * scores["AAA"] + 0.4 * scores["SRA"])


def msfi_patch_size(width: int, height: int) -> int:
    """Local patch side in full-resolution pixels: 512, or 1024 when the long edge >= 7680."""
    return 1024 if max(width, height) >= 7680 else 512


def msfi_patches(grey, seed: int, n_sobel: int = 6, n_random: int = 4, analysis_long_edge: int = 2048):
    """Full-resolution (x, y, w, h, why) of MSFI's local patches.

    The grid of whole, non-overlapping patches is laid on a grey analysis copy whose long edge
    is ``analysis_long_edge`` (area resize); patches are ranked by the variance of the Sobel
    gradient magnitude there (the same measure as stage 4's region judge); the top ``n_sobel``
    and ``n_random`` more drawn with ``numpy.random.default_rng(seed)`` are mapped back to the
    full image.  The random draw's seeding is ours (the published one is not in PAPER.md).
    """
    import cv2

    from .regions import choose_patches, patch_boxes, sobel_variances

    h, w = grey.shape[:2]
    side = msfi_patch_size(w, h)
    scale = analysis_long_edge / max(w, h)
    if scale < 1:
        small = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    else:
        small, scale = grey, 1.0
    boxes = patch_boxes(*small.shape[:2], max(1, round(side * scale)))
    chosen = choose_patches(sobel_variances(small, boxes), f"{seed:016x}", n_sobel, n_random)
    out = []
    for index, why in chosen:
        x, y, bw, bh = boxes[index]
        fx, fy = min(round(x / scale), max(0, w - side)), min(round(y / scale), max(0, h - side))
        out.append((fx, fy, min(side, w), min(side, h), why))
    return out
