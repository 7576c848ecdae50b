"""Tiled super-resolution with feathered blending, assembled in row bands, written progressively.

Geometry (the paper's ODTSR code): 512 px tiles with a 384 px stride, in *output* pixels.  A model
that upscales by s sees input tiles of 512/s px with a 384/s px stride.  The last tile of a row or
column is shifted inward so every tile has the same size (tiles batch together).

Blending: each output tile is weighted by a separable ramp that rises linearly over the nominal
overlap (tile - stride) on every side that has a neighbour (no ramp at the image border), and the
accumulated sum is divided by the accumulated weight.  A constant image therefore stays constant
and there is no step at tile borders.

Memory: tile rows are processed top to bottom; output rows no later tile can touch are normalised,
converted to uint8 and handed on (to the TIFF writer) at once, so the float accumulator holds at
most one tile row of output (tile_px x output width x 3 float32), never the whole canvas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    in_h: int
    in_w: int
    scale: int
    tile_px: int = 512  # output pixels
    stride_px: int = 384  # output pixels

    def __post_init__(self):
        if self.tile_px % self.scale or self.stride_px % self.scale:
            raise ValueError(
                f"tile {self.tile_px} and stride {self.stride_px} must be multiples of the scale {self.scale}"
            )
        if not 0 < self.stride_px <= self.tile_px:
            raise ValueError("stride must be in (0, tile]")

    @property
    def out_h(self) -> int:
        return self.in_h * self.scale

    @property
    def out_w(self) -> int:
        return self.in_w * self.scale

    def tile_in(self, axis_len: int) -> int:
        return min(self.tile_px // self.scale, axis_len)

    @staticmethod
    def _starts(length: int, tile: int, stride: int) -> list[int]:
        if length <= tile:
            return [0]
        starts = list(range(0, length - tile, stride))
        starts.append(length - tile)  # last tile shifted inward: all tiles equal in size
        return starts

    def rows(self) -> list[int]:
        return self._starts(self.in_h, self.tile_in(self.in_h), self.stride_px // self.scale)

    def cols(self) -> list[int]:
        return self._starts(self.in_w, self.tile_in(self.in_w), self.stride_px // self.scale)

    @property
    def n_tiles(self) -> int:
        return len(self.rows()) * len(self.cols())


def feather(length: int, ramp: int, first: bool, last: bool) -> np.ndarray:
    """1-D weights: linear ramps of ``ramp`` px at the inner ends, never zero."""
    w = np.ones(length, np.float32)
    if ramp <= 0:
        return w
    r = (np.arange(min(ramp, length), dtype=np.float32) + 0.5) / ramp
    if not first:
        w[: len(r)] = np.minimum(w[: len(r)], r)
    if not last:
        w[length - len(r) :] = np.minimum(w[length - len(r) :], r[::-1])
    return w


UpscaleFn = Callable[[list[np.ndarray]], list[np.ndarray]]


def upscale_bands(
    image: np.ndarray, grid: TileGrid, upscale: UpscaleFn, batch: int = 4, progress=None
) -> Iterator[np.ndarray]:
    """Yield the upscaled image as consecutive uint8 row bands (top to bottom).

    ``upscale(tiles)`` maps a list of equal-size uint8 HxWx3 input tiles to output tiles exactly
    ``scale`` times larger (uint8 or float in [0, 255]).  Working memory: one tile row of float32
    accumulator and weights, and one batch of output tiles.
    """
    s = grid.scale
    th, tw = grid.tile_in(grid.in_h), grid.tile_in(grid.in_w)
    rows, cols = grid.rows(), grid.cols()
    ramp = grid.tile_px - grid.stride_px
    h_out, w_out = th * s, tw * s
    wx = [feather(w_out, ramp, j == 0, j == len(cols) - 1) for j in range(len(cols))]
    # The accumulator's first row is always the current tile row's first output row: rows above
    # it were finished and handed on when the previous tile row was done.
    acc = np.zeros((h_out, grid.out_w, 3), np.float32)
    wacc = np.zeros((h_out, grid.out_w), np.float32)
    for r, y in enumerate(rows):
        wy = feather(h_out, ramp, r == 0, r == len(rows) - 1)
        for start in range(0, len(cols), batch):
            xs = cols[start : start + batch]
            outs = upscale([np.ascontiguousarray(image[y : y + th, x : x + tw]) for x in xs])
            for j, (x, out) in enumerate(zip(xs, outs), start=start):
                if out.shape[:2] != (h_out, w_out):
                    raise ValueError(f"backend returned a {out.shape[:2]} tile, expected {(h_out, w_out)}")
                w2 = wy[:, None] * wx[j][None, :]
                acc[:, x * s : x * s + w_out] += out.astype(np.float32) * w2[..., None]
                wacc[:, x * s : x * s + w_out] += w2
            if progress is not None:
                progress(len(xs))
        k = (rows[r + 1] - y) * s if r + 1 < len(rows) else h_out
        band = acc[:k]
        np.divide(band, wacc[:k, :, None], out=band)
        band += 0.5
        np.clip(band, 0, 255, out=band)
        yield band.astype(np.uint8)
        rest = h_out - k
        acc[:rest] = acc[k:].copy()
        wacc[:rest] = wacc[k:].copy()
        acc[rest:] = 0
        wacc[rest:] = 0


def naive_full_canvas(image: np.ndarray, grid: TileGrid, upscale: UpscaleFn, batch: int = 4) -> np.ndarray:
    """The same blend into one full-size float32 canvas: the reference for tests and benchmarks."""
    s = grid.scale
    th, tw = grid.tile_in(grid.in_h), grid.tile_in(grid.in_w)
    rows, cols = grid.rows(), grid.cols()
    ramp = grid.tile_px - grid.stride_px
    acc = np.zeros((grid.out_h, grid.out_w, 3), np.float32)
    wacc = np.zeros((grid.out_h, grid.out_w), np.float32)
    coords = [(r, j, y, x) for r, y in enumerate(rows) for j, x in enumerate(cols)]
    for start in range(0, len(coords), batch):
        chunk = coords[start : start + batch]
        outs = upscale([np.ascontiguousarray(image[y : y + th, x : x + tw]) for _, _, y, x in chunk])
        for (r, j, y, x), out in zip(chunk, outs):
            w2 = (
                feather(th * s, ramp, r == 0, r == len(rows) - 1)[:, None]
                * feather(tw * s, ramp, j == 0, j == len(cols) - 1)[None, :]
            )
            acc[y * s : (y + th) * s, x * s : (x + tw) * s] += out.astype(np.float32) * w2[..., None]
            wacc[y * s : (y + th) * s, x * s : (x + tw) * s] += w2
    return np.clip(acc / wacc[..., None] + 0.5, 0, 255).astype(np.uint8)


class TiledTiffWriter:
    """Collect row bands and write a tiled BigTIFF progressively (tile rows as they complete)."""

    def __init__(self, path: str | Path, height: int, width: int, tile: int = 256, compression: str | None = "zlib"):
        self.path, self.height, self.width, self.tile, self.compression = Path(path), height, width, tile, compression

    def write(self, bands: Iterator[np.ndarray]) -> None:
        import tifffile

        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tifffile.imwrite(
                tmp,
                self._tiles(bands),
                shape=(self.height, self.width, 3),
                dtype=np.uint8,
                tile=(self.tile, self.tile),
                photometric="rgb",
                compression=self.compression,
                bigtiff=True,
                metadata=None,
            )
        except BaseException:
            tmp.unlink(missing_ok=True)  # bands that failed half-way leave nothing behind
            raise
        tmp.replace(self.path)  # the output exists only when complete: a killed job leaves none

    def _tiles(self, bands: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        t = self.tile
        pending = np.zeros((0, self.width, 3), np.uint8)
        rows_done = 0
        n_cols = math.ceil(self.width / t)
        for band in bands:
            pending = np.concatenate([pending, band]) if len(pending) else band
            while len(pending) >= t:
                yield from self._row_tiles(pending[:t], n_cols)
                pending = pending[t:]
                rows_done += t
        if rows_done + len(pending) != self.height:
            raise ValueError(f"bands gave {rows_done + len(pending)} rows, expected {self.height}")
        if len(pending):
            yield from self._row_tiles(pending, n_cols)

    def _row_tiles(self, rows: np.ndarray, n_cols: int) -> Iterator[np.ndarray]:
        t = self.tile
        for c in range(n_cols):
            tile = np.zeros((t, t, 3), np.uint8)
            part = rows[:, c * t : (c + 1) * t]
            tile[: part.shape[0], : part.shape[1]] = part
            yield tile


def bands_of(image: np.ndarray, rows: int = 256) -> Iterator[np.ndarray]:
    """An in-memory image as row bands (for archiving native-tier images as tiled TIFF)."""
    for top in range(0, image.shape[0], rows):
        yield image[top : top + rows]


def plain_tiff_bands(path: str | Path, rows: int = 256) -> Iterator[np.ndarray] | None:
    """Row bands of an uncompressed 8-bit RGB strip TIFF, read straight from the file -- what an SR
    program writes with Pillow's ``save(format="TIFF")`` (one strip of the whole image) -- or None
    for any other file (or one whose header cannot be read), which the caller decodes whole.  A
    400 MP output is never one array.  Reading raises OSError or ValueError (truncated)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            orientation = page.tags.get(274)
            plain = (
                not page.is_tiled
                and page.compression == 1
                and page.dtype == np.uint8
                and page.samplesperpixel == 3
                and page.photometric == tifffile.PHOTOMETRIC.RGB
                and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
                and page.fillorder == 1
                and (orientation is None or orientation.value == 1)
            )
            height, width = int(page.imagelength), int(page.imagewidth)
            per_strip = int(page.rowsperstrip) or height
            offsets, counts = list(page.dataoffsets), list(page.databytecounts)
    except Exception:  # not a TIFF, a damaged header: the decoder gives the reason
        return None
    row_bytes = width * 3
    need = [min(per_strip, height - s * per_strip) * row_bytes for s in range(math.ceil(height / per_strip))]
    if not plain or len(counts) < len(need) or any(c < n for c, n in zip(counts, need, strict=False)):
        return None

    def bands() -> Iterator[np.ndarray]:
        with open(path, "rb") as fh:
            for top in range(0, height, rows):
                band = np.empty((min(rows, height - top), width, 3), np.uint8)
                row = top
                while row < top + len(band):
                    strip, within = divmod(row, per_strip)
                    take = min(per_strip - within, top + len(band) - row)
                    fh.seek(offsets[strip] + within * row_bytes)
                    rows_view = band[row - top : row - top + take].reshape(-1)  # whole rows: contiguous
                    if fh.readinto(rows_view) != take * row_bytes:
                        raise ValueError(f"{path}: the file ends inside row {row} (truncated)")
                    row += take
                yield band

    return bands()
