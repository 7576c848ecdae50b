"""Deep-zoom pyramids (DZI layout, JPEG tiles) and thumbnails of stage outputs, with libvips.

libvips streams: a JPEG source or a tiled BigTIFF SR output is read strip by strip or tile by
tile while the pyramid is written, so a 100 MP image is never decoded whole into a float array
(``benchmarks/atlas.py`` measures time, peak memory and disk per image).  Colour follows what the
stages saw (``pixverve/core/images.py``): EXIF orientation applied, grey and CMYK to sRGB,
16-bit to 8-bit, alpha composited onto white.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TILE_SIZE = 254  # OpenSeadragon's default tile edge (256 with the 1 px overlap on each side)
OVERLAP = 1
QUALITY = 85
TILE_FORMAT = "jpeg"  # the tiles' file extension, as dzsave's direct JPEG mode names them
THUMB_PX = 256
FAIL_ON = "truncated"
IMAGE_LOADERS = ("jpeg", "png", "tiff", "webp", "gif", "heif", "jp2k", "jxl")


def set_threads(threads: int | None) -> None:
    """libvips' worker threads in this process (a shard job: its rule's ``threads``).

    libvips' default is one per core the process may run on, and each thread holds its own tile
    buffers: measured with ``benchmarks/atlas.py`` on a 100 MP JPEG (NOTES.md, "Measured": atlas pyramids; 2 cores), peak
    RSS 99 MB with 1 thread, 248 MB with 8, 383 MB with 32 (1.3x one decoded RGB copy, 286 MB).
    ``VIPS_CONCURRENCY`` in the environment wins, as in libvips itself; None leaves libvips' default.
    """
    import os

    import pyvips

    if threads and not os.environ.get("VIPS_CONCURRENCY"):
        pyvips.concurrency_set(max(1, int(threads)))


class PyramidError(Exception):
    """An image the atlas cannot tile (unreadable, over the pixel cap): recorded, never fatal."""


def _why(exc: Exception) -> str:
    """libvips' reason, one line: its error buffer's lines without the wrapper's "unable to call
    dzsave" (e.g. "VipsJpeg: premature end of JPEG image")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("unable to call")]
    return "; ".join(dict.fromkeys(useful or lines))[:300] or type(exc).__name__


def open_image(path: Path, max_megapixels: float | None):
    import pyvips

    try:
        # fail_on="truncated": a cut-off file is an error, as for the stages' reader (libvips' own
        # default pads it with grey); it shows when the pixels are read, inside dzsave/jpegsave
        image = pyvips.Image.new_from_file(str(path), access="sequential", fail_on=FAIL_ON)
    except pyvips.Error as exc:
        raise PyramidError(f"cannot read {path.name}: {_why(exc)}") from exc
    loader = image.get("vips-loader") if image.get_typeof("vips-loader") else ""
    if not loader.startswith(IMAGE_LOADERS):  # libvips also reads CSV, matrix and raw files as images
        raise PyramidError(f"{path.name}: not an image file (libvips loader {loader or 'unknown'})")
    if max_megapixels and image.width * image.height > max_megapixels * 1e6:
        raise PyramidError(f"{path.name}: {image.width} x {image.height} exceeds io.max_megapixels {max_megapixels}")
    return image


def display_rgb(image):
    """8-bit sRGB without alpha, upright, as the stages decoded it."""
    image = image.autorot()  # EXIF orientation (a no-op without one)
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.interpretation not in ("srgb",) or image.format != "uchar":
        image = image.colourspace("srgb")
    if image.bands == 1:
        image = image.bandjoin([image, image])
    return image.cast("uchar") if image.format != "uchar" else image


