"""The one image reader: every format, layout and failure it promises to handle."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from pixverve.core import images

CAP = 50.0


def photo(h=60, w=90) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    stored = photo()
    exif = Image.Exif()
    exif[274] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(stored).save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    got, info = images.read_rgb(path, CAP)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    info_h = images.probe(path, CAP)
    assert (info_h.width, info_h.height) == (got.shape[1], got.shape[0])


def test_exif_rotated_jpeg_reports_display_size(tmp_path):
    yy, xx = np.mgrid[0:40, 0:100]
    display = np.dstack([xx * 2.5, yy * 6, 255 - xx * 2.5]).astype(np.uint8)  # smooth, so JPEG loss is small
    exif = Image.Exif()
    exif[274] = 6
    path = tmp_path / "r.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(display, k=1))).save(path, quality=95, exif=exif)
    info = images.probe(path, CAP)
    assert (info.width, info.height, info.orientation) == (100, 40, 6)
    got, _ = images.read_rgb(path, CAP)
    assert got.shape == (40, 100, 3)
    assert np.abs(got.astype(int) - display.astype(int)).mean() < 3  # JPEG loss only


def test_16bit_rgb_png_keeps_high_byte(tmp_path):
    import cv2

    rgb16 = (np.arange(12 * 10 * 3, dtype=np.uint32).reshape(12, 10, 3) * 181 % 65536).astype(np.uint16)
    path = tmp_path / "d16.png"
    cv2.imwrite(str(path), rgb16[..., ::-1])
    assert images.probe(path, CAP).bit_depth == 16
    got, info = images.read_rgb(path, CAP)
    np.testing.assert_array_equal(got, (rgb16 >> 8).astype(np.uint8))
    assert "16bit->8bit" in info.conversion


def test_16bit_grey_png(tmp_path):
    grey16 = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(grey16).save(path)
    got, info = images.read_rgb(path, CAP)
    assert got.shape == (1, 4, 3)
    np.testing.assert_array_equal(got[0, :, 0], [0, 0, 1, 255])
    assert "grey->rgb" in info.conversion


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    rgb = photo()
    path = tmp_path / "c.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    assert images.probe(path, CAP).mode == "CMYK"
    got, info = images.read_rgb(path, CAP)
    assert got.shape == rgb.shape and "cmyk->rgb" in info.conversion
    assert np.abs(got.astype(int) - rgb.astype(int)).mean() < 8


def test_alpha_composited_on_background(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[255, 0], [128, 255]]
    path = tmp_path / "a.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    assert images.probe(path, CAP).has_alpha
    got, info = images.read_rgb(path, CAP, background=(255, 255, 255))
    np.testing.assert_array_equal(got[0, 0], [200, 0, 0])  # opaque: unchanged
    np.testing.assert_array_equal(got[0, 1], [255, 255, 255])  # transparent: background
    # half: (200*128 + 255*127 + 127) // 255 = 227 ; (0*128 + 255*127 + 127) // 255 = 127
    np.testing.assert_array_equal(got[1, 0], [227, 127, 127])
    assert "alpha composited on background" in info.conversion


def test_palette_and_grey(tmp_path):
    rgb = photo()
    p = tmp_path / "p.png"
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(p)
    got, info = images.read_rgb(p, CAP)
    assert got.shape == rgb.shape and "palette->rgb" in info.conversion
    g = tmp_path / "g.png"
    Image.fromarray(rgb[..., 0]).save(g)
    got, _ = images.read_rgb(g, CAP)
    np.testing.assert_array_equal(got[..., 0], rgb[..., 0])
    np.testing.assert_array_equal(got[..., 2], rgb[..., 0])


def test_tiled_bigtiff_and_tiff_layouts(tmp_path):
    rgb = photo(130, 70)
    t = tmp_path / "tiled.tif"
    tifffile.imwrite(t, rgb, bigtiff=True, tile=(32, 32), compression="zlib", photometric="rgb")
    info = images.probe(t, CAP)
    assert info.format == "BigTIFF (tiled)" and (info.width, info.height) == (70, 130)
    got, _ = images.read_rgb(t, CAP)
    np.testing.assert_array_equal(got, rgb)

    f = tmp_path / "float.tif"
    tifffile.imwrite(f, rgb.astype(np.float32) / 255.0, photometric="rgb")
    got, info = images.read_rgb(f, CAP)
    assert np.abs(got.astype(int) - rgb.astype(int)).max() <= 1 and "float[0,1]->8bit" in info.conversion

    g16 = tmp_path / "g16.tif"
    tifffile.imwrite(g16, rgb[..., 0].astype(np.uint16) * 257)
    got, _ = images.read_rgb(g16, CAP)
    np.testing.assert_array_equal(got[..., 1], rgb[..., 0])

    o = tmp_path / "orient.tif"
    tifffile.imwrite(o, rgb, photometric="rgb", extratags=[(274, "H", 1, 8, True)])
    got, _ = images.read_rgb(o, CAP)
    np.testing.assert_array_equal(got, np.rot90(rgb, k=1))
    assert (images.probe(o, CAP).width, images.probe(o, CAP).height) == (130, 70)

    c = tmp_path / "cmyk.tif"
    cmyk = np.asarray(Image.fromarray(rgb).convert("CMYK"))
    tifffile.imwrite(c, cmyk, photometric="separated")
    got, info = images.read_rgb(c, CAP)
    assert "cmyk->rgb" in info.conversion
    np.testing.assert_array_equal(got, np.asarray(Image.fromarray(cmyk, mode="CMYK").convert("RGB")))


def test_webp(tmp_path):
    rgb = photo()
    path = tmp_path / "w.webp"
    Image.fromarray(rgb).save(path, quality=95)
    got, info = images.read_rgb(path, CAP)
    assert got.shape == rgb.shape and info.format == "WEBP"


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda p: p.write_bytes(b""), "empty_file"),
        (lambda p: p.write_text("not an image"), "not_an_image"),
    ],
)
def test_broken_files_raise_with_code(tmp_path, make, code):
    path = tmp_path / "x.jpg"
    make(path)
    with pytest.raises(images.ImageError) as exc:
        images.read_rgb(path, CAP)
    assert exc.value.code == code


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_truncated_files_are_rejected_not_padded(tmp_path, suffix):
    rgb = photo(200, 300)
    full = tmp_path / f"full{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(full, rgb, photometric="rgb")
    else:
        Image.fromarray(rgb).save(full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    with pytest.raises(images.ImageError) as exc:
        images.read_rgb(cut, CAP, reduce_to_min_side=64)
    assert exc.value.code in ("truncated", "decode_error", "unreadable")
    if suffix == ".jpg":
        assert exc.value.code == "truncated"


def test_pixel_cap_is_checked_from_the_header(tmp_path):
    from pixverve.ingest.demo_pool import _write_bomb

    bomb = tmp_path / "bomb.png"
    _write_bomb(bomb, 80)  # 80 MP of zeros, ~80 kB on disk
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(images.ImageError) as exc:
        images.probe(bomb, CAP)
    assert exc.value.code == "over_pixel_cap" and "max_megapixels" in exc.value.detail
    images.set_pixel_cap(CAP)
    assert Image.MAX_IMAGE_PIXELS == int(CAP * 1e6)  # a real limit, never None
    # far past Pillow's own 2x limit the error is still ours, with its code
    with pytest.raises(images.ImageError) as exc:
        images.probe(bomb, 10)
    assert exc.value.code == "over_pixel_cap"


def test_reduced_jpeg_decode_keeps_aspect(tmp_path):
    rgb = np.ascontiguousarray(np.tile(photo(100, 150), (8, 8, 1)))  # 800 x 1200
    path = tmp_path / "big.jpg"
    Image.fromarray(rgb).save(path, quality=90)
    got, _ = images.read_rgb(path, CAP, reduce_to_min_side=200)
    assert got.shape[0] >= 200 and got.shape[0] < 800
    assert abs(got.shape[1] / got.shape[0] - 1.5) < 0.02


def test_grey_luma_is_bt601():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    expected = np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(int)
    assert np.abs(images.grey_luma(rgb).astype(int) - expected).max() <= 1


def test_read_grey_jpeg_luma_plane_matches_rgb_path(tmp_path):
    yy, xx = np.mgrid[0:120, 0:200]
    rgb = np.dstack([xx, yy * 2, 255 - xx]).astype(np.uint8)
    path = tmp_path / "g.jpg"
    exif = Image.Exif()
    exif[274] = 8
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, k=-1))).save(path, quality=95, exif=exif)
    grey, info = images.read_grey(path, CAP)
    via_rgb = images.grey_luma(images.read_rgb(path, CAP)[0])
    assert grey.shape == (120, 200) and grey.flags["C_CONTIGUOUS"]
    assert "jpeg luma plane" in info.conversion and "exif_orientation=8" in info.conversion
    assert np.abs(grey.astype(int) - via_rgb.astype(int)).max() <= 3
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(images.ImageError) as exc:
        images.read_grey(cut, CAP)
    assert exc.value.code == "truncated"


def test_read_grey_other_formats_are_bt601_of_rgb(tmp_path):
    rgb = photo()
    path = tmp_path / "g.png"
    Image.fromarray(rgb).save(path)
    grey, _ = images.read_grey(path, CAP)
    np.testing.assert_array_equal(grey, images.grey_luma(rgb))
