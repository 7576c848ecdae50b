"""Views of the tiled SR outputs and the geometry on them, model-free and exact; used by stage 4's
instance check, stage 5 and the training data reader.

* ``TiledImage`` reads regions and a downscaled copy of a tiled SR output (BigTIFF) tile by tile,
  so a 100 MP image is never decoded whole: a crop decodes only the tiles it overlaps, the
  downscaled copy is block-averaged one tile row at a time.
* Boxes are ``[x0, y0, x1, y1]`` in pixels, x1/y1 exclusive (the COCO/torchvision "xyxy" form).
  ``map_box`` takes a box found on a downscaled view (optionally of one tile) back to
  full-resolution pixels; ``padded_crop_box`` is the paper's crop centred on an instance with
  5 % padding.
* Masks are boolean arrays on the analysis grid (the downscaled copy); ``rle_encode`` writes the
  COCO "uncompressed RLE" (column-major run lengths starting with a run of zeros), so
  ``pycocotools.mask.frPyObjects`` reads our records unchanged.
* The analysis copy of each image (``view_file``/``read_view``: written by rule caption_tags) and
  the instance crop every instance step judges or describes (``instance_crop``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- boxes


def map_box(box, view_size: tuple[int, int], region: tuple[int, int, int, int]) -> list[float]:
    """A box on a resized view of ``region`` -> full-resolution pixels.

    ``view_size`` is (width, height) of the view the detector saw; ``region`` is (x, y, w, h) of
    the full-resolution area that view shows (the whole image, or one tile of it).  The result is
    clipped to the region.
    """
    vw, vh = view_size
    rx, ry, rw, rh = region
    sx, sy = rw / vw, rh / vh
    x0, y0, x1, y1 = (float(v) for v in box)
    out = [rx + x0 * sx, ry + y0 * sy, rx + x1 * sx, ry + y1 * sy]
    out[0], out[2] = (min(max(v, rx), rx + rw) for v in (out[0], out[2]))
    out[1], out[3] = (min(max(v, ry), ry + rh) for v in (out[1], out[3]))
    return out


def padded_crop_box(box, width: int, height: int, pad: float = 0.05) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the crop centred on ``box`` with ``pad`` of the box size added on each side.

    The crop keeps its centre on the instance's centre where the image allows it; at an image
    border it is shifted inside (same size) and only clipped when larger than the image.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # rounded before ceil: 100 * 1.1 is 110.00000000000001 in floating point, not 111 pixels
    cw = min(width, max(1, math.ceil(round((x1 - x0) * (1 + 2 * pad), 6))))
    ch = min(height, max(1, math.ceil(round((y1 - y0) * (1 + 2 * pad), 6))))
    left = min(max(0, round(cx - cw / 2)), width - cw)
    top = min(max(0, round(cy - ch / 2)), height - ch)
    return int(left), int(top), int(cw), int(ch)


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_nms(boxes: list, scores: list[float], iou_threshold: float) -> list[int]:
    """Indices kept by greedy NMS (highest score first; ties by index)."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(box_iou(boxes[i], boxes[k]) <= iou_threshold for k in kept):
            kept.append(i)
    return kept


