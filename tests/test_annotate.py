"""Stage 5 geometry with known answers: box mapping, crop padding, NMS, RLE, tiled reads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixverve.caption.models import nearest_tag, parse_rex_boxes
from pixverve.core.tiling import TiledTiffWriter, bands_of
from pixverve.core.views import (
    TiledImage,
    box_iou,
    box_nms,
    fit_within,
    instance_crop,
    map_box,
    mask_nms,
    padded_crop_box,
    rle_decode,
    rle_encode,
    tile_regions,
)


def test_map_box_from_a_downscaled_view():
    # the detector saw the whole 1000x500 image at 100x50: every coordinate x10
    assert map_box([10, 5, 20, 10], (100, 50), (0, 0, 1000, 500)) == [100, 50, 200, 100]


def test_map_box_from_a_tile_adds_its_offset_and_clips():
    # a 400x200 tile at (200, 100), seen at 100x50: x4 then shifted
    assert map_box([0, 0, 100, 50], (100, 50), (200, 100, 400, 200)) == [200, 100, 600, 300]
    assert map_box([25, 10, 50, 20], (100, 50), (200, 100, 400, 200)) == [300, 140, 400, 180]
    # a box reaching past the view is clipped to the tile
    assert map_box([-5, -5, 120, 60], (100, 50), (200, 100, 400, 200)) == [200, 100, 600, 300]


def test_padded_crop_is_centred_with_five_percent_each_side():
    # box 100 x 200 centred at (150, 200): 110 x 220 crop around the same centre
    assert padded_crop_box([100, 100, 200, 300], 1000, 1000, 0.05) == (95, 90, 110, 220)


def test_padded_crop_shifts_inside_at_the_border_and_clips_only_when_too_big():
    assert padded_crop_box([0, 0, 100, 100], 1000, 1000, 0.05) == (0, 0, 110, 110)
    assert padded_crop_box([900, 950, 1000, 1000], 1000, 1000, 0.05) == (890, 945, 110, 55)
    assert padded_crop_box([0, 0, 1000, 1000], 1000, 1000, 0.05) == (0, 0, 1000, 1000)


def test_box_iou_and_nms():
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]]
    # 1 overlaps 0 (IoU 9/11); 3 equals 0 but has the higher score, so 3 suppresses 0 and 1
    assert box_nms(boxes, [0.9, 0.8, 0.5, 0.95], 0.5) == [3, 2]


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_nms_drops_overlaps_and_small_masks_with_reasons():
    a = _rect(100, 100, 0, 50, 0, 50)  # 2500 px
    b = _rect(100, 100, 0, 50, 0, 48)  # IoU with a = 2400/2500 = 0.96
    c = _rect(100, 100, 90, 92, 90, 92)  # 4 px = 0.0004 of the image
    d = _rect(100, 100, 60, 100, 60, 100)  # separate
    kept, dropped = mask_nms([a, b, c, d], [0.9, 0.95, 0.99, 0.5], iou_threshold=0.8, min_area_fraction=0.001)
    assert kept == [1, 3]  # b outscores a; a is its duplicate
    assert dropped[0].startswith("overlap: IoU 0.960") and "instance 1" in dropped[0]
    assert dropped[2].startswith("small: area 0.00040")


def test_rle_known_answer_is_column_major_starting_with_zeros():
    m = np.array([[0, 1], [1, 1], [0, 0]], bool)  # columns: 0,1,0 then 1,1,0
    assert rle_encode(m) == {"size": [3, 2], "counts": [1, 1, 1, 2, 1]}
    assert rle_encode(np.ones((1, 1), bool)) == {"size": [1, 1], "counts": [0, 1]}
    assert rle_encode(np.zeros((2, 2), bool))["counts"] == [4]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_round_trip(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((37, 53)) > 0.6
    rle = rle_encode(m)
    assert sum(rle["counts"]) == m.size
    assert np.array_equal(rle_decode(rle), m)
    with pytest.raises(ValueError, match="sum"):
        rle_decode({"size": [2, 2], "counts": [1, 1]})


def test_tile_regions_cover_the_image_with_overlap():
    regions = tile_regions(1000, 600, 2, 0.1)
    assert regions == [(0, 0, 550, 330), (450, 0, 550, 330), (0, 270, 550, 330), (450, 270, 550, 330)]
    assert tile_regions(1000, 600, 1) == [(0, 0, 1000, 600)]


@pytest.fixture
def tiled(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (530, 700, 3), dtype=np.uint8)
    path = tmp_path / "sr.tif"
    TiledTiffWriter(path, 530, 700, tile=256).write(bands_of(image, 100))
    return path, image


def test_tiled_region_reads_match_the_image(tiled):
    path, image = tiled
    with TiledImage(path) as t:
        assert (t.width, t.height) == (700, 530)
        for x, y, w, h in [(0, 0, 700, 530), (250, 250, 20, 20), (511, 3, 189, 527), (699, 529, 1, 1)]:
            assert np.array_equal(t.read(x, y, w, h), image[y : y + h, x : x + w])
        with pytest.raises(ValueError, match="outside"):
            t.read(690, 0, 20, 10)


@pytest.mark.parametrize("max_side, f", [(100, 7), (90, 8), (30, 24), (700, 1)])
def test_tiled_downscale_is_the_block_mean(tiled, max_side, f):
    """f = ceil(700 / max_side); 8 and 24 leave partial blocks at the right and bottom edges, and
    24 straddles the tile rows."""
    path, image = tiled
    with TiledImage(path) as t:
        small = t.downscaled(max_side)
    assert small.shape == (math.ceil(530 / f), math.ceil(700 / f), 3)
    ref = np.empty_like(small)
    for i in range(small.shape[0]):
        for j in range(small.shape[1]):
            block = image[i * f : (i + 1) * f, j * f : (j + 1) * f].astype(np.float64)
            ref[i, j] = np.floor(block.reshape(-1, 3).mean(axis=0) + 0.5)
    assert np.array_equal(small, ref)


def test_instance_crop_reads_full_resolution_for_small_instances(tiled):
    path, image = tiled
    with TiledImage(path) as t:
        view = t.downscaled(100)
        crop, region = instance_crop(t, view, [300, 200, 340, 260], 0.05, 256)
        assert region == (298, 197, 44, 66)
        assert np.array_equal(crop, image[197:263, 298:342])  # small: untouched full-resolution pixels
        big, region = instance_crop(t, view, [0, 0, 700, 530], 0.05, 64)
    assert region == (0, 0, 700, 530) and max(big.shape[:2]) == 64  # big: from the analysis copy


def test_fit_within_keeps_small_images():
    img = np.zeros((10, 20, 3), np.uint8)
    assert fit_within(img, 64) is img
    assert fit_within(np.zeros((100, 400, 3), np.uint8), 64).shape == (16, 64, 3)


def test_rex_omni_answer_is_parsed_to_view_pixels():
    text = (
        "<|object_ref_start|>cat<|object_ref_end|><|box_start|><0><0><999><499>,<100><100><200><200><|box_end|>"
        "<|object_ref_start|>red sofa<|object_ref_end|><|box_start|><10><20><5><30><|box_end|>"  # x1 < x0: skipped
    )
    boxes = parse_rex_boxes(text, 999, 500)
    assert [b["label"] for b in boxes] == ["cat", "cat"]
    assert boxes[0]["box"] == [0.0, 0.0, 999.0, pytest.approx(499 / 999 * 500)]  # bin / (bins - 1) * size
    assert boxes[1]["box"] == [100.0, pytest.approx(100 / 999 * 500), 200.0, pytest.approx(200 / 999 * 500)]
    assert parse_rex_boxes("no boxes here", 10, 10) == []


def test_nearest_tag_maps_detector_phrases_to_prompt_tags():
    tags = ["coffee cup", "cat", "red sofa"]
    assert nearest_tag("cat", tags) == "cat"
    assert nearest_tag("coffee", tags) == "coffee cup"
    assert nearest_tag("sofa", tags) == "red sofa"
    assert nearest_tag("", tags) == "object"
    assert nearest_tag("cat. red sofa. [SEP]", tags) == "red sofa"  # run-together phrases: the longest tag in it
    assert nearest_tag("##sof", tags) == "red sofa"


def test_nearest_tag_each_rule_in_turn():
    """A detected phrase -> its prompt tag: BERT markers and sub-word joins removed, lower case,
    trailing dots stripped; exact; else the longest tag inside it as a whole word (ties: prompt
    order); else the first tag containing it; else the closest spelling; "object" when nothing."""
    tags = ["cat", "black cat", "sofa", "tv monitor", "tv stand", "kitchen"]
    assert nearest_tag("[CLS] Black  Cat [SEP] .", tags) == "black cat"
    assert nearest_tag("so##fa.", tags) == "sofa"
    assert nearest_tag("a black cat on a sofa", tags) == "black cat"  # longest inside
    assert nearest_tag("sofa and cat", ["sofa", "cat", "dog"]) == "sofa"  # longest (4 > 3)
    assert nearest_tag("dog cat", ["cat", "dog"]) == "cat"  # equal length: prompt order
    assert nearest_tag("concatenate", ["cat", "concatenation"]) == "concatenation"  # "cat" is no whole word
    assert nearest_tag("tv", tags) == "tv monitor"  # inside a tag: the first such
    assert nearest_tag("kitten", tags) == "kitchen"  # closest spelling
    assert nearest_tag("zzz", ["cat"]) == "cat"  # any tag beats "object" while there is one
    assert nearest_tag("zzz", []) == "object"
    assert nearest_tag("Box.", ["box", "bo"]) == "box"  # only dots and spaces are stripped
    assert nearest_tag(" [SEP] [CLS] ## . ", tags) == "object"


def test_build_tagger_passes_each_key_and_keeps_the_published_ram_defaults(monkeypatch, tmp_path):
    """caption.tags -> the tagger: vlm -> none (the VLM client asks); ram_plus with recognize-
    anything's defaults (384 px, swin_l); clip with its threshold and top k; unknown -> an error."""
    import inspect

    from pixverve.caption import models
    from pixverve.models.loading import ModelUnavailable

    defaults = inspect.signature(models.RamPlusTagger.__init__).parameters
    assert (defaults["image_size"].default, defaults["vit"].default) == (384, "swin_l")
    made = []
    monkeypatch.setattr(models, "RamPlusTagger", lambda *a: made.append(("ram", *a)) or "ram")
    monkeypatch.setattr(models, "ClipTagger", lambda *a, **k: made.append(("clip", *a)) or "clip")
    monkeypatch.setattr(models, "model_device", lambda spec: f"device of {sorted(spec)}")
    assert models.build_tagger({"backend": "vlm"}) is None and made == []
    assert models.build_tagger({"backend": "ram_plus"}) == "ram"
    assert made[-1] == ("ram", None, 384, "swin_l", "device of []")
    spec = {"weights": "w.pth", "image_size": "448", "vit": "swin_b"}
    models.build_tagger({"backend": "ram_plus", "ram_plus": spec})
    assert made[-1] == ("ram", "w.pth", 448, "swin_b", "device of ['image_size', 'vit', 'weights']")
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("# a comment\ncat\n\n  sofa  \n")
    clip = {"vocabulary": str(vocabulary), "threshold": "0.25", "top_k": "7"}
    with pytest.raises(ModelUnavailable, match=r"^config key caption.tags.clip.model: set a local folder or hub id$"):
        models.build_tagger({"backend": "clip", "clip": clip})
    models.build_tagger({"backend": "clip", "clip": clip | {"model": "m"}})
    assert made[-1] == (
        "clip",
        "m",
        ["cat", "sofa"],
        0.25,
        7,
        "device of ['model', 'threshold', 'top_k', 'vocabulary']",
    )
    with pytest.raises(ModelUnavailable, match="unknown backend 'owl'"):
        models.build_tagger({"backend": "owl", "clip": clip})


