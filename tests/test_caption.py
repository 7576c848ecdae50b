"""Stage 5 steps through the library against a local chat-completions server (the VLM client's
real protocol) and the real model code on tiny random models: tags + pruning, Rex-Omni boxes
mapped to full resolution, masks + NMS, the instance-level artefact check, descriptions,
aesthetics, captions, schema-valid records, the export split and Table 1's bookkeeping."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("openai")

from fake_openai import FakeOpenAI  # noqa: E402

from pixverve.caption import dataset  # noqa: E402
from pixverve.caption import steps as caption  # noqa: E402
from pixverve.caption.models import BoxSegmenter, build_detector, build_segmenter, build_tagger  # noqa: E402
from pixverve.core import views as annotate  # noqa: E402
from pixverve.core.tiling import TiledTiffWriter, bands_of  # noqa: E402
from pixverve.models import vlm as vlm_client  # noqa: E402
from pixverve.models.vlm import VLMClient, VLMSettings  # noqa: E402
from pixverve.verify.instances import judge_instances_shard  # noqa: E402

IDS = ["00000000000000aa", "00000000000000bb"]
W, H = 400, 300
AESTHETICS = {k: {"score": 7, "analysis": f"fine {k}"} for k, _ in caption.AESTHETIC_DIMENSIONS}
REX = (
    "<|object_ref_start|>cat<|object_ref_end|><|box_start|><100><100><400><500>,<102><100><400><500><|box_end|>"
    "<|object_ref_start|>red sofa<|object_ref_end|><|box_start|><500><500><999><999><|box_end|>"
)


def _text(body) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else next(c["text"] for c in content if c["type"] == "text")


class Scripted:
    """Answers each stage-5 prompt the way a well-behaved VLM would; ``overrides`` replace one task's answer."""

    def __init__(self, **overrides):
        self.overrides, self.seen = overrides, []

    def __call__(self, body):
        text = _text(body)
        self.seen.append(text)
        for key, marker in (
            ("tags", "List what can be seen"),
            ("prune", "Below is a list of tags"),
            ("rex", "Detect "),
            ("artifact", "centred on one object. Look"),
            ("describe", "Describe the highlighted object"),
            ("aesthetics", "Analyse the aesthetics"),
            ("long", "Write a detailed caption"),
            ("short", "Distil it"),
        ):
            if marker in text:
                if key in self.overrides:
                    return self.overrides[key]
                break
        else:
            raise AssertionError(f"unexpected prompt: {text[:80]}")
        if key == "describe":
            label = re.search(r'labelled "([^"]+)"', text).group(1)
            return (
                "<json>"
                + json.dumps({"description": f"a {label} seen closely", "importance": 9 if label == "cat" else 3})
                + "</json>"
            )
        return {
            "tags": '<json>{"tags": ["Cat", "sky", "cat", "red  sofa", "happiness"]}</json>',
            "prune": '<json>{"objects": ["red sofa", "cat", "dragon"]}</json>',
            "rex": REX,
            "artifact": '<json>{"flagged": false, "reason": "clean"}</json>',
            "aesthetics": "<json>" + json.dumps(AESTHETICS) + "</json>",
            "long": "<think>plan</think>A cat sits on a red sofa in warm light, the sofa filling the lower right.",
            "short": "A cat on a red sofa.",
        }[key]


@pytest.fixture
def shard(tmp_path, demo_config):
    rng = np.random.default_rng(0)
    up_rows, ver_rows = [], []
    for iid in IDS:
        path = tmp_path / "sr" / f"{iid}.tif"
        TiledTiffWriter(path, H, W, tile=128).write(bands_of(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), 64))
        base = {"image_id": iid, "root": "demo", "relpath": f"{iid}.jpg", "shard": "s00000"}
        up_rows.append(
            base | {"passed": True, "output_path": str(path), "backend": "lanczos", "scale": 2, "weights": ""}
        )
        ver_rows.append(base | {"passed": True, "output_path": str(path)})
    config = copy.deepcopy(demo_config)
    config["caption"]["view_px"] = 200
    config["caption"]["tags"]["backend"] = "vlm"
    config["caption"]["boxes"]["backend"] = "rex_omni"
    config["caption"]["masks"].update(backend="box", max_instances=None)
    config["vlm"]["invalid_policy"] = "drop"
    # these tests look at each image's outcome, below the job's health gates (tests/test_failsafe.py)
    config["caption"]["max_failed_fraction"] = config["verify"]["max_failed_fraction"] = 1.0
    return {
        "config": config,
        "verified": pd.DataFrame(ver_rows),
        "upscaled": pd.DataFrame(up_rows),
        "views": tmp_path / "views",
    }


def _client(server, **kw):
    kw = {
        "probe": False,
        "stop_after_consecutive_failures": 0,
    } | kw  # per-image outcomes; the gates: tests/test_failsafe.py
    c = VLMClient(
        VLMSettings(base_url=server.base_url, model="fake-vlm", backoff_s=0.01, retries=1, timeout_s=10, **kw)
    )
    c.smoke = False
    return c


def _step_client(server, config, overrides):
    """A client with a step's ``vlm`` overrides merged in, as scripts/ build it (served_step_judge)."""
    vlm = vlm_client.step_config(config, overrides)["vlm"] | {
        "base_url": server.base_url,
        "backoff_s": 0.01,
        "retries": 1,
        "timeout_s": 10,
        "probe": False,
        "stop_after_consecutive_failures": 0,
    }
    c = VLMClient(VLMSettings.from_config(vlm))
    c.smoke = False
    return c


def _run_chain(shard, responder, **faults):
    cfg, views = shard["config"], shard["views"]
    with FakeOpenAI(responder=responder, **faults) as server:
        judge = _client(server)
        rex = _step_client(server, cfg, cfg["caption"]["boxes"]["rex_omni"]["vlm"])
        tags = caption.tag_shard(shard["verified"], "s00000", cfg, views, None, judge, judge, log=lambda *_: None)
        boxes = caption.boxes_shard(tags, cfg, views, shard["upscaled"], None, rex, log=lambda *_: None)
        masks = caption.masks_shard(boxes, cfg, views, BoxSegmenter(), log=lambda *_: None)
        checks, crops = judge_instances_shard(
            masks, cfg, views, shard["upscaled"], judge, "prompts/instance_artifact.md", log=lambda *_: None
        )
        desc = caption.describe_instances_shard(
            masks, checks, cfg, views, shard["upscaled"], judge, log=lambda *_: None
        )
        aest = caption.aesthetic_analysis_shard(checks, cfg, views, judge, log=lambda *_: None)
        index = shard["verified"].assign(source="demo", licence="CC0", url="", author="")
        caps = caption.captions_shard(checks, tags, desc, aest, index, cfg, views, judge, log=lambda *_: None)
    return dict(
        tags=tags,
        boxes=boxes,
        masks=masks,
        instance_checks=checks,
        crops=crops,
        descriptions=desc,
        aesthetics=aest,
        captions=caps,
        index=index,
    )


