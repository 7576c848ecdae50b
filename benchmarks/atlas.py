"""Atlas pyramids (issue #29): seconds, peak RSS and disk per 100 MP image, beside decoding it.

Usage: python benchmarks/atlas.py [--side 10000] [--cache DIR] [--repeat 3] [--threads 1,8,32]
                                 [--tile-sizes 510] [--quick]

Makes one side x side image (real photographs upscaled into a 2x2 mosaic with film grain, as
benchmarks/purify_100mp.py does, so that JPEG sizes are realistic) in the two forms the stages
store it, written once to a temporary folder (or --cache, kept for reruns):
  JPEG       a source image as collected (Pillow, quality 90)
  BigTIFF    the SR output as pixverve/upscale writes it (pixverve.core.tiling.TiledTiffWriter,
             tiled 256 px, zlib: config.yaml's upscale.output defaults)
then measures each step --repeat times (3), each time in a fresh interpreter (seconds: the fastest
run, the least disturbed by other work on the machine; peak RSS: the largest VmHWM, the process's
own, from /proc/self/status read at its end, interpreter and imports included):
  decode (read_rgb)   pixverve.core.images.read_rgb to an RGB uint8 array, as the stages decode
                      (Pillow for JPEG, tifffile for TIFF)
  decode (floor)      the fastest whole-image decode: simplejpeg (libjpeg-turbo) for the JPEG;
                      for the TIFF, read_rgb already is tifffile's
  build_pyramid       pixverve.atlas.pyramid.build_pyramid: DZI, 254 px JPEG tiles
  build_thumbnail     pixverve.atlas.pyramid.build_thumbnail: 256 px long edge
  imports only        the interpreter with pyvips (or numpy + Pillow) imported: the fixed part
then builds the JPEG's pyramid again with --threads libvips threads (VIPS_CONCURRENCY: memory
grows with them), with --tile-sizes (larger tiles: fewer files) and with a jpegsave pipeline per
tile (dzsave's suffix option, what build_pyramid avoids), and prints the table with
the targets of issue #29: pyramid time / decode time <= 3x (against the faster decode of that
form; CPU seconds shown too), pyramid peak RSS / one decoded RGB copy (w*h*3 bytes) <= 1x, and
the pyramid's disk (file bytes, and blocks allocated) against the source file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (libvips' workers included)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tree_size(folder: Path) -> tuple[int, int, int]:
    """(file bytes, bytes of the blocks allocated, file count) under ``folder``."""
    size = blocks = files = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            size, blocks, files = size + st.st_size, blocks + st.st_blocks * 512, files + 1
    return size, blocks, files


def make_sources(folder: Path, side: int) -> tuple[Path, Path]:
    """The JPEG source and the SR output's tiled BigTIFF of the same pixels (written once)."""
    jpeg, tiff = folder / f"atlas_{side}.jpg", folder / f"atlas_{side}.tif"
    if not jpeg.exists():
        sys.path.insert(0, str(ROOT))
        from benchmarks.purify_100mp import make_jpeg

        t0 = time.perf_counter()
        make_jpeg(jpeg, side * side / 1e6)
        print(f"made {jpeg} in {time.perf_counter() - t0:.1f} s")
    if not tiff.exists():
        sys.path.insert(0, str(ROOT))
        from pixverve.core.config import load_yaml
        from pixverve.core.images import read_rgb
        from pixverve.core.tiling import TiledTiffWriter, bands_of

        out = load_yaml(ROOT / "config.yaml")["upscale"]["output"]
        t0 = time.perf_counter()
        rgb, _ = read_rgb(jpeg, 1000)
        TiledTiffWriter(tiff, *rgb.shape[:2], tile=out["tiff_tile"], compression=out["compression"]).write(
            bands_of(rgb)
        )
        print(f"made {tiff} (tile {out['tiff_tile']}, {out['compression']}) in {time.perf_counter() - t0:.1f} s")
    return jpeg, tiff


