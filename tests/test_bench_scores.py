"""MSFI and ICS from fixed judge scores equal the hand-computed published formulas."""

from __future__ import annotations

import math

import pytest

from pixverve.bench_scores import ics, msfi, weighted_score


def test_msfi_hand_computed():
    g = {"SC": 4, "PI": 5, "LC": 3, "CH": 2}  # (5*4 + 3*5 + 2*3 + 2*2) / 12 = 45 / 12 = 3.75
    locals_ = [
        {"NGE": 5, "GA": 4, "TF": 3, "MGC": 2, "SC": 1},  # (10 + 12 + 15 + 4 + 2) / 14 = 43 / 14
        {"NGE": 1, "GA": 1, "TF": 1, "MGC": 1, "SC": 1},  # 1
    ]
    out = msfi(g, locals_)
    s_l = (43 / 14 + 1) / 2
    assert out["s_global"] == pytest.approx(3.75) and out["s_local"] == pytest.approx(s_l)
    assert out["msfi"] == pytest.approx(3.75 + 3.75 / 5 * s_l)
    perfect = msfi({k: 5 for k in "SC PI LC CH".split()}, [{k: 5 for k in "NGE GA TF MGC SC".split()}] * 10)
    assert perfect["msfi"] == pytest.approx(10.0)


def test_missing_or_invalid_dimensions_count_as_three():
    score, defaulted = weighted_score({"SC": 5, "PI": "high", "LC": 7, "CH": True}, {"SC": 5, "PI": 3, "LC": 2, "CH": 2})
    assert defaulted == ["PI", "LC", "CH"] and score == pytest.approx((25 + 9 + 6 + 6) / 12)
    out = msfi(None, [None, None])
    assert out["msfi"] == pytest.approx(3 + 3 / 5 * 3) and out["defaulted_local"] == 10


def test_ics_hand_computed_and_strict():
    assert ics({"IEV": 9, "AAA": 8, "SRA": 6}) == pytest.approx(math.sqrt(0.9) * (4.8 + 2.4))
    assert ics({"IEV": 10, "AAA": 10, "SRA": 10}) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="SRA"):
        ics({"IEV": 5, "AAA": 5})


def test_msfi_patches_follow_texture_and_map_to_full_resolution():
    import numpy as np

    from pixverve.bench_scores import msfi_patch_size, msfi_patches

    assert msfi_patch_size(7680, 4320) == 1024 and msfi_patch_size(7679, 7000) == 512
    rng = np.random.default_rng(0)
    grey = np.full((3000, 4000), 120, np.uint8)
    grey[1024:1536, 2048:2560] = rng.integers(0, 256, (512, 512), dtype=np.uint8)  # one textured patch
    patches = msfi_patches(grey, seed=7)
    assert len(patches) == 10 and sum(why == "random" for *_, why in patches) == 4
    x, y, w, h, why = patches[0]
    assert why == "sobel" and (w, h) == (512, 512)
    assert abs(x - 2048) <= 2 and abs(y - 1024) <= 2  # the textured one, back at full resolution
    assert all(0 <= px <= 4000 - 512 and 0 <= py <= 3000 - 512 for px, py, *_ in patches)
    assert msfi_patches(grey, seed=7) == patches and msfi_patches(grey, seed=8) != patches
