"""PixVerve-Bench per method: FID_patch's seeded crops, CLIPScore, the MSFI/ICS judge calls
against a local chat-completions server, the table (best marked, smoke per cell), generation."""

from __future__ import annotations

import json
import math
import random
import re
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("openai")

from fake_openai import FakeOpenAI  # noqa: E402

from pixverve.bench import evaluate as bench  # noqa: E402
from pixverve.bench.generate import generate_method  # noqa: E402
from pixverve.bench.inputs import BenchItem  # noqa: E402
from pixverve.models.vlm import VLMClient, VLMSettings, decode_data_url  # noqa: E402


def test_fid_patch_crops_are_the_seeded_sequence_pair_by_pair_top_then_left():
    coords = bench.fid_patch_coordinates(3, size=1000, crop=299, per_pair=20, seed=42)
    random.seed(42)  # the published procedure (eval/metrics.py): Python's random seeded once, top drawn first
    expected = []
    for _ in range(3):
        pair = []
        for _ in range(20):
            top = random.randint(0, 701)
            left = random.randint(0, 701)
            pair.append((left, top))  # (x, y)
        expected.append(pair)
    assert coords == expected
    assert all(0 <= x <= 701 and 0 <= y <= 701 for pair in coords for x, y in pair)
    with pytest.raises(ValueError, match="larger than the resized image"):
        bench.fid_patch_coordinates(1, size=256, crop=299)


def test_fid_patch_draw_order_xy_is_a_config_key():
    """x first was our earlier reading; it moves every crop."""
    random.seed(42)
    xy = [[(random.randint(0, 701), random.randint(0, 701)) for _ in range(5)] for _ in range(2)]
    assert bench.fid_patch_coordinates(2, size=1000, per_pair=5, order="xy") == xy
    assert xy != bench.fid_patch_coordinates(2, size=1000, per_pair=5)
    with pytest.raises(ValueError, match="order"):
        bench.fid_patch_coordinates(1, size=1000, order="x-first")


def test_fid_patch_of_a_set_with_itself_is_zero(tmp_path):
    from pixverve.bench.fid import convert_fid_weights, fid_helper_torchscript

    weights = convert_fid_weights(fid_helper_torchscript(), tmp_path / "inception.pth")
    rng = np.random.default_rng(0)
    items, swapped = [], []
    for k in range(2):
        base = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(base).resize((360, 240), Image.Resampling.BICUBIC))
        real, other = tmp_path / f"r{k}.png", tmp_path / f"g{k}.png"
        Image.fromarray(img).save(real)
        Image.fromarray(np.ascontiguousarray(255 - img)).save(other)
        items.append(BenchItem(str(k), real, real, "", ""))
        swapped.append(BenchItem(str(k), real, other, "", ""))
    same = bench.fid_patch(items, weights, size=320, crop=299, per_pair=4, seed=42)
    differ = bench.fid_patch(swapped, weights, size=320, crop=299, per_pair=4, seed=42)
    assert abs(same) < 1e-2 and differ > 1.0


def test_clip_score_is_100_times_the_cosine_of_the_full_image():
    import torch

    scorer = bench.ClipScorer({"backend": "tiny"})
    rgb = np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    text = "a cat on a red sofa"
    got = scorer.score(rgb, text)
    with torch.inference_mode():
        inputs = scorer.processor(text=[text], images=[rgb], return_tensors="pt", padding=True)
        img = scorer.model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = scorer.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        img, txt = (getattr(t, "pooler_output", t)[0].double() for t in (img, txt))
        cos = float(img @ txt / (img.norm() * txt.norm()))
    assert got == pytest.approx(100 * cos, abs=1e-4)  # unclamped: the clamp is on batch means
    assert scorer.smoke


def test_clip_score_clamps_each_batch_mean_of_four_then_averages():
    raw = [10.0, -30.0, 5.0, 5.0, 40.0]
    # batch 1: mean -2.5 -> 0; batch 2: 40 -> (0 + 40) / 2 = 20 (per-image clamping would give 12)
    assert bench.clip_score_of_batches(raw) == pytest.approx(20.0)
    assert bench.clip_score_of_batches([1.0, 2.0, 3.0], batch=2) == pytest.approx((1.5 + 3.0) / 2)
    assert math.isnan(bench.clip_score_of_batches([]))