def test_the_chain_with_a_well_behaved_vlm(shard):
    responder = Scripted()
    out = _run_chain(shard, responder)
    tags = out["tags"].set_index("image_id")
    # tags cleaned (lower case, spaces, duplicates); pruning keeps a subset in the tagger's order
    assert json.loads(tags.loc[IDS[0], "tags_raw"]) == ["cat", "sky", "red sofa", "happiness"]
    assert json.loads(tags.loc[IDS[0], "tags"]) == ["cat", "red sofa"]  # "dragon" was never a tag
    assert (tags["prune_status"] == "ok").all() and tags["tags_prompt_sha"].str.len().eq(12).all()
    assert (shard["views"] / f"{IDS[0]}.png").exists()
    # Rex-Omni bins -> view pixels -> full resolution (view is 200x150 of 400x300: x2); the two
    # near-identical cat boxes are one after NMS
    boxes = json.loads(out["boxes"].set_index("image_id").loc[IDS[0], "boxes"])
    assert sorted(b["label"] for b in boxes) == ["cat", "red sofa"]
    cat = next(b for b in boxes if b["label"] == "cat")
    assert cat["box"] == pytest.approx([100 / 999 * 400, 100 / 999 * 300, 400 / 999 * 400, 500 / 999 * 300], abs=0.01)
    masks = out["masks"].set_index("image_id")
    assert (masks["n_instances"] == 2).all()
    # the instance check judged each crop; all clean -> both images go on
    assert out["instance_checks"]["passed"].all() and len(out["crops"]) == 4
    desc = out["descriptions"]
    assert len(desc) == 4 and (desc["status"] == "ok").all()
    assert set(desc.loc[desc["label"] == "cat", "importance"]) == {9}
    assert (out["aesthetics"]["composition_design_score"] == 7).all()
    caps = out["captions"].set_index("image_id")
    assert caps.loc[IDS[0], "long_caption"].startswith("A cat sits")  # <think> removed
    assert caps.loc[IDS[0], "short_caption"] == "A cat on a red sofa."
    # every raw reply column has its request options beside it (JSON, keys sorted: the same every run)
    for name, column, max_tokens in (
        ("tags", "tags_request_options", 1024),
        ("tags", "prune_request_options", 1024),
        ("boxes", "request_options", 4096),
        ("descriptions", "request_options", 1024),
        ("aesthetics", "judge_request_options", 1024),
        ("captions", "long_request_options", 1024),
        ("captions", "short_request_options", 1024),
        ("crops", "request_options", 1024),
    ):
        for value in out[name][column]:
            assert json.loads(value)["max_tokens"] == max_tokens and value == json.dumps(
                json.loads(value), sort_keys=True
            ), column
    # the long-caption prompt got the metadata, most important instance first
    long_prompt = next(t for t in responder.seen if "Write a detailed caption" in t)
    meta = json.loads(
        long_prompt.split("source information) are given below as JSON.", 1)[1]
        .split("The caption should", 1)[0]
        .split("never mention that annotations were given.", 1)[1]
    )
    assert [i["label"] for i in meta["instances"]] == ["cat", "red sofa"] and meta["tags"] == ["cat", "red sofa"]
    # the record of each image validates and carries provenance and every step
    purify = shard["verified"].assign(
        exposure_share=0.01, laplacian_var=50.0, flat_share=0.2, entropy_bits=7.0, laion_score=5.5
    )
    verify = shard["verified"].assign(max_seam_ratio=1.1, psnr=33.0, ssim=0.95, lpips=float("nan"))
    records, rejected = dataset.build_records(out | {"purify": purify, "verify": verify, "upscale": shard["upscaled"]})
    assert len(records) == 2 and not any(r["smoke"] for r in records)
    rec = records[0]
    assert rec["scores"]["lpips"] is None and rec["scores"]["psnr"] == 33.0 and rec["scores"]["artimuse_score"] is None
    assert len(rec["instances"]) == 2 and rec["instances"][0]["mask"]["size"] == [150, 200]
    assert rec["provenance"]["sr_backend"] == "lanczos" and rec["file_name"] == f"{IDS[0]}.tif"
    broken = copy.deepcopy(rec)
    broken["instances"][0]["box"] = [1, 2, 3]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, dataset.load_schema())


def test_unparseable_pruning_leaves_the_tags_unpruned_and_says_so(shard):
    with FakeOpenAI(responder=Scripted(prune="I think the cat matters.")) as server:
        judge = _client(server)
        tags = caption.tag_shard(
            shard["verified"], "s00000", shard["config"], shard["views"], None, judge, judge, log=lambda *_: None
        )
    assert (tags["prune_status"] == "unparseable").all()
    assert json.loads(tags["tags"].iloc[0]) == ["cat", "sky", "red sofa", "happiness"]
    assert "I think the cat matters." in tags["prune_replies"].iloc[0]


def test_a_flagged_instance_drops_the_image_and_descriptions_skip_it(shard):
    out = _run_chain(shard, Scripted(artifact='<json>{"flagged": true, "reason": "melted paw"}</json>'))
    checks = out["instance_checks"]
    assert not checks["passed"].any() and set(checks["reason"]) == {"instance_artifacts"}
    assert (out["crops"]["judge_reason"] == "melted paw").all()
    assert out["descriptions"].empty and out["captions"].empty


@pytest.mark.parametrize("policy, passed", [("drop", False), ("keep", True)])
def test_unparseable_instance_judgments_follow_the_policy(shard, policy, passed):
    shard["config"]["vlm"]["invalid_policy"] = policy
    out = _run_chain(shard, Scripted(artifact="looks fine to me"))
    checks = out["instance_checks"]
    assert (checks["passed"] == passed).all() and (checks["n_unjudged"] == 2).all()
    if not passed:
        assert set(checks["reason"]) == {"judge_unparseable"}


def test_an_out_of_range_importance_is_invalid_not_kept(shard):
    out = _run_chain(shard, Scripted(describe='<json>{"description": "a cat", "importance": 11}</json>'))
    desc = out["descriptions"]
    assert (desc["status"] == "invalid").all() and desc["importance"].isna().all() and desc["description"].isna().all()
    assert "importance" in desc["error"].iloc[0]


def test_tiny_models_run_the_real_code_paths(shard):
    cfg = shard["config"]
    tagger = build_tagger(cfg["caption"]["tags"] | {"backend": "tiny"})
    detector = build_detector(cfg["caption"]["boxes"] | {"backend": "tiny"})
    segmenter = build_segmenter(cfg["caption"]["masks"] | {"backend": "tiny"})
    assert tagger.smoke and detector.smoke and segmenter.smoke
    view = np.random.default_rng(1).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    (tags,) = tagger.tag([view])
    assert len(tags) == cfg["caption"]["tags"]["clip"]["top_k"]
    found = detector.detect(view, [t for t, _ in tags])
    assert found and all(f["label"] in [t for t, _ in tags] or f["label"] for f in found)
    assert all(0 <= f["box"][0] <= f["box"][2] <= 200 and 0 <= f["box"][1] <= f["box"][3] <= 150 for f in found)
    masks, scores = segmenter.segment(view, [f["box"] for f in found[:3]])
    assert len(masks) == len(scores) == min(3, len(found)) and masks[0].shape == (150, 200)


def test_missing_real_models_are_clear_errors(shard):
    from pixverve.models.loading import ModelUnavailable

    spec = shard["config"]["caption"]
    with pytest.raises(ModelUnavailable, match="caption.boxes.grounding_dino.model"):
        build_detector(
            spec["boxes"]
            | {
                "backend": "grounding_dino",
                "grounding_dino": spec["boxes"]["grounding_dino"] | {"model": "/nonexistent/gdino"},
            }
        )
    with pytest.raises(ModelUnavailable, match="caption.masks.sam2.model"):
        build_segmenter(spec["masks"] | {"backend": "sam2", "sam2": {"model": None}})


def test_benchmark_split_is_stable_when_images_are_added():
    ids = [f"{i:016x}" for i in range(50)]
    first = dataset.benchmark_split(ids, 10, seed=0)
    more = dataset.benchmark_split(ids + [f"{i:016x}" for i in range(1000, 1100)], 10, seed=0)
    assert len(first) == 10 and len(first & more) >= 1
    assert first - more == {i for i in first if i not in more}  # a held-out image leaves only if a new one ranks lower
    assert dataset.benchmark_split(ids, 10, seed=0) == first and dataset.benchmark_split(ids, 10, seed=1) != first


