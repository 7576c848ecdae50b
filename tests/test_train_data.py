"""Training data (issue #8's first piece): buckets, crops read from the tiled SR outputs,
captions from the records, one-bucket batches split across ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixverve.core.tiling import TiledTiffWriter, bands_of
from pixverve.train.data import (
    CaptionMissing,
    TrainSamples,
    aspect_buckets,
    bucket_batches,
    budget_size,
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
        out.append(
            {
                "image_id": f"{k:016x}",
                "width": w,
                "height": h,
                "provenance": {"sr_output": str(path)},
                "long_caption": f"long {k}",
                "short_caption": f"short {k}",
                "_image": image,
            }
        )
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


def test_pixel_budget_is_diffsynths_dynamic_resolution():
    """DiffSynth's ImageCropAndResize with max_pixels (the published 8K L2P run): over the budget,
    both sides divided by sqrt(area / budget) and truncated, then floored to the factor."""
    assert budget_size(10000, 7500, 8192**2, 128) == (9344, 7040)  # int(9459.3), int(7094.5), floored to 128
    assert budget_size(6000, 4000, 8192**2, 128) == (5888, 3968)  # under the budget: only floored
    assert budget_size(8192, 8192, 8192**2, 128) == (8192, 8192)
    with pytest.raises(ValueError, match="under 128"):
        budget_size(20000, 100, 8192**2, 128)


def test_square_and_budget_sizes_scale_to_cover_and_keep_the_centre(records):
    """The published L2P reading (scale to cover the target, centre crop) on the tiled image."""
    square = samples_from_records(records, resolution=256, sizes="square")
    assert {s.bucket for s in square} == {(256, 256)}
    data = TrainSamples(square, mode="cover", cover_resample="area")
    pixels, _, box = data[0, 0]  # 450 x 300: the centred 300 x 300 window
    assert box == (75, 0, 300, 300) and pixels.shape == (256, 256, 3)
    assert data.crop_box(0, 0) == data.crop_box(0, 5)  # no randomness: every epoch the same window
    budget = samples_from_records(records, resolution=256, sizes="max_pixels", multiple=64)
    # 450 x 300 under 256^2? no (135000 > 65536): scaled by sqrt(135000 / 65536), then floored to 64
    assert budget[0].bucket == (256, 192) and budget[2].bucket == (320, 128)
    pixels, _, (x, y, w, h) = TrainSamples(budget, mode="cover", cover_resample="area")[0, 0]
    assert pixels.shape == (192, 256, 3) and (w, h) == (400, 300) and (x, y) == (25, 0)


def test_run_sizes_per_resolution_are_checked_and_force_the_cover_crop():
    import copy

    import yaml

    from pixverve.train.config import check_train_config, resolve_run

    config = yaml.safe_load(open("config.yaml"))
    spec = resolve_run(config, "scheme3_l2p", 8192)
    assert spec["sizes"] == "max_pixels" and spec["data"]["crop_mode"] == "cover"
    assert resolve_run(config, "scheme3_l2p", 4096)["sizes"] == "square"
    assert resolve_run(config, "scheme1_full", 4096)["sizes"] == "buckets"  # unpublished recipe: ours
    assert resolve_run(config, "scheme1_full", 4096)["data"]["crop_mode"] == "crop"
    bad = copy.deepcopy(config)
    bad["train"]["runs"]["scheme3_l2p"]["sizes"] = {"4096": "square"}
    with pytest.raises(ValueError, match="sizes has no entry for resolution 8192"):
        check_train_config(bad)


def test_budget_sizes_with_batches_of_two_leave_images_out_and_say_so(records):
    """Every budget size is its own batch size class: with batch_size 2 the epoch is empty here
    (what train_run now logs), with batch_size 1 every image is used."""
    budget = samples_from_records(records, resolution=256, sizes="max_pixels", multiple=64)
    assert len({s.bucket for s in budget}) == 3
    assert bucket_batches(budget, 2, epoch=0) == []
    assert sorted(i for b in bucket_batches(budget, 1, epoch=0) for i in b) == [0, 1, 2]


@pytest.mark.parametrize(
    "size, target",
    [
        ((450, 300), (256, 256)),  # down, landscape: the sides' centre
        ((300, 451), (128, 192)),  # down, odd side: torchvision's rounding of the offset
        ((333, 517), (256, 128)),  # down, the other side crops
        ((200, 180), (256, 256)),  # up (the 10K run on a 100 MP image): Pillow's support stays 1 px
        ((257, 255), (256, 256)),  # almost 1:1
    ],
)
def test_cover_published_equals_pillow_resize_of_the_whole_image_then_the_centre_crop(tmp_path, size, target):
    """DiffSynth's ImageCropAndResize as the published L2P run reads an image: torchvision
    ``resize`` (Pillow bilinear) of the whole image to round(side * scale), then ``center_crop``.
    Ours reads only the window the crop's filter taps reach, from the tiled SR output."""
    import torchvision.transforms.functional as tvf
    from PIL import Image

    from pixverve.train.data import CoverGeometry, Sample

    w, h = size
    rgb = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb = (rgb // 2 + np.linspace(0, 127, w, dtype=np.uint8)[None, :, None]).astype(np.uint8)  # texture and a ramp
    path = tmp_path / "img.tif"
    TiledTiffWriter(path, h, w, tile=64).write(bands_of(rgb, 64))
    geometry = CoverGeometry(w, h, target)
    scale = max(target[0] / w, target[1] / h)
    published = tvf.resize(
        Image.fromarray(rgb), [round(h * scale), round(w * scale)], interpolation=tvf.InterpolationMode.BILINEAR
    )
    published = np.asarray(tvf.center_crop(published, [target[1], target[0]]))
    sample = Sample("a", path, w, h, target, "c")
    pixels, _, window = TrainSamples([sample], mode="cover")[0, 0]
    # equal up to Pillow's rounding of a box's filter coefficients: 1 grey level on a few pixels
    diff = np.abs(pixels.astype(int) - published)
    assert pixels.shape == published.shape and diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert window == geometry.window() and window[2] * window[3] <= w * h  # never more than the image
    shifted = np.abs(np.roll(pixels, 1, axis=1).astype(int) - published)  # one pixel off: far from equal
    area, _, _ = TrainSamples([sample], mode="cover", cover_resample="area")[0, 0]
    assert (shifted > 1).mean() > 0.3 and area.shape == published.shape
    if scale < 0.9:  # a real reduction: the area filter is another picture (same place)
        assert (np.abs(area.astype(int) - published) > 1).mean() > 0.05