def test_score_method_hands_the_full_image_to_the_models(tmp_path):
    from pixverve.core.views import fit_within

    rgb = np.random.default_rng(6).integers(0, 256, (1100, 1500, 3), dtype=np.uint8)
    path = tmp_path / "g.png"
    Image.fromarray(rgb).save(path)
    clip = bench.ClipScorer({"backend": "tiny"})
    row = bench.score_method([BenchItem("g", path, path, "a dog", "")], None, clip, 1000.0).iloc[0]
    assert row["clip_raw"] == pytest.approx(clip.score(rgb, "a dog"), abs=1e-6)
    assert row["clip_raw"] != pytest.approx(
        clip.score(fit_within(rgb, 1024), "a dog"), abs=1e-6
    )  # not the old 1024 px copy
    assert (row["width"], row["height"]) == (1500, 1100)
    # GLCM reads PIL's "L" grey (published), which is not OpenCV's BT.601 fixed point on every pixel
    from pixverve.bench.glcm import glcm_score
    from pixverve.core.images import grey_luma

    pil_l = np.asarray(Image.open(path).convert("L"))
    assert row["glcm"] == glcm_score(pil_l) and glcm_score(grey_luma(rgb)) != glcm_score(pil_l)


MSFI_GLOBAL = {"SC-global": 5, "PI": 4, "LC": 3, "CH": 2}
MSFI_LOCAL = {"NGE": 5, "GA": 4, "TF": 5, "MGC": 5, "SC-local": 3}
ICS = {"IEV": 9, "AAA": 8, "SRA": 6}
PAPER_JUDGE = {
    "temperature": 0.1,
    "max_tokens": 8192,
    "response_format": "json_object",
    "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
}


def _text(body):
    return next(c["text"] for c in body["messages"][-1]["content"] if c["type"] == "text")


def _judge_spec(demo_config, **extra):
    spec = json.loads(json.dumps(demo_config["bench"]["judge"]))
    spec.update(extra)
    return spec


