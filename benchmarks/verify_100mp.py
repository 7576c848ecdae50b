"""Stage 4 reads of a 100 MP SR output: banded from the tiles (ours) vs decoding it whole (before).

Usage: python benchmarks/verify_100mp.py [--megapixels 100] [--cache DIR] [--quick]

Makes a source JPEG of megapixels / 4 (benchmarks/purify_100mp.py's photo mosaic with film
grain) and its x2 "SR output" (area-free Lanczos x2, written as pixverve/upscale writes it: a
tiled BigTIFF, 256 px zlib tiles), then measures each step in a fresh process, so its peak RSS
is its own (VmHWM: interpreter, imports and the decoded source included):
  baseline            the source decoded (read_rgb): what every verify step holds anyway
  SR decode           tifffile.imread of the whole SR output (the floor of a whole read)
  verify, whole       before: whole SR decode, grey copy, seam_ratios, one cv2 area resize
  verify, banded      ours: pixverve.verify.fidelity.banded_measures (row bands of the tiles)
  regions, whole      before: whole SR decode, grey copy, Sobel variances, the 10 crops
  regions, banded     ours: pixverve.verify.regions.patches_to_judge (one patch row at a time)
and prints seconds, peak RSS and peak / one decoded RGB copy of the SR output, and whether the
banded results equal the whole-image ones (seam ratios, the downsampled copy, the variances and
the crops: they must, bit for bit).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pixverve.core.memory import in_fresh_process, peak_rss_mb  # noqa: E402 (standard library only)

SCALE = 2
PATCH = 768  # the paper's region patch at 100 MP
REGIONS = {"n_sobel": 6, "n_random": 4}


def make_inputs(src: Path, sr: Path, megapixels: float) -> None:
    import cv2

    from pixverve.core import images
    from pixverve.core.tiling import TiledTiffWriter

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from purify_100mp import make_jpeg

    make_jpeg(src, megapixels / SCALE**2)
    rgb, _ = images.read_rgb(src, 1000)
    h, w = rgb.shape[:2]

    def bands():  # Lanczos x2 in bands of 256 source rows with an 8-row halo
        for top in range(0, h, 256):
            lo, hi = max(0, top - 8), min(h, top + 256 + 8)
            up = cv2.resize(rgb[lo:hi], (w * SCALE, (hi - lo) * SCALE), interpolation=cv2.INTER_LANCZOS4)
            yield up[(top - lo) * SCALE : (min(h, top + 256) - lo) * SCALE]

    TiledTiffWriter(sr, h * SCALE, w * SCALE, tile=256, compression="zlib").write(bands())


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _child(task: str, src: str, sr: str, queue) -> None:
    import cv2
    import tifffile

    from pixverve.core import images
    from pixverve.core.tiling import TileGrid
    from pixverve.core.views import TiledImage
    from pixverve.verify.fidelity import SeamSteps, banded_measures, seam_positions, seam_ratios
    from pixverve.verify.regions import choose_patches, patch_boxes, patches_to_judge, sobel_variances

    images.set_pixel_cap(1000)
    source, _ = images.read_rgb(src, 1000)
    h, w = source.shape[:2]
    grid = TileGrid(h, w, SCALE)
    out: dict = {}
    t0 = time.perf_counter()
    if task == "sr_decode":
        out["shape"] = tifffile.imread(sr).shape
    elif task == "verify_whole":
        whole = tifffile.imread(sr)
        out["ratios"] = seam_ratios(cv2.cvtColor(whole, cv2.COLOR_RGB2GRAY), *seam_positions(grid))
        out["back"] = _digest(cv2.resize(whole, (w, h), interpolation=cv2.INTER_AREA))
    elif task == "verify_banded":
        seams = SeamSteps(grid.out_h, grid.out_w, *seam_positions(grid))
        with TiledImage(sr) as tiled:
            out["back"] = _digest(banded_measures(tiled, (h, w), SCALE, seams))
        out["ratios"] = seams.ratios()
    elif task == "regions_whole":
        whole = tifffile.imread(sr)
        grey = cv2.cvtColor(whole, cv2.COLOR_RGB2GRAY)
        boxes = patch_boxes(*grey.shape, PATCH)
        variances = sobel_variances(lambda lo, hi: grey[lo:hi], grey.shape[0], boxes)
        del grey
        chosen = choose_patches(variances, "0123456789abcdef", REGIONS["n_sobel"], REGIONS["n_random"])
        out["variances"] = _digest(variances)
        out["crops"] = [_digest(whole[y : y + ph, x : x + pw]) for x, y, pw, ph in (boxes[i] for i, _ in chosen)]
    elif task == "regions_banded":
        _, variances, _, crops = patches_to_judge(sr, "0123456789abcdef", PATCH, REGIONS)
        out["variances"] = _digest(variances)
        out["crops"] = [_digest(c) for c in crops]
    out["seconds"] = time.perf_counter() - t0
    out["peak_mb"] = peak_rss_mb()
    queue.put(out)


def run(task: str, src: Path, sr: Path) -> dict:
    """``_child`` in a fresh interpreter: its peak RSS is this task's alone."""
    return in_fresh_process(_child, task, str(src), str(sr))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megapixels", type=float, default=100, help="SR output size (the source is a quarter)")
    ap.add_argument("--cache", default=str(ROOT / "resources" / "bench"))
    ap.add_argument("--quick", action="store_true", help="seconds, tiny sizes: CI checks that it still runs")
    args = ap.parse_args()
    if args.quick:
        args.megapixels = 4
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    src, sr = cache / f"verify_{args.megapixels:g}mp_src.jpg", cache / f"verify_{args.megapixels:g}mp_sr.tif"
    if not sr.exists():
        t0 = time.perf_counter()
        make_inputs(src, sr, args.megapixels)
        print(f"made {src.name} and {sr.name} in {time.perf_counter() - t0:.1f} s")
    results = {task: run(task, src, sr) for task in ("baseline", "sr_decode", "verify_whole", "verify_banded")}
    results |= {task: run(task, src, sr) for task in ("regions_whole", "regions_banded")}
    h, w, _ = results["sr_decode"]["shape"]
    rgb_mb = h * w * 3 / 2**20
    print(
        f"SR output: {w} x {h} = {w * h / 1e6:.1f} MP tiled TIFF ({sr.stat().st_size / 2**20:.0f} MB); "
        f"decoded RGB uint8 = {rgb_mb:.0f} MB; source {w // SCALE} x {h // SCALE} JPEG"
    )
    print(f"{'step':<34} {'seconds':>8} {'peak RSS MB':>12} {'peak / SR RGB':>14}")
    names = {
        "baseline": "baseline (source decoded)",
        "sr_decode": "SR decode (tifffile.imread)",
        "verify_whole": "verify, whole (before)",
        "verify_banded": "verify, banded (ours)",
        "regions_whole": "regions, whole (before)",
        "regions_banded": "regions, banded (ours)",
    }
    for task, name in names.items():
        r = results[task]
        print(f"{name:<34} {r['seconds']:>8.2f} {r['peak_mb']:>12.0f} {r['peak_mb'] / rgb_mb:>13.2f}x")
    for kind in ("verify", "regions"):
        whole, banded = results[f"{kind}_whole"], results[f"{kind}_banded"]
        print(
            f"{kind}: banded / whole time {banded['seconds'] / whole['seconds']:.2f}x, "
            f"peak RSS {banded['peak_mb'] / whole['peak_mb']:.2f}x "
            f"(above the baseline: {banded['peak_mb'] - results['baseline']['peak_mb']:.0f} MB "
            f"vs {whole['peak_mb'] - results['baseline']['peak_mb']:.0f} MB)"
        )
    v_same = results["verify_whole"]["back"] == results["verify_banded"]["back"] and all(
        a[:2] == b[:2] and math.isclose(a[2], b[2], rel_tol=1e-12)
        for a, b in zip(results["verify_whole"]["ratios"], results["verify_banded"]["ratios"], strict=True)
    )
    r_same = all(results["regions_whole"][k] == results["regions_banded"][k] for k in ("variances", "crops"))
    print("values agree" if v_same and r_same else "VALUES DIFFER")
    if not (v_same and r_same):
        sys.exit(1)


if __name__ == "__main__":
    main()
