"""Every case of the demo pool ends where it must: rejected at its stage with its reason, or kept."""

from __future__ import annotations

import numpy as np
import pytest

from pixverve.core import images
from pixverve.ingest.demo_pool import CASES

STAGES = ["index", "screen", "dedup", "purify"]


def _row(table, file):
    rows = table[table["relpath"] == file]
    assert len(rows) == 1, f"{file}: expected exactly one row, got {len(rows)}"
    return rows.iloc[0]


@pytest.mark.parametrize("case", CASES, ids=[c.file for c in CASES])
def test_case_outcome(stage1, case):
    for stage in STAGES:
        row = _row(stage1[stage], case.file)
        if stage == case.expected_stage:
            assert not row["passed"], f"{case.file} should be rejected at {stage}"
            assert row["reason"] == case.expected_reason, row["reason_detail"]
            assert row["reason_detail"], "a rejection must say why"
            later = STAGES[STAGES.index(stage) + 1 :]
            for nxt in later:
                assert case.file not in set(stage1[nxt]["relpath"]), f"{case.file} went on to {nxt}"
            return
        assert row["passed"], f"{case.file} rejected at {stage}: {row['reason']} ({row['reason_detail']})"
    # survivors of every stage that exists: the clean cases
    assert case.expected_stage is None


def test_every_tier_is_exercised(stage1):
    kept = stage1["screen"][stage1["screen"]["passed"]]
    assert set(kept["sr_tier"]) == {"native", "x2", "x4"}
    assert set(kept["criterion"]) == {"i", "ii"}


def test_conversions_recorded(stage1):
    screen = stage1["screen"].set_index("relpath")
    assert "cmyk->rgb" in screen.loc["motorcycle_cmyk.jpg", "conversion"]
    assert "16bit->8bit" in screen.loc["ihc_16bit.png", "conversion"]
    assert "alpha composited on background" in screen.loc["coins_alpha.png", "conversion"]
    assert "exif_orientation=6" in screen.loc["grace_hopper_exif6.jpg", "conversion"]
    index = stage1["index"].set_index("relpath")
    exif = index.loc["grace_hopper_exif6.jpg"]
    assert exif["orientation"] == 6 and exif["width"] < exif["height"]  # portrait as displayed


def test_exif_case_decodes_upright(demo_workdir):
    from pixverve.ingest.demo_pool import PHOTOS, load_photo

    got, _ = images.read_rgb(demo_workdir / "resources/demo_pool/images/grace_hopper_exif6.jpg", 10)
    src = load_photo(PHOTOS["grace_hopper"])
    assert got.shape[0] > got.shape[1]  # portrait, like the original
    from PIL import Image

    ref = np.asarray(Image.fromarray(src).resize((got.shape[1], got.shape[0]), Image.LANCZOS))
    assert np.abs(ref.astype(int) - got.astype(int)).mean() < 8


def test_licence_and_attribution_recorded(stage1):
    index = stage1["index"].set_index("relpath")
    assert index.loc["astronaut_x2.png", "licence"] == "public domain"
    assert index.loc["astronaut_x2.png", "author"] == "NASA"
    assert (index["source"] == "demo").all()


def test_purify_failures_name_every_failed_filter(stage1):
    purify = stage1["purify"].set_index("relpath")
    assert purify.loc["gravel_underexposed.jpg", "failed_filters"].startswith("exposure")
    assert "sharpness" in purify.loc["moon_blurred.jpg", "failed_filters"]
    assert purify.loc["brick_flat.png", "sharpness_ok"]  # the flat case isolates flatness
    assert "Laplacian variance" in purify.loc["moon_blurred.jpg", "reason_detail"]
    cut = stage1["cutoffs"].set_index("score").loc["entropy_bits"]
    assert cut["kept"] == -(-cut["pool_size"] * 6 // 10)  # ceil(0.6 N)


def test_candidates_cover_every_sr_tier(stage1):
    kept = stage1["purify"][stage1["purify"]["passed"]]
    tiers = stage1["screen"].set_index("image_id").loc[kept["image_id"], "sr_tier"]
    assert set(tiers) == {"native", "x2", "x4"}
