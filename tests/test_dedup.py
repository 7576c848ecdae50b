"""Perceptual hash, the multi-index near-duplicate search, and the keep rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pixverve.core import images
from pixverve.ingest import dedup
from pixverve.ingest.demo_pool import PHOTOS, load_photo


def random_hashes(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)


@pytest.mark.parametrize("k", [0, 1, 3, 4, 6, 8, 12])
def test_multi_index_search_equals_brute_force(k):
    rng = np.random.default_rng(k)
    h = random_hashes(2500, k)
    # plant neighbours at every distance up to k + 2
    for t in range(60):
        bits = rng.choice(64, size=t % (k + 3), replace=False)
        h[1000 + t] = h[t] ^ np.uint64(sum(1 << int(b) for b in bits))
    got = dedup.near_duplicate_pairs(h, k)
    want = dedup.brute_force_pairs(h, k)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert len(got[0]) >= 60 * (k + 1) // (k + 3)  # the planted pairs within k were found


def test_block_layout_respects_pigeonhole():
    for k in range(0, 20):
        bits, radius = dedup.block_layout(k, 300_000)
        assert sum(bits) == 64
        assert len(bits) * (radius + 1) > k  # every pair within k shares a block within radius


def test_phash_stable_under_reencode_and_resize_but_not_across_photos(tmp_path):
    rocket = load_photo(PHOTOS["rocket"])
    coffee = load_photo(PHOTOS["coffee"])
    small = tmp_path / "small.jpg"
    Image.fromarray(rocket).resize((500, 333), Image.LANCZOS).save(small, quality=60)
    a = dedup.phash(images.grey_luma(rocket))
    b = dedup.phash(images.grey_luma(images.read_rgb(small, 10)[0]))
    c = dedup.phash(images.grey_luma(coffee))
    d = lambda x, y: int(dedup.hamming(np.array([x], np.uint64), np.array([y], np.uint64))[0])  # noqa: E731
    assert d(a, b) <= 4
    assert d(a, c) >= 16


def test_phash_known_bits():
    # left half dark, right half bright: the DCT's first horizontal frequency dominates
    grey = np.zeros((64, 64), np.uint8)
    grey[:, 32:] = 255
    h = dedup.phash(grey)
    assert h == dedup.phash(np.ascontiguousarray(grey))  # deterministic
    assert h != dedup.phash(np.ascontiguousarray(grey.T))


def _row(iid, w, h, nbytes, ph, relpath=None):
    return {
        "image_id": iid,
        "root": "r",
        "relpath": relpath or f"{iid}.jpg",
        "shard": "s00000",
        "width": w,
        "height": h,
        "bytes": nbytes,
        "phash": f"{ph:016x}",
    }


def test_keep_rule_prefers_pixels_then_bytes_and_records_why():
    base = 0x0123456789ABCDEF
    rows = [
        _row("a" * 16, 1000, 1000, 500, base),
        _row("b" * 16, 2000, 1000, 400, base ^ 0b11),  # most pixels: kept
        _row("c" * 16, 2000, 1000, 300, base ^ 0b1),  # same pixels, fewer bytes
        _row("d" * 16, 2000, 1000, 999, ~base & (2**64 - 1)),  # unrelated
        _row("a" * 16, 1000, 1000, 500, base, relpath="zz_copy.jpg"),  # byte-identical copy of a
    ]
    out = dedup.deduplicate(pd.DataFrame(rows), max_distance=4).set_index("relpath")
    assert out.loc["b" * 16 + ".jpg", "passed"]
    assert out.loc["d" * 16 + ".jpg", "passed"]
    assert out.loc["a" * 16 + ".jpg", "reason"] == "near_duplicate"
    assert out.loc["c" * 16 + ".jpg", "reason"] == "near_duplicate"
    assert out.loc["c" * 16 + ".jpg", "duplicate_of"] == "b" * 16
    assert out.loc["c" * 16 + ".jpg", "hamming_to_kept"] == 1
    assert out.loc["a" * 16 + ".jpg", "group_size"] == 3
    assert out.loc["zz_copy.jpg", "reason"] == "exact_duplicate"
    assert "r/" + "a" * 16 + ".jpg" in out.loc["zz_copy.jpg", "reason_detail"]
    # the decision does not depend on row order
    again = dedup.deduplicate(pd.DataFrame(rows[::-1]), max_distance=4).set_index("relpath")
    pd.testing.assert_series_equal(out["passed"].sort_index(), again["passed"].sort_index())


def test_deduplicate_empty_pool():
    cols = ["image_id", "root", "relpath", "shard", "width", "height", "bytes", "phash"]
    out = dedup.deduplicate(pd.DataFrame(columns=cols), 8)
    assert len(out) == 0 and "reason" in out.columns


def test_distinct_images_all_kept():
    rows = [_row("a" * 16, 10, 10, 1, 0), _row("b" * 16, 10, 10, 1, 2**64 - 1)]
    out = dedup.deduplicate(pd.DataFrame(rows), 8)
    assert out["passed"].all() and (out["reason"] == "").all()