def child(task: str, src: str, work: str, tile_size: int | None = None) -> dict:
    """One measurement, in this (fresh) interpreter."""
    sys.path.insert(0, str(ROOT))
    out: dict = {}
    if task in ("pyramid", "pyramid_suffix", "thumbnail", "imports_vips"):
        import pyvips  # noqa: F401  (pyramid.py imports it lazily: loading libvips is no part of the time)

        from pixverve.atlas import pyramid
    else:
        import numpy  # noqa: F401  (what a decode pays to import, in its baseline too)

        from pixverve.core import images
    t0, c0 = time.perf_counter(), cpu_seconds()
    if task == "read_rgb":
        arr, _ = images.read_rgb(src, 1000)
        out["shape"] = list(arr.shape)
    elif task == "simplejpeg":
        import simplejpeg

        arr = simplejpeg.decode_jpeg(Path(src).read_bytes(), colorspace="RGB")
        out["shape"] = list(arr.shape)
    elif task == "pyramid":
        kw = {"tile_size": tile_size} if tile_size else {}
        out["descriptor"] = pyramid.build_pyramid(src, work, "final", max_megapixels=1000, **kw)
    elif task == "pyramid_suffix":  # the same pyramid with a jpegsave pipeline per tile (dzsave's suffix)
        image = pyramid.display_rgb(pyramid.open_image(Path(src), 1000))
        image.dzsave(
            str(Path(work) / "final"),
            tile_size=pyramid.TILE_SIZE,
            overlap=pyramid.OVERLAP,
            suffix=f".jpg[Q={pyramid.QUALITY},strip]",
            depth="onepixel",
            layout="dz",
        )
    elif task == "thumbnail":
        out["size"] = pyramid.build_thumbnail(src, Path(work) / "thumb.jpg", max_megapixels=1000)
    out["seconds"] = time.perf_counter() - t0
    out["cpu_s"] = cpu_seconds() - c0
    from pixverve.core.memory import peak_rss_mb  # standard library only: no memory of its own

    out["peak_mb"] = peak_rss_mb()
    return out


REPEAT = 1


