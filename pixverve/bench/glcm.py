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
value).  scikit-image rounds the diagonal offsets (``round(d * sin 45)``): distances 1 and 2 give
the same (1, 1) offset, so 14 distinct offsets are counted and two of them weighted twice.

How the kernel is fast (numba, patches in parallel; measured steps in NOTES.md):

* the patch is copied, quantised, into a small padded buffer whose border holds one extra level
  ``R`` (the patch's level range is ``[lo, lo + R)``), so every offset runs over all 64x64 pixels
  with no edge tests; pairs with the border level land in a row/column the scan never reads;
* one pass over the pixels increments all 14 offsets' count matrices; offsets, strides and matrix
  bases are compile-time constants, so each increment is one load and one memory add with an
  immediate displacement (with runtime offsets the 28 base pointers spill out of the registers);
* the count matrices have a stride of 16, 32 or 65 levels by the patch's range, so a typical patch
  (range ~18) keeps its 14 matrices in L1 and the scan reads only ``R x R`` bins;
* the scan maps each symmetric bin ``C[i,j] + C[j,i]`` through a precomputed table to the id of
  its reduced fraction, without branches (zero bins go to scratch slots), zeroing bins as it reads;
* entropy = log n - sum(c log c) / n with ``c log c`` from a table;
* all index arithmetic is unsigned: numba adds a negative-index wrap-around test to every signed
  index, which alone made the counting loop twice as slow.
"""

from __future__ import annotations

import math

import numpy as np

from pixverve.bench.glcm_layout import (  # noqa: F401 -- PATCH, LEVELS and offsets are this module's public names too
    ANGLES,
    DISP,
    DISTANCES,
    LEVELS,
    PAD,
    PATCH,
    WIDTH,
    offsets,
    quantise,
    unique_offsets,
    value_ids,
)

_TABLES = None


def _tables():
    """Kernel constants: slice weights, value-id table, c log c table (built once per process)."""
    global _TABLES
    if _TABLES is None:
        offs, weight = unique_offsets()
        n_slices = int(weight.sum())
        assert n_slices == len(DISTANCES) * len(ANGLES)
        table, rows_of, n_ids = value_ids(offs)
        c = np.arange(n_slices * LEVELS * LEVELS + 1, dtype=np.float64)  # every count the histogram can hold
        xlogx = c * np.log(np.maximum(c, 1.0))
        _TABLES = (weight, rows_of.astype(np.uint64), table, n_ids, xlogx)
    return _TABLES


def patch_entropies(grey: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The published patch values of one grey uint8 image, row-major over whole 64x64 patches.

    ``threads``: numba threads for this and later calls from this thread (a job's allocation; by
    default numba uses every CPU the machine has, not the CPUs the scheduler gave the job)."""
    grey = np.asarray(grey)
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise ValueError(f"GLCM needs a 2-D uint8 grey image, got {grey.dtype} {grey.shape}")
    if grey.shape[0] < PATCH or grey.shape[1] < PATCH:
        return np.zeros(0)
    from pixverve.bench.glcm_kernel import all_patches  # numba only when the score is computed

    if threads is not None:
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    return all_patches(grey, *_tables())


def glcm_score(grey: np.ndarray, threads: int | None = None) -> float:
    """Mean patch value of one image (nan when it has no whole 64x64 patch)."""
    values = patch_entropies(grey, threads)
    return float(values.mean()) if len(values) else math.nan


def reference_patch_entropies(grey: np.ndarray) -> np.ndarray:
    """The published procedure, patch by patch with scikit-image (slow; for tests and benchmarks)."""
    from skimage.feature import graycomatrix
    from skimage.measure import shannon_entropy

    q = quantise(grey)
    out = []
    for top in range(0, q.shape[0] - PATCH + 1, PATCH):
        for left in range(0, q.shape[1] - PATCH + 1, PATCH):
            m = graycomatrix(
                q[top : top + PATCH, left : left + PATCH],
                list(DISTANCES),
                list(ANGLES),
                levels=LEVELS,
                symmetric=True,
                normed=True,
            )
            out.append(shannon_entropy(m))
    return np.asarray(out)