def test_judge_calls_and_the_published_aggregation(tmp_path, repo_root, demo_config, monkeypatch):
    from pixverve.bench.prompts import load_judge_prompts

    seen = []

    def responder(body):
        text = _text(body)
        seen.append(body)
        if "whole of an AI-generated image" in text:
            return "<json>" + json.dumps(MSFI_GLOBAL) + "</json>"
        if "one region of an AI-generated" in text:
            # the 2nd and 3rd local calls fail: left out of S_l
            return "no json" if any(c in text for c in fail_at) else "<json>" + json.dumps(MSFI_LOCAL) + "</json>"
        return "<json>" + json.dumps(ICS) + "</json>"

    rng = np.random.default_rng(2)
    path = tmp_path / "g.jpg"
    Image.fromarray(rng.integers(0, 256, (1800, 2600, 3), dtype=np.uint8)).save(path, quality=95)
    item = BenchItem("g", path, path, "short", "a long caption about a cat")
    monkeypatch.chdir(repo_root)
    spec = _judge_spec(demo_config)
    prompts = load_judge_prompts(spec)
    fail_at = []
    with FakeOpenAI(responder=responder) as server:
        first = bench.judge_requests(item, np.asarray(Image.open(path).convert("RGB")), prompts, spec)[2]
        fail_at = [str(p["relative"]) for p in first[1:3]]
        judge = VLMClient(
            VLMSettings(base_url=server.base_url, model="fake-vlm", backoff_s=0.01, retries=0, **PAPER_JUDGE)
        )
        judge.smoke = False
        table = bench.judge_method([item], judge, prompts, spec, 1000.0, log=lambda *_: None)
    row = table.iloc[0]
    s_g = (5 * 5 + 4 * 3 + 3 * 2 + 2 * 2) / 12
    s_l = (5 * 2 + 4 * 3 + 5 * 5 + 5 * 2 + 3 * 2) / 14  # the failed calls are not counted as 3
    assert (
        row["valid_patches"] == 8 and row["msfi_included"] and row["msfi_status"] == "ok"
    )  # 2 of 10 local calls failed: still scored
    assert json.loads(row["local_statuses"]).count("unparseable") == 2 and row["ics_status"] == "ok"
    assert row["msfi"] == pytest.approx(s_g + s_g / 5 * s_l)
    assert row["ics"] == pytest.approx(math.sqrt(0.9) * (0.6 * 8 + 0.4 * 6))
    assert len(seen) == 12 and len(json.loads(row["patches"])) == 10  # 1 global + 10 local + ICS
    local = [b for b in seen if "one region" in _text(b)]
    for body in local:  # the prompt first, then the patch and the global view; relative box [x0, y0, x1, y1]
        content = body["messages"][-1]["content"]
        assert content[0]["type"] == "text" and [c["type"] for c in content[1:]] == ["image_url", "image_url"]
        assert re.search(r"\[0\.\d+, 0\.\d+, [01]\.?\d*, [01]\.?\d*\]", _text(body))
    patch = decode_data_url(local[0]["messages"][-1]["content"][1]["image_url"]["url"])
    assert patch.shape[:2] == (512, 512)  # full-resolution patch (long edge < 7680: 512 px)
    g_view = decode_data_url(local[0]["messages"][-1]["content"][2]["image_url"]["url"])
    assert g_view.shape[:2] == (int(1800 * 2048 / 2600), 2048)  # 1417: truncated, not rounded (1418)
    ics_body = next(b for b in seen if "follows its prompt" in _text(b))
    assert "a long caption about a cat" in _text(ics_body)
    # request options as published: json_object on MSFI calls only, no thinking, 8192 tokens at 0.1
    assert all(b["response_format"] == {"type": "json_object"} for b in seen if b is not ics_body)
    assert "response_format" not in ics_body
    assert all(
        b["chat_template_kwargs"] == {"enable_thinking": False} and b["max_tokens"] == 8192 and b["temperature"] == 0.1
        for b in seen
    )
    assert table["smoke"].eq(False).all()


def test_images_without_a_valid_reply_are_left_out_and_counted(tmp_path, repo_root, demo_config, monkeypatch):
    from pixverve.bench.prompts import load_judge_prompts

    def responder(body):
        text = _text(body)
        bad = state["image"] == "g1"
        if "whole of an AI-generated image" in text:
            return "nothing" if bad else json.dumps(MSFI_GLOBAL)
        if "one region of an AI-generated" in text:
            return json.dumps(MSFI_LOCAL)
        return '{"IEV": 9, "AAA": 8}' if bad else json.dumps(ICS)  # SRA missing: no ICS

    state = {}
    items = []
    for k in range(2):
        path = tmp_path / f"g{k}.png"
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (600, 900, 3), dtype=np.uint8)).save(path)
        items.append(BenchItem(f"g{k}", path, path, "s", "a cat"))
    monkeypatch.chdir(repo_root)
    spec = _judge_spec(demo_config)
    prompts = load_judge_prompts(spec)
    rows = []
    with FakeOpenAI(responder=responder) as server:
        judge = VLMClient(VLMSettings(base_url=server.base_url, model="fake-vlm", retries=0, **PAPER_JUDGE))
        judge.smoke = False
        for item in items:
            state["image"] = item.name
            # one image per call: g1's own call is 1 of 1 failed, let through so its row can be read
            rows.append(
                bench.judge_method([item], judge, prompts, spec, 1000.0, log=lambda *_: None, max_failed_fraction=1.0)
            )
    judged = pd.concat(rows, ignore_index=True)
    assert list(judged["msfi_included"]) == [True, False] and list(judged["ics_included"]) == [True, False]
    # why each was left out: the global reply did not parse; the ICS reply lacks SRA
    assert list(judged["msfi_status"]) == ["ok", "unparseable"] and list(judged["ics_status"]) == ["ok", "invalid"]
    assert "SRA" in judged["ics_error"][1] and judged["msfi_error"][0] == ""
    row = bench.method_row(
        "m", "4K", pd.DataFrame({"aesthetics": [1.0], "glcm": [2.0]}), judged, {"images": 2, "clip": 30.0}, {}
    )
    assert (row["msfi_images"], row["ics_images"]) == (1, 1)
    assert (row["msfi_n"], row["msfi_failed"], row["ics_n"], row["ics_failed"]) == (1, 1, 1, 1)
    assert row["msfi"] == pytest.approx(float(judged["msfi"][0])) and row["ics"] == pytest.approx(
        float(judged["ics"][0])
    )
    assert row["clip"] == 30.0  # the published batch aggregation, from sets.json


