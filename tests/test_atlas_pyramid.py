"""Deep-zoom pyramids and thumbnails of the atlas (pixverve/atlas/pyramid.py, issue #29).

The layout is what libvips' dzsave writes and OpenSeadragon's DZI tile source reads: levels 0 (one
pixel) to ceil(log2(max side)) (full size), level L of size ceil(side / 2**(max - L)), tiles of
254 px plus a 1 px overlap on each inner edge, named <col>_<row>.jpeg (dzsave's direct JPEG mode).  The pixels are the ones the
stages saw (pixverve.core.images.read_rgb): EXIF orientation applied, alpha on white, 16-bit to
8-bit, compared within JPEG tolerance.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pyvips")

from pixverve.atlas.pyramid import (  # noqa: E402
    OVERLAP,
    THUMB_PX,
    TILE_SIZE,
    PyramidError,
    build_pyramid,
    build_thumbnail,
    set_threads,
    thumbnail_from_pyramid,
)
from pixverve.core.images import read_rgb  # noqa: E402

CAP = 10  # megapixels


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with a few blobs (JPEG keeps them within a few levels), no two
    quadrants alike, so a wrong rotation or flip shows as a large error."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    r = 40 + 180 * xx / w
    g = 40 + 180 * yy / h
    b = 120 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    img = np.dstack([r, g, b])
    for _ in range(6):
        cy, cx, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 40)
        img += (
            np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rad**2)) * rng.uniform(-60, 60, 3)[:, None, None]
        ).transpose(1, 2, 0)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def read_dzi(path):
    text = path.read_text()
    size = re.search(r'<Size\s+Height="(\d+)"\s+Width="(\d+)"', text)
    return {
        "tile": int(re.search(r'TileSize="(\d+)"', text).group(1)),
        "overlap": int(re.search(r'Overlap="(\d+)"', text).group(1)),
        "format": re.search(r'Format="(\w+)"', text).group(1),
        "width": int(size.group(2)),
        "height": int(size.group(1)),
    }


def assemble(level_dir, width, height) -> np.ndarray:
    """The full image of one level from its tiles, each tile's overlap cut off."""
    out = np.zeros((height, width, 3), np.uint8)
    for tile in level_dir.glob("*.jpeg"):
        col, row = map(int, tile.stem.split("_"))
        arr = np.asarray(Image.open(tile).convert("RGB"))
        x0, y0 = col * TILE_SIZE, row * TILE_SIZE
        left, top = (OVERLAP if col else 0), (OVERLAP if row else 0)
        w, h = min(TILE_SIZE, width - x0), min(TILE_SIZE, height - y0)
        out[y0 : y0 + h, x0 : x0 + w] = arr[top : top + h, left : left + w]
    return out


def close(a: np.ndarray, b: np.ndarray, mean: float = 2.5, p99: float = 12) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() <= mean and np.percentile(diff, 99) <= p99, (diff.mean(), np.percentile(diff, 99))


def deepest(tmp_path, src, name="final"):
    desc = build_pyramid(src, tmp_path / "out", name, max_megapixels=CAP)
    files = tmp_path / "out" / desc["files"]
    top = max(int(p.name) for p in files.iterdir() if p.name.isdigit())
    return desc, assemble(files / str(top), desc["width"], desc["height"])