def test_export_layout_and_split():
    records = []
    for i in range(5):
        records.append(
            {
                "image_id": f"{i:016x}",
                "file_name": f"{i:016x}.tif",
                "width": 100,
                "height": 50,
                "provenance": {"source": "demo", "licence": "CC0"},
                "scores": {},
                "tags": ["cat"],
                "instances": [],
                "aesthetics": None,
                "long_caption": "a long one" if i != 4 else None,
                "short_caption": "short",
                "smoke": False,
                "smoke_steps": [],
            }
        )
    meta, train, bench = dataset.export_dataset(records, 2, seed=0)
    assert len(bench) == 2 and len(train) == 2 and set(meta["split"]) == {"train", "benchmark", "uncaptioned"}
    assert set(bench[0]) == {"file_name", "short_caption", "long_caption"}


def test_data_flow_check_catches_counts_that_do_not_add_up():
    good = pd.DataFrame(
        [("1", "a", 10, 0, 10, True), ("2", "filter", 10, 5, 5, False), ("2", "b", 10, 2, 8, True)],
        columns=["stage", "step", "entering", "dropped", "kept", "sequential"],
    )
    dataset.check_data_flow(good)
    bad = good.copy()
    bad.loc[2, "entering"] = 9
    with pytest.raises(ValueError, match="does not add up"):
        dataset.check_data_flow(bad)


def test_an_unreadable_sr_output_is_rejected_and_the_shard_goes_on(shard):
    Path(shard["upscaled"].loc[1, "output_path"]).write_bytes(b"II*\x00 truncated")
    out = _run_chain(shard, Scripted())
    tags = out["tags"].set_index("image_id")
    assert tags.loc[IDS[1], "tags_status"] == "unreadable" and "SR output" in tags.loc[IDS[1], "tags_error"]
    checks = out["instance_checks"].set_index("image_id")
    assert not checks.loc[IDS[1], "passed"] and checks.loc[IDS[1], "reason"] == "unreadable"
    assert checks.loc[IDS[0], "passed"] and list(out["captions"]["image_id"]) == [IDS[0]]


def test_rex_omni_is_asked_the_way_its_own_code_decodes(shard):
    """vLLM strips special tokens unless asked not to (the fake does too): with the paper config's
    Rex-Omni options the markers survive and boxes come back; a client without them gets the
    bins only, and the step says why instead of reporting zero boxes as success."""
    cfg = shard["config"]
    with FakeOpenAI(responder=Scripted()) as server:
        judge = _client(server)
        tags = caption.tag_shard(
            shard["verified"], "s00000", cfg, shard["views"], None, judge, None, log=lambda *_: None
        )
        n_before = len(server.bodies)
        rex = _step_client(server, cfg, cfg["caption"]["boxes"]["rex_omni"]["vlm"])
        good = caption.boxes_shard(tags, cfg, shard["views"], shard["upscaled"], None, rex, log=lambda *_: None)
        body = server.bodies[n_before]
        stripped = caption.boxes_shard(tags, cfg, shard["views"], shard["upscaled"], None, judge, log=lambda *_: None)
    # upstream rex_omni/wrapper.py: greedy, top_k 1, repetition penalty 1.05, 4096 new tokens, special tokens kept
    assert body["skip_special_tokens"] is False and body["top_k"] == 1 and body["repetition_penalty"] == 1.05
    assert body["max_tokens"] == 4096 and body["temperature"] == 0.0 and "response_format" not in body
    assert body["messages"][0] == {"role": "system", "content": cfg["caption"]["boxes"]["rex_omni"]["system_prompt"]}
    assert (good["status"] == "ok").all() and (good["n_boxes"] == 2).all()
    # ... and each boxes row records what its replies were asked with
    for recorded in map(json.loads, good["request_options"]):
        assert (
            recorded["skip_special_tokens"] is False
            and recorded["top_k"] == 1
            and recorded["repetition_penalty"] == 1.05
        )
        assert recorded["max_tokens"] == 4096 and recorded["temperature"] == 0.0 and "response_format" not in recorded
    assert all("skip_special_tokens" not in json.loads(v) for v in stripped["request_options"])
    assert (stripped["n_boxes"] == 0).all() and (stripped["status"] == "special_tokens_stripped").all()
    assert stripped["error"].str.contains("skip_special_tokens: false").all()


def test_a_truncated_rex_answer_keeps_its_last_category():
    from pixverve.caption.models import parse_rex_boxes, rex_reply_problem

    cut = (
        "<|object_ref_start|>cat<|object_ref_end|><|box_start|><0><0><999><999><|box_end|>"
        "<|object_ref_start|>dog<|object_ref_end|><|box_start|><0><0><499><499>, <500><500><999><999>, <10><10>"
    )
    boxes = parse_rex_boxes(cut, 999, 999)
    assert [b["label"] for b in boxes] == ["cat", "dog", "dog"]  # the half-written third dog box is dropped
    assert boxes[2]["box"] == pytest.approx([500, 500, 999, 999])
    ended = parse_rex_boxes(
        "<|object_ref_start|>cat<|object_ref_end|><|box_start|><0><0><9><9><|box_end|><|im_end|>junk", 999, 999
    )
    assert len(ended) == 1
    assert rex_reply_problem("cat<0><0><9><9>") and not rex_reply_problem(cut) and not rex_reply_problem("")


def test_sam2_prompts_one_image_embedding_with_chunks_of_boxes(tmp_path):
    """Chunked masks equal one forward over every box, and no forward sees more than box_chunk boxes."""
    import torch

    from pixverve.caption.models import Sam2Segmenter
    from pixverve.models.tiny_vision import build_tiny_sam2

    folder = build_tiny_sam2(tmp_path / "sam2", seed=0)
    seg = Sam2Segmenter(str(folder), "cpu", smoke=True, box_chunk=2)
    view = np.random.default_rng(3).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    boxes = [[10, 10, 80, 90], [50, 20, 190, 140], [0, 0, 199, 149], [100, 60, 130, 100], [5, 100, 60, 148]]
    inputs = seg.processor(images=view, input_boxes=[boxes], return_tensors="pt")
    with torch.inference_mode():
        whole = seg.model(**inputs, multimask_output=False)
    want = [
        m[0].numpy().astype(bool)
        for m in seg.processor.post_process_masks(whole.pred_masks, inputs["original_sizes"])[0]
    ]
    seen, forward = [], seg.model.forward

    def counting(*args, **kw):
        seen.append((kw.get("pixel_values") is None, int(kw["input_boxes"].shape[1])))
        return forward(*args, **kw)

    seg.model.forward = counting
    masks, scores = seg.segment(view, boxes)
    assert seen == [(True, 2), (True, 2), (True, 1)]  # the embedding is reused, never re-encoded
    assert len(masks) == 5 and all(np.array_equal(a, b) for a, b in zip(masks, want))
    assert scores == pytest.approx(whole.iou_scores[0, :, 0].tolist(), abs=1e-6)