def build_pyramid(
    src, out_dir, name: str, max_megapixels: float | None = None, quality: int = QUALITY, tile_size: int = TILE_SIZE
) -> dict:
    """Write ``out_dir/<name>_files/<level>/<col>_<row>.jpeg`` (+ ``<name>.dzi``); return its
    descriptor: the tile source an OpenSeadragon viewer opens without fetching the .dzi.

    Files per 100 MP image: 2,147 tiles at 254 px, 548 at 510 px, which also builds faster where
    creating a file is dear (benchmarks/atlas.py; NOTES.md, "Measured": atlas pyramids)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / f"{name}_files", ignore_errors=True)  # a rerun replaces, never mixes
    image = display_rgb(open_image(Path(src), max_megapixels))
    try:
        # no `suffix`: libvips then writes each tile with libjpeg straight from the strip ("direct
        # mode", libvips >= 8.15), metadata stripped; a suffix such as ".jpg[Q=85]" runs a
        # jpegsave pipeline per tile instead: 3.4-3.6 CPU s against 1.9-2.4 for a 100 MP JPEG on
        # one thread here (NOTES.md, "Measured": atlas pyramids). Its tiles are named .jpeg, hence "format": "jpeg" in
        # the descriptor and the .dzi.
        image.dzsave(
            str(out_dir / name),
            tile_size=int(tile_size),
            overlap=OVERLAP,
            Q=int(quality),
            depth="onepixel",
            layout="dz",
        )
    except Exception as exc:  # pyvips.Error: a truncated file shows only when its pixels are read
        remove_pyramid(out_dir, name)  # no half pyramid is left behind
        raise PyramidError(f"cannot tile {Path(src).name}: {_why(exc)}") from exc
    # dzsave's own metadata dump (loader, resolution, a date): nothing OpenSeadragon reads, and the
    # site publishes only tiles and what the atlas writes itself
    (out_dir / f"{name}_files" / "vips-properties.xml").unlink(missing_ok=True)
    return {
        "width": image.width,
        "height": image.height,
        "tile_size": int(tile_size),
        "overlap": OVERLAP,
        "format": TILE_FORMAT,
        "files": f"{name}_files/",
    }


def remove_pyramid(out_dir, name: str) -> None:
    """Delete ``out_dir/<name>_files/`` and ``<name>.dzi`` if they are there."""
    shutil.rmtree(Path(out_dir) / f"{name}_files", ignore_errors=True)
    (Path(out_dir) / f"{name}.dzi").unlink(missing_ok=True)


def build_thumbnail(src, dest, max_megapixels: float | None = None, px: int = THUMB_PX) -> tuple[int, int]:
    """A JPEG thumbnail whose long edge is ``px``; libvips shrinks on load (JPEG) or reads a
    lower pyramid level when the file has one.  Returns its size."""
    import pyvips

    open_image(Path(src), max_megapixels)  # the cap and a readable header, with its own message
    try:
        # from a Source, so that the loader takes fail_on (Image.thumbnail has no load options)
        thumb = pyvips.Image.thumbnail_source(
            pyvips.Source.new_from_file(str(src)), px, height=px, size="down", option_string=f"fail_on={FAIL_ON}"
        )
        thumb = display_rgb(thumb)
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        thumb.jpegsave(str(dest), Q=80, strip=True)
    except pyvips.Error as exc:
        Path(dest).unlink(missing_ok=True)
        raise PyramidError(f"cannot thumbnail {Path(src).name}: {_why(exc)}") from exc
    return thumb.width, thumb.height


def thumbnail_from_pyramid(out_dir, descriptor: dict, dest, px: int = THUMB_PX) -> tuple[int, int] | None:
    """The thumbnail from a pyramid just written: its largest level that one tile holds whole,
    shrunk to a long edge of ``px`` -- no second decode of the full image (on a 100 MP BigTIFF SR
    output ``build_thumbnail`` costs half the pyramid again: NOTES.md, "Measured": atlas pyramids).  None when that
    level is smaller than ``px`` (tiles under ``px``): then ``build_thumbnail`` is the way."""
    import math

    import pyvips

    width, height = int(descriptor["width"]), int(descriptor["height"])
    top = math.ceil(math.log2(max(width, height))) if max(width, height) > 1 else 0
    for level in range(top, -1, -1):  # DZI: level `top` is full size, each below halves it (rounded up)
        long_side = max(math.ceil(width / 2 ** (top - level)), math.ceil(height / 2 ** (top - level)))
        if long_side <= int(descriptor["tile_size"]):
            break
    if long_side < min(px, max(width, height)):
        return None
    tile = Path(out_dir) / descriptor["files"] / str(level) / f"0_0.{descriptor['format']}"
    try:
        thumb = pyvips.Image.thumbnail(str(tile), px, height=px, size="down")
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        thumb.jpegsave(str(dest), Q=80, strip=True)
    except pyvips.Error as exc:
        raise PyramidError(f"cannot thumbnail {tile.name} of level {level}: {_why(exc)}") from exc
    return thumb.width, thumb.height
