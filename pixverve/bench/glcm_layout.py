"""The GLCM score's fixed layout, shared by ``glcm.py`` (the score) and ``glcm_kernel.py`` (its numba
kernels): the published patch size, levels, distances and angles, scikit-image's rounded offsets,
the value-id tables, and each offset's displacement in the kernel's padded patch buffer.  (A module
of its own so that the kernel, which numba freezes these into, and the score import it one way.)"""

from __future__ import annotations

import math

import numpy as np

PATCH = 64
LEVELS = 64
DISTANCES = (1, 2, 3, 4)
ANGLES = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)


def _round_half_away(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def offsets() -> np.ndarray:
    """(row, col) offset of every (distance, angle) slice, in scikit-image's rounding."""
    return np.array(
        [[_round_half_away(math.sin(a) * d), _round_half_away(math.cos(a) * d)] for d in DISTANCES for a in ANGLES],
        dtype=np.int64,
    )


def quantise(grey: np.ndarray) -> np.ndarray:
    return (grey // 4).astype(np.uint8)


def value_ids(offs: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per slice, the row of a table mapping a symmetric count v to the id of the float v / T.

    T = twice the slice's pixel pairs in a 64x64 patch.  Equal reduced fractions get one id, so
    equal matrix values across slices with different T land in one histogram bin.  Returns
    (table of shape (distinct T, max v + 1), each slice's row in it, number of ids)."""
    totals = np.array([2 * (PATCH - abs(dr)) * (PATCH - abs(dc)) for dr, dc in offs], dtype=np.int64)
    distinct = np.unique(totals)
    maxv = int(distinct.max()) + 1
    v = np.arange(maxv, dtype=np.int64)
    g = np.gcd(v[None, :], distinct[:, None])
    g[g == 0] = 1
    fraction = (v[None, :] // g) * (1 << 20) + distinct[:, None] // g  # v=0 rows: all "0 / 1"
    _, ids = np.unique(fraction, return_inverse=True)
    rows_of = np.searchsorted(distinct, totals).astype(np.int64)
    return ids.reshape(fraction.shape).astype(np.int32), rows_of, int(ids.max()) + 1


# Border width of the padded patch buffer: the largest offset component is 4 (distance 4 at 0/90 deg).
PAD = 4
WIDTH = PATCH + 2 * PAD


def unique_offsets() -> tuple[np.ndarray, np.ndarray]:
    """The distinct (row, col) offsets and how many of the 16 slices each stands for."""
    offs, weight = np.unique(offsets(), axis=0, return_counts=True)
    return offs, weight.astype(np.int64)


# Each offset as a displacement in the padded buffer; numba freezes this global tuple into constants.
DISP = tuple(int(dr * WIDTH + dc) for dr, dc in unique_offsets()[0])
assert len(DISP) == 14 and min(DISP) > 0, "glcm_kernel.count_pairs is written out for these 14 offsets"
