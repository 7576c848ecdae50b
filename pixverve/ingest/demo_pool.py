"""The bundled demo pool: real photographs that ship inside installed packages, plus derived cases.

Sizes are written at the paper's scale (e.g. "a 40 MP source") and scaled by
``target_megapixels / 100``, so each case lands in the same screening criterion and SR tier at
any target.  Every derived case states where it must be stopped and why; the tests hold the
workflow to it (``expected_stage`` / ``expected_reason``; ``None`` means it must survive).

Photos (all public domain or CC0, see each row's licence): scikit-image's bundled data and
matplotlib's Grace Hopper portrait.
"""

from __future__ import annotations

import csv
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pixverve.core.config import REFERENCE_MEGAPIXELS


@dataclass(frozen=True)
class Photo:
    loader: str  # "skimage:<name>" or "matplotlib:<file>"
    licence: str
    author: str
    url: str


PHOTOS = {
    "astronaut": Photo("skimage:astronaut", "public domain", "NASA", "https://flic.kr/p/r9qvLn"),
    "camera": Photo("skimage:camera", "CC0", "Lav Varshney", ""),
    "chelsea": Photo("skimage:chelsea", "CC0", "Stefan van der Walt", ""),
    "coffee": Photo("skimage:coffee", "CC0", "Rachel Michetti", ""),
    "hubble": Photo(
        "skimage:hubble_deep_field",
        "public domain",
        "NASA",
        "http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/",
    ),
    "retina": Photo(
        "skimage:retina",
        "CC0",
        "Mikael Haggstrom",
        "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg",
    ),
    "rocket": Photo(
        "skimage:rocket", "public domain", "SpaceX", "https://www.flickr.com/photos/spacexphotos/16511594820/"
    ),
    "ihc": Photo("skimage:immunohistochemistry", "public domain", "scikit-image", ""),
    "motorcycle": Photo("skimage:motorcycle_left", "see scikit-image data", "Middlebury stereo", ""),
    "motorcycle_right": Photo("skimage:motorcycle_right", "see scikit-image data", "Middlebury stereo", ""),
    "grace_hopper": Photo("matplotlib:grace_hopper.jpg", "public domain", "U.S. Navy", ""),
    "page": Photo("skimage:page", "see scikit-image data", "scikit-image", ""),
    "grass": Photo("skimage:grass", "CC0", "linolafett (DeviantArt)", ""),
    "gravel": Photo("skimage:gravel", "CC0", "CC0Textures", ""),
    "moon": Photo("skimage:moon", "see scikit-image data", "scikit-image", ""),
    "brick": Photo("skimage:brick", "CC0", "CC0Textures", ""),
    "coins": Photo("skimage:coins", "see scikit-image data", "Greek Coins of Pompeii", ""),
}


@dataclass(frozen=True)
class DemoCase:
    """One file of the demo pool.

    ``paper_megapixels``: pixel count at the paper's 100 MP reference (scaled for the demo).
    ``variant``: how the file is derived from the photo.
    """

    file: str
    photo: str
    paper_megapixels: float
    variant: str = "plain"
    expected_stage: str | None = None
    expected_reason: str | None = None
    aspect: float | None = None  # width / height; the photo's own when None


