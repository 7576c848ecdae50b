"""Training data (issue #8's first piece): buckets, crops read from the tiled SR outputs,
captions from the records, one-bucket batches split across ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixverve.tiling import TiledTiffWriter, bands_of
from pixverve.train_data import (
    CaptionMissing,
    TrainSamples,
    aspect_buckets,
    bucket_batches,
    nearest_bucket,
    samples_from_records,
)


def test_buckets_keep_the_area_and_the_grid():
    buckets = aspect_buckets(1024, multiple=32, max_ratio=4.0)
    assert (1024, 1024) in buckets
    for w, h in buckets:
        assert w % 32 == 0 and h % 32 == 0
        assert abs(w * h / 1024**2 - 1) < 0.08  # about the training resolution's area
        assert 1 / 4.2 <= w / h <= 4.2
    ratios = [w / h for w, h in buckets]
    assert ratios == sorted(ratios) and len(buckets) == 17


def test_nearest_bucket_follows_the_aspect_ratio():
    buckets = aspect_buckets(512, multiple=32)
    assert nearest_bucket(10000, 10000, buckets) == (512, 512)
    w, h = nearest_bucket(15000, 10000, buckets)
    assert w > h and abs(math.log(w / h) - math.log(1.5)) < 0.1
    w, h = nearest_bucket(100, 1000, buckets)
    assert h / w == pytest.approx(4.0, rel=0.1)  # clipped to the widest bucket


@pytest.fixture
def records(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for k, (h, w) in enumerate([(300, 450), (400, 400), (260, 520)]):
        path = tmp_path / f"{k:016x}.tif"
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        TiledTiffWriter(path, h, w, tile=128).write(bands_of(image, 64))
        out.append({"image_id": f"{k:016x}", "width": w, "height": h, "provenance": {"sr_output": str(path)},
                    "long_caption": f"long {k}", "short_caption": f"short {k}", "_image": image})
    return out


def test_crops_are_full_resolution_windows_and_reproducible(records):
    samples = samples_from_records(records, resolution=128, caption="short")
    assert [s.caption for s in samples] == ["short 0", "short 1", "short 2"]
    data = TrainSamples(samples, mode="crop", seed=7)
    for i, rec in enumerate(records):
        pixels, caption, (x, y, w, h) = data[i, 0]
        assert pixels.shape == (samples[i].bucket[1], samples[i].bucket[0], 3)
        assert (w, h) == samples[i].bucket  # the images are larger than the bucket: no resizing
        assert np.array_equal(pixels, rec["_image"][y : y + h, x : x + w])
        assert data.crop_box(i, 0) == (x, y, w, h)  # same (seed, epoch, index): same window
    assert any(data.crop_box(i, 0) != data.crop_box(i, 1) for i in range(3))  # a new epoch moves them


def test_resize_mode_shows_the_whole_image(records):
    samples = samples_from_records(records, resolution=128)
    pixels, caption, box = TrainSamples(samples, mode="resize")[1, 0]
    assert box == (0, 0, 400, 400) and pixels.shape == (128, 128, 3) and caption == "long 1"
    # the whole picture: its mean colour survives the resize
    assert np.abs(pixels.reshape(-1, 3).mean(0) - records[1]["_image"].reshape(-1, 3).mean(0)).max() < 2.0


def test_a_record_without_the_caption_is_an_error(records):
    records[2]["long_caption"] = None
    with pytest.raises(CaptionMissing, match="0000000000000002"):
        samples_from_records(records, resolution=128, caption="long")


def test_batches_hold_one_bucket_and_ranks_get_disjoint_equal_shares(records):
    base = samples_from_records(records, resolution=128)
    samples = [base[i % 3] for i in range(30)]  # 10 samples in each of 3 buckets
    batches0 = bucket_batches(samples, batch_size=4, epoch=0, seed=1, rank=0, world_size=2)
    batches1 = bucket_batches(samples, batch_size=4, epoch=0, seed=1, rank=1, world_size=2)
    assert len(batches0) == len(batches1) == 3  # 3 buckets x 2 full batches, split evenly
    for batch in batches0 + batches1:
        assert len(batch) == 4 and len({samples[i].bucket for i in batch}) == 1
    seen = [i for b in batches0 + batches1 for i in b]
    assert len(seen) == len(set(seen))
    assert bucket_batches(samples, 4, epoch=0, seed=1) == bucket_batches(samples, 4, epoch=0, seed=1)
    assert bucket_batches(samples, 4, epoch=0, seed=1) != bucket_batches(samples, 4, epoch=1, seed=1)
