"""MSFI and ICS from fixed judge scores equal the hand-computed published formulas (eval/
msfi_evaluator.py, ics_evaluator.py); MSFI's patches as eval/util/image_process.py lays them out."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from pixverve.bench.scores import ics, mean_over_included, msfi, msfi_layout, msfi_patch_size, weighted_score

GLOBAL = {"SC-global": 4, "PI": 5, "LC": 3, "CH": 2}  # (5*4 + 3*5 + 2*3 + 2*2) / 12 = 45 / 12 = 3.75
LOCAL = {"NGE": 5, "GA": 4, "TF": 3, "MGC": 2, "SC-local": 1}  # (10 + 12 + 15 + 4 + 2) / 14 = 43 / 14


def test_msfi_hand_computed_with_the_published_keys():
    out = msfi(GLOBAL, [LOCAL, {k: 1 for k in LOCAL}])
    s_l = (43 / 14 + 1) / 2
    assert out["s_global"] == pytest.approx(3.75) and out["s_local"] == pytest.approx(s_l)
    assert out["msfi"] == pytest.approx(3.75 + 3.75 / 5 * s_l) and out["included"]
    # the old keys ("SC") are not the published ones: they are missing, so count as 3
    assert weighted_score({"SC": 5, "PI": 5, "LC": 5, "CH": 5}, {"SC-global": 5, "PI": 3, "LC": 2, "CH": 2})[
        0
    ] == pytest.approx((15 + 15 + 10 + 10) / 12)
    perfect = msfi({k: 5 for k in GLOBAL}, [{k: 5 for k in LOCAL}] * 10)
    assert perfect["msfi"] == pytest.approx(10.0)


def test_failed_local_calls_are_left_out_of_s_local_not_counted_as_three():
    out = msfi(GLOBAL, [LOCAL, None, None, None])
    assert out["s_local"] == pytest.approx(43 / 14) and out["valid_patches"] == 1  # old: (43/14 + 3 * 3) / 4


def test_an_image_without_a_global_or_any_local_reply_has_no_msfi():
    for g, locs in ((None, [LOCAL]), ({}, [LOCAL]), (GLOBAL, [None, None]), (GLOBAL, [])):
        out = msfi(g, locs)
        assert math.isnan(out["msfi"]) and not out["included"]
    assert mean_over_included([8.0, float("nan"), 6.0]) == (7.0, 2)  # the mean covers the scored images only
    assert math.isnan(mean_over_included([float("nan")])[0])


def test_dimension_values_are_read_as_published():
    weights = {"SC-global": 5, "PI": 3, "LC": 2, "CH": 2}
    # a missing dimension counts 3; numbers (also as strings) are taken as they are
    score, defaulted = weighted_score({"SC-global": 5, "PI": "4", "CH": 7}, weights)
    assert defaulted == ["LC"] and score == pytest.approx((25 + 12 + 6 + 14) / 12)
    # a value float() cannot read makes the whole reply 3; so does a reply that is not a mapping
    assert weighted_score({"SC-global": 5, "PI": "high", "LC": 1, "CH": 1}, weights)[0] == 3.0
    assert weighted_score([1, 2], weights)[0] == 3.0


def test_ics_hand_computed_and_a_reply_without_all_keys_is_none():
    assert ics({"IEV": 9, "AAA": 8, "SRA": 6}) == pytest.approx(math.sqrt(0.9) * (4.8 + 2.4))
    assert ics({"IEV": 10, "AAA": "10", "SRA": 10.0}) == pytest.approx(10.0)
    for bad in ({"IEV": 5, "AAA": 5}, {"IEV": "x", "AAA": 5, "SRA": 5}, None, {}):
        with pytest.raises(ValueError):
            ics(bad)


def test_msfi_layout_as_published_on_a_3000x2000_image():
    """Hand-computed: analysis copy 2048 x int(2000 * 2048 / 3000) = 2048 x 1365, scale 2048/3000,
    candidate side int(512 * 0.68267) = 349 (round would give 350), a 5 x 3 grid; the textured
    square at analysis (1396, 698) maps back to (round(2044.9), round(1022.5)) = (2045, 1022)."""
    assert msfi_patch_size(7680, 4320) == 1024 and msfi_patch_size(7679, 7000) == 512
    rng = np.random.default_rng(0)
    rgb = np.full((2000, 3000, 3), 120, np.uint8)
    rgb[1022:1534, 2045:2557] = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    global_view, patches = msfi_layout(Image.fromarray(rgb), seed=7)
    assert global_view.size == (2048, 1365)
    assert len(patches) == 10 and [p["picked"] for p in patches] == ["sobel"] * 6 + ["random"] * 4
    assert patches[0]["box"] == (2045, 1022, 2557, 1534)
    assert patches[0]["relative"] == [0.681667, 0.511, 0.852333, 0.767]
    boxes = [p["box"] for p in patches]
    assert len(set(boxes)) == 10 and all(r - x == 512 and b - t == 512 for x, t, r, b in boxes)
    assert all(0 <= x and r <= 3000 and 0 <= t and b <= 2000 for x, t, r, b in boxes)
    again = msfi_layout(Image.fromarray(rgb), seed=7)[1]
    assert (
        again == patches and msfi_layout(Image.fromarray(rgb), seed=8)[1][6:] != patches[6:]
    )  # ours: seeded per image


def test_msfi_layout_upscales_a_small_image_as_published():
    """A 1024 x 512 image: analysis copy 2048 x 1024 (up), scale 2, side int(512 * 2) = 1024: two
    squares, both kept; a portrait / square image takes its height as the long edge."""
    rgb = np.random.default_rng(1).integers(0, 256, (512, 1024, 3), dtype=np.uint8)
    view, patches = msfi_layout(Image.fromarray(rgb), seed=0)
    assert view.size == (2048, 1024) and sorted(p["box"] for p in patches) == [(0, 0, 512, 512), (512, 0, 1024, 512)]
    view, patches = msfi_layout(Image.fromarray(rgb[:, :300]), seed=0)  # 300 x 512: 2048 high, int(300 * 4) wide
    assert view.size == (1200, 2048) and len(patches) == 0  # int(512 * 4) = 2048 > 1200: no whole square