def tile_regions(width: int, height: int, grid: int, overlap: float = 0.1) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of a ``grid`` x ``grid`` layout of overlapping tiles covering the image."""
    if grid <= 1:
        return [(0, 0, width, height)]
    tw = min(width, math.ceil(width / grid * (1 + overlap)))
    th = min(height, math.ceil(height / grid * (1 + overlap)))
    xs = [round(i * (width - tw) / (grid - 1)) for i in range(grid)]
    ys = [round(j * (height - th) / (grid - 1)) for j in range(grid)]
    return [(x, y, tw, th) for y in ys for x in xs]


# ----------------------------------------------------------------------------- masks


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(a & b)
    union = np.count_nonzero(a | b)
    return inter / union if union else 0.0


def mask_nms(masks: list[np.ndarray], scores: list[float], iou_threshold: float, min_area_fraction: float = 0.0):
    """Greedy NMS on masks: (kept indices, {dropped index: reason}).

    Masks are visited by score (ties by index); one covering less than ``min_area_fraction`` of
    the image is dropped as ``small``, one whose IoU with an already kept mask exceeds
    ``iou_threshold`` is dropped as ``overlap`` (with the index it duplicates).
    """
    order = sorted(range(len(masks)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    dropped: dict[int, str] = {}
    for i in order:
        m = masks[i]
        if m.size and np.count_nonzero(m) / m.size < min_area_fraction:
            dropped[i] = f"small: area {np.count_nonzero(m) / m.size:.5f} < {min_area_fraction}"
            continue
        dup = next((k for k in kept if mask_iou(m, masks[k]) > iou_threshold), None)
        if dup is not None:
            dropped[i] = f"overlap: IoU {mask_iou(m, masks[dup]):.3f} > {iou_threshold} with instance {dup}"
            continue
        kept.append(i)
    return sorted(kept), dropped


def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: ``{"size": [h, w], "counts": [...]}``, column-major, zeros first."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((w, h)).T


def mask_bbox(mask: np.ndarray) -> list[int] | None:
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(ys):
        return None
    return [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]


def highlight(view: np.ndarray, mask: np.ndarray, dim: float = 0.35) -> np.ndarray:
    """The view with everything outside the mask darkened and the mask's outline drawn in red."""
    import cv2

    if mask.shape != view.shape[:2]:
        mask = cv2.resize(
            mask.astype(np.uint8), (view.shape[1], view.shape[0]), interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    out = view.copy()
    out[~mask] = (out[~mask] * dim).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 0, 0), max(1, round(max(view.shape[:2]) / 400)))
    return out


# ----------------------------------------------------------------------------- tiled images