def test_levels_tiles_and_descriptor(tmp_path):
    w, h = 600, 400
    rgb = texture(h, w)
    src = tmp_path / "src.png"
    Image.fromarray(rgb).save(src)
    desc = build_pyramid(src, tmp_path / "out", "final", max_megapixels=CAP)
    assert desc == {"width": w, "height": h, "tile_size": 254, "overlap": 1, "format": "jpeg", "files": "final_files/"}
    assert read_dzi(tmp_path / "out" / "final.dzi") == {
        "tile": 254,
        "overlap": 1,
        "format": "jpeg",
        "width": w,
        "height": h,
    }
    files = tmp_path / "out" / "final_files"
    top = math.ceil(math.log2(max(w, h)))
    # levels 0 (1 px) .. 10 (full size), and nothing else (no vips-properties.xml in the site)
    assert sorted(p.name for p in files.iterdir()) == sorted(str(level) for level in range(top + 1))
    for level in range(top + 1):
        lw, lh = math.ceil(w / 2 ** (top - level)), math.ceil(h / 2 ** (top - level))
        cols, rows = math.ceil(lw / TILE_SIZE), math.ceil(lh / TILE_SIZE)
        names = {p.name for p in (files / str(level)).iterdir()}
        assert names == {f"{c}_{r}.jpeg" for c in range(cols) for r in range(rows)}, level
        for c in range(cols):
            for r in range(rows):
                x0, y0 = c * TILE_SIZE - (OVERLAP if c else 0), r * TILE_SIZE - (OVERLAP if r else 0)
                x1, y1 = min(lw, (c + 1) * TILE_SIZE + OVERLAP), min(lh, (r + 1) * TILE_SIZE + OVERLAP)
                with Image.open(files / str(level) / f"{c}_{r}.jpeg") as tile:
                    assert tile.size == (x1 - x0, y1 - y0), (level, c, r)
                    assert (
                        tile.format == "JPEG" and 274 not in tile.getexif()
                    )  # stripped: no orientation for a browser to re-apply
    assert Image.open(files / "0" / "0_0.jpeg").size == (1, 1)
    close(assemble(files / str(top), w, h), rgb)


def test_other_tile_size(tmp_path):
    src = tmp_path / "src.png"
    Image.fromarray(texture(400, 1100)).save(src)
    desc = build_pyramid(src, tmp_path / "out", "final", max_megapixels=CAP, tile_size=510)
    assert desc["tile_size"] == 510 and read_dzi(tmp_path / "out" / "final.dzi")["tile"] == 510
    top = tmp_path / "out" / "final_files" / "11"
    assert sorted(p.name for p in top.iterdir()) == ["0_0.jpeg", "1_0.jpeg", "2_0.jpeg"]
    assert [Image.open(top / f"{c}_0.jpeg").size for c in range(3)] == [(511, 400), (512, 400), (1100 - 1019, 400)]


def test_rerun_replaces_the_tiles(tmp_path):
    src = tmp_path / "src.png"
    Image.fromarray(texture(300, 500)).save(src)
    build_pyramid(src, tmp_path / "out", "final", max_megapixels=CAP)
    Image.fromarray(texture(100, 120, seed=1)).save(src)
    build_pyramid(src, tmp_path / "out", "final", max_megapixels=CAP)
    assert sorted(int(p.name) for p in (tmp_path / "out" / "final_files").iterdir()) == list(range(8))  # 120 px: 0..7


def test_bigtiff_sr_output(tmp_path):
    """The SR output as pixverve/upscale stores it: a tiled BigTIFF (zlib)."""
    from pixverve.core.tiling import TiledTiffWriter, bands_of

    rgb = texture(530, 700, seed=2)
    src = tmp_path / "sr.tif"
    TiledTiffWriter(src, 530, 700, tile=256, compression="zlib").write(bands_of(rgb))
    desc, full = deepest(tmp_path, src)
    assert (desc["width"], desc["height"]) == (700, 530)
    close(full, rgb)


def test_exif_orientation_6(tmp_path):
    rgb = texture(300, 200, seed=3)  # displayed: 200 wide, 300 high
    exif = Image.Exif()
    exif[274] = 6  # display = stored rotated 90 degrees clockwise
    src = tmp_path / "rotated.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, k=1))).save(src, quality=95, exif=exif)
    seen, info = read_rgb(src, CAP)
    assert seen.shape == (300, 200, 3) and "exif_orientation=6" in info.conversion
    desc, full = deepest(tmp_path, src)
    assert (desc["width"], desc["height"]) == (200, 300)
    close(full, seen)
    assert (
        np.abs(full.astype(int) - np.rot90(seen, k=2).astype(int)).mean() > 20
    )  # the check can tell orientations apart
    thumb = tmp_path / "thumb.jpg"
    assert build_thumbnail(src, thumb, max_megapixels=CAP) == (171, 256)
    with Image.open(thumb) as im:
        assert im.size == (171, 256) and 274 not in im.getexif()
        small = np.asarray(im.convert("RGB").resize((200, 300), Image.BILINEAR))
    close(small, seen, mean=6, p99=40)