def test_grounding_dino_splits_a_long_tag_list_to_fit_its_text_limit(tmp_path):
    """40 tags are ~150 tokens for the tiny model, whose max_text_len is 64: one prompt crashed the
    shard ("size of tensor a (152) must match ... (64)"); now each prompt fits and boxes merge."""
    from pixverve.caption.models import GroundingDinoDetector
    from pixverve.models.tiny_vision import build_tiny_grounding_dino

    det = GroundingDinoDetector(str(build_tiny_grounding_dino(tmp_path / "gd")), 0.0, 0.0, 20, "cpu")
    tags = [f"thing{i}" for i in range(38)] + ["red sofa", "a tag far too long to fit any prompt of this model " * 2]
    view = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    lengths, forward = [], det.model.forward

    def counting(*args, **kw):
        lengths.append(int(kw["input_ids"].shape[1]))
        return forward(*args, **kw)

    det.model.forward = counting
    groups = det.prompt_groups(tags)
    assert det.text_limit == 64 and [t for g in groups for t in g] == [t.strip() for t in tags]
    assert all(len(g) <= 20 for g in groups) and len(groups[-1]) == 1  # the over-long tag alone
    found = det.detect(view, tags)
    assert len(lengths) == len(groups) and max(lengths) <= 64
    # each box is labelled among the tags of the prompt that found it: the merge equals the groups run one by one
    assert found == [d for g in groups for d in det.detect(view, g)]
    assert found and {d["label"] for d in found} <= {t.strip() for t in tags}


class _FailsOn:
    """Wraps a real detector/segmenter; raises what a model raises on the image whose view has ``bad_px`` at (0, 0)."""

    def __init__(self, inner, bad_px, method):
        self.inner, self.bad_px, self.method = inner, bad_px, method
        self.model_name, self.smoke = inner.model_name, False

    def _call(self, view, arg):
        if int(view[0, 0, 0]) == self.bad_px:
            raise RuntimeError(
                "The size of tensor a (94) must match the size of tensor b (64) at non-singleton dimension 2"
            )
        return getattr(self.inner, self.method)(view, arg)

    def detect(self, view, tags):
        return self._call(view, tags)

    def tag(self, views):  # a batch holding the bad image fails as a whole, as a batched forward would
        if any(int(view[0, 0, 0]) == self.bad_px for view in views):
            raise RuntimeError(
                "The size of tensor a (94) must match the size of tensor b (64) at non-singleton dimension 2"
            )
        return self.inner.tag(views)

    def segment(self, view, boxes):
        return self._call(view, boxes)


class _CatTagger:
    model_name, smoke = "cat tagger", False

    def tag(self, views):
        return [[("cat", 0.9)] for _ in views]


@pytest.mark.parametrize("step", ["tagger", "detector", "segmenter"])
def test_a_model_error_on_one_image_is_its_row_and_the_shard_goes_on(shard, step):
    from pixverve.caption.models import BoxSegmenter

    cfg, views = shard["config"], shard["views"]
    with FakeOpenAI(responder=Scripted()) as server:
        judge = _client(server)
        tags = caption.tag_shard(shard["verified"], "s00000", cfg, views, None, judge, judge, log=lambda *_: None)
        bad = int(annotate.read_view(views, IDS[1])[0, 0, 0])
        assert int(annotate.read_view(views, IDS[0])[0, 0, 0]) != bad
        if step == "tagger":  # the same views again, tagged by a model that fails on the second image
            tags = caption.tag_shard(
                shard["verified"],
                "s00000",
                cfg,
                views,
                _FailsOn(_CatTagger(), bad, "tag"),
                None,
                judge,
                log=lambda *_: None,
            )
            by_id = tags.set_index("image_id")
            assert by_id.loc[IDS[0], "tags_status"] == "ok" and json.loads(by_id.loc[IDS[0], "tags"]) == ["cat"]
            assert by_id.loc[IDS[1], "tags_status"] == "model_error" and by_id.loc[IDS[1], "n_tags"] == 0
            assert by_id.loc[IDS[1], "tags_error"].startswith("tagger: RuntimeError: The size of tensor a (94)")

        class Boxes:  # a detector that always finds the whole image (the real GD path is tested above)
            model_name, smoke = "whole-image boxes", False

            def detect(self, view, kept):
                return [
                    {
                        "label": kept[0],
                        "phrase": kept[0],
                        "score": 0.9,
                        "box": [0, 0, view.shape[1] - 1, view.shape[0] - 1],
                    }
                ]

        detector = _FailsOn(Boxes(), bad, "detect") if step == "detector" else Boxes()
        segmenter = _FailsOn(BoxSegmenter(), bad, "segment") if step == "segmenter" else BoxSegmenter()
        boxes = caption.boxes_shard(tags, cfg, views, shard["upscaled"], detector, None, log=lambda *_: None)
        masks = caption.masks_shard(boxes, cfg, views, segmenter, log=lambda *_: None)
        checks, _ = judge_instances_shard(
            masks, cfg, views, shard["upscaled"], judge, "prompts/instance_artifact.md", log=lambda *_: None
        )
    masks, checks = masks.set_index("image_id"), checks.set_index("image_id")
    assert masks.loc[IDS[0], "status"] == "ok" and masks.loc[IDS[0], "n_instances"] == 1
    carried = (
        "tags_model_error" if step == "tagger" else "model_error"
    )  # a tagger failure is carried with its step's name
    assert masks.loc[IDS[1], "status"] == carried and f"{step}: RuntimeError" in masks.loc[IDS[1], "error"]
    assert checks.loc[IDS[0], "passed"] and not checks.loc[IDS[1], "passed"]
    assert checks.loc[IDS[1], "reason"] == "model_failed" and "size of tensor" in checks.loc[IDS[1], "reason_detail"]


def test_artimuse_writes_the_aesthetic_analysis_with_its_own_per_attribute_question(shard, tmp_path):
    from artimuse_stand_in import make_checkout, vllm_render

    cfg = shard["config"]
    checkout = make_checkout(tmp_path / "ArtiMuse")
    cfg["caption"]["aesthetics"].update(
        backend="artimuse", artimuse={"upstream": str(checkout), "template": "internvl2_5"}
    )
    rendered = []

    def artimuse(body):
        if "chat_template" not in body:  # the tagger, before
            return Scripted()(body)
        rendered.append(vllm_render(body))
        return "Balanced, with the " + _text(body).split("the ", 1)[1].split(" of it")[0] + " well handled."

    checks = shard["verified"][["image_id", "root", "relpath", "shard"]].assign(passed=True)
    with FakeOpenAI(responder=artimuse) as server:
        caption.tag_shard(
            shard["verified"], "s00000", cfg, shard["views"], None, _client(server), None, log=lambda *_: None
        )
        judge = _step_client(server, cfg, caption.aesthetics_vlm_overrides(cfg))
        table = caption.aesthetic_analysis_shard(checks, cfg, shard["views"], judge, log=lambda *_: None)
    assert len(server.bodies) == 2 + 2 * 6  # tags, then one request per image and dimension
    # upstream src/eval/eval_image.py decodes greedily (do_sample=False) with max_new_tokens=8192
    assert {(b["temperature"], b["max_tokens"]) for b in server.bodies[2:]} == {(0.0, 8192)}
    recorded = json.loads(table["judge_request_options"].iloc[0])
    assert recorded["temperature"] == 0.0 and recorded["max_tokens"] == 8192 and "chat_template" in recorded
    analysis = json.loads(table.set_index("image_id").loc[IDS[0], "analysis"])
    assert analysis["composition_design"] == {"analysis": "Balanced, with the Composition & Design well handled."}
    assert set(analysis) == {k for k, _ in caption.AESTHETIC_DIMENSIONS} and (table["judge_status"] == "ok").all()
    assert table["composition_design_score"].isna().all()  # prose, not a rubric score
    assert (
        "<|im_start|>system\nstand-in system<|im_end|>\n<|im_start|>user\n<image>\n"
        "Judge the Composition & Design of it.<|im_end|>\n<|im_start|>assistant\n"
    ) in rendered  # requests overlap: any order