STAND_IN = """
def build_global_eval_prompt():
    return "GLOBAL whole of an AI-generated image"


def build_local_eval_prompt(relative_coords):
    return f"LOCAL one region of an AI-generated image at {relative_coords}"


def build_ICS_eval_prompt(long_caption):
    return f"ICS follows its prompt: {long_caption}"
"""


def test_published_prompts_come_from_the_named_checkout(tmp_path):
    from pixverve.bench.prompts import PromptsUnavailable, judge_prompt_files, load_judge_prompts

    (tmp_path / "eval" / "util").mkdir(parents=True)
    (tmp_path / "eval" / "util" / "build_prompts.py").write_text(STAND_IN)
    for folder in (tmp_path, tmp_path / "eval"):  # the repository root or its eval folder
        prompts = load_judge_prompts({"prompts": "published", "published_eval": str(folder)})
        assert prompts.mode == "published" and prompts.msfi_global() == "GLOBAL whole of an AI-generated image"
        assert (
            prompts.msfi_local([0.1, 0.2, 0.3, 0.4])
            == "LOCAL one region of an AI-generated image at [0.1, 0.2, 0.3, 0.4]"
        )
        assert prompts.ics("a cat") == "ICS follows its prompt: a cat"
    assert judge_prompt_files({"prompts": "published", "published_eval": str(tmp_path)}) == [
        str(tmp_path / "eval" / "util" / "build_prompts.py")
    ]
    for missing in (None, str(tmp_path / "nope")):
        with pytest.raises(
            PromptsUnavailable,
            match=r"bench\.judge\.published_eval.*git clone https://github.com/HaojunChen663/PixVerve-95K",
        ):
            load_judge_prompts({"prompts": "published", "published_eval": missing})
    with pytest.raises(PromptsUnavailable, match="bench.judge.prompts"):
        judge_prompt_files({"prompts": "theirs"})


def test_fgclip2_lower_cases_the_caption_and_names_its_env_on_import_error(tmp_path, monkeypatch):
    import transformers

    scorer = bench.FGClip2Scorer({"backend": "tiny"})
    seen, tokenizer = [], scorer.tokenizer

    def recording(texts, **kw):  # the tiny tokenizer folds case itself: record what it is given
        seen.extend(texts)
        return tokenizer(texts, **kw)

    scorer.tokenizer = recording
    rgb = np.random.default_rng(4).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    scorer.score(rgb, "A RED Cat on the Sofa")
    assert seen == ["a red cat on the sofa"]

    def old_model_code(*_a, **_k):
        raise ImportError("No module named 'transformers.modeling_attn_mask_utils'")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", old_model_code)
    with pytest.raises(bench.FGClip2EnvError, match=r"envs/fgclip2\.yaml"):
        bench.FGClip2Scorer({"backend": "fgclip2", "model": str(tmp_path)})


