"""Near-duplicate search at the paper's pool size: multi-index hashing vs all-pairs.

Usage: python benchmarks/near_duplicates.py [--n 300000] [--brute-n 30000] [--k 4 6 8 10]

The pool is synthetic 64-bit hashes: random ones plus 2 % planted near-duplicates (1-6 bit
flips of another hash), the way re-encoded copies sit in a real pool.  For each threshold k it
prints: our time at --n, our time and the all-pairs time at --brute-n (same run, same data),
their ratio, the all-pairs time extrapolated to --n (quadratic), and peak traced memory.
The two methods' pair sets are checked to be equal at --brute-n.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pixverve.ingest.dedup import block_layout, brute_force_pairs, near_duplicate_pairs  # noqa: E402


def synthetic_pool(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    planted = rng.choice(n, size=n // 50, replace=False)
    for idx in planted:
        src = h[rng.integers(n)]
        flips = rng.choice(64, size=rng.integers(1, 7), replace=False)
        h[idx] = src ^ np.uint64(sum(1 << int(b) for b in flips))
    return h


def timed(fn, *args):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn(*args)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--brute-n", type=int, default=30_000)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 6, 8, 10])
    ap.add_argument("--quick", action="store_true", help="seconds, tiny sizes: CI checks that it still runs")
    args = ap.parse_args()
    if args.quick:
        args.n, args.brute_n, args.k = 5_000, 2_000, [8]
    pool = synthetic_pool(args.n)
    sub = pool[: args.brute_n]
    print(f"pool: {args.n} synthetic pHashes (2 % planted near-duplicates); all-pairs reference on {args.brute_n}")
    header = (
        f"{'k':>3} {'blocks':>16} {'r':>2} {'pairs@n':>8} {'ours@n s':>9} {'peak MB':>8} "
        f"{'ours@sub s':>10} {'brute@sub s':>11} {'speed-up':>9} {'brute@n est s':>13} {'speed-up@n':>10}"
    )
    print(header)
    print("-" * len(header))
    for k in args.k:
        bits, radius = block_layout(k, args.n)
        (i, _, _), t_n, peak = timed(near_duplicate_pairs, pool, k)
        ours_sub, t_sub, _ = timed(near_duplicate_pairs, sub, k)
        brute_sub, t_brute, _ = timed(brute_force_pairs, sub, k)
        assert all(np.array_equal(a, b) for a, b in zip(ours_sub, brute_sub)), "pair sets differ"
        est = t_brute * (args.n / args.brute_n) ** 2
        print(
            f"{k:>3} {'/'.join(map(str, bits)):>16} {radius:>2} {len(i):>8} {t_n:>9.2f} {peak / 2**20:>8.0f} "
            f"{t_sub:>10.3f} {t_brute:>11.2f} {t_brute / t_sub:>8.0f}x {est:>13.0f} {est / t_n:>9.0f}x"
        )


if __name__ == "__main__":
    main()