STAND_IN_RAM = {
    # the names inference_ram_plus.py uses: ram.get_transform, ram.models.ram_plus(...), model.generate_tag
    "ram/__init__.py": "from .transform import get_transform\n",
    "ram/transform.py": (
        "from torchvision.transforms import Compose, Normalize, Resize, ToTensor\n"
        "def get_transform(image_size=384):\n"
        "    return Compose([lambda im: im.convert('RGB'), Resize((image_size, image_size)), ToTensor(),\n"
        "                    Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])\n"
    ),
    "ram/models/__init__.py": (
        "import torch\n"
        "CALLS = []\n"
        "class _RamPlus(torch.nn.Module):\n"
        "    def __init__(self, image_size):\n"
        "        super().__init__()\n"
        "        self.image_size = image_size\n"
        "    def generate_tag(self, image):\n"
        "        assert image.ndim == 4 and tuple(image.shape[1:]) == (3, self.image_size, self.image_size)\n"
        "        bright = image.mean(dim=(1, 2, 3)) > 0\n"
        "        return (['cat | red sofa | sky' if b else 'night | lamp' for b in bright], ['zh'] * len(bright))\n"
        "def ram_plus(pretrained='', image_size=384, vit=''):\n"
        "    CALLS.append((pretrained, image_size, vit))\n"
        "    return _RamPlus(image_size)\n"
    ),
}


def test_ram_plus_tagger_runs_recognize_anything_the_way_its_inference_script_does(tmp_path, monkeypatch):
    from pixverve.models.loading import ModelUnavailable

    spec = {
        "backend": "ram_plus",
        "ram_plus": {
            "weights": str(tmp_path / "ram_plus_swin_large_14m.pth"),
            "image_size": 64,
            "vit": "swin_l",
            "device": "cpu",
        },
    }
    with pytest.raises(ModelUnavailable, match="pip install git\\+https://github.com/xinyu1205/recognize-anything"):
        build_tagger(spec)  # not installed in this venv: the error says how
    for rel, text in STAND_IN_RAM.items():
        (tmp_path / "pkgs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkgs" / rel).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    with pytest.raises(ModelUnavailable, match="caption.tags.ram_plus.weights"):
        build_tagger(spec)
    (tmp_path / "ram_plus_swin_large_14m.pth").write_bytes(b"stand-in")
    try:
        tagger = build_tagger(spec)
        import ram.models

        assert ram.models.CALLS == [(spec["ram_plus"]["weights"], 64, "swin_l")]
        bright, dark = np.full((90, 120, 3), 230, np.uint8), np.full((50, 50, 3), 10, np.uint8)
        assert tagger.tag([bright, dark]) == [
            [("cat", 1.0), ("red sofa", 1.0), ("sky", 1.0)],
            [("night", 1.0), ("lamp", 1.0)],
        ]
    finally:  # the stand-in must not outlive this test
        for name in [m for m in sys.modules if m == "ram" or m.startswith("ram.")]:
            sys.modules.pop(name)


# ----------------------------------------------------------------------------- fail-safe (issue 27)


def _records(shard, out, **kw):
    purify = shard["verified"].assign(
        exposure_share=0.01, laplacian_var=50.0, flat_share=0.2, entropy_bits=7.0, laion_score=5.5, laion_status="ok"
    )
    verify = shard["verified"].assign(max_seam_ratio=1.1, psnr=33.0, ssim=0.95, lpips=float("nan"))
    return dataset.build_records(out | {"purify": purify, "verify": verify, "upscale": shard["upscaled"]}, **kw)


@pytest.mark.parametrize(
    "override, step, status",
    [
        ({"long": "I am sorry, I can't evaluate this image right now."}, "long_caption", "refusal"),
        ({"long": ""}, "long_caption", "empty"),
        ({"aesthetics": "The image is nice."}, "aesthetics", "unparseable"),
        ({"describe": "A cat."}, "descriptions", "unparseable"),
    ],
)
def test_a_failed_stage5_step_keeps_the_image_out_of_the_dataset_counted(shard, override, step, status):
    """The issue's runs: prose instead of JSON, a refusal as the long caption -- 9 of 9 records
    before.  Now no record; the rejected table and Table 1 say which step and why."""
    out = _run_chain(shard, Scripted(**override))
    records, rejected = _records(shard, out)
    assert records == [] and len(rejected) == 2 and set(rejected["reason"]) == {"model_failed"}
    # the step itself first (a failed long caption also leaves no short one: carried, listed after it)
    assert {f.split(",")[0] for f in rejected["failed_steps"]} == {step} and f"{step}: {status}" in rejected[
        "reason_detail"
    ].iloc[0]
    assert json.loads(rejected["steps"].iloc[0])[step] == status
    flow = dataset.data_flow(
        pd.DataFrame([{"stage": "index", "entered": 2, "passed": 2}]),
        shard["verified"].assign(
            reason="", **{f"{f}_ok": True for f in ("exposure", "sharpness", "flatness", "entropy", "aesthetics")}
        ),
        shard["upscaled"].assign(passed=True),
        pd.DataFrame([{"check": "regions", "entering": 2, "kept": 2}]),
        out["instance_checks"],
        records,
        rejected,
    )
    row = flow.set_index("step").loc["model steps ok (required steps)"]
    assert (row["entering"], row["kept"], row["dropped"]) == (2, 0, 2)
    dataset.check_data_flow(flow)
    kept, _ = _records(shard, out, required=[s for s in dataset.CAPTION_STEPS if s not in (step, "short_caption")])
    assert len(kept) == 2 and kept[0]["steps"][step] == status  # a documented opt-out keeps it, its status on record
    if step == "long_caption":
        assert kept[0]["long_caption"] is None  # a failed caption is not a caption
        meta, train, bench = dataset.export_dataset(kept, 1, 0)
        assert train == [] and bench == [] and set(meta["split"]) == {"uncaptioned"}


def test_the_record_carries_every_steps_status(shard):
    records, rejected = _records(shard, _run_chain(shard, Scripted()))
    assert len(rejected) == 0
    assert records[0]["steps"] == {
        "purify_laion": "ok",
        "sr": "ok",
        "regions": "ok",
        "instance_check": "ok",
        "tags": "ok",
        "prune": "ok",
        "boxes": "ok",
        "masks": "ok",
        "descriptions": "ok",
        "aesthetics": "ok",
        "long_caption": "ok",
        "short_caption": "ok",
    }


@pytest.mark.parametrize(
    "override", [{"tags": "I cannot list tags."}, {"rex": "<|object_ref_start|>cat<|object_ref_end|>"}]
)
def test_a_failed_tagger_or_detector_is_not_zero_instances(shard, override):
    """Tagger prose or a Rex-Omni answer without boxes: before, the instance check passed the image
    with 0 instances.  Now the tagger's failure is carried to the check and rejects the image."""
    out = _run_chain(shard, Scripted(**override))
    checks = out["instance_checks"].set_index("image_id")
    if "tags" in override:
        assert (out["masks"]["status"] == "tags_unparseable").all()
        assert (checks["reason"] == "model_failed").all() and not checks["passed"].any()
    else:  # markers without coordinates: a legitimate "no box" answer -- the image goes on, with 0 instances, status ok
        assert (out["boxes"]["status"] == "ok").all() and checks["passed"].all()


