"""Scheme II's close + remote local attention vs full attention over the same [text, image] sequence.

    python benchmarks/window_attention.py [--grids 32 48 64] [--factors 8x16] [--device cpu|cuda]

For each square latent token grid (4K = 256x256 tokens, 8K = 512x512 at FLUX.2's 16 px per
token), random q/k/v (``--heads`` x ``--head-dim``, ``--text`` text tokens; bf16 on CUDA, fp32 on
the CPU) go through full SDPA and through ``pixverve.train.models.local_attention`` with one
pattern entry (``--factors``: windows along height x width; remote stride the same), each in its
own process so peak memory is its own (CUDA: max allocated; CPU: VmHWM).  Prints seconds per
call (median of ``--repeats`` after one warm-up), the ratio full / window and peak memory.  The
1x1 entry must equal full attention: that difference is printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(args) -> dict:
    import torch
    import torch.nn.functional as F

    from pixverve.train.loop import peak_memory_mb
    from pixverve.train.models import close_remote_partitions, local_attention, parse_pattern

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    n = args.text + args.grid * args.grid
    q, k, v = (torch.randn(1, n, args.heads, args.head_dim, generator=g).to(device, dtype) for _ in range(3))

    def full():
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    parts = close_remote_partitions((args.grid, args.grid), parse_pattern(args.factors)[0])

    def windowed():
        return local_attention(q, k, v, args.text, parts, args.chunk_windows, checkpoint=False)

    fn = full if args.method == "full" else windowed
    times = []
    with torch.no_grad():
        for _ in range(args.repeats + 1):
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = peak_memory_mb(device)  # before the check below, which runs full attention too
        diff = None
        if args.method == "window":  # 1x1 is full attention
            cover = local_attention(q, k, v, args.text, close_remote_partitions((args.grid, args.grid), (1, 1)))
            diff = float((cover.float() - full().float()).abs().max())
    return {"seconds": statistics.median(times[1:]), "peak_mb": peak, "diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, nargs="+", default=[32, 48, 64])
    parser.add_argument("--factors", default="8x16", help="one pattern entry FHxFW (published 4K: 8x16, 16x8, ...)")
    parser.add_argument("--text", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--chunk-windows", type=int, default=4, help="index sets per SDPA call (published infer.sh: 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid", type=int, help=argparse.SUPPRESS)  # internal: one measurement per process
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="seconds, tiny sizes: CI checks that it still runs")
    args = parser.parse_args()
    if args.quick:
        args.grids, args.window, args.text, args.repeats = [16], 4, 8, 1
    if args.method:
        print(json.dumps(measure(args)))
        return
    passthrough = sys.argv[1:]
    print(
        f"attention over {args.text} text + grid^2 image tokens, {args.heads} heads x {args.head_dim}, "
        f"factors {args.factors}, {args.device}, median of {args.repeats}"
    )
    print(
        f"{'grid':>6} {'tokens':>8} {'full s':>9} {'window s':>9} {'full/window':>12} {'full MB':>9} "
        f"{'window MB':>10} {'cover diff':>11}"
    )
    for grid in args.grids:
        row = {}
        for method in ("full", "window"):
            out = subprocess.run(
                [sys.executable, __file__, *passthrough, "--grid", str(grid), "--method", method],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            row[method] = json.loads(out.stdout.strip().splitlines()[-1])
        f, w = row["full"], row["window"]
        print(
            f"{grid:>6} {grid * grid:>8} {f['seconds']:>9.4f} {w['seconds']:>9.4f} {f['seconds'] / w['seconds']:>11.2f}x "
            f"{f['peak_mb']:>9.0f} {w['peak_mb']:>10.0f} {w['diff']:>11.2e}"
        )


if __name__ == "__main__":
    main()
