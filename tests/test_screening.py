"""Resolution screening exactly as the paper states it, and its scaling by target_megapixels."""

from __future__ import annotations

import pytest

from pixverve.core.config import check_resolution, screening_criteria, sr_tiers, tier_for


@pytest.fixture
def paper(demo_config):
    return dict(demo_config, target_megapixels=100)


@pytest.mark.parametrize(
    "w, h, criterion, code",
    [
        (6000, 5000, "i", ""),  # 30 MP, min side 5000
        (10000, 2600, None, "short_side"),  # 26 MP but min side < 3000
        (5000, 5000, "ii", ""),  # exactly 25 MP is not "exceeding 25M": criterion (ii), inclusive
        (5001, 5000, "i", ""),  # just above 25 MP
        (4000, 2500, "ii", ""),  # 10 MP exactly: inclusive lower end of (ii)
        (4000, 2499, None, "below_min_pixels"),  # 9.996 MP
        (8000, 1400, None, "short_side"),  # 11.2 MP, min side 1400 < 1500
        (20000, 1600, None, "short_side"),  # 32 MP, min side 1600: (i) needs 3000 and (ii) ends at 25 MP
        (3000, 3000, None, "below_min_pixels"),  # 9 MP
    ],
)
def test_paper_criteria(paper, w, h, criterion, code):
    name, got_code, detail = check_resolution(w, h, screening_criteria(paper))
    assert name == criterion
    assert got_code == code
    if code:
        assert f"{w}x{h}" in detail


def test_criteria_scale_with_target(demo_config):
    one = screening_criteria(dict(demo_config, target_megapixels=1))
    assert one[0].min_pixels == 250_000 and not one[0].min_inclusive and one[0].min_side_px == 300
    assert one[1].min_pixels == 100_000 and one[1].max_pixels == 250_000 and one[1].min_side_px == 150
    four = screening_criteria(dict(demo_config, target_megapixels=400))
    assert four[0].min_pixels == 100_000_000 and four[0].min_side_px == 6000


@pytest.mark.parametrize(
    "pixels, tier",
    [
        (100_000_000, "native"),
        (99_999_999, "x2"),
        (25_000_001, "x2"),
        (25_000_000, "x4"),
        (10_000_000, "x4"),
        (9_999_999, None),
    ],
)
def test_sr_tiers_at_paper_scale(demo_config, pixels, tier):
    got = tier_for(pixels, sr_tiers(dict(demo_config, target_megapixels=100)))
    assert (got.name if got else None) == tier


def test_files_that_changed_after_the_index_are_rows(tmp_path, demo_config):
    """Vanished, rewritten, turned into a symlink loop between index and screen: a row each."""
    import os

    import numpy as np
    from PIL import Image

    from pixverve.ingest.index import build_index
    from pixverve.ingest.screening import screen_shard

    root = tmp_path / "pool"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("keep", "gone", "rewritten", "same_size", "loop"):
        Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(root / f"{name}.png")
    config = dict(
        demo_config,
        sources={"roots": [{"name": "r", "path": str(root), "scan": True}], "manifests": [], "extensions": [".png"]},
        target_megapixels=0.25,
    )
    index = build_index(config, tmp_path, log=lambda *_: None)
    assert index["passed"].all() and len(index) == 5
    (root / "gone.png").unlink()
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(root / "rewritten.png")
    data = bytearray((root / "same_size.png").read_bytes())
    data[-20] ^= 0xFF  # same length, other bytes
    (root / "same_size.png").write_bytes(bytes(data))
    (root / "loop.png").unlink()
    os.symlink(root / "loop2.png", root / "loop.png")
    os.symlink(root / "loop.png", root / "loop2.png")
    out = screen_shard(index.assign(shard="s00000"), config, tmp_path).set_index("relpath")
    assert out.loc["keep.png", "passed"], out.loc["keep.png", "reason_detail"]
    assert out.loc["gone.png", "reason"] == "vanished_since_index"
    assert (
        out.loc["rewritten.png", "reason"] == "changed_since_index"
        and "bytes" in out.loc["rewritten.png", "reason_detail"]
    )
    assert out.loc["same_size.png", "reason"] == "changed_since_index"
    assert out.loc["loop.png", "reason"] == "unresolvable"