class TiledImage:
    """Read access to a tiled RGB TIFF (the SR outputs) without decoding it whole."""

    def __init__(self, path: str | Path):
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        try:
            self.page = self._tif.pages[0]
            self.height, self.width = int(self.page.imagelength), int(self.page.imagewidth)
            if not self.page.is_tiled or self.page.samplesperpixel != 3 or self.page.dtype != np.uint8:
                raise ValueError(f"{self.path}: expected a tiled 8-bit RGB TIFF (an SR output)")
        except BaseException:
            self._tif.close()  # the caller's `with` never got the object
            raise
        self.tw, self.th = int(self.page.tilewidth), int(self.page.tilelength)
        self.across = math.ceil(self.width / self.tw)
        # the decoded tiles of the last read's two bottom tile rows: the next read that starts there
        # (a band with a 1-pixel halo above, the next patch row) decodes them once; nothing else is kept
        self._tiles: dict[tuple[int, int], np.ndarray] = {}

    def close(self) -> None:
        self._tiles = {}
        self._tif.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _tile(self, row: int, col: int) -> np.ndarray:
        index = row * self.across + col
        fh = self._tif.filehandle
        fh.seek(self.page.dataoffsets[index])
        data = fh.read(self.page.databytecounts[index])
        try:
            tile, _, _ = self.page.decode(data, index)
            return tile.reshape(self.th, self.tw, 3)
        except Exception as exc:  # zlib.error, imagecodecs' errors, a short read: the file is damaged
            raise ValueError(f"{self.path}: tile {index} cannot be decoded ({type(exc).__name__}: {exc})") from exc

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Pixels [y, y+h) x [x, x+w) decoded from the tiles they overlap only."""
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > self.width or y + h > self.height:
            raise ValueError(f"region {(x, y, w, h)} outside the {self.width}x{self.height} image")
        out = np.empty((h, w, 3), np.uint8)
        rows = range(y // self.th, (y + h - 1) // self.th + 1)
        cols = range(x // self.tw, (x + w - 1) // self.tw + 1)
        kept, self._tiles = self._tiles, {}
        for row in rows:
            for col in cols:
                tile = kept.get((row, col))
                tile = self._tile(row, col) if tile is None else tile
                if row >= rows[-1] - 1:
                    self._tiles[(row, col)] = tile
                ty, tx = row * self.th, col * self.tw
                y0, y1 = max(y, ty), min(y + h, ty + self.th)
                x0, x1 = max(x, tx), min(x + w, tx + self.tw)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - ty : y1 - ty, x0 - tx : x1 - tx]
            if row >= rows[0] + 1:
                kept = {}  # only the first two rows can have been kept from the last read
        return out

    def row_bands(self, rows: int):
        """(top, pixels) of consecutive full-width bands of ``rows`` rows (the last may be shorter),
        top to bottom; a band height that is a multiple of the tile height decodes each tile once."""
        for top in range(0, self.height, rows):
            yield top, self.read(0, top, self.width, min(rows, self.height - top))

    def downscaled(self, max_side: int) -> np.ndarray:
        """A copy whose long side is at most ``max_side``: block means over f x f pixels
        (f = ceil(long side / max_side)), one tile row in memory at a time; edge blocks that
        are partial average the pixels they have.  Sums are integers (exact in any order), so the
        result is the block mean rounded half up, whatever the tile size."""
        f = max(1, math.ceil(max(self.width, self.height) / max_side))
        if f == 1:
            return self.read(0, 0, self.width, self.height)
        out_w, out_h = math.ceil(self.width / f), math.ceil(self.height / f)
        out = np.empty((out_h, out_w, 3), np.uint8)
        counts_w = np.full(out_w, f, np.float64)
        counts_w[-1] = self.width - (out_w - 1) * f
        col_starts = np.arange(0, self.width, f)
        block = np.zeros((out_w, 3), np.uint64)  # the sums of the block row being filled
        rows_in_block, out_row = 0, 0
        for _, band in self.row_bands(self.th):
            columns = np.add.reduceat(band, col_starts, axis=1, dtype=np.uint32)  # (rows, out_w, 3)
            i = 0
            while i < len(columns):
                take = min(f - rows_in_block, len(columns) - i)
                block += columns[i : i + take].sum(axis=0, dtype=np.uint64)
                rows_in_block, i = rows_in_block + take, i + take
                if rows_in_block == f:
                    out[out_row] = np.floor(block / (counts_w[:, None] * f) + 0.5)
                    block[:] = 0
                    rows_in_block, out_row = 0, out_row + 1
        if rows_in_block:
            out[out_row] = np.floor(block / (counts_w[:, None] * rows_in_block) + 0.5)
        return out


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` resized (area) so its long side is at most ``max_side`` (a small copy for a model)."""
    import cv2

    h, w = image.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def view_file(views_dir, image_id: str) -> Path:
    return Path(views_dir) / f"{image_id}.png"


def write_view(path: Path, rgb: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    tmp.replace(path)


def read_view(views_dir, image_id: str) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(view_file(views_dir, image_id)), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"analysis copy of {image_id} missing in {views_dir}: rerun caption_tags")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def kept_instances(masks_row: dict) -> list[dict]:
    return [x for x in json.loads(masks_row["instances"]) if x["kept"]]


def instance_crop(tiled: TiledImage, view: np.ndarray, box, pad: float, max_side: int) -> tuple[np.ndarray, tuple]:
    """The crop centred on an instance with ``pad`` padding, long side <= ``max_side``, and its
    full-resolution (x, y, w, h).  Read from the analysis copy when that already holds at least
    ``max_side`` pixels across the crop (a big instance), else from the tiled SR output."""
    W, H = tiled.width, tiled.height
    x, y, w, h = padded_crop_box(box, W, H, pad)
    f = W / view.shape[1]
    if max(w, h) / f >= max_side:
        vx0, vy0 = int(x / f), int(y / f)
        vx1, vy1 = max(vx0 + 1, math.ceil((x + w) / f)), max(vy0 + 1, math.ceil((y + h) / f))
        return fit_within(view[vy0:vy1, vx0:vx1], max_side), (x, y, w, h)
    return fit_within(tiled.read(x, y, w, h), max_side), (x, y, w, h)