def test_rex_omni_stripped_special_tokens_stop_the_job_at_its_probe(shard):
    """A server that strips special tokens although the request keeps them: coordinates without
    markers.  The probe stops the job and says which option to set."""
    from pixverve.core.health import StepFailed

    cfg, views = shard["config"], shard["views"]
    with FakeOpenAI(responder=Scripted(), fault="strip", fault_when=lambda body: "Detect " in _text(body)) as server:
        judge = _client(server)
        tags = caption.tag_shard(shard["verified"], "s00000", cfg, views, None, judge, judge, log=lambda *_: None)
        rex_vlm = vlm_client.step_config(cfg, cfg["caption"]["boxes"]["rex_omni"]["vlm"])["vlm"]
        rex = VLMClient(VLMSettings.from_config(rex_vlm | {"base_url": server.base_url, "retries": 0}))
        rex.smoke = False
        with pytest.raises(StepFailed, match=r"probe of model server .*Rex-Omni.*skip_special_tokens: false"):
            caption.boxes_shard(tags, cfg, views, shard["upscaled"], None, rex, log=lambda *_: None)


def test_rejections_by_reason_count_the_whole_run_model_failures_included(tmp_path):
    ingest = pd.DataFrame(
        [
            {"stage": "index", "entered": 5, "passed": 3, "rejected": 2, "reasons": "empty_file: 1; not_an_image: 1"},
            {"stage": "dedup", "entered": 3, "passed": 3, "rejected": 0, "reasons": ""},
        ]
    )
    purify = pd.DataFrame(
        {"image_id": list("abc"), "passed": [True, False, False], "reason": ["", "model_failed", "entropy"]}
    )
    rejected = pd.DataFrame(
        {
            "image_id": ["d", "e"],
            "passed": False,
            "reason": "model_failed",
            "failed_steps": ["long_caption,short_caption", "tags"],
        }
    )
    table = dataset.rejections_by_reason([("2 purification", purify), ("5 captioning", rejected)], ingest)
    got = {(r["stage"], r["reason"], r["failed_steps"]): r["images"] for r in table.to_dict("records")}
    assert got == {
        ("1 index", "empty_file", ""): 1,
        ("1 index", "not_an_image", ""): 1,
        ("2 purification", "entropy", ""): 1,
        ("2 purification", "model_failed", ""): 1,
        ("5 captioning", "model_failed", "long_caption,short_caption"): 1,
        ("5 captioning", "model_failed", "tags"): 1,
    }
    flow = pd.DataFrame(
        [{"stage": "1 collection", "step": "index", "entering": 5, "dropped": 2, "kept": 3, "sequential": True}]
    )
    dataset.plot_funnel(flow, table, False, tmp_path / "funnel.png")
    assert (tmp_path / "funnel.png").stat().st_size > 10_000


MARKERS = {
    "tags": "List what can be seen",
    "prune": "Below is a list of tags",
    "rex": "Detect ",
    "artifact": "centred on one object. Look",
    "describe": "Describe the highlighted object",
    "aesthetics": "Analyse the aesthetics",
    "long": "Write a detailed caption",
    "short": "Distil it",
}


@pytest.mark.parametrize("fault", ["refuse", "5xx", "prose", "empty"])
@pytest.mark.parametrize("task", list(MARKERS))
def test_every_stage5_step_broken_never_lets_an_image_into_the_dataset(shard, task, fault):
    """Each step's requests broken in each way (below the job gates, which tests/test_failsafe.py
    covers): the image is rejected by the instance check or kept out of the records, with the
    step named -- never a record."""
    out = _run_chain(shard, Scripted(), fault=fault, fault_when=lambda body: MARKERS[task] in _text(body))
    records, rejected = _records(shard, out)
    checks = out["instance_checks"]
    assert records == []
    if len(rejected):
        assert set(rejected["reason"]) == {"model_failed"}
    else:  # left at the instance check: the tagger/detector/judge failure carried there
        assert not checks["passed"].any() and set(checks["reason"]) <= {
            "model_failed",
            "judge_failed",
            "judge_unparseable",
        }


def test_a_rerun_after_the_fault_clears_asks_only_what_failed(shard, tmp_path):
    """The whole chain twice with the reply cache: the first run's long captions are refused
    (records rejected); after the fix the rerun sends only the long and short caption requests --
    every other answer comes from the cache -- and both images become records."""
    from pixverve.models import replies

    replies.use_reply_cache(tmp_path / "replies.jsonl")
    try:
        first_seen, again_seen = Scripted(), Scripted()
        first = _run_chain(shard, first_seen, fault="refuse", fault_when=lambda body: MARKERS["long"] in _text(body))
        assert _records(shard, first)[0] == []
        again = _run_chain(shard, again_seen)
    finally:
        replies.use_reply_cache(None)
    asked = [next(k for k, m in MARKERS.items() if m in t) for t in again_seen.seen]
    assert sorted(asked) == ["long", "long", "short", "short"]
    records, rejected = _records(shard, again)
    assert len(records) == 2 and len(rejected) == 0
    for name in ("tags", "boxes", "masks", "descriptions", "aesthetics"):  # the same answers, from the cache
        pd.testing.assert_frame_equal(
            first[name].drop(columns=[c for c in first[name] if c.endswith("attempts")]),
            again[name].drop(columns=[c for c in again[name] if c.endswith("attempts")]),
        )


def test_an_undescribed_instance_or_a_missing_status_is_not_a_pass(shard):
    """A description row missing for a kept instance, or a step table without its status column,
    did not run for the image: the record is refused, not written with the gap."""
    out = _run_chain(shard, Scripted())
    dropped = out | {"descriptions": out["descriptions"].iloc[1:]}  # one kept instance lost its row
    records, rejected = _records(shard, dropped)
    assert len(records) == 1 and rejected["failed_steps"].tolist() == ["descriptions"]
    assert "1 of 2 kept instances have no description row" in rejected["reason_detail"].iloc[0]
    no_column = out | {"aesthetics": out["aesthetics"].drop(columns=["judge_status"])}
    records, rejected = _records(shard, no_column)
    assert records == [] and set(rejected["failed_steps"]) == {"aesthetics"}