def remote_code_folder(folder, imports: str):
    """A model folder whose own code (trust_remote_code, as fg-clip2-base ships) runs ``imports``."""
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "fgclip2_stand_in",
                "architectures": ["StandInModel"],
                "auto_map": {
                    "AutoConfig": "modeling_stand_in.StandInConfig",
                    "AutoModelForCausalLM": "modeling_stand_in.StandInModel",
                },
            }
        )
    )
    (folder / "modeling_stand_in.py").write_text(
        f"{imports}\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n\n\n"
        "class StandInConfig(PretrainedConfig):\n    model_type = 'fgclip2_stand_in'\n\n\n"
        "class StandInModel(PreTrainedModel):\n    config_class = StandInConfig\n"
    )
    return folder


@pytest.fixture
def remote_code_cache(tmp_path, monkeypatch):
    """transformers copies remote code into its modules cache: a private one per test."""
    import sys

    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cache joins sys.path: undone after the test
    for name in [m for m in sys.modules if m == "transformers_modules" or m.startswith("transformers_modules.")]:
        monkeypatch.delitem(sys.modules, name)


def test_fgclip2_model_code_missing_a_package_is_named_with_its_env(tmp_path, remote_code_cache, monkeypatch):
    """Issue #27: an ImportError while loading FG-CLIP2's own code is a missing package, named with
    the env to run in -- not 'model unavailable', not a transformers-version story, not per image."""
    from pixverve.models.loading import ModelUnavailable

    folder = remote_code_folder(tmp_path / "fgclip2", "import pixverve_absent_package_xyz")
    with pytest.raises(bench.FGClip2MissingPackage) as caught:  # transformers' own pre-import check
        bench.FGClip2Scorer({"backend": "fgclip2", "model": str(folder), "device": "cpu"})
    assert caught.value.packages == ["pixverve_absent_package_xyz"] and caught.value.env == "envs/fgclip2.yaml"
    assert "imports pixverve_absent_package_xyz" in str(caught.value) and "envs/fgclip2.yaml" in str(caught.value)
    assert not isinstance(caught.value, ModelUnavailable) and "transformers 4.x" not in str(caught.value)

    monkeypatch.setitem(sys.modules, "einops", None)  # einops absent: the import itself fails, past that check
    folder = remote_code_folder(tmp_path / "fgclip2_einops", "from einops import rearrange")
    with pytest.raises(bench.FGClip2MissingPackage, match=r"imports einops.*envs/fgclip2\.yaml") as caught:
        bench.FGClip2Scorer({"backend": "fgclip2", "model": str(folder), "device": "cpu"})
    assert caught.value.packages == ["einops"]


def test_fgclip2_import_error_while_scoring_stops_the_job_not_one_image(tmp_path, monkeypatch):
    """Model code that imports lazily fails on the first image: the error names the package and
    the env, and the per-image error capture does not turn it into that image's failure."""
    scorer = bench.FGClip2Scorer({"backend": "tiny"})

    def lazy_import(*_a, **_k):
        raise ModuleNotFoundError("No module named 'einops'", name="einops")

    monkeypatch.setattr(scorer.model, "get_image_features", lazy_import)
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    items = [BenchItem(name="a", generated=path, real=path, short_caption="x", long_caption="a red car")]
    with pytest.raises(bench.FGClip2MissingPackage, match=r"imports einops.*envs/fgclip2\.yaml"):
        bench.fgclip2_method(items, scorer, 100.0, log=lambda m: None)


def test_fgclip2_import_errors_are_told_apart():
    gone = ModuleNotFoundError(
        "No module named 'transformers.modeling_attn_mask_utils'", name="transformers.modeling_attn_mask_utils"
    )
    error = bench.fgclip2_import_error(gone, "/models/fg-clip2-base")
    assert (
        type(error) is bench.FGClip2EnvError and "transformers 4.x" in str(error) and "envs/fgclip2.yaml" in str(error)
    )
    listed = ImportError(
        "This modeling file requires the following packages that were not found in your "
        "environment: einops, timm. Run `pip install einops timm`"
    )
    error = bench.fgclip2_import_error(listed, "/models/fg-clip2-base")
    assert isinstance(error, bench.FGClip2MissingPackage) and error.packages == ["einops", "timm"]
    assert "add einops, timm to envs/fgclip2.yaml" in str(error)
    assert bench.missing_packages(ModuleNotFoundError("No module named 'einops.layers'", name="einops.layers")) == [
        "einops"
    ]


