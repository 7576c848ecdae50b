"""PixVerve-Bench's GLCM score, computed exactly like the published per-patch procedure, fast.

The published definition (per image): grey image quantised to 64 levels (``value // 4``); every
non-overlapping 64x64 patch (whole patches from the top-left); scikit-image's ``graycomatrix``
with distances 1-4 and angles 0, 45, 90, 135 degrees, symmetric and normalised; the patch value is
``skimage.measure.shannon_entropy`` of that whole 64x64x4x4 matrix -- the entropy (bits) of the
histogram of the matrix's *distinct values*, not the textbook GLCM entropy; the image's score is
the mean over its patches.

Why this can be computed without building any float matrix: every entry of a normalised slice is
``count / T`` with ``T`` = twice the number of pixel pairs of that offset (a constant for a 64x64
patch).  Two entries are equal floats exactly when the fractions are equal (IEEE division is
correctly rounded, and distinct fractions with denominators below 2^13 differ by far more than an
ulp), so the distinct values are the distinct reduced fractions ``count / T`` (all zeros are one
value).  The kernel (numba, patches in parallel) counts ordered pairs once per offset, reads each
symmetric count ``C[i,j] + C[j,i]`` once per unordered bin, maps it through a precomputed table
to the id of its reduced fraction, and takes the entropy of the id histogram -- no float matrix,
no sort.  scikit-image rounds the diagonal offsets (``round(d * sin 45)``):
distances 1 and 2 give the same (1, 1) offset, reproduced here.
"""

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
    return ids.reshape(fraction.shape).astype(np.int32), np.searchsorted(distinct, totals).astype(np.int64), int(ids.max()) + 1


def _kernel():
    from numba import njit, prange

    @njit(cache=True, nogil=True)
    def patch_entropy(q, top, left, offs, weight, n_slices, rows_of, table, counts, counts2, vcount, touched):
        """Entropy (bits) of the value histogram of one patch's normalised symmetric GLCM.

        ``counts`` + ``counts2`` (zero on entry and exit) hold one slice's ordered pair counts;
        ``vcount`` (zero on entry and exit) counts the matrix entries per distinct value, and only
        the values touched are visited and reset."""
        n_touched = 0
        zeros = 0
        for s in range(offs.shape[0]):
            dr, dc = offs[s, 0], offs[s, 1]
            r0, r1 = max(0, -dr), min(PATCH, PATCH - dr)
            c0, c1 = max(0, -dc), min(PATCH, PATCH - dc)
            # two count arrays, alternating by column: neighbouring pixels often fall into the same
            # bin, and back-to-back increments of one address would wait on each other
            for r in range(r0, r1):
                ra, rb = top + r, top + r + dr
                ca, cb = left + c0, left + c0 + dc
                c = c0
                while c + 1 < c1:
                    counts[q[ra, ca] * LEVELS + q[rb, cb]] += 1
                    counts2[q[ra, ca + 1] * LEVELS + q[rb, cb + 1]] += 1
                    c += 2
                    ca += 2
                    cb += 2
                if c < c1:
                    counts[q[ra, ca] * LEVELS + q[rb, cb]] += 1
            ids = table[rows_of[s]]
            # symmetric matrix: (i, j) and (j, i) both hold C[i,j] + C[j,i]; (i, i) holds 2 C[i,i]
            nonzero = 0
            for i in range(LEVELS):
                for j in range(i, LEVELS):
                    if i == j:
                        v = 2 * (counts[i * LEVELS + i] + counts2[i * LEVELS + i])
                        mult = 1
                    else:
                        v = counts[i * LEVELS + j] + counts2[i * LEVELS + j] + counts[j * LEVELS + i] + counts2[j * LEVELS + i]
                        mult = 2
                    if v == 0:
                        continue
                    mult *= weight[s]  # identical slices (same rounded offset) are counted once
                    nonzero += mult
                    vid = ids[v]
                    if vcount[vid] == 0:
                        touched[n_touched] = vid
                        n_touched += 1
                    vcount[vid] += mult
            counts[:] = 0
            counts2[:] = 0
            zeros += weight[s] * LEVELS * LEVELS - nonzero
        n = n_slices * LEVELS * LEVELS
        ent = 0.0
        if zeros:
            p = zeros / n
            ent -= p * math.log(p)
        for k in range(n_touched):
            p = vcount[touched[k]] / n
            vcount[touched[k]] = 0
            ent -= p * math.log(p)
        return ent / math.log(2.0)

    @njit(parallel=True, cache=True)
    def all_patches(q, offs, weight, n_slices, table, rows_of, n_ids):
        rows, cols = q.shape[0] // PATCH, q.shape[1] // PATCH
        out = np.empty(rows * cols, dtype=np.float64)
        n_chunks = min(rows * cols, 64)
        per = (rows * cols + n_chunks - 1) // n_chunks
        for w in prange(n_chunks):  # one set of scratch buffers per chunk of patches
            counts = np.zeros(LEVELS * LEVELS, dtype=np.int32)
            counts2 = np.zeros(LEVELS * LEVELS, dtype=np.int32)
            vcount = np.zeros(n_ids, dtype=np.int32)
            touched = np.empty(offs.shape[0] * LEVELS * LEVELS, dtype=np.int64)
            for k in range(w * per, min((w + 1) * per, rows * cols)):
                out[k] = patch_entropy(q, (k // cols) * PATCH, (k % cols) * PATCH, offs, weight, n_slices, rows_of, table,
                                       counts, counts2, vcount, touched)
        return out

    return all_patches


_ALL_PATCHES = None


def patch_entropies(grey: np.ndarray) -> np.ndarray:
    """The published patch values of one grey uint8 image, row-major over whole 64x64 patches."""
    global _ALL_PATCHES
    if _ALL_PATCHES is None:
        _ALL_PATCHES = _kernel()
    q = np.ascontiguousarray(quantise(grey))
    if q.shape[0] < PATCH or q.shape[1] < PATCH:
        return np.zeros(0)
    all_offs = offsets()
    offs, weight = np.unique(all_offs, axis=0, return_counts=True)  # d=1 and d=2 share diagonal offsets
    table, rows_of, n_ids = value_ids(offs)
    return _ALL_PATCHES(q, offs, weight.astype(np.int64), len(all_offs), table, rows_of, n_ids)


def glcm_score(grey: np.ndarray) -> float:
    """Mean patch value of one image (nan when it has no whole 64x64 patch)."""
    values = patch_entropies(grey)
    return float(values.mean()) if len(values) else math.nan


def reference_patch_entropies(grey: np.ndarray) -> np.ndarray:
    """The published procedure, patch by patch with scikit-image (slow; for tests and benchmarks)."""
    from skimage.feature import graycomatrix
    from skimage.measure import shannon_entropy

    q = quantise(grey)
    out = []
    for top in range(0, q.shape[0] - PATCH + 1, PATCH):
        for left in range(0, q.shape[1] - PATCH + 1, PATCH):
            m = graycomatrix(q[top : top + PATCH, left : left + PATCH], list(DISTANCES), list(ANGLES),
                             levels=LEVELS, symmetric=True, normed=True)
            out.append(shannon_entropy(m))
    return np.asarray(out)