def test_rejections_by_reason_edges_and_table_1_stage_names():
    """Stage 1's "reason: n" list split at the last colon (a reason may hold one), parts without
    a reason or a count skipped; a stage table that is empty or has no verdicts is skipped, not
    the end; a rejection without a reason is "(none)"; no ingest summary, no stage 1 rows."""
    ingest = pd.DataFrame([{"stage": "screen", "reasons": "decode:truncated: 2; : 4; junk; too_small: 3"}])
    empty, no_verdicts = pd.DataFrame(), pd.DataFrame({"reason": ["x"]})
    verify = pd.DataFrame({"passed": [False, True, False], "reason": [None, "", "seam"]})
    stages = [("3 super-resolution", empty), ("3b", no_verdicts), ("4 verification", verify)]
    table = dataset.rejections_by_reason(stages, ingest)
    assert list(table.columns) == ["stage", "reason", "failed_steps", "images"]
    got = {(r["stage"], r["reason"], r["failed_steps"]): r["images"] for r in table.to_dict("records")}
    assert got == {
        ("1 screen", "decode:truncated", ""): 2,
        ("1 screen", "too_small", ""): 3,
        ("4 verification", "(none)", ""): 1,
        ("4 verification", "seam", ""): 1,
    }
    assert dataset.rejections_by_reason(stages).to_dict("records") == [
        r for r in table.to_dict("records") if not r["stage"].startswith("1 ")
    ]
    none = dataset.rejections_by_reason([], None)
    assert list(none.columns) == ["stage", "reason", "failed_steps", "images"] and none.empty
    # Table 1, row by row: the paper's stages in the pipeline's order; stage 2's filters all see the pool
    purify = pd.DataFrame(
        {
            "passed": [True, False, False],
            "reason": ["", "model_failed", "entropy"],
            "entropy_ok": [True, True, False],
        }
    )
    verify_counts = pd.DataFrame(
        [{"check": "sr_output", "entering": 2, "kept": 2}, {"check": "regions", "entering": 2, "kept": 2}]
    )
    records = [{"long_caption": "a", "short_caption": "b"}, {"long_caption": "c", "short_caption": ""}]
    flow = dataset.data_flow(
        pd.DataFrame([{"stage": "index", "entered": 4, "passed": 3}]),
        purify,
        pd.DataFrame({"passed": [True, False]}),
        verify_counts,
        pd.DataFrame({"passed": [True, False]}),
        records,
        pd.DataFrame({"image_id": ["x"]}),
    )
    assert list(flow.columns) == ["stage", "step", "entering", "dropped", "kept", "sequential"]
    assert [tuple(r) for r in flow.itertuples(index=False)] == [
        ("1 collection", "index", 4, 1, 3, True),
        ("2 purification", "filter: exposure", 3, 0, 3, False),
        ("2 purification", "filter: sharpness", 3, 0, 3, False),
        ("2 purification", "filter: flatness", 3, 0, 3, False),
        ("2 purification", "filter: entropy", 3, 1, 2, False),
        ("2 purification", "filter: aesthetics", 3, 0, 3, False),
        ("2 purification", "model steps ok (aesthetic predictors)", 3, 1, 2, False),
        ("2 purification", "candidates (all five)", 3, 2, 1, True),
        ("3 super-resolution", "SR output written", 2, 1, 1, True),
        ("4 verification", "regions", 2, 0, 2, True),
        ("4 verification", "instances", 2, 1, 1, True),
        ("5 captioning", "model steps ok (required steps)", 3, 1, 2, True),
        ("5 captioning", "annotation record", 2, 0, 2, True),
        ("5 captioning", "long + short caption", 2, 1, 1, True),
    ]
    # nothing ran after stage 2 (no reason column, no SR, no instance checks, nothing rejected)
    flow = dataset.data_flow(
        pd.DataFrame([{"stage": "index", "entered": 1, "passed": 1}]),
        pd.DataFrame({"passed": [False]}),
        pd.DataFrame(),
        verify_counts.iloc[:0],
        pd.DataFrame(),
        [],
    )
    steps = flow.set_index("step")
    assert steps.loc["model steps ok (aesthetic predictors)", ["entering", "kept"]].tolist() == [1, 1]
    assert steps.loc["SR output written", ["entering", "kept"]].tolist() == [0, 0]
    assert steps.loc["instances", ["entering", "kept"]].tolist() == [0, 0]
    assert steps.loc["model steps ok (required steps)", ["entering", "kept"]].tolist() == [0, 0]


def test_export_holds_out_the_smallest_hashes_and_writes_each_record_exactly():
    """The held-out split: the ``size`` captioned ids with the smallest sha256("seed:id") (stable
    when images are added); every metadata column of a record, as the dataset page documents it."""
    import hashlib

    def record(i, long="a long caption here", short="short one", aesthetics=None):
        return {
            "image_id": f"{i:016x}",
            "file_name": f"{i:016x}.tif",
            "width": 40000,
            "height": 25000,
            "provenance": {"source": "demo", "licence": "CC0"},
            "scores": {"laion": 6.5},
            "tags": ["cat", "sofa"],
            "instances": [{"description": "a cat"}, {"description": ""}, {"description": "a sofa"}],
            "aesthetics": aesthetics,
            "long_caption": long,
            "short_caption": short,
            "smoke": True,
            "smoke_steps": ["tags", "boxes"],
        }

    dims = [key for key, _ in caption.AESTHETIC_DIMENSIONS]
    aesthetics = {key: {"score": 10.0 * n, "analysis": "..."} for n, key in enumerate(dims)}
    records = [record(i) for i in range(6)] + [record(6, long=None), record(7, short="")]
    records[2]["aesthetics"] = aesthetics
    ids = [r["image_id"] for r in records[:6]]
    rank = sorted(ids, key=lambda i: hashlib.sha256(f"7:{i}".encode()).hexdigest())
    meta, train, bench = dataset.export_dataset(records, 2, seed=7)
    split = dict(zip(meta["image_id"], meta["split"]))
    assert {i for i, s in split.items() if s == "benchmark"} == set(rank[:2])
    assert {i for i, s in split.items() if s == "train"} == set(rank[2:])
    assert split[records[6]["image_id"]] == split[records[7]["image_id"]] == "uncaptioned"
    assert sorted(p["file_name"] for p in bench) == sorted(f"{i}.tif" for i in rank[:2])
    assert sorted(p["file_name"] for p in train) == sorted(f"{i}.tif" for i in rank[2:])
    assert bench[0] == {
        "file_name": bench[0]["file_name"],
        "short_caption": "short one",
        "long_caption": "a long caption here",
    }
    # added images do not move the held-out ones (unless they hash smaller)
    more, _, _ = dataset.export_dataset(records + [record(i) for i in range(8, 40)], 2, seed=7)
    assert set(more.loc[more["split"] == "benchmark", "image_id"]) & set(ids) <= set(rank[:2])
    row = meta.set_index("image_id").loc[records[2]["image_id"]].to_dict()
    assert row == {
        "file_name": f"{2:016x}.tif",
        "split": split[records[2]["image_id"]],
        "width": 40000,
        "height": 25000,
        "megapixels": 1000.0,  # 40000 x 25000 pixels
        "prov_source": "demo",
        "prov_licence": "CC0",
        "laion": 6.5,
        "tags": '["cat", "sofa"]',
        "n_tags": 2,
        "n_instances": 3,
        "n_described": 2,
        "long_caption": "a long caption here",
        "short_caption": "short one",
        "long_words": 4,
        "short_words": 2,
        "has_aesthetics": True,
        "smoke": True,
        "smoke_steps": "tags,boxes",
        **{f"aes_{key}": 10.0 * n for n, key in enumerate(dims)},
    }
    plain = meta.set_index("image_id").loc[records[6]["image_id"]]
    assert not plain["has_aesthetics"] and pd.isna(plain["aes_technical_execution"])
    assert (plain["long_words"], plain["short_words"]) == (0, 2)
    assert meta.set_index("image_id").loc[records[7]["image_id"], "short_words"] == 0


def test_step_statuses_of_one_image_exactly():
    """Each stage-5 step's (status, error) as the record keeps it: a step without a row for the
    image or without a status column is ``missing`` (never a pass); descriptions: the first failed
    one with the count, ``missing`` when kept instances have no row, ``no_instances`` when none was kept."""
    kept2 = json.dumps([{"kept": True}, {"kept": False}, {"kept": True}])
    t = {"tags_status": "ok", "tags_error": "", "prune_status": "unparseable", "prune_error": "prose"}
    b, m = {"status": "ok", "error": ""}, {"status": "ok", "error": "", "instances": kept2}
    a = {"judge_status": "refused", "judge_error": "HTTP 400: no"}
    c = {"long_status": "ok", "long_error": "", "short_status": "empty", "short_error": "empty reply"}
    ok = {"status": "ok"}
    assert dataset.step_statuses(t, b, m, [ok, ok], a, c) == {
        "tags": ("ok", ""),
        "prune": ("unparseable", "prose"),
        "boxes": ("ok", ""),
        "masks": ("ok", ""),
        "descriptions": ("ok", ""),
        "aesthetics": ("refused", "HTTP 400: no"),
        "long_caption": ("ok", ""),
        "short_caption": ("empty", "empty reply"),
    }
    failed = [ok, {"status": "timeout", "error": "after 60 s"}, {"status": "refused"}]
    got = dataset.step_statuses({}, {"error": "x"}, {"instances": kept2}, failed, None, None)
    missing = ("missing", "no row for the image")
    assert got == {
        "tags": ("missing", ""),  # a row without its status column
        "prune": ("missing", ""),
        "boxes": ("missing", "x"),
        "masks": ("missing", ""),
        "descriptions": ("timeout", "2 of 2 instances: after 60 s"),
        "aesthetics": missing,
        "long_caption": missing,
        "short_caption": missing,
    }
    assert dataset.step_statuses(t, b, m, [ok], a, c)["descriptions"] == (
        "missing",
        "1 of 2 kept instances have no description row",
    )
    none_kept = dataset.step_statuses(t, b, {"status": "ok", "instances": None}, [], a, c)
    assert none_kept["descriptions"] == ("no_instances", "")
    failing = {"tags_status": "timeout", "tags_error": "60 s", "prune_status": "ok", "prune_error": ""}
    m_failed = {"status": "refused", "error": "HTTP 400", "instances": kept2}
    c_failed = {"long_status": "empty", "long_error": "no text", "short_status": "ok", "short_error": ""}
    got = dataset.step_statuses(failing, b, m_failed, [ok, ok], a, c_failed)
    assert (got["tags"], got["masks"], got["long_caption"]) == (
        ("timeout", "60 s"),
        ("refused", "HTTP 400"),
        ("empty", "no text"),
    )
    bad_first = [{"status": "unparseable"}, {"status": "ok"}]
    assert dataset.step_statuses(t, b, m, bad_first, a, c)["descriptions"] == ("unparseable", "1 of 2 instances: ")