def test_table_marks_the_best_per_column_and_smoke_per_cell(tmp_path):
    rows = [
        {
            "method": "a",
            "resolution": "4K",
            "fid": 120.0,
            "fid_patch": 50.0,
            "aesthetics": 5.9,
            "glcm": 1.0,
            "msfi": 8.0,
            "clip": 34.0,
            "fgclip2": float("nan"),
            "ics": 7.0,
            "compression": 10.0,
            "smoke_columns": "msfi,ics",
        },
        {
            "method": "b",
            "resolution": "4K",
            "fid": 110.0,
            "fid_patch": 55.0,
            "aesthetics": 6.1,
            "glcm": 1.0,
            "msfi": 7.0,
            "clip": 33.0,
            "fgclip2": float("nan"),
            "ics": 8.0,
            "compression": 12.0,
            "smoke_columns": "",
        },
    ]
    df = pd.DataFrame(rows)
    marks = bench.best_marks(df)
    assert marks["fid"] == {1} and marks["fid_patch"] == {0}  # lower is better
    assert marks["aesthetics"] == {1} and marks["glcm"] == {0, 1} and marks["fgclip2"] == set()
    bench.write_bench_tables(df, tmp_path / "t", "title")
    md = (tmp_path / "t.md").read_text()
    assert "| a | 4K | 120.000 | **50.000** | 5.900 | **1.000** | **8.000*** |" in md and "SMOKE" in md
    assert "| b | 4K | **110.000** |" in md and "--" in md
    assert r"\textbf{110.000}" in (tmp_path / "t.tex").read_text()
    csv = pd.read_csv(tmp_path / "t.csv")
    assert csv.loc[0, "best_in"] == "fid_patch,glcm,msfi,clip,compression"


