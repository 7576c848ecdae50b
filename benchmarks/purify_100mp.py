"""Stage 2's four classical measures at 100 MP: ours vs the decode floor vs a float64 reference.

Usage: python benchmarks/purify_100mp.py [--megapixels 100] [--patch 240]

Makes a 100 MP JPEG from real photographs (scikit-image's astronaut, coffee, rocket and chelsea
upscaled into a 2x2 mosaic with fine film-grain texture), then measures, each in a fresh
process so that its peak RSS is its own:
  decode RGB   simplejpeg/libjpeg-turbo full RGB decode (the floor any pixel measure pays)
  decode grey  the JPEG's luma plane only (what the purify stage reads)
  ours         the four measures on that grey image (banded, int16/float32, one pass)
  reference    the same four numbers, straightforward: float64 arrays, scipy.ndimage filters,
               a Python loop over patches, scikit-image's shannon_entropy
and prints times, the ratios (ours / decode, reference / ours), peak memory as a multiple of the
decoded uint8 RGB image, and the four values of both (they must agree).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pixverve.core.memory import in_fresh_process, peak_rss_mb  # noqa: E402 (standard library only)


def make_jpeg(path: Path, megapixels: float) -> None:
    import cv2
    from PIL import Image

    from pixverve.ingest.demo_pool import PHOTOS, load_photo

    side = int(math.sqrt(megapixels * 1e6))
    half = side // 2
    tiles = []
    for name in ("astronaut", "coffee", "rocket", "chelsea"):
        photo = np.ascontiguousarray(load_photo(PHOTOS[name])[..., :3])
        tiles.append(cv2.resize(photo, (half, half), interpolation=cv2.INTER_CUBIC))
    canvas = np.empty((2 * half, 2 * half, 3), np.uint8)
    canvas[:half, :half], canvas[:half, half:], canvas[half:, :half], canvas[half:, half:] = tiles
    del tiles
    rng = np.random.default_rng(0)
    for top in range(0, canvas.shape[0], 1024):  # film grain, in bands (an upscale alone is too smooth)
        band = canvas[top : top + 1024].astype(np.int16)
        band += rng.normal(0, 6, band.shape[:2])[..., None].astype(np.int16)
        canvas[top : top + 1024] = np.clip(band, 0, 255).astype(np.uint8)
    Image.fromarray(canvas).save(path, quality=90)


def _child(task: str, path: str, patch: int, queue) -> None:
    from pixverve.core import images
    from pixverve.purify.classical import ClassicalParams, classical_scores, reference_scores

    images.set_pixel_cap(1000)
    params = ClassicalParams(patch_px=patch, smooth_variance=800.0)
    out = {}
    t0 = time.perf_counter()
    if task == "decode_rgb":
        import simplejpeg

        arr = simplejpeg.decode_jpeg(Path(path).read_bytes(), colorspace="RGB")
        out["shape"] = arr.shape
    else:
        grey, _ = images.read_grey(path, 1000)
        t_decode = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn = classical_scores if task == "ours" else reference_scores if task == "reference" else None
        if fn is not None:
            out["scores"] = fn(grey, params)
        out["decode_s"] = t_decode
    out["seconds"] = time.perf_counter() - t0
    out["peak_mb"] = peak_rss_mb()
    queue.put(out)


def run(task: str, path: Path, patch: int) -> dict:
    """``_child`` in a fresh interpreter: its peak RSS is this task's alone."""
    return in_fresh_process(_child, task, str(path), patch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megapixels", type=float, default=100)
    ap.add_argument("--patch", type=int, default=240, help="flatness patch side (the paper config at 100 MP)")
    ap.add_argument("--cache", default=str(ROOT / "resources" / "bench"))
    ap.add_argument("--quick", action="store_true", help="seconds, tiny sizes: CI checks that it still runs")
    args = ap.parse_args()
    if args.quick:
        args.megapixels, args.patch = 1, 24
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"purify_{args.megapixels:g}mp.jpg"
    if not path.exists():
        t0 = time.perf_counter()
        make_jpeg(path, args.megapixels)
        print(f"made {path} in {time.perf_counter() - t0:.1f} s")
    base = run("baseline", path, args.patch)  # interpreter + imports + grey decode
    rgb = run("decode_rgb", path, args.patch)
    ours = run("ours", path, args.patch)
    ref = run("reference", path, args.patch)
    h, w, _ = rgb["shape"]
    rgb_mb = h * w * 3 / 2**20
    print(
        f"image: {w} x {h} = {w * h / 1e6:.1f} MP JPEG ({path.stat().st_size / 2**20:.0f} MB); decoded RGB uint8 = {rgb_mb:.0f} MB"
    )
    print(f"{'step':<34} {'seconds':>8} {'peak RSS MB':>12} {'peak / RGB':>11}")
    print(
        f"{'decode RGB (libjpeg-turbo floor)':<34} {rgb['seconds']:>8.2f} {rgb['peak_mb']:>12.0f} {rgb['peak_mb'] / rgb_mb:>10.2f}x"
    )
    print(
        f"{'decode grey (luma plane)':<34} {base['decode_s']:>8.2f} {base['peak_mb']:>12.0f} {base['peak_mb'] / rgb_mb:>10.2f}x"
    )
    print(
        f"{'ours: four measures':<34} {ours['seconds']:>8.2f} {ours['peak_mb']:>12.0f} {ours['peak_mb'] / rgb_mb:>10.2f}x"
    )
    print(
        f"{'reference: float64 scipy/skimage':<34} {ref['seconds']:>8.2f} {ref['peak_mb']:>12.0f} {ref['peak_mb'] / rgb_mb:>10.2f}x"
    )
    print(
        f"ours / decode RGB: {ours['seconds'] / rgb['seconds']:.2f}x (target <= 1.0)   "
        f"reference / ours: {ref['seconds'] / ours['seconds']:.1f}x faster (target >= 10)"
    )
    a, b = ours["scores"], ref["scores"]
    print(f"{'value':<16} {'ours':>20} {'reference':>20}")
    for name in ("exposure_share", "laplacian_var", "flat_share", "entropy_bits"):
        print(f"{name:<16} {getattr(a, name):>20.12g} {getattr(b, name):>20.12g}")
    same = (
        math.isclose(a.exposure_share, b.exposure_share, abs_tol=1e-12)
        and math.isclose(a.laplacian_var, b.laplacian_var, rel_tol=1e-9)
        and a.flat_patches == b.flat_patches
        and math.isclose(a.entropy_bits, b.entropy_bits, rel_tol=1e-12)
    )
    print("values agree" if same else "VALUES DIFFER")


if __name__ == "__main__":
    main()