def test_caption_metadata_orders_instances_by_importance_and_carries_the_source():
    """What the long-caption prompt is given besides the image: the size, the tags, the described
    instances most important first (ties: instance order; no importance counts as 0), the aesthetic
    analysis, and the source and its caption when known."""
    tags_row = {"width": 12000, "height": 8000, "tags": '["cat", "sofa"]'}
    instances = [
        {"instance": 0, "label": "sofa", "importance": 2, "description": "a grey sofa"},
        {"instance": 1, "label": "cat", "importance": 5, "description": "a cat"},
        {"instance": 2, "label": "lamp", "importance": None, "description": "a lamp"},
        {"instance": 3, "label": "rug", "importance": 5, "description": "a rug"},
        {"instance": 4, "label": "cup", "importance": 9, "description": ""},  # undescribed: left out
        {"instance": 5, "label": "book", "importance": -1, "description": "a book"},
        {"instance": 7, "label": "vase", "importance": 1, "description": "a vase"},
    ]
    meta = caption.caption_metadata(tags_row, instances, '{"overall": "calm"}', {"source": "pexels", "other": 1})
    assert meta == {
        "size": "12000x8000",
        "tags": ["cat", "sofa"],
        "instances": [
            {"label": "cat", "importance": 5, "description": "a cat"},
            {"label": "rug", "importance": 5, "description": "a rug"},
            {"label": "sofa", "importance": 2, "description": "a grey sofa"},
            {"label": "vase", "importance": 1, "description": "a vase"},
            {"label": "lamp", "importance": None, "description": "a lamp"},
            {"label": "book", "importance": -1, "description": "a book"},
        ],
        "aesthetics": {"overall": "calm"},
        "source": "pexels",
    }
    both = caption.caption_metadata(tags_row, [], "", {"source": "flickr", "source_caption": "sunset"})
    assert both["aesthetics"] is None and (both["source"], both["source_caption"]) == ("flickr", "sunset")


def test_stage5_schemas_tag_cleaning_and_box_merging():
    """The JSON schemas a stage-5 reply must meet (an off-schema reply is ``invalid``, never a
    value), tag lists lower-cased / de-duplicated in order, and the boxes of all views merged per
    label (NMS), highest score first then top, left; rounded; at most ``max_boxes``."""
    import jsonschema

    def valid(schema, reply):
        try:
            jsonschema.validate(reply, schema)
            return True
        except jsonschema.ValidationError:
            return False

    inst = caption.instance_schema(1, 5)
    assert valid(inst, {"description": "a cat", "importance": 1}) and valid(inst, {"description": "x", "importance": 5})
    for bad in (
        {"description": "a cat", "importance": 0},
        {"description": "a cat", "importance": 6},
        {"description": "a cat", "importance": 2.5},
        {"description": "", "importance": 3},
        {"description": "a cat"},
        {"importance": 3},
        {"description": 5, "importance": 3},
        [{"description": "a cat", "importance": 3}],
    ):
        assert not valid(inst, bad), bad
    dims = [key for key, _ in caption.AESTHETIC_DIMENSIONS]
    good = {key: {"score": 50, "analysis": "fine"} for key in dims}
    aes = caption.aesthetic_schema(0, 100)
    assert valid(aes, good) and valid(aes, {k: {"score": 0, "analysis": "a"} for k in dims})
    assert valid(aes, {k: {"score": 100, "analysis": "a"} for k in dims})
    for key in dims:
        assert not valid(aes, {k: v for k, v in good.items() if k != key}), key
    assert not valid(aes, dict(good, **{dims[0]: {"score": 101, "analysis": "a"}}))
    assert not valid(aes, dict(good, **{dims[1]: {"score": -1, "analysis": "a"}}))
    assert not valid(aes, dict(good, **{dims[2]: {"score": 5, "analysis": ""}}))
    assert not valid(aes, dict(good, **{dims[3]: {"score": 5}}))
    assert not valid(aes, dict(good, **{dims[4]: {"analysis": "a"}}))
    assert not valid(aes, dict(good, **{dims[5]: {"score": "5", "analysis": "a"}}))
    assert not valid(aes, dict(good, **{dims[0]: {"score": 5, "analysis": 7}}))
    assert not valid(aes, dict(good, **{dims[1]: [5, "a"]})) and not valid(aes, [good])
    assert caption._clean_tags(["Cat", " cat ", "Black   Cat", "", "sofa", "SOFA"]) == ["cat", "black cat", "sofa"]

    def box(label, score, x, y, view="v0", size=10.0):
        return {"label": label, "phrase": label, "score": score, "box": [x, y, x + size, y + size], "view": view}

    found = [
        box("cat", 0.5, 0.0, 0.0),
        box("cat", 0.9, 1.0, 1.0, "v1"),  # overlaps the first: IoU 81 / 119 = 0.68
        box("cat", 0.7, 50.0, 0.0),
        box("dog", 0.7, 20.0, 30.0),
        box("dog", 0.7, 30.123456, 20.0),
        box("dog", 0.6666666666, 1.0, 1.0),  # over a cat: another label, kept
    ]
    merged = caption._merge_boxes(found, 0.5, 10)
    assert [(d["label"], d["score"], d["box"][:2], d["view"]) for d in merged] == [
        ("cat", 0.9, [1.0, 1.0], "v1"),
        ("cat", 0.7, [50.0, 0.0], "v0"),  # equal scores: the box nearer the top first, then the left
        ("dog", 0.7, [30.12, 20.0], "v0"),
        ("dog", 0.7, [20.0, 30.0], "v0"),
        ("dog", 0.666667, [1.0, 1.0], "v0"),
    ]
    assert set(merged[0]) == {"label", "phrase", "score", "box", "view"}
    assert len(caption._merge_boxes(found, 0.9, 10)) == 6  # 0.68 < 0.9: both cats stay
    assert [d["label"] for d in caption._merge_boxes(found, 0.5, 2)] == ["cat", "cat"]
    same_row = [box("b", 0.5, 40.0, 5.0), box("a", 0.5, 40.0, 5.0, size=2.0), box("c", 0.5, 3.0, 5.0)]
    assert [d["label"] for d in caption._merge_boxes(same_row, 0.5, 10)] == ["c", "a", "b"]  # left, then label