def test_generation_degrade_and_tiny_resume(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(real_dir / "abc.png")
    rows = [{"file_name": "abc.png", "short_caption": "s", "long_caption": "a red apple on a table"}]
    info = generate_method(
        rows, {"backend": "degrade", "factor": 4}, tmp_path / "deg", real_dir, 100.0, log=lambda *_: None
    )
    out = np.asarray(Image.open(tmp_path / "deg" / "abc.jpg"))
    assert out.shape == (64, 96, 3) and info["generated"] == 1 and not info["smoke"]
    spec = {"backend": "tiny", "width": 64, "height": 64, "steps": 2, "guidance": None}
    info = generate_method(rows, spec, tmp_path / "tiny", real_dir, 100.0, log=lambda *_: None)
    first = (tmp_path / "tiny" / "abc.jpg").read_bytes()
    assert info["smoke"] and np.asarray(Image.open(tmp_path / "tiny" / "abc.jpg")).shape == (64, 64, 3)
    again = generate_method(rows, spec, tmp_path / "tiny", real_dir, 100.0, log=lambda *_: None)
    assert again["generated"] == 0 and (tmp_path / "tiny" / "abc.jpg").read_bytes() == first  # resumed, not redone


@pytest.mark.parametrize(
    "size, budget",
    [
        ((160, 128), 128),
        ((176, 192), 256),
        ((400, 360), 576),
        ((448, 448), 784),
        ((512, 512), 1024),
        ((4096, 4096), 1024),
        ((100, 50), 128),
    ],
)
def test_fgclip2_patch_budget_buckets(size, budget):
    # (w // 16) * (h // 16) rounded up to 128/256/576/784/1024: 80, 132, 550, 784, 1024, 65536, 18
    assert bench.fgclip2_patch_budget(*size) == budget


def test_fgclip2_tiny_scores_with_the_long_caption():
    scorer = bench.FGClip2Scorer({"backend": "tiny"})
    rgb = np.random.default_rng(4).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    value = scorer.score(rgb, "a long caption " * 40)  # longer than 196 tokens: truncated, not an error
    assert scorer.smoke and 0.0 <= value <= 100.0
    with pytest.raises(RuntimeError, match="bench.fgclip2.model"):
        bench.FGClip2Scorer({"backend": "fgclip2", "model": None})


def test_changed_generation_settings_discard_the_old_images(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(real_dir / "abc.png")
    rows = [{"file_name": "abc.png", "short_caption": "s", "long_caption": "l"}]
    generate_method(rows, {"backend": "degrade", "factor": 4}, tmp_path / "m", real_dir, 100.0, log=lambda *_: None)
    first = (tmp_path / "m" / "abc.jpg").read_bytes()
    again = generate_method(
        rows, {"backend": "degrade", "factor": 4}, tmp_path / "m", real_dir, 100.0, log=lambda *_: None
    )
    assert again["generated"] == 0  # same settings: kept
    other = generate_method(
        rows, {"backend": "degrade", "factor": 2}, tmp_path / "m", real_dir, 100.0, log=lambda *_: None
    )
    assert other["generated"] == 1 and (tmp_path / "m" / "abc.jpg").read_bytes() != first  # new settings: remade


def test_paper_config_defaults_are_the_published_code(repo_root, demo_config):
    from pixverve.core.config import load_yaml

    b = load_yaml(repo_root / "config.yaml")["bench"]
    assert b["fid"]["resample"] == "bilinear" and b["fid_patch"]["order"] == "yx" and b["clip"]["batch"] == 4
    j = b["judge"]
    assert j["prompts"] == "published" and j["published_eval"] is None and j["jpeg_quality"] == 98
    assert {k: j["vlm"][k] for k in PAPER_JUDGE} == PAPER_JUDGE and j["ics_response_format"] is False
    assert demo_config["bench"]["judge"]["prompts"] == "ours"  # the demo has no published checkout


def test_a_partial_value_never_takes_the_bold_from_a_full_one(tmp_path):
    """Method a's MSFI is higher but left out images whose judge call failed (partial_columns):
    b's full value is the best; a column where every value is partial has no best at all."""
    base = {k: 1.0 for k, _ in bench.TABLE_COLUMNS}
    rows = [
        {**base, "method": "a", "resolution": "4K", "msfi": 9.0, "ics": 9.0, "partial_columns": "msfi,ics"},
        {**base, "method": "b", "resolution": "4K", "msfi": 7.0, "ics": 6.0, "partial_columns": "ics"},
    ]
    df = pd.DataFrame([{**r, "smoke_columns": "", "images": 3} for r in rows])
    marks = bench.best_marks(df)
    assert marks["msfi"] == {1} and marks["ics"] == set() and marks["glcm"] == {0, 1}
    bench.write_bench_tables(df, tmp_path / "t", "title")
    md = (tmp_path / "t.md").read_text()
    assert f"| 9.000{bench.FAILED_MARK} |" in md and "| **7.000** |" in md and f"| 6.000{bench.FAILED_MARK} |" in md
    assert list(pd.read_csv(tmp_path / "t.csv")["best_in"].str.contains("msfi")) == [False, True]


def test_generated_images_take_the_published_seed_and_jpeg_quality_by_default(tmp_path):
    """The published inference scripts give every prompt seed 42 and save with Pillow's default
    quality (75); per_image seeds and another quality are keys."""
    import io

    from pixverve.bench.generate import _save_jpeg, image_seed, seed_for

    assert seed_for({}, "a.png") == 42 and seed_for({"seed": 7}, "b.png") == 7
    assert seed_for({"seed_mode": "per_image", "seed": 7}, "dir/cat.png") == image_seed("cat", 7)
    with pytest.raises(ValueError, match="seed_mode: 'random'"):
        seed_for({"seed_mode": "random"}, "a.png")
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    _save_jpeg(rgb, tmp_path / "d.jpg", {})
    _save_jpeg(rgb, tmp_path / "q.jpg", {"jpeg_quality": 95})
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")  # Pillow's default quality
    assert (tmp_path / "d.jpg").read_bytes() == buffer.getvalue()
    assert (tmp_path / "q.jpg").stat().st_size > (tmp_path / "d.jpg").stat().st_size
