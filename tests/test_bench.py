"""PixVerve-Bench per method: FID_patch's seeded crops, CLIPScore, the MSFI/ICS judge calls
against a local chat-completions server, the table (best marked, smoke per cell), generation."""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("openai")

from fake_openai import FakeOpenAI  # noqa: E402
from pixverve import bench  # noqa: E402
from pixverve.bench_generate import generate_method  # noqa: E402
from pixverve.bench_inputs import BenchItem  # noqa: E402
from pixverve.vlm import VLMClient, VLMSettings, decode_data_url  # noqa: E402


def test_fid_patch_crops_are_the_seeded_sequence_pair_by_pair_x_then_y():
    coords = bench.fid_patch_coordinates(3, size=1000, crop=299, per_pair=20, seed=42)
    random.seed(42)  # the published procedure: Python's random, seeded once
    expected = [[(random.randint(0, 701), random.randint(0, 701)) for _ in range(20)] for _ in range(3)]
    assert coords == expected
    assert all(0 <= x <= 701 and 0 <= y <= 701 for pair in coords for x, y in pair)
    with pytest.raises(ValueError, match="larger than the resized image"):
        bench.fid_patch_coordinates(1, size=256, crop=299)


def test_fid_patch_draw_order_is_a_config_key():
    """y first is the other reading of "Python random seeded 42 once"; it moves every crop."""
    random.seed(42)
    yx = [[tuple(reversed((random.randint(0, 701), random.randint(0, 701)))) for _ in range(5)] for _ in range(2)]
    assert bench.fid_patch_coordinates(2, size=1000, per_pair=5, order="yx") == yx
    assert yx != bench.fid_patch_coordinates(2, size=1000, per_pair=5)
    with pytest.raises(ValueError, match="order"):
        bench.fid_patch_coordinates(1, size=1000, order="x-first")


def test_fid_patch_of_a_set_with_itself_is_zero(tmp_path):
    from pixverve.fid import convert_fid_weights, fid_helper_torchscript

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


def test_clip_score_is_100_times_the_clamped_cosine():
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
    assert got == pytest.approx(100 * max(cos, 0.0), abs=1e-4)
    assert scorer.smoke and got >= 0.0


MSFI_GLOBAL = {"SC": 5, "PI": 4, "LC": 3, "CH": 2}
MSFI_LOCAL = {"NGE": 5, "GA": 4, "TF": 5, "MGC": 5, "SC": 3}
ICS = {"IEV": 9, "AAA": 8, "SRA": 6}


def _text(body):
    return next(c["text"] for c in body["messages"][-1]["content"] if c["type"] == "text")


def test_judge_calls_and_the_formulas(tmp_path, repo_root, demo_config):
    seen = []

    def responder(body):
        text = _text(body)
        seen.append(body)
        if "whole of an AI-generated image" in text:
            return "<json>" + json.dumps(MSFI_GLOBAL) + "</json>"
        if "one region of an AI-generated" in text:
            return "<json>" + json.dumps(MSFI_LOCAL) + "</json>"
        return "<json>" + json.dumps(ICS) + "</json>"

    rng = np.random.default_rng(2)
    path = tmp_path / "g.jpg"
    Image.fromarray(rng.integers(0, 256, (1800, 2600, 3), dtype=np.uint8)).save(path, quality=95)  # 15 patches on the grid
    item = BenchItem("g", path, path, "short", "a long caption about a cat")
    spec = demo_config["bench"]["judge"]
    prompts = {k: (repo_root / spec[f"{k}_prompt"]).read_text() for k in ("msfi_global", "msfi_local", "ics")}
    with FakeOpenAI(responder=responder) as server:
        judge = VLMClient(VLMSettings(base_url=server.base_url, model="fake-vlm", backoff_s=0.01, retries=1))
        judge.smoke = False
        table = judge_table = bench.judge_method([item], judge, prompts, spec, 1000.0, log=lambda *_: None)
    row = table.iloc[0]
    s_g = (5 * 5 + 4 * 3 + 3 * 2 + 2 * 2) / 12
    s_l = (5 * 2 + 4 * 3 + 5 * 5 + 5 * 2 + 3 * 2) / 14
    assert row["msfi"] == pytest.approx(s_g + s_g / 5 * s_l)
    assert row["ics"] == pytest.approx(math.sqrt(0.9) * (0.6 * 8 + 0.4 * 6))
    assert len(seen) == 12 and len(json.loads(row["patches"])) == 10  # 1 global + 10 local + ICS
    local = [b for b in seen if "one region" in _text(b)]
    assert all(re.search(r"x 0\.\d{3}-[01]\.\d{3}, y", _text(b)) for b in local)  # relative coordinates given
    patch = decode_data_url(local[0]["messages"][-1]["content"][0]["image_url"]["url"])
    assert patch.shape[:2] == (512, 512)  # full-resolution patch (long edge < 7680: 512 px)
    ics_body = next(b for b in seen if "follows its prompt" in _text(b))
    assert "a long caption about a cat" in _text(ics_body)
    assert judge_table["smoke"].eq(False).all()


def test_table_marks_the_best_per_column_and_smoke_per_cell(tmp_path):
    rows = [
        {"method": "a", "resolution": "4K", "fid": 120.0, "fid_patch": 50.0, "aesthetics": 5.9, "glcm": 1.0, "msfi": 8.0,
         "clip": 34.0, "fgclip2": float("nan"), "ics": 7.0, "compression": 10.0, "smoke_columns": "msfi,ics"},
        {"method": "b", "resolution": "4K", "fid": 110.0, "fid_patch": 55.0, "aesthetics": 6.1, "glcm": 1.0, "msfi": 7.0,
         "clip": 33.0, "fgclip2": float("nan"), "ics": 8.0, "compression": 12.0, "smoke_columns": ""},
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
    info = generate_method(rows, {"backend": "degrade", "factor": 4}, tmp_path / "deg", real_dir, 100.0, log=lambda *_: None)
    out = np.asarray(Image.open(tmp_path / "deg" / "abc.jpg"))
    assert out.shape == (64, 96, 3) and info["generated"] == 1 and not info["smoke"]
    spec = {"backend": "tiny", "width": 64, "height": 64, "steps": 2, "guidance": None}
    info = generate_method(rows, spec, tmp_path / "tiny", real_dir, 100.0, log=lambda *_: None)
    first = (tmp_path / "tiny" / "abc.jpg").read_bytes()
    assert info["smoke"] and np.asarray(Image.open(tmp_path / "tiny" / "abc.jpg")).shape == (64, 64, 3)
    again = generate_method(rows, spec, tmp_path / "tiny", real_dir, 100.0, log=lambda *_: None)
    assert again["generated"] == 0 and (tmp_path / "tiny" / "abc.jpg").read_bytes() == first  # resumed, not redone


@pytest.mark.parametrize("size, budget", [((160, 128), 128), ((176, 192), 256), ((400, 360), 576), ((448, 448), 784),
                                          ((512, 512), 1024), ((4096, 4096), 1024), ((100, 50), 128)])
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
    again = generate_method(rows, {"backend": "degrade", "factor": 4}, tmp_path / "m", real_dir, 100.0, log=lambda *_: None)
    assert again["generated"] == 0  # same settings: kept
    other = generate_method(rows, {"backend": "degrade", "factor": 2}, tmp_path / "m", real_dir, 100.0, log=lambda *_: None)
    assert other["generated"] == 1 and (tmp_path / "m" / "abc.jpg").read_bytes() != first  # new settings: remade
