"""The synthetic stream: LLM prompts (local chat server), near-duplicate removal, T2I backends."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_openai import FakeOpenAI  # noqa: E402

from pixverve.collect.synthetic import T2IUnavailable, build_t2i, near_duplicates, render_prompts, write_prompts  # noqa: E402
from pixverve.core.config import load_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "prompts" / "synthetic_prompts.md"


def test_near_duplicates_by_word_trigram_jaccard():
    prompts = [
        "A misty pine forest at dawn with soft light on wet moss and ferns",
        "A misty pine forest at dawn with soft light on wet moss and stones",  # one word changed
        "a misty PINE forest at dawn, with soft light on wet moss and ferns!",  # same words
        "An old harbour at night, fishing boats under sodium lamps, rain on the quay",
    ]
    out = near_duplicates(prompts, 0.5)
    assert out[0][0] == "" and out[3][0] == ""
    assert out[1][0] == "near_duplicate" and out[1][2] >= 0.5
    assert out[2][0] == "exact_duplicate" and out[2][2] == 1.0
    assert out[1][1] == out[2][1]  # both point at the first prompt's id
    assert near_duplicates(prompts[:2], 0.95)[1][0] == ""  # the threshold decides


def _config(tmp_path: Path, base_url: str = "http://127.0.0.1:9/v1") -> dict:
    config = load_yaml(ROOT / "config.yaml")
    config["sources"]["roots"] = [
        {"name": "synthetic", "path": str(tmp_path / "synthetic"), "source": "synthetic", "licence": ""}
    ]
    config["synthetic"].update(
        enabled=True,
        categories=["forest", "harbour"],
        prompts_per_category=4,
        per_request=2,
        width=64,
        height=48,
        backend="tiny",
    )
    config["vlm"].update(base_url=base_url, model="fake-vlm", retries=1, backoff_s=0.01)
    return config


def _prompt_server(body):
    text = body["messages"][-1]["content"][-1]["text"]
    category = "forest" if "Category: forest" in text else "harbour"
    batch = text.split("This is batch ")[1].split(";")[0]
    if category == "harbour" and batch == "2":
        return "Sorry, I cannot help with that."  # no JSON: the request is recorded, no prompts
    prompts = {
        ("forest", "1"): [
            "A misty pine forest at dawn with soft light on wet moss and ferns",
            "Autumn beech forest, low sun through copper leaves, a stream over stones",
        ],
        ("forest", "2"): [
            "A misty pine forest at dawn with soft light on wet moss and stones",  # near dup
            "Snowy spruce forest under a blue dusk sky, fresh tracks of a fox",
        ],
        ("harbour", "1"): [
            "An old harbour at night, fishing boats under sodium lamps, rain on the quay",
            "Autumn beech forest, low sun through copper leaves, a stream over stones",
        ],  # exact dup
    }[(category, batch)]
    return f"<json>{json.dumps({'prompts': prompts})}</json>"


def test_prompts_through_the_vlm_client_keep_raw_replies_and_drop_duplicates(tmp_path):
    from pixverve.models.vlm_local import build_judge

    with FakeOpenAI(responder=_prompt_server) as server:
        config = _config(tmp_path, server.base_url)
        prompts, requests = write_prompts(config, build_judge(config), TEMPLATE, log=lambda *_: None)
    assert len(requests) == 4 and list(requests["status"]).count("unparseable") == 1
    assert all(json.loads(r) for r in requests["raw_replies"])  # every raw reply kept
    sent = {(b["temperature"], b["max_tokens"]) for b in server.bodies}  # and the options it was asked with
    assert {(o["temperature"], o["max_tokens"]) for o in map(json.loads, requests["request_options"])} == sent
    assert len(prompts) == 6 and prompts["passed"].sum() == 4
    reasons = prompts.set_index("prompt")["reason"]
    assert reasons["A misty pine forest at dawn with soft light on wet moss and stones"] == "near_duplicate"
    assert list(prompts["reason"]).count("exact_duplicate") == 1
    assert not prompts["smoke"].any()


def _prompts_table() -> pd.DataFrame:
    rows = [("a" * 16, "forest", "a pine forest"), ("b" * 16, "harbour", "a harbour at night")]
    return pd.DataFrame(
        [{"prompt_id": i, "category": c, "prompt": p, "passed": True, "smoke": False} for i, c, p in rows]
    )


def test_tiny_backend_renders_records_seeds_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path)
    t2i = build_t2i(config["synthetic"])
    calls = []
    original = t2i.render
    t2i.render = lambda *a, **k: (calls.append(a[0]), original(*a, **k))[1]
    table, manifest = render_prompts(_prompts_table(), config, t2i, tmp_path, log=lambda *_: None)
    assert table["passed"].all() and table["smoke"].all() and set(table["model"]) == {"tiny-stable-diffusion"}
    for row in table.to_dict("records"):
        with Image.open(tmp_path / "synthetic" / row["relpath"]) as im:
            assert im.size == (64, 48)
        assert row["seed"] == int(row["prompt_id"][:8], 16)
    assert [m["source"] for m in manifest] == ["synthetic", "synthetic"] and "seed" in manifest[0]["author"]
    again, _ = render_prompts(_prompts_table(), config, t2i, tmp_path, log=lambda *_: None)
    assert len(calls) == 2 and again.equals(table)  # finished renders are not redone
    one = render_prompts(_prompts_table().iloc[:1], config, t2i, tmp_path / "other", log=lambda *_: None)[0]
    assert one.iloc[0]["seed"] == table.iloc[0]["seed"]  # the seed depends on the prompt only


def test_diffusers_backend_loads_a_pipeline_folder_and_names_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pixverve.models.tiny_models import build_tiny_sd_pipeline

    folder = build_tiny_sd_pipeline(tmp_path / "pipe")
    cfg = {
        "backend": "diffusers",
        "diffusers": {"model": str(folder), "device": "cpu", "dtype": "float32", "steps": 2, "guidance": 3.0},
    }
    t2i = build_t2i(cfg)
    t2i.render("a barn", 7, 64, 64, tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        assert im.size == (64, 64)
    cfg["diffusers"]["model"] = str(tmp_path / "nowhere")
    with pytest.raises(T2IUnavailable, match="synthetic.diffusers.model"):
        build_t2i(cfg)


def test_command_backend_runs_an_external_generator_and_reports_a_missing_one(tmp_path):
    script = tmp_path / "gen.py"
    script.write_text(
        "import sys\nfrom PIL import Image\n"
        "prompt = open(sys.argv[1]).read(); w, h = int(sys.argv[3]), int(sys.argv[4])\n"
        "Image.new('RGB', (w, h), (len(prompt) % 256, int(sys.argv[2]) % 256, 0)).save(sys.argv[5], format='PNG')\n"
    )
    config = _config(tmp_path)
    config["synthetic"].update(
        backend="command",
        command={
            "template": f"{sys.executable} {script} {{prompt_file}} {{seed}} {{width}} {{height}} {{output}}",
            "model": "gen",
        },
    )
    table, _ = render_prompts(_prompts_table(), config, base_dir=tmp_path, log=lambda *_: None)
    assert table["passed"].all() and not table["smoke"].any() and set(table["model"]) == {"gen"}
    with Image.open(tmp_path / "synthetic" / table.iloc[0]["relpath"]) as im:
        assert im.getpixel((0, 0))[0] == len("a pine forest")  # the prompt reached the program
    config["synthetic"]["command"]["template"] = "/nonexistent/generator {output}"
    (tmp_path / "synthetic" / table.iloc[0]["relpath"]).unlink()
    with pytest.raises(T2IUnavailable, match="synthetic.command.template"):
        render_prompts(_prompts_table(), config, base_dir=tmp_path, log=lambda *_: None)


def test_prompt_requests_without_valid_prompts_stop_the_job_and_the_rerun_asks_only_them(tmp_path):
    """More than synthetic.max_failed_fraction of the batches refused: the job stops naming the
    server (no table is written); after the fix the rerun answers the ok ones from the reply cache."""
    from pixverve.core.health import StepFailed
    from pixverve.models import replies
    from pixverve.models.vlm_local import build_judge

    replies.use_reply_cache(tmp_path / "cache.jsonl")
    try:
        harbour = lambda body: "Category: harbour" in body["messages"][-1]["content"][-1]["text"]  # noqa: E731
        with FakeOpenAI(responder=_prompt_server, fault="refuse", fault_when=harbour) as server:
            config = _config(tmp_path, server.base_url)
            with pytest.raises(StepFailed) as stop:
                write_prompts(config, build_judge(config), TEMPLATE, log=lambda *_: None)
            assert str(stop.value).startswith(
                f"synth_prompts: 2 of 4 images failed (more than synthetic.max_failed_fraction=0.05) at model server "
                f"{server.base_url} (model 'fake-vlm'); first: failed: "
            )
            server.fault, asked = None, server.requests
            prompts, requests = write_prompts(config, build_judge(config), TEMPLATE, log=lambda *_: None)
            # only the two harbour batches reach the server (batch 2 twice: its prose answer is asked again)
            assert server.requests - asked == 3 and all(harbour(b) for b in server.bodies[asked:])
        assert list(requests["status"]).count("ok") == 3 and prompts["passed"].sum() == 4
    finally:
        replies.use_reply_cache(None)


class _FlakyT2I:
    model, smoke, steps = "flaky", False, 1

    def __init__(self, broken: set[str]):
        self.broken, self.calls = broken, []

    def render(self, prompt, seed, width, height, dest):
        self.calls.append(prompt)
        if prompt in self.broken:
            raise RuntimeError("CUDA error: an illegal memory access")
        Image.new("RGB", (width, height), (90, 120, 30)).save(dest)


def test_failed_renders_stop_synth_render_by_share_and_by_streak(tmp_path):
    from pixverve.core.health import StepFailed

    config = _config(tmp_path)
    table = _prompts_table()
    one_bad = _FlakyT2I({"a pine forest"})
    config["synthetic"]["max_failed_fraction"] = 0.5  # 1 of 2 is allowed
    out, manifest = render_prompts(table, config, one_bad, tmp_path, log=lambda *_: None)
    assert list(out["reason"]) == ["render_failed", ""] and [m["path"] for m in manifest] == [f"{'b' * 16}.png"]
    assert out["reason_detail"].iloc[0] == "RuntimeError: CUDA error: an illegal memory access"
    config["synthetic"]["max_failed_fraction"] = 0.0
    with pytest.raises(
        StepFailed, match=r"^synth_render: 1 of 2 images failed .* at tiny: flaky; first: render_failed"
    ):
        render_prompts(table, config, _FlakyT2I({"a pine forest"}), tmp_path, log=lambda *_: None)
    three = pd.concat([table, table.assign(prompt_id="c" * 16, prompt="a quay")], ignore_index=True)
    config["synthetic"].update(max_failed_fraction=1.0, stop_after_consecutive_failures=2)
    broken = _FlakyT2I({"a pine forest", "a harbour at night", "a quay"})
    for name in ("a" * 16, "b" * 16):
        (tmp_path / "synthetic" / f"{name}.png").unlink(missing_ok=True)
    with pytest.raises(StepFailed, match=r"synth_render: 2 renders in a row failed \(tiny: flaky\); first a{16}"):
        render_prompts(three, config, broken, tmp_path, log=lambda *_: None)
    assert broken.calls == ["a pine forest", "a harbour at night"]  # stopped before the third