def test_alpha_on_white(tmp_path):
    rgb = texture(260, 300, seed=4)
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = np.clip(255 * xx / w, 0, 255).astype(np.uint8)  # transparent left edge to opaque right edge
    src = tmp_path / "alpha.png"
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(src)
    seen, info = read_rgb(src, CAP)
    assert "alpha composited on background" in info.conversion
    _, full = deepest(tmp_path, src)
    close(full, seen)
    assert full[:, :3].mean() > 245  # the transparent edge is white, not black


@pytest.mark.parametrize("channels", [3, 1])
def test_16bit_png(tmp_path, channels):
    import cv2

    rgb = texture(240, 320, seed=5)
    rng = np.random.default_rng(5)
    rgb16 = rgb.astype(np.uint16) * 257 + rng.integers(0, 256, rgb.shape, dtype=np.uint16)
    src = tmp_path / "deep.png"
    cv2.imwrite(str(src), rgb16[..., ::-1] if channels == 3 else rgb16[..., 1])
    seen, info = read_rgb(src, CAP)
    assert "16bit->8bit" in info.conversion
    _, full = deepest(tmp_path, src)
    close(full, seen)


def test_not_an_image_and_the_pixel_cap(tmp_path):
    csv = tmp_path / "table.csv"
    csv.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(PyramidError, match="not an image"):
        build_pyramid(csv, tmp_path / "out", "final", max_megapixels=CAP)
    with pytest.raises(PyramidError, match="not an image"):
        build_thumbnail(csv, tmp_path / "thumb.jpg", max_megapixels=CAP)
    text = tmp_path / "fake.jpg"
    text.write_text("This is a text file with an image extension.\n")
    with pytest.raises(PyramidError, match="fake.jpg"):
        build_pyramid(text, tmp_path / "out", "final", max_megapixels=CAP)
    big = tmp_path / "big.png"
    Image.fromarray(texture(400, 600)).save(big)
    for call in (
        lambda: build_pyramid(big, tmp_path / "out", "big", max_megapixels=0.2),
        lambda: build_thumbnail(big, tmp_path / "big.jpg", max_megapixels=0.2),
    ):
        with pytest.raises(PyramidError, match=r"big\.png: 600 x 400 exceeds io\.max_megapixels 0\.2"):
            call()
    assert not (tmp_path / "out" / "big_files").exists() and not (tmp_path / "big.jpg").exists()