def run(task: str, src: Path, work: Path, threads: int | None = None, tile_size: int | None = None) -> dict:
    """The step in REPEAT fresh interpreters: the fastest time (the least disturbed by other work
    on the machine) and the largest peak RSS."""
    env = dict(os.environ, VIPS_CONCURRENCY=str(threads)) if threads else None
    results = []
    for _ in range(REPEAT):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", task, str(src), str(work), str(tile_size or 0)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        if proc.returncode:
            raise SystemExit(f"{task} on {src.name} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = min(results, key=lambda r: r["seconds"])
    return dict(best, peak_mb=max(r["peak_mb"] for r in results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=10000, help="the image is side x side pixels (10000: 100 MP)")
    ap.add_argument("--cache", help="folder for the two source files, kept for reruns (default: a temporary folder)")
    ap.add_argument(
        "--threads",
        default="1,8,32",
        help="libvips thread counts (VIPS_CONCURRENCY) to build the JPEG's pyramid with besides the default",
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs per step: the fastest time and the largest peak RSS are shown"
    )
    ap.add_argument("--quick", action="store_true", help="seconds, 2000 x 2000: CI checks that it still runs")
    ap.add_argument(
        "--tile-sizes", default="510", help="other tile sizes to build the JPEG's pyramid with (files per image)"
    )
    ap.add_argument("--child", nargs=4, metavar=("TASK", "SRC", "WORK", "TILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        task, src, work, tile = args.child
        print(json.dumps(child(task, src, work, int(tile) or None)))
        return
    if args.quick:
        args.side, args.threads, args.repeat = 2000, "1,4", 1
    global REPEAT
    REPEAT = max(1, args.repeat)
    tmp = tempfile.TemporaryDirectory(prefix="atlas_bench_")
    cache = Path(args.cache) if args.cache else Path(tmp.name)
    cache.mkdir(parents=True, exist_ok=True)
    jpeg, tiff = make_sources(cache, args.side)
    work = Path(tmp.name) / "out"
    rgb_mb = args.side * args.side * 3 / 2**20
    import pyvips

    print(
        f"image: {args.side} x {args.side} = {args.side**2 / 1e6:g} MP; one decoded RGB uint8 copy = {rgb_mb:.0f} MB; "
        f"libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}, {os.cpu_count()} CPUs, "
        f"VIPS_CONCURRENCY={os.environ.get('VIPS_CONCURRENCY', 'unset')}"
    )
    print(
        f"each step {REPEAT}x, each time in a fresh interpreter: seconds = the fastest run, peak RSS = the largest "
        f"VmHWM (/proc/self/status at the step's end, interpreter and imports included)"
    )
    header = f"{'form':<8} {'step':<22} {'seconds':>8} {'CPU s':>6} {'peak MB':>8} {'/ RGB':>6} {'/ decode s':>10} {'disk MB':>8} {'/ source':>8} {'files':>6}"
    rows = []
    for form, src, floors in (("JPEG", jpeg, ("read_rgb", "simplejpeg")), ("BigTIFF", tiff, ("read_rgb",))):
        base_dec = run("imports_np", src, work)
        base_vips = run("imports_vips", src, work)
        dec = {task: run(task, src, work) for task in floors}
        for r in dec.values():
            assert r["shape"] == [args.side, args.side, 3], r["shape"]
        floor = min(r["seconds"] for r in dec.values())
        pyr = run("pyramid", src, work)
        disk = tree_size(work)
        assert (pyr["descriptor"]["width"], pyr["descriptor"]["height"]) == (args.side, args.side)
        thumb = run("thumbnail", src, work)
        src_mb = src.stat().st_size / 2**20
        rows.append(f"{form} source file: {src.name}, {src_mb:.1f} MB")
        steps = [("imports numpy+Pillow", base_dec, None), ("imports pyvips", base_vips, None)]
        steps += [(f"decode ({t})", r, None) for t, r in dec.items()]
        steps += [("build_pyramid", pyr, disk), ("build_thumbnail", thumb, None)]
        for name, r, d in steps:
            timed = not name.startswith("imports")
            secs, cpu = (f"{r['seconds']:.2f}", f"{r['cpu_s']:.2f}") if timed else ("-", "-")
            line = f"{form:<8} {name:<22} {secs:>8} {cpu:>6} {r['peak_mb']:>8.0f} {r['peak_mb'] / rgb_mb:>6.2f} " + (
                f"{r['seconds'] / floor:>9.2f}x" if timed else ""
            )
            if d:
                line += f" {d[0] / 2**20:>8.1f} {d[0] / 2**20 / src_mb:>7.2f}x {d[2]:>6}"
            rows.append(line)
        rows.append(
            f"{form:<8} pyramid: {pyr['seconds'] / floor:.2f}x the fastest decode (target <= 3), peak RSS "
            f"{pyr['peak_mb'] / rgb_mb:.2f}x one RGB copy (target <= 1; {pyr['peak_mb'] - base_vips['peak_mb']:.0f} MB "
            f"above the imports), disk {disk[0] / 2**20:.1f} MB in files, {disk[1] / 2**20:.1f} MB allocated "
            f"({disk[0] / 2**20 / src_mb:.2f}x the source)"
        )
    print(header)
    print("\n".join(rows))
    sweep = [int(n) for n in args.threads.split(",") if n.strip()]
    if sweep:
        print(
            f"JPEG build_pyramid by libvips threads (VIPS_CONCURRENCY; pixverve.atlas.pyramid.set_threads), {os.cpu_count()} CPUs:"
        )
        for n in sweep:
            r = run("pyramid", jpeg, work, threads=n)
            print(
                f"  {n:>3} threads: {r['seconds']:6.2f} s ({r['cpu_s']:.2f} CPU s), peak RSS {r['peak_mb']:5.0f} MB = {r['peak_mb'] / rgb_mb:.2f}x one RGB copy"
            )
    for n in (1, None):
        direct, suffix = run("pyramid", jpeg, work, threads=n), run("pyramid_suffix", jpeg, work, threads=n)
        print(
            f"JPEG build_pyramid, {n or 'default'} thread(s): dzsave's direct JPEG tiles {direct['seconds']:.2f} s "
            f"({direct['cpu_s']:.2f} CPU s), a jpegsave pipeline per tile (suffix .jpg[Q=..]) {suffix['seconds']:.2f} s "
            f"({suffix['cpu_s']:.2f} CPU s)"
        )
    for size in [int(n) for n in args.tile_sizes.split(",") if n.strip()]:
        r = run("pyramid", jpeg, work, tile_size=size)
        disk = tree_size(work)
        print(
            f"JPEG build_pyramid with {size} px tiles: {r['seconds']:.2f} s ({r['cpu_s']:.2f} CPU s), peak RSS {r['peak_mb']:.0f} MB, "
            f"{disk[2]} files, {disk[0] / 2**20:.1f} MB in files, {disk[1] / 2**20:.1f} MB allocated"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
