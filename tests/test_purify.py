"""Stage 2 filters on constructed images whose answers are known, and against a float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pixverve.core import images
from pixverve.ingest.demo_pool import PHOTOS, load_photo
from pixverve.purify.classical import ClassicalParams, classical_scores, decide, reference_scores, top_fraction

P = ClassicalParams(patch_px=16, smooth_variance=800.0)


def test_constant_image():
    s = classical_scores(np.full((64, 80), 128, np.uint8), P)
    assert s.laplacian_var == 0 and s.entropy_bits == 0 and s.exposure_share == 0
    assert s.flat_share == 1.0 and s.total_patches == 4 * 5
    assert classical_scores(np.zeros((64, 80), np.uint8), P).exposure_share == 1.0  # all < 5
    assert classical_scores(np.full((64, 80), 251, np.uint8), P).exposure_share == 1.0  # all > 250
    assert classical_scores(np.full((64, 80), 250, np.uint8), P).exposure_share == 0.0  # 250 is not > 250
    assert classical_scores(np.full((64, 80), 5, np.uint8), P).exposure_share == 0.0  # 5 is not < 5


def test_checkerboard_laplacian_and_entropy():
    yy, xx = np.mgrid[0:64, 0:64]
    board = (((yy + xx) % 2) * 255).astype(np.uint8)
    s = classical_scores(board, P)
    # every pixel's 4 neighbours have the other value (mirrored borders keep the pattern): +-1020
    assert s.laplacian_var == pytest.approx(1020.0**2)
    assert s.entropy_bits == pytest.approx(1.0)
    assert s.exposure_share == 1.0  # 0 and 255 only


def test_known_entropy_histogram():
    grey = np.repeat(np.array([10, 60, 110, 160], np.uint8), 256).reshape(32, 32)
    assert classical_scores(grey, P).entropy_bits == pytest.approx(2.0)


def test_flat_share_counts_smooth_patches():
    rng = np.random.default_rng(0)
    grey = np.full((64, 64), 120, np.uint8)
    grey[:32] = rng.integers(0, 256, (32, 64), dtype=np.uint8)  # top half: noise (not smooth)
    s = classical_scores(grey, P)
    # patch rows 0-1 are noise; row 2 touches the noise edge through the 3x3 Sobel; row 3 is flat
    assert s.total_patches == 16
    assert s.flat_patches == 4  # only the last patch row is smooth
    assert s.flat_share == s.flat_patches / 16
    # partial patches at the right and bottom edge are ignored
    assert classical_scores(np.full((70, 75), 9, np.uint8), P).total_patches == 4 * 4


@pytest.mark.parametrize("band_rows", [0, 16, 48, 1000])
@pytest.mark.parametrize("source", ["noise", "astronaut", "hubble"])
def test_banded_equals_float64_reference(source, band_rows):
    if source == "noise":
        rng = np.random.default_rng(1)
        grey = np.clip(rng.normal(120, 50, (203, 317)), 0, 255).astype(np.uint8)
    else:
        grey = images.grey_luma(load_photo(PHOTOS[source]))
    params = ClassicalParams(patch_px=24, smooth_variance=800.0, band_rows=band_rows)
    ours, ref = classical_scores(grey, params), reference_scores(grey, params)
    assert ours.exposure_share == pytest.approx(ref.exposure_share, abs=1e-12)
    assert ours.laplacian_var == pytest.approx(ref.laplacian_var, rel=1e-9)
    assert ours.entropy_bits == pytest.approx(ref.entropy_bits, rel=1e-12)
    assert ours.flat_patches == ref.flat_patches and ours.total_patches == ref.total_patches


def test_top_fraction_counts_ties_and_nan():
    scores = np.array([5.0, 1.0, 3.0, 3.0, np.nan])
    ids = np.array(["e", "a", "c", "b", "d"])
    kept, cut = top_fraction(scores, ids, 0.6)  # the pool is the 4 scored: ceil(2.4) = 3: 5.0 and both 3.0
    assert kept.tolist() == [True, False, True, True, False]
    assert cut == 3.0
    kept, _ = top_fraction(scores, ids, 0.4)  # ceil(1.6) = 2: 5.0, then the tie at 3.0 goes to id "b"
    assert kept.tolist() == [True, False, False, True, False]
    kept, _ = top_fraction(scores, ids, 1.0)  # NaN is never "top", even with slots to spare
    assert kept.tolist() == [True, True, True, True, False]
    # all but one unscored (every ArtiMuse request refused): one slot, and no NaN fills the rest
    kept, cut = top_fraction(np.array([np.nan, 2.0, np.nan, np.nan]), np.array(["a", "b", "c", "d"]), 0.6)
    assert kept.tolist() == [False, True, False, False] and cut == 2.0
    kept, cut = top_fraction(np.full(3, np.nan), np.array(["a", "b", "c"]), 0.6)
    assert not kept.any() and np.isnan(cut)


def _classical_row(iid, entropy, reason=""):
    return {
        "image_id": iid,
        "entropy_bits": entropy,
        "exposure_ok": reason != "exposure",
        "sharpness_ok": True,
        "flatness_ok": True,
        "passed": reason == "",
        "reason": reason,
        "reason_detail": "",
        "exposure_share": 0.5,
        "exposure_high_value": 250,
        "exposure_low_value": 5,
        "exposure_max_share": 0.2,
    }


def test_decide_intersection_and_either_aesthetic():
    config = {"purify": {"entropy": {"keep_top_fraction": 0.6}, "aesthetics": {"keep_top_fraction": 0.5}}}
    classical = pd.DataFrame(
        [
            _classical_row(i, e, r)
            for i, e, r in [("a", 7.0, ""), ("b", 6.0, ""), ("c", 5.0, ""), ("d", 4.0, ""), ("e", 8.0, "exposure")]
        ]
    )
    aesthetics = pd.DataFrame(
        {
            "image_id": list("abcde"),
            "laion_score": [1.0, 9.0, 8.0, 2.0, 7.0],
            "artimuse_score": [90.0, 10.0, 20.0, 30.0, 80.0],
            "laion_smoke": True,
            "artimuse_smoke": True,
        }
    )
    out, cuts = decide(classical, aesthetics, config)
    out = out.set_index("image_id")
    # entropy: top ceil(3) of 5 = e, a, b ; aesthetics: laion top {b, c, e}, artimuse top {a, e, d}
    assert out.loc["a", "passed"] and out.loc["b", "passed"]
    assert out.loc["c", "reason"] == "entropy"  # aesthetically fine (laion), not rich enough
    assert out.loc["d", "reason"] == "entropy" and out.loc["d", "failed_filters"] == "entropy"
    assert out.loc["e", "reason"] == "exposure"
    assert set(cuts["filter"]) == {"entropy", "aesthetics"} and cuts["smoke"].iloc[1]
    ent = cuts.set_index("score").loc["entropy_bits"]
    assert ent["cutoff"] == 6.0 and ent["kept"] == 3
    assert "entropy: 5.000 bits below" in out.loc["c", "reason_detail"]
    assert math.isclose(cuts.set_index("score").loc["laion_score", "cutoff"], 7.0)