def test_truncated_jpeg(tmp_path):
    src = tmp_path / "cut.jpg"
    Image.fromarray(texture(400, 600)).save(src, quality=90)
    src.write_bytes(src.read_bytes()[: src.stat().st_size * 6 // 10])
    with pytest.raises(PyramidError, match=r"cannot tile cut\.jpg: .*premature end"):  # read_rgb: "truncated"
        build_pyramid(src, tmp_path / "out", "final", max_megapixels=CAP)
    assert not (tmp_path / "out" / "final_files").exists() and not (tmp_path / "out" / "final.dzi").exists()
    with pytest.raises(PyramidError, match=r"cannot thumbnail cut\.jpg"):
        build_thumbnail(src, tmp_path / "thumb.jpg", max_megapixels=CAP)
    assert not (tmp_path / "thumb.jpg").exists()


@pytest.mark.parametrize("size, expect", [((600, 400), (256, 171)), ((300, 900), (85, 256)), ((120, 90), (120, 90))])
def test_thumbnail_long_edge(tmp_path, size, expect):
    w, h = size
    src = tmp_path / "src.jpg"
    Image.fromarray(texture(h, w)).save(src, quality=90)
    dest = tmp_path / "t" / "thumb.jpg"
    assert build_thumbnail(src, dest, max_megapixels=CAP) == expect  # long edge THUMB_PX, never enlarged
    with Image.open(dest) as im:
        assert im.size == expect and im.format == "JPEG" and im.mode == "RGB"
    assert THUMB_PX == 256


def test_set_threads(monkeypatch):
    import pyvips

    before = pyvips.concurrency_get()
    monkeypatch.delenv("VIPS_CONCURRENCY", raising=False)
    try:
        set_threads(3)
        assert pyvips.concurrency_get() == 3
        set_threads(None)  # leaves it
        assert pyvips.concurrency_get() == 3
        monkeypatch.setenv("VIPS_CONCURRENCY", "2")  # the user's setting wins
        set_threads(5)
        assert pyvips.concurrency_get() == 3
    finally:
        pyvips.concurrency_set(before)


@pytest.mark.parametrize("size", [(2300, 1500), (700, 1900), (300, 200)])
def test_thumbnail_from_the_pyramid_equals_one_from_the_file(tmp_path, size):
    """The shard job's thumbnail comes from the pyramid's own level (no second decode): the same
    size as build_thumbnail's, and the same picture within JPEG tolerance; with tiles under 256 px
    no level is both whole in one tile and large enough, and it says so (None)."""
    w, h = size
    src = tmp_path / "src.jpg"
    Image.fromarray(texture(h, w)).save(src, quality=95)
    desc = build_pyramid(src, tmp_path / "p", "final", max_megapixels=CAP, tile_size=510)
    got = thumbnail_from_pyramid(tmp_path / "p", desc, tmp_path / "a.jpg")
    want = build_thumbnail(src, tmp_path / "b.jpg", max_megapixels=CAP)
    assert got == want
    a = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "b.jpg").convert("RGB"), dtype=np.int16)
    assert np.abs(a - b).mean() < 6
    small = build_pyramid(src, tmp_path / "q", "final", max_megapixels=CAP, tile_size=126)
    if max(w, h) > 256:
        assert thumbnail_from_pyramid(tmp_path / "q", small, tmp_path / "c.jpg") is None


def test_pyramids_unrejected_gives_a_rejected_image_its_thumbnail_only(tmp_path):
    """atlas.pyramids: unrejected -- a rejected image gets thumb.jpg and no tiles (thumb_only); a
    kept one its pyramid as with the default; an unknown value names the key."""
    from pixverve.atlas.build import build_shard, tile_image

    src = tmp_path / "a.png"
    Image.fromarray(texture(300, 400)).save(src)

    def entry(image_id, status):
        final = {"path": str(src), "label": "source", "width": 400, "height": 300}
        return {"image_id": image_id, "shard": "s00000", "status": status, "final": final, "source_image": None,
                "thumb": None, "pyramid_error": None, "thumb_only": False}  # fmt: skip

    site = tmp_path / "site"
    rejected = tile_image(entry("r" * 16, "rejected"), site, None, 510, "unrejected")
    assert rejected["thumb_only"] and rejected["final"] is None and rejected["pyramid_error"] is None
    folder = site / "tiles/s00000" / ("r" * 16)
    assert rejected["thumb"] == f"tiles/s00000/{'r' * 16}/thumb.jpg" and sorted(os.listdir(folder)) == ["thumb.jpg"]
    with Image.open(folder / "thumb.jpg") as im:
        assert max(im.size) == 256
    kept = tile_image(entry("k" * 16, "kept"), site, None, 510, "unrejected")
    assert not kept["thumb_only"] and kept["final"]["url"].endswith("final_files/")
    everything = tile_image(entry("a" * 16, "rejected"), site, None, 510)  # the default: all
    assert not everything["thumb_only"] and everything["final"]["width"] == 400
    tile_image(entry("a" * 16, "rejected"), site, None, 510, "unrejected")  # rebuilt: the old pyramid goes
    assert sorted(os.listdir(site / "tiles/s00000" / ("a" * 16))) == ["thumb.jpg"]
    with pytest.raises(ValueError, match="atlas.pyramids: 'kept' is not one of"):
        build_shard(tmp_path / "results", "s00000", {"atlas": {"pyramids": "kept"}, "sources": {"roots": []}}, site)