def test_build_detector_and_segmenter_pass_each_key(monkeypatch):
    """caption.boxes / caption.masks -> the models: rex_omni -> none (the VLM client), Grounding DINO
    with its box / text thresholds and tags per prompt, SAM 2 with its box chunk (64 by default),
    box masks without a model; a missing model folder or an unknown backend is an error naming the key."""
    from pixverve.caption import models
    from pixverve.models.loading import ModelUnavailable

    made = []
    monkeypatch.setattr(models, "GroundingDinoDetector", lambda *a, **k: made.append(("gd", a, k)) or "gd")
    monkeypatch.setattr(models, "Sam2Segmenter", lambda *a, **k: made.append(("sam2", a, k)) or "sam2")
    monkeypatch.setattr(models, "model_device", lambda spec: f"device of {sorted(spec)}")
    assert models.build_detector({"backend": "rex_omni"}) is None and made == []
    gd = {"box_threshold": "0.35", "text_threshold": "0.25", "tags_per_prompt": "12"}
    with pytest.raises(ModelUnavailable, match=r"^config key caption.boxes.grounding_dino.model: set a local"):
        models.build_detector({"backend": "grounding_dino", "grounding_dino": gd})
    assert models.build_detector({"backend": "grounding_dino", "grounding_dino": gd | {"model": "m"}}) == "gd"
    device = "device of ['box_threshold', 'model', 'tags_per_prompt', 'text_threshold']"
    assert made[-1] == ("gd", ("m", 0.35, 0.25, 12), {"device": device})
    with pytest.raises(ModelUnavailable, match=r"caption.boxes.backend: unknown backend 'yolo'"):
        models.build_detector({"backend": "yolo", "grounding_dino": gd})
    assert isinstance(models.build_segmenter({"backend": "box"}), models.BoxSegmenter)
    with pytest.raises(ModelUnavailable, match=r"^config key caption.masks.sam2.model: set a local"):
        models.build_segmenter({"backend": "sam2"})
    assert models.build_segmenter({"backend": "sam2", "sam2": {"model": "s"}}) == "sam2"
    assert made[-1] == ("sam2", ("s", "device of ['model']"), {"box_chunk": 64})
    models.build_segmenter({"backend": "sam2", "sam2": {"model": "s"}, "box_chunk": "16"})
    assert made[-1][2] == {"box_chunk": 16}
    with pytest.raises(ModelUnavailable, match=r"caption.masks.backend: unknown backend 'grabcut'"):
        models.build_segmenter({"backend": "grabcut"})
