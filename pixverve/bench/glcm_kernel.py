"""The numba kernels behind ``pixverve.bench.glcm.patch_entropies`` (see that module for the design).

Module-level functions so numba's on-disk cache works (closures are recompiled in every process)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from pixverve.bench.glcm_layout import DISP, LEVELS, PAD, PATCH, WIDTH

U = np.uint64


@njit(nogil=True, inline="always", cache=True)
def count_pairs(P, counts, S):
    """Ordered pair counts of all 14 offsets; matrix k at counts[k S^2 :], row stride S."""
    SS = S * S
    for r in range(U(PATCH)):
        base = r * U(WIDTH) + U(PAD * WIDTH + PAD)
        for c in range(base, base + U(PATCH)):
            a = U(P[c]) * S
            counts[a + U(P[c + U(DISP[0])])] += 1
            counts[a + U(P[c + U(DISP[1])]) + SS] += 1
            counts[a + U(P[c + U(DISP[2])]) + U(2) * SS] += 1
            counts[a + U(P[c + U(DISP[3])]) + U(3) * SS] += 1
            counts[a + U(P[c + U(DISP[4])]) + U(4) * SS] += 1
            counts[a + U(P[c + U(DISP[5])]) + U(5) * SS] += 1
            counts[a + U(P[c + U(DISP[6])]) + U(6) * SS] += 1
            counts[a + U(P[c + U(DISP[7])]) + U(7) * SS] += 1
            counts[a + U(P[c + U(DISP[8])]) + U(8) * SS] += 1
            counts[a + U(P[c + U(DISP[9])]) + U(9) * SS] += 1
            counts[a + U(P[c + U(DISP[10])]) + U(10) * SS] += 1
            counts[a + U(P[c + U(DISP[11])]) + U(11) * SS] += 1
            counts[a + U(P[c + U(DISP[12])]) + U(12) * SS] += 1
            counts[a + U(P[c + U(DISP[13])]) + U(13) * SS] += 1


@njit(nogil=True, cache=True)
def patch_entropy(grey, top, left, weight, rows_of, table, n_ids, xlogx, counts, P, vcount, touched):
    """Entropy (bits) of the value histogram of one patch's normalised symmetric GLCM.

    ``counts`` and ``vcount`` are zero on entry and on exit; ``touched`` is scratch."""
    # quantised copy into the padded buffer, and the patch's level range
    lo = U(255)
    hi = U(0)
    for r in range(U(PATCH)):
        src = grey[top + r]
        dst = (r + U(PAD)) * U(WIDTH) + U(PAD)
        for c in range(U(PATCH)):
            v = U(src[left + c] >> 2)
            P[dst + c] = v
            lo = min(lo, v)
            hi = max(hi, v)
    R = hi - lo + U(1)
    for k in range(U(PAD * WIDTH)):  # top and bottom border rows
        P[k] = R
        P[U((PATCH + PAD) * WIDTH) + k] = R
    for r in range(U(PATCH)):
        row = (r + U(PAD)) * U(WIDTH)
        for c in range(U(PAD)):  # left and right border columns
            P[row + c] = R
            P[row + U(PAD + PATCH) + c] = R
        for c in range(U(PATCH)):
            P[row + U(PAD) + c] -= lo
    # levels 0..R-1 plus the border level R must fit the stride
    if R < U(16):
        S = U(16)
        count_pairs(P, counts, U(16))
    elif R < U(32):
        S = U(32)
        count_pairs(P, counts, U(32))
    else:
        S = U(LEVELS + 1)
        count_pairs(P, counts, U(LEVELS + 1))
    SS = S * S

    # value histogram over the level range's bins; zero bins go to 8 rotating scratch slots past
    # the real ids (one slot would chain every zero bin's update through memory)
    n_touched = U(0)
    for s in range(U(weight.shape[0])):
        ids = table[rows_of[s]]
        w = weight[s]
        w2 = 2 * w
        base = s * SS
        for i in range(R):
            d = base + i * S + i
            v = U(2) * U(counts[d])  # diagonal of the symmetric matrix: 2 C[i,i]
            counts[d] = 0
            vid = U(ids[v]) if v else U(n_ids) + (i & U(7))
            old = vcount[vid]
            touched[n_touched] = vid
            n_touched += U(old == 0)
            vcount[vid] = old + w
            x = d + U(1)  # C[i, j]
            y = d + S  # C[j, i]
            for j in range(i + U(1), R):  # (i, j) and (j, i) both hold C[i,j] + C[j,i]
                v = U(counts[x]) + U(counts[y])
                counts[x] = 0
                counts[y] = 0
                vid = U(ids[v]) if v else U(n_ids) + (j & U(7))
                old = vcount[vid]
                touched[n_touched] = vid
                n_touched += U(old == 0)
                vcount[vid] = old + w2
                x += U(1)
                y += S
            counts[base + i * S + R] = 0  # pairs with the border level
            counts[base + R * S + i] = 0
        counts[base + R * S + R] = 0

    # entropy of the histogram; every matrix entry not counted above is a zero
    n = weight.sum() * LEVELS * LEVELS
    acc = 0.0
    nonzero = 0
    for k in range(n_touched):
        vid = touched[k]
        c = vcount[vid]
        vcount[vid] = 0
        if vid < U(n_ids):
            acc += xlogx[c]
            nonzero += c
    acc += xlogx[n - nonzero]
    return (math.log(n) - acc / n) / math.log(2.0)


@njit(parallel=True, cache=True)
def all_patches(grey, weight, rows_of, table, n_ids, xlogx):
    rows, cols = grey.shape[0] // PATCH, grey.shape[1] // PATCH
    out = np.empty(rows * cols, dtype=np.float64)
    n_chunks = min(rows * cols, 64)
    per = (rows * cols + n_chunks - 1) // n_chunks
    for w in prange(n_chunks):  # one set of scratch buffers per chunk of patches
        counts = np.zeros(weight.shape[0] * (LEVELS + 1) ** 2, dtype=np.uint16)  # <= 4096 per bin
        P = np.empty(WIDTH * WIDTH, dtype=np.uint16)
        vcount = np.zeros(n_ids + 8, dtype=np.int32)
        touched = np.empty(weight.shape[0] * LEVELS * LEVELS + 1, dtype=np.uint64)
        for k in range(w * per, min((w + 1) * per, rows * cols)):
            out[k] = patch_entropy(
                grey,
                U((k // cols) * PATCH),
                U((k % cols) * PATCH),
                weight,
                rows_of,
                table,
                n_ids,
                xlogx,
                counts,
                P,
                vcount,
                touched,
            )
    return out