CASES = [
    # clean photographs, one per tier and format
    DemoCase("coffee_native.tif", "coffee", 150, "tiled_bigtiff"),
    DemoCase("astronaut_x2.png", "astronaut", 30),
    DemoCase("rocket_x2.jpg", "rocket", 45),
    DemoCase("chelsea_x4.webp", "chelsea", 12),
    # formats and pixel layouts that must be converted, not rejected
    DemoCase("motorcycle_cmyk.jpg", "motorcycle", 40, "cmyk"),
    DemoCase("ihc_16bit.png", "ihc", 36, "rgb16"),
    DemoCase("camera_grey.png", "camera", 30, "grey"),
    DemoCase("grace_hopper_exif6.jpg", "grace_hopper", 16, "exif_rotated"),
    DemoCase("coins_alpha.png", "coins", 14, "alpha"),
    # duplicates
    DemoCase("astronaut_x2_copy.png", "astronaut", 30, "exact_copy", "dedup", "exact_duplicate"),
    DemoCase("rocket_reencoded.jpg", "rocket", 45 * 0.8, "reencoded", "dedup", "near_duplicate"),
    # image-quality failures for purification (distinct photos, so dedup keeps them); the
    # reason is the first failed filter in the paper's order
    DemoCase("grass_overexposed.jpg", "grass", 30, "overexposed", "purify", "exposure"),
    DemoCase("gravel_underexposed.jpg", "gravel", 30, "underexposed", "purify", "exposure"),
    DemoCase("moon_blurred.jpg", "moon", 30, "blurred", "purify", "sharpness"),
    DemoCase("brick_flat.png", "brick", 30, "flat", "purify", "flatness"),
    # a real photo, mostly black sky: the lowest content richness of the clean photos
    DemoCase("hubble_x2.jpg", "hubble", 60, expected_stage="purify", expected_reason="entropy"),
    # resolution screening
    DemoCase("page_small.jpg", "page", 4, expected_stage="screen", expected_reason="below_min_pixels"),
    DemoCase("retina_strip.jpg", "retina", 30, "strip", "screen", "short_side", aspect=7.5),
    # broken files
    DemoCase("motorcycle_truncated.jpg", "motorcycle_right", 40, "truncated", "screen", "truncated"),
    DemoCase("empty.jpg", "", 0, "zero_bytes", "index", "empty_file"),
    DemoCase("not_really.png", "", 0, "not_an_image", "index", "not_an_image"),
    DemoCase("bomb.png", "", 0, "bomb", "index", "over_pixel_cap"),
]


def load_photo(photo: Photo) -> np.ndarray:
    kind, name = photo.loader.split(":", 1)
    if kind == "skimage":
        import skimage.data

        if name.startswith("motorcycle_"):
            arr = skimage.data.stereo_motorcycle()[0 if name.endswith("left") else 1]
        else:
            arr = getattr(skimage.data, name)()
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
    else:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(name) as fh:
            arr = np.asarray(Image.open(fh))
    return np.asarray(arr)


def _resize(arr: np.ndarray, pixels: float, aspect: float | None = None) -> np.ndarray:
    h0, w0 = arr.shape[:2]
    aspect = aspect or (w0 / h0)
    w = max(1, round(math.sqrt(pixels * aspect)))
    h = max(1, round(pixels / w))
    if aspect != w0 / h0:  # centre-crop to the aspect first (the strip case)
        if aspect > w0 / h0:
            ch = round(w0 / aspect)
            top = (h0 - ch) // 2
            arr = arr[top : top + ch]
        else:
            cw = round(h0 * aspect)
            left = (w0 - cw) // 2
            arr = arr[:, left : left + cw]
    img = Image.fromarray(arr)
    return np.asarray(img.resize((w, h), Image.LANCZOS))


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3]


