"""Stage 4 measures: seams found where they are planted, PSNR/SSIM equal to scikit-image's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pixverve.core.tiling import TileGrid, upscale_bands
from pixverve.upscale.sr import lanczos_tiles
from pixverve.verify.fidelity import downsample_to, psnr, seam_positions, seam_ratios, ssim


def ramps(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([(xx % 60) * 4, (yy % 60) * 4, ((xx + yy) % 60) * 4]).astype(np.uint8)


def test_seam_positions_follow_the_tile_grid():
    g = TileGrid(300, 457, 4)  # cols [0, 96, 192, 288, 329], tiles of 128
    xs, ys = seam_positions(g)
    assert xs == [x * 4 for x in (96, 128, 192, 224, 288, 320, 329, 416)]
    assert ys == [y * 4 for y in (96, 128, 172, 224)]


def test_clean_blend_has_no_seam_and_a_planted_one_is_found():
    img = ramps(300, 457)
    g = TileGrid(300, 457, 4)
    out = np.concatenate(list(upscale_bands(img, g, lambda t: lanczos_tiles(t, 4))))
    grey = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    xs, ys = seam_positions(g)
    assert max(r for _, _, r in seam_ratios(grey, xs, ys)) < 1.6
    broken = grey.copy()
    broken[:, 768:] = np.clip(broken[:, 768:].astype(int) + 15, 0, 255).astype(np.uint8)
    worst = max(seam_ratios(broken, xs, ys), key=lambda t: t[2])
    assert worst[:2] == ("x", 768) and worst[2] > 3


def test_psnr_and_banded_ssim_equal_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (1100, 230, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), rel=1e-12)
    ref = structural_similarity(a, b, channel_axis=-1, data_range=255)
    for band in (None, 16, 64, 512, 5000):
        assert ssim(a, b, band_rows=band) == pytest.approx(ref, rel=1e-10)
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)


def test_sr_then_downsample_is_consistent_with_the_source():
    from skimage import data

    src = np.ascontiguousarray(data.astronaut()[:200, :240])
    g = TileGrid(200, 240, 4)
    sr = np.concatenate(list(upscale_bands(src, g, lambda t: lanczos_tiles(t, 4))))
    back = downsample_to(sr, 240, 200)
    assert psnr(back, src) > 30 and ssim(back, src) > 0.9
    shifted = np.roll(back, 6, axis=1)  # a geometric error drops both
    assert psnr(shifted, src) < 25 and ssim(shifted, src) < 0.8


def _shard_fixture(tmp_path, mutate):
    """A source image, its lanczos x4 SR TIFF (optionally damaged) and the SR record."""
    import pandas as pd
    from PIL import Image

    from pixverve.core.tiling import TiledTiffWriter, bands_of

    (tmp_path / "src").mkdir()
    src = ramps(150, 180)
    Image.fromarray(src).save(tmp_path / "src" / "a.png")
    g = TileGrid(150, 180, 4)
    sr = mutate(np.concatenate(list(upscale_bands(src, g, lambda t: lanczos_tiles(t, 4)))).copy())
    out = tmp_path / "a.tif"
    TiledTiffWriter(out, *sr.shape[:2]).write(bands_of(sr))
    record = {
        "image_id": "a" * 16,
        "root": "r",
        "relpath": "a.png",
        "shard": "s00000",
        "scale": 4,
        "tile_px": 512,
        "stride_px": 384,
        "output_path": str(out),
        "passed": True,
        "reason": "",
    }
    config = {
        "sources": {"roots": [{"name": "r", "path": str(tmp_path / "src")}]},
        "io": {"max_megapixels": 10, "alpha_background": [255, 255, 255]},
        "verify": {
            "seam": {"max_ratio": 2.0, "beside_px": 6, "min_step": 1.0},
            "consistency": {
                "min_psnr": 28.0,
                "min_ssim": 0.88,
                "lpips": {"net": "alex", "weights": "random", "max": None},
            },
        },
    }
    return pd.DataFrame([record]), config


def _verify(tmp_path, mutate):
    from pixverve.verify.fidelity import verify_shard

    table, config = _shard_fixture(tmp_path, mutate)
    return verify_shard(table, config, tmp_path, log=lambda *_: None).iloc[0]


def test_verify_passes_a_clean_output(tmp_path):
    row = _verify(tmp_path, lambda sr: sr)
    assert row["passed"] and row["n_seams"] > 0 and row["max_seam_ratio"] < 2 and row["psnr"] > 30


def test_verify_rejects_a_planted_seam(tmp_path):
    xs, _ = seam_positions(TileGrid(150, 180, 4))
    assert xs == [208, 512]

    def seam(sr):
        sr[:, 512:] = np.clip(sr[:, 512:].astype(int) + 15, 0, 255)
        return sr

    row = _verify(tmp_path, seam)
    assert row["reason"] == "seam" and row["worst_seam"] == "x=512" and not row["seam_ok"]
    # every seam with its ratio, for the atlas to draw: the planted one is the worst, the rest are smooth
    seams = json.loads(row["seams"])
    assert len(seams) == row["n_seams"] and {(a, p) for a, p, _ in seams} >= {("x", 208), ("x", 512)}
    worst = max(seams, key=lambda s: s[2])
    assert worst[:2] == ["x", 512] and worst[2] == round(row["max_seam_ratio"], 4)
    assert all(r < 2 for a, p, r in seams if (a, p) != ("x", 512))


def test_verify_rejects_an_inconsistent_output(tmp_path):
    row = _verify(tmp_path, lambda sr: np.roll(sr, 12, axis=1))  # 3 source pixels off
    assert row["reason"] == "consistency" and row["seam_ok"] and row["psnr"] < 28


def test_flat_regions_do_not_amplify_invisible_steps():
    flat = np.full((64, 64), 120, np.uint8)
    flat[:, 32:] += 0  # identical halves
    flat[::2, 32:] = 121  # a half-level mean step across x=32: invisible
    (ratio,) = [r for a, p, r in seam_ratios(flat, [32], [], min_step=1.0)]
    assert ratio <= 0.5
    (unfloored,) = [r for a, p, r in seam_ratios(flat, [32], [], min_step=1e-6)]
    assert unfloored > 10  # what the floor prevents


def test_lpips_is_zero_for_identical_images_and_grows_with_damage():
    from pixverve.verify.fidelity import load_lpips, lpips_tiled

    model = load_lpips({"net": "alex", "weights": "random"})
    src = ramps(150, 180)
    rng = np.random.default_rng(0)
    noisy = np.clip(src.astype(int) + rng.integers(-40, 41, src.shape), 0, 255).astype(np.uint8)
    assert lpips_tiled(model, src, src) == 0.0
    assert lpips_tiled(model, src, noisy, tile_px=64) > 0


def test_lpips_tiles_are_the_area_weighted_mean_and_one_tile_is_the_whole_image():
    import torch

    from pixverve.verify.fidelity import _even_splits, load_lpips, lpips_tiled

    model = load_lpips({"net": "alex", "weights": "random"})
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (150, 180, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)

    def whole(x, y):
        t = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() / 127.5 - 1 for im in (x, y)]
        return float(model(*t).item())

    assert lpips_tiled(model, a, b, tile_px=1024) == pytest.approx(whole(a, b), rel=1e-6)
    ys, xs = _even_splits(150, 64), _even_splits(180, 64)
    assert ys == [0, 50, 100, 150] and xs == [0, 60, 120, 180]  # near-equal tiles, none a sliver
    expected = sum(
        whole(a[y0:y1, x0:x1], b[y0:y1, x0:x1]) * (y1 - y0) * (x1 - x0)
        for y0, y1 in zip(ys, ys[1:])
        for x0, x1 in zip(xs, xs[1:])
    ) / (150 * 180)
    assert lpips_tiled(model, a, b, tile_px=64) == pytest.approx(expected, rel=1e-6)


def test_missing_lpips_backbone_is_a_clear_error(tmp_path, monkeypatch):
    from pixverve.verify.fidelity import LPIPSUnavailable, load_lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LPIPSUnavailable, match=r"alexnet-owt-7be5be79\.pth.*weights: random"):
        load_lpips({"net": "alex", "weights": "pretrained"})


def test_pretrained_lpips_loads_the_backbone_from_torchvisions_cache(tmp_path, monkeypatch):
    """The real loading path, with a stand-in AlexNet file where torchvision looks (no download)."""
    import torch
    import torchvision

    from pixverve.verify.fidelity import load_lpips, lpips_backbone_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    alexnet = torchvision.models.alexnet()
    path = lpips_backbone_file("alex")
    path.parent.mkdir(parents=True)
    torch.save(alexnet.state_dict(), path)
    model = load_lpips({"net": "alex", "weights": "pretrained"})
    first_conv = model.net.slice1[0].weight
    assert torch.equal(first_conv, alexnet.features[0].weight)


def test_verify_rejects_on_lpips_when_a_maximum_is_set(tmp_path):
    from pixverve.verify.fidelity import verify_shard

    table, config = _shard_fixture(tmp_path, lambda sr: sr)
    config["verify"]["consistency"]["lpips"]["max"] = -1.0  # nothing can pass: the threshold is applied
    row = verify_shard(table, config, tmp_path, log=lambda *_: None).iloc[0]
    assert row["reason"] == "consistency" and row["psnr"] > 30 and row["lpips"] >= 0 and row["lpips_smoke"]


def _reference_seam_ratios(grey, xs, ys, beside=6, min_step=1.0):
    """The seam ratio written out on the whole image, as a reviewer would: mean |step| per line pair."""
    g = grey.astype(np.int64)
    out = []
    for axis, positions in (("x", xs), ("y", ys)):
        for p in positions:
            n = g.shape[1] if axis == "x" else g.shape[0]
            if p - beside - 1 < 0 or p + beside >= n:
                continue
            lines = [g[:, q] if axis == "x" else g[q, :] for q in range(p - beside - 1, p + beside + 1)]
            steps = [float(np.abs(b - a).mean()) for a, b in zip(lines, lines[1:])]
            side = np.mean(steps[: beside - 1] + steps[beside + 2 :])
            out.append((axis, p, steps[beside] / max(side, min_step)))
    return out


@pytest.mark.parametrize("band", [1, 7, 13, 64, 1000])
def test_seam_steps_in_bands_equal_the_whole_image(band):
    from pixverve.verify.fidelity import SeamSteps

    rng = np.random.default_rng(5)
    grey = rng.integers(60, 70, (300, 260), dtype=np.uint8)
    grey[:, 130:] += 60  # real steps at x = 130 and y = 150
    grey[150:] += 40
    xs, ys = [3, 40, 130, 255, 259], [2, 20, 100, 150, 293, 299]  # edge ones are not measured
    steps = SeamSteps(300, 260, xs, ys, beside=6, min_step=1.0)
    for top in range(0, 300, band):
        steps.add(grey[top : top + band])
    got = steps.ratios()
    want = _reference_seam_ratios(grey, xs, ys)
    assert [(a, p) for a, p, _ in got] == [("x", 40), ("x", 130), ("y", 20), ("y", 100), ("y", 150), ("y", 293)]
    assert [(a, p) for a, p, _ in want] == [(a, p) for a, p, _ in got]
    np.testing.assert_allclose([r for *_, r in got], [r for *_, r in want], rtol=1e-12)
    worst = max(got, key=lambda t: t[2])
    assert worst[:2] in {("x", 130), ("y", 150)} and worst[2] > 3
    with pytest.raises(ValueError, match="saw 0 of 300 rows"):
        SeamSteps(300, 260, xs, ys).ratios()


@pytest.mark.parametrize("factor, band_rows", [(1, 1), (2, 256), (3, 100), (4, 5000)])
def test_banded_measures_read_the_tiled_output_as_one_resize(tmp_path, factor, band_rows):
    """The area copy made band by band is the whole-image cv2 resize, bit for bit, and the seams fed
    from the tiles are the seams of the whole grey image."""
    from pixverve.core.tiling import TiledTiffWriter, bands_of
    from pixverve.core.views import TiledImage
    from pixverve.verify.fidelity import SeamSteps, banded_measures

    rng = np.random.default_rng(factor)
    h, w = 71, 93
    sr = rng.integers(0, 256, (h * factor, w * factor, 3), dtype=np.uint8)
    path = tmp_path / "sr.tif"
    TiledTiffWriter(path, *sr.shape[:2], tile=32).write(bands_of(sr, rows=50))
    xs, ys = [w * factor // 2], [h * factor // 3]
    seams = SeamSteps(*sr.shape[:2], xs, ys, beside=2)
    with TiledImage(path) as tiled:
        back = banded_measures(tiled, (h, w), factor, seams, band_rows=band_rows)
    want = sr if factor == 1 else cv2.resize(sr, (w, h), interpolation=cv2.INTER_AREA)
    assert back.shape == (h, w, 3) and np.array_equal(back, want)
    grey = cv2.cvtColor(sr, cv2.COLOR_RGB2GRAY)
    assert seams.ratios() == seam_ratios(grey, xs, ys, beside=2)


def test_banded_measures_refuse_an_output_of_the_wrong_size(tmp_path):
    from pixverve.core.tiling import TiledTiffWriter, bands_of
    from pixverve.core.views import TiledImage
    from pixverve.verify.fidelity import SeamSteps, WrongSize, banded_measures

    path = tmp_path / "sr.tif"
    TiledTiffWriter(path, 64, 60, tile=16).write(bands_of(np.zeros((64, 60, 3), np.uint8)))
    with TiledImage(path) as tiled:
        with pytest.raises(WrongSize, match="60x64, not a whole multiple of the 15x15 source"):
            banded_measures(tiled, (15, 15), 4, None)  # 4x in height, 4x in width would be 60x60
        with pytest.raises(WrongSize, match="60x64: x2 of the 30x32 source, its record says x4"):
            banded_measures(tiled, (32, 30), 4, SeamSteps(128, 120, [], []))  # a stale x2 file


def test_verify_records_an_output_of_the_wrong_size(tmp_path):
    from pixverve.verify.fidelity import STAGE4_CHECKS

    row = _verify(tmp_path, lambda sr: sr[:-4])  # the SR program lost the last rows
    assert row["reason"] == "sr_wrong_size" and not row["passed"]
    assert "720x596, not a whole multiple of the 180x150 source" in row["reason_detail"]
    assert "sr_wrong_size" in dict((c, codes) for c, _, codes in STAGE4_CHECKS)["sr_output"]


def test_tiled_image_reads_equal_the_array_and_share_tiles_between_neighbours(tmp_path):
    from pixverve.core.tiling import TiledTiffWriter, bands_of
    from pixverve.core.views import TiledImage

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (100, 70, 3), dtype=np.uint8)
    path = tmp_path / "t.tif"
    TiledTiffWriter(path, 100, 70, tile=16).write(bands_of(img, rows=30))
    with TiledImage(path) as tiled:
        decoded = []
        real = tiled.page.decode
        tiled.page.decode = lambda data, index: decoded.append(index) or real(data, index)
        bands = list(tiled.row_bands(48))
        assert [t for t, _ in bands] == [0, 48, 96] and np.array_equal(np.concatenate([b for _, b in bands]), img)
        assert sorted(decoded) == list(range(7 * 5))  # 7 tile rows x 5 tile columns, each decoded once
        decoded.clear()
        assert np.array_equal(tiled.read(10, 40, 20, 9), img[40:49, 10:30])  # tile rows 2-3, cols 0-1
        assert np.array_equal(tiled.read(10, 47, 20, 20), img[47:67, 10:30])  # tile rows 2-4: 2 and 3 kept
        assert sorted(decoded) == [10, 11, 15, 16, 20, 21]
        assert {row for row, _ in tiled._tiles} == {3, 4}  # only the last read's two bottom tile rows


def _damage_a_tile(path, index):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[index]
    data = bytearray(path.read_bytes())
    data[offset : offset + 40] = b"\xff" * 40  # the zlib stream of that tile is garbage
    path.write_bytes(bytes(data))


def test_a_damaged_tile_is_a_value_error_naming_the_file(tmp_path):
    from pixverve.core.tiling import TiledTiffWriter, bands_of
    from pixverve.core.views import TiledImage

    path = tmp_path / "t.tif"
    TiledTiffWriter(path, 64, 64, tile=16).write(bands_of(np.full((64, 64, 3), 7, np.uint8)))
    _damage_a_tile(path, 5)
    with TiledImage(path) as tiled:
        assert np.array_equal(tiled.read(0, 0, 64, 16), np.full((16, 64, 3), 7, np.uint8))  # tile row 0 is fine
        with pytest.raises(ValueError, match=r"t\.tif: tile 5 cannot be decoded \(error"):
            tiled.read(0, 16, 64, 16)


def test_verify_records_a_damaged_output_and_goes_on(tmp_path):
    def damaged(sr):
        return sr

    table, config = _shard_fixture(tmp_path, damaged)
    _damage_a_tile(Path(table.iloc[0]["output_path"]), 3)
    from pixverve.verify.fidelity import verify_shard

    row = verify_shard(table, config, tmp_path, log=lambda *_: None).iloc[0]
    assert row["reason"] == "unreadable" and "tile 3 cannot be decoded" in row["reason_detail"]


def test_a_file_that_is_no_sr_output_is_refused_and_closed(tmp_path, monkeypatch):
    import tifffile

    from pixverve.core.views import TiledImage

    closed = []
    real = tifffile.TiffFile.close
    monkeypatch.setattr(tifffile.TiffFile, "close", lambda self: closed.append(1) or real(self))
    tifffile.imwrite(tmp_path / "strips.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="expected a tiled 8-bit RGB TIFF"):
        TiledImage(tmp_path / "strips.tif")
    assert closed == [1]
