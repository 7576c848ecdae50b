"""Robust image reading, used by every stage.

One place decides how a file on disk becomes an 8-bit RGB array:

* formats: JPEG, PNG, WebP (Pillow) and TIFF incl. tiled and BigTIFF (tifffile);
* EXIF / TIFF orientation is applied, so width/height are the *displayed* size;
* 16-bit data keeps its high byte (``x >> 8``; Pillow does the same for 16-bit RGB PNG);
  float data is taken as [0, 1] (clipped) unless its maximum exceeds 1, then as [0, 255];
* CMYK is converted with Pillow's profile-free formula, palette images are expanded,
  grey is replicated to three channels, and alpha is composited onto a configurable
  background colour (white by default) -- each recorded in ``conversion``;
* a pixel-count cap (``max_megapixels``) is checked from the header before any decode,
  against decompression bombs.  Pillow's own limit is set to the same cap, never ``None``.

Every failure raises :class:`ImageError` with a stable ``code`` (the ``reason`` column of
the stage tables) and a human-readable detail.  Callers turn it into a row, never a crash.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

# Truncated files must fail loudly, not decode as grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False

TIFF_SUFFIXES = {".tif", ".tiff"}
EXIF_ORIENTATION_TAG = 274


class ImageError(Exception):
    """A file that cannot become an RGB image; ``code`` goes into the ``reason`` column."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass
class ImageInfo:
    """What the header says, after orientation (width/height as displayed)."""

    width: int
    height: int
    format: str
    mode: str
    bit_depth: int
    orientation: int = 1
    has_alpha: bool = False
    conversion: list[str] = field(default_factory=list)

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def set_pixel_cap(max_megapixels: float) -> None:
    """Make Pillow's decompression-bomb limit equal to the project's cap.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and raises above twice that; we check the
    header ourselves first, so the warning is noise and the error a second line of defence.
    """
    Image.MAX_IMAGE_PIXELS = int(max_megapixels * 1e6)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def _check_cap(width: int, height: int, max_megapixels: float) -> None:
    mp = width * height / 1e6
    if mp > max_megapixels:
        raise ImageError(
            "over_pixel_cap",
            f"{width}x{height} = {mp:.1f} MP exceeds io.max_megapixels = {max_megapixels:g}",
        )


def _png_bit_depth(path: Path) -> int:
    # IHDR is always the first chunk: 8-byte signature, 4 length, 4 type, 4 w, 4 h, 1 depth.
    with open(path, "rb") as fh:
        head = fh.read(25)
    return head[24] if len(head) >= 25 else 8


