"""GLCM score at 100 MP: the published per-patch scikit-image procedure vs pixverve.bench.glcm, side by side.

    python benchmarks/glcm.py [--megapixels 100] [--workers 2]

Builds a textured 100 MP JPEG from real photographs (upscaled, with grain; cached under
/tmp), converts it to grey once, then times in separate processes: the reference (per 64x64 patch
``graycomatrix`` + ``shannon_entropy`` over a process pool of ``--workers``, as published) and
ours (one vectorised pass, numba threads = ``--workers``; the first call's compile is timed
apart).  Prints seconds, peak memory, the ratio, and the largest per-patch difference (targets:
>= 30x, <= 1e-9).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from purify_100mp import make_jpeg, peak_rss_mb  # noqa: E402


def _grey(path: Path) -> np.ndarray:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _ref_rows(args):
    path, top_rows = args
    from pixverve.bench.glcm import PATCH, reference_patch_entropies

    grey = np.load(path, mmap_mode="r")
    return [reference_patch_entropies(np.asarray(grey[t : t + PATCH])) for t in top_rows]


def _child(task: str, grey_path: str, workers: int, queue) -> None:
    grey = np.load(grey_path, mmap_mode="r")
    if task == "reference":
        from pixverve.bench.glcm import PATCH

        tops = list(range(0, grey.shape[0] - PATCH + 1, PATCH))
        chunks = [(grey_path, tops[i :: workers * 4]) for i in range(workers * 4)]
        t0 = time.perf_counter()
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_ref_rows, chunks)
        rows = {}
        for chunk, part in zip(chunks, parts):
            rows.update(zip(chunk[1], part))
        values = np.concatenate([rows[t] for t in tops])
        seconds = time.perf_counter() - t0
    else:
        os.environ["NUMBA_NUM_THREADS"] = str(workers)
        from pixverve.bench.glcm import patch_entropies

        g = np.asarray(grey)
        t0 = time.perf_counter()
        patch_entropies(g[:128])  # compile (or load the cache) for this array type: C-contiguous, read-only
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        values = patch_entropies(g)
        seconds = time.perf_counter() - t0
        queue.put({"compile_s": compile_s})
    np.save(grey_path + f".{task}.npy", values)
    queue.put({"seconds": seconds, "peak_mb": peak_rss_mb(), "patches": len(values)})


def run(task: str, grey_path: str, workers: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(task, grey_path, workers, queue))
    proc.start()
    out = {}
    while proc.is_alive() or not queue.empty():
        try:
            out.update(queue.get(timeout=1))
        except Exception:
            pass
        if "seconds" in out:
            break
    proc.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="seconds, tiny sizes: CI checks that it still runs")
    args = parser.parse_args()
    if args.quick:
        args.megapixels = 1
    jpeg = Path(f"/tmp/pixverve_glcm_{args.megapixels:g}mp.jpg")
    if not jpeg.exists():
        make_jpeg(jpeg, args.megapixels)
    grey_path = str(jpeg) + ".grey.npy"
    np.save(grey_path, _grey(jpeg))
    grey_mb = os.path.getsize(grey_path) / 2**20
    ours = run("ours", grey_path, args.workers)
    ref = run("reference", grey_path, args.workers)
    a, b = np.load(grey_path + ".ours.npy"), np.load(grey_path + ".reference.npy")
    print(
        f"GLCM score, {args.megapixels:g} MP grey image ({grey_mb:.0f} MB), {ours['patches']} patches, {args.workers} workers"
    )
    print("| step | seconds | peak RSS MB |\n|---|---|---|")
    print(f"| reference: per-patch skimage, process pool | {ref['seconds']:.2f} | {ref['peak_mb']:.0f} (per process) |")
    print(
        f"| ours: pixverve.bench.glcm (compile/cache load {ours['compile_s']:.1f} s, not counted) | {ours['seconds']:.3f} | {ours['peak_mb']:.0f} |"
    )
    print(f"speed-up: {ref['seconds'] / ours['seconds']:.1f}x (target >= 30)")
    print(
        f"max |ours - reference| per patch: {np.abs(a - b).max():.2e} (target <= 1e-9); "
        f"image scores {a.mean():.12f} vs {b.mean():.12f}"
    )


if __name__ == "__main__":
    main()