def _write_bomb(path: Path, megapixels: float) -> None:
    """A valid grey PNG whose header claims ``megapixels``; zeros compress ~1000:1."""
    side = math.ceil(math.sqrt(megapixels * 1e6))
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + zero pixels
    chunks = [comp.compress(row) for _ in range(side)]
    data = b"".join(chunks) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _write_case(case: DemoCase, path: Path, target_megapixels: float, bomb_megapixels: float) -> None:
    scale = target_megapixels / REFERENCE_MEGAPIXELS
    if case.variant == "zero_bytes":
        path.write_bytes(b"")
        return
    if case.variant == "not_an_image":
        path.write_text("This is a text file with an image extension; the index must reject it.\n")
        return
    if case.variant == "bomb":
        _write_bomb(path, bomb_megapixels)
        return
    src = load_photo(PHOTOS[case.photo])
    pixels = case.paper_megapixels * 1e6 * scale
    if case.variant == "alpha":  # opaque centre, half-transparent corners
        rgb = _resize(_as_rgb(src), pixels)
        h, w = rgb.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) / math.sqrt(2)
        alpha = np.clip(255 - 127 * np.clip((r - 0.6) / 0.4, 0, 1), 0, 255).astype(np.uint8)
        Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
        return
    if case.variant == "grey":
        grey = src if src.ndim == 2 else np.asarray(Image.fromarray(_as_rgb(src)).convert("L"))
        Image.fromarray(_resize(grey, pixels)).save(path)
        return
    rgb = _resize(_as_rgb(src), pixels, case.aspect)
    rng = np.random.default_rng(zlib.crc32(case.file.encode()))
    if case.variant == "overexposed":
        rgb = np.clip(rgb.astype(np.float32) * 2.5 + 60, 0, 255).astype(np.uint8)
    elif case.variant == "underexposed":
        rgb = np.clip(rgb.astype(np.float32) * 0.02, 0, 255).astype(np.uint8)
    elif case.variant == "blurred":
        import cv2

        rgb = cv2.GaussianBlur(rgb, (0, 0), sigmaX=max(2.0, min(rgb.shape[:2]) / 60))
    elif case.variant == "flat":
        import cv2

        smooth = cv2.GaussianBlur(rgb, (0, 0), sigmaX=min(rgb.shape[:2]) / 8).astype(np.float32)
        # faint sensor-like noise keeps the Laplacian variance above the sharpness threshold, so
        # this case isolates flatness (PNG, so JPEG does not smooth the noise away)
        rgb = np.clip(smooth + rng.normal(0, 1.5, rgb.shape), 0, 255).astype(np.uint8)
    kw = {"quality": 92} if path.suffix in (".jpg", ".webp") else {}
    if case.variant == "tiled_bigtiff":
        import tifffile

        tifffile.imwrite(path, rgb, bigtiff=True, tile=(64, 64), compression="zlib", photometric="rgb")
    elif case.variant == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path, quality=92)
    elif case.variant == "rgb16":
        import cv2

        rgb16 = rgb.astype(np.uint16) * 257 + rng.integers(0, 256, rgb.shape, dtype=np.uint16)
        cv2.imwrite(str(path), rgb16[..., ::-1])
    elif case.variant == "exif_rotated":
        exif = Image.Exif()
        exif[274] = 6  # display = stored rotated 90 degrees clockwise
        Image.fromarray(np.ascontiguousarray(np.rot90(rgb, k=1))).save(path, quality=92, exif=exif)
    elif case.variant == "reencoded":
        Image.fromarray(rgb).save(path, quality=70)
    elif case.variant == "truncated":
        Image.fromarray(rgb).save(path, quality=92)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.6)])
    else:
        Image.fromarray(rgb).save(path, **kw)


def build(
    out_dir: str | Path, manifest_path: str | Path, target_megapixels: float, bomb_megapixels: float
) -> list[dict]:
    """Write every case into ``out_dir`` and a sources manifest; return the manifest rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in CASES:
        path = out_dir / case.file
        if case.variant == "exact_copy":
            original = next(c for c in CASES if c.photo == case.photo and c.variant == "plain")
            path.write_bytes((out_dir / original.file).read_bytes())
        else:
            _write_case(case, path, target_megapixels, bomb_megapixels)
        photo = PHOTOS.get(case.photo)
        rows.append(
            {
                "path": case.file,
                "source": "demo",
                "licence": photo.licence if photo else "CC0 (generated test file)",
                "url": photo.url if photo else "",
                "author": photo.author if photo else "PixVerve workflow",
            }
        )
    with open(manifest_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "source", "licence", "url", "author"])
        writer.writeheader()
        writer.writerows(rows)
    return rows