def _orientation_of_pil(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not reject an otherwise good image
        return 1
    return value if 1 <= value <= 8 else 1


def _swaps_axes(orientation: int) -> bool:
    return orientation in (5, 6, 7, 8)


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an HxW[xC] array, as Pillow's exif_transpose does."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, k=-1)
    if orientation == 7:
        return arr.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(arr, k=1)
    return arr


def _open_pil(path: Path, max_megapixels: float) -> Image.Image:
    set_pixel_cap(max_megapixels)
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageError("over_pixel_cap", f"{exc} (io.max_megapixels = {max_megapixels:g})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError("not_an_image", "no image format recognises this file") from exc
    except OSError as exc:
        raise ImageError("unreadable", str(exc)) from exc


def _check_file(path: Path) -> None:
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ImageError("unreadable", str(exc)) from exc
    if size == 0:
        raise ImageError("empty_file", "the file has zero bytes")


def probe(path: str | os.PathLike, max_megapixels: float) -> ImageInfo:
    """Read the header only (no pixel decode) and check the pixel cap."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        info = _probe_tiff(path)
    else:
        img = _open_pil(path, max_megapixels)
        with img:
            orientation = _orientation_of_pil(img)
            width, height = img.size
            if _swaps_axes(orientation):
                width, height = height, width
            bit_depth = 8
            if img.mode.startswith("I;16") or img.mode == "I":
                bit_depth = 16
            elif img.format == "PNG" and img.mode in ("RGB", "RGBA"):
                bit_depth = _png_bit_depth(path)
            elif img.mode == "F":
                bit_depth = 32
            has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            info = ImageInfo(width, height, img.format or "?", img.mode, bit_depth, orientation, has_alpha)
    _check_cap(info.width, info.height, max_megapixels)
    return info


def _probe_tiff(path: Path) -> ImageInfo:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            shape = page.shape
            photometric = page.photometric.name if page.photometric is not None else "?"
            samples = page.samplesperpixel
            extrasamples = tuple(getattr(page, "extrasamples", ()) or ())
            orientation = 1
            tag = page.tags.get("Orientation")
            if tag is not None:
                orientation = int(tag.value) if 1 <= int(tag.value) <= 8 else 1
            bits = int(page.bitspersample)
            fmt = "BigTIFF" if tif.is_bigtiff else "TIFF"
            if page.is_tiled:
                fmt += " (tiled)"
            height, width = page.imagelength, page.imagewidth
    except Exception as exc:  # tifffile raises many types for broken files
        raise ImageError("not_an_image" if "not a TIFF" in str(exc) else "unreadable", str(exc)) from exc
    del shape
    if _swaps_axes(orientation):
        width, height = height, width
    has_alpha = bool(extrasamples) or (photometric == "RGB" and samples == 4)
    mode = f"{photometric}/{samples}x{bits}"
    return ImageInfo(width, height, fmt, mode, bits, orientation, has_alpha)


def _to_uint8(arr: np.ndarray, conversion: list[str]) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        conversion.append("1bit->8bit")
        return arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint16, np.int32, np.uint32):
        if arr.dtype == np.uint16 or arr.max(initial=0) <= 65535:
            conversion.append("16bit->8bit")
            return (arr.astype(np.uint16, copy=False) >> 8).astype(np.uint8)
        conversion.append("32bit->8bit")
        return (arr >> 24).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        top = float(np.nanmax(arr)) if arr.size else 0.0
        scale = 255.0 if top <= 1.0 else 1.0
        conversion.append("float[0,1]->8bit" if scale == 255.0 else "float[0,255]->8bit")
        out = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0) * scale
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    raise ImageError("unsupported_pixels", f"pixel type {arr.dtype} is not supported")


def _composite_alpha(rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    a = alpha.astype(np.uint16)[..., None]
    bg = np.asarray(background, dtype=np.uint16)
    # integer "over" with rounding: (c*a + bg*(255-a) + 127) / 255
    out = (rgb.astype(np.uint16) * a + bg * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _pil_to_rgb(img: Image.Image, path: Path, background, conversion: list[str]) -> np.ndarray:
    mode = img.mode
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        conversion.append("palette->rgb")
        mode = "RGBA"
    if mode == "CMYK":
        conversion.append("cmyk->rgb")
        return np.asarray(img.convert("RGB"))
    if mode in ("YCbCr", "LAB", "HSV"):
        conversion.append(f"{mode.lower()}->rgb")
        return np.asarray(img.convert("RGB"))
    if mode in ("RGBA", "LA", "La", "RGBa"):
        arr = np.asarray(img.convert("RGBA"))
        conversion.append("alpha composited on background")
        if mode in ("LA", "La"):
            conversion.append("grey->rgb")
        return _composite_alpha(arr[..., :3], arr[..., 3], background)
    if mode == "RGB":
        if img.format == "PNG" and _png_bit_depth(path) == 16:
            conversion.append("16bit->8bit")
        return np.asarray(img)
    # single-channel modes: 1, L, I;16*, I, F
    arr = np.asarray(img)
    if mode != "1" and "transparency" in img.info and mode == "L":
        img = img.convert("LA")
        return _pil_to_rgb(img, path, background, conversion)
    arr = _to_uint8(arr, conversion)
    conversion.append("grey->rgb")
    return np.repeat(arr[..., None], 3, axis=2)


def _tiff_to_rgb(path: Path, background, conversion: list[str]) -> tuple[np.ndarray, int]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        photometric = page.photometric.name if page.photometric is not None else "?"
        tag = page.tags.get("Orientation")
        orientation = int(tag.value) if tag is not None and 1 <= int(tag.value) <= 8 else 1
        arr = page.asarray()
        extrasamples = tuple(getattr(page, "extrasamples", ()) or ())
    if arr.ndim == 3 and arr.shape[0] < 8 and arr.shape[2] > 8:  # planar (C, H, W)
        arr = np.moveaxis(arr, 0, -1)
    if photometric == "SEPARATED":  # CMYK
        cmyk = _to_uint8(arr[..., :4], conversion)
        conversion.append("cmyk->rgb")
        img = Image.fromarray(np.ascontiguousarray(cmyk), mode="CMYK")
        return np.asarray(img.convert("RGB")), orientation
    if photometric == "PALETTE":
        raise ImageError("unsupported_pixels", "palette TIFF is not supported; convert it to RGB")
    if arr.ndim == 2:
        arr = _to_uint8(arr, conversion)
        if photometric == "MINISWHITE":
            arr = 255 - arr
        conversion.append("grey->rgb")
        return np.repeat(arr[..., None], 3, axis=2), orientation
    alpha = None
    if arr.shape[2] == 2 or (arr.shape[2] >= 4 and (extrasamples or arr.shape[2] == 4)):
        alpha = arr[..., -1]
    colour = arr[..., :1] if arr.shape[2] == 2 else arr[..., :3]
    colour = _to_uint8(colour, conversion)
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
        conversion.append("grey->rgb")
    if alpha is not None:
        alpha8 = _to_uint8(alpha, [])
        conversion.append("alpha composited on background")
        colour = _composite_alpha(colour, alpha8, background)
    return colour, orientation


def read_rgb(
    path: str | os.PathLike,
    max_megapixels: float,
    *,
    reduce_to_min_side: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> tuple[np.ndarray, ImageInfo]:
    """Decode a file to a C-contiguous HxWx3 uint8 RGB array, oriented for display.

    ``reduce_to_min_side``: when set, JPEGs are decoded at a reduced DCT scale (1/2..1/8) so
    that the shorter side stays >= this value -- a full-resolution decode is not needed for
    thumbnails, hashes or 224 px model inputs.  Other formats decode at full size.
    The whole file is still decoded, so truncation is always detected.
    """
    path = Path(path)
    info = probe(path, max_megapixels)
    conversion: list[str] = []
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            arr, orientation = _tiff_to_rgb(path, background, conversion)
        else:
            with _open_pil(path, max_megapixels) as img:
                orientation = _orientation_of_pil(img)
                if reduce_to_min_side and img.format == "JPEG":
                    w, h = img.size
                    scale = max(1, min(8, min(w, h) // max(1, reduce_to_min_side)))
                    if scale > 1:
                        img.draft(img.mode if img.mode != "CMYK" else "CMYK", (w // scale, h // scale))
                img.load()
                arr = _pil_to_rgb(img, path, background, conversion)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("over_pixel_cap", f"{exc} (io.max_megapixels = {max_megapixels:g})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        code = "truncated" if "truncated" in msg.lower() else "decode_error"
        raise ImageError(code, msg) from exc
    except Exception as exc:  # codec internals raise odd types on broken files
        raise ImageError("decode_error", f"{type(exc).__name__}: {exc}") from exc
    if orientation != 1:
        arr = apply_orientation(arr, orientation)
        conversion.append(f"exif_orientation={orientation}")
    info.conversion = conversion
    return np.ascontiguousarray(arr), info


def grey_luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B) as uint8, via OpenCV's fixed-point path.

    Every stage that speaks of the "pixel value" of a colour image means this grey value.
    OpenCV converts in place-sized chunks, so no float copy of a 100 MP image is made.
    """
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def read_grey(
    path: str | os.PathLike, max_megapixels: float, *, background: tuple[int, int, int] = (255, 255, 255)
) -> tuple[np.ndarray, ImageInfo]:
    """Decode a file straight to its 8-bit BT.601 grey image, oriented for display.

    Colour JPEGs decode only their stored luma plane (libjpeg-turbo skips the colour conversion
    and the chroma planes): that plane *is* BT.601 luma, up to the encoder's rounding.  Other
    files go through :func:`read_rgb` and :func:`grey_luma`, so alpha, CMYK and 16-bit handling
    are the same everywhere.
    """
    path = Path(path)
    info = probe(path, max_megapixels)
    if info.format == "JPEG" and info.mode in ("RGB", "L"):
        import simplejpeg

        # simplejpeg has libjpeg-turbo write the luma plane straight into the numpy array: the
        # file's bytes plus one grey image is all the memory this takes (Pillow needs ~3x)
        try:
            grey = simplejpeg.decode_jpeg(path.read_bytes(), colorspace="GRAY")
        except ValueError as exc:
            msg = str(exc)
            code = "truncated" if "premature end" in msg.lower() or "truncated" in msg.lower() else "decode_error"
            raise ImageError(code, msg) from exc
        grey = grey.reshape(grey.shape[0], grey.shape[1])
        info.conversion = ["jpeg luma plane"]
        if info.orientation != 1:
            grey = apply_orientation(grey, info.orientation)
            info.conversion.append(f"exif_orientation={info.orientation}")
        return np.ascontiguousarray(grey), info
    rgb, info = read_rgb(path, max_megapixels, background=background)
    return grey_luma(rgb), info
