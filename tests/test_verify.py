"""Stage 4 measures: seams found where they are planted, PSNR/SSIM equal to scikit-image's."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pixverve.tiling import TileGrid, upscale_bands
from pixverve.upscale import _lanczos
from pixverve.verify import downsample_to, psnr, seam_positions, seam_ratios, ssim


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
    out = np.concatenate(list(upscale_bands(img, g, lambda t: _lanczos(t, 4))))
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
    for band in (64, 512, 5000):
        assert ssim(a, b, band_rows=band) == pytest.approx(ref, rel=1e-10)
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)


def test_sr_then_downsample_is_consistent_with_the_source():
    from skimage import data

    src = np.ascontiguousarray(data.astronaut()[:200, :240])
    g = TileGrid(200, 240, 4)
    sr = np.concatenate(list(upscale_bands(src, g, lambda t: _lanczos(t, 4))))
    back = downsample_to(sr, 240, 200)
    assert psnr(back, src) > 30 and ssim(back, src) > 0.9
    shifted = np.roll(back, 6, axis=1)  # a geometric error drops both
    assert psnr(shifted, src) < 25 and ssim(shifted, src) < 0.8
