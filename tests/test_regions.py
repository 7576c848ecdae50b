"""Stage 4 check 3: patch choice, the judge backends (endpoint, tiny/transformers), vLLM start-up."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_openai import FakeOpenAI  # noqa: E402

from pixverve.models.vlm import decode_data_url  # noqa: E402
from pixverve.verify.regions import choose_patches, judge_regions_shard, patch_boxes, sobel_variances  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ROOT / "prompts" / "region_artifact.md"


def test_patch_boxes_tile_whole_patches_from_the_top_left():
    boxes = patch_boxes(1000, 1700, 768)
    assert boxes == [(0, 0, 768, 768), (768, 0, 768, 768)]  # partial strips are not patches
    assert len(patch_boxes(7680, 10000, 768)) == 10 * 13
    assert patch_boxes(300, 500, 768) == [(0, 0, 500, 300)]  # smaller than a patch: itself


def test_banded_sobel_variance_equals_the_whole_image_computation():
    import cv2

    rng = np.random.default_rng(0)
    grey = cv2.GaussianBlur(rng.integers(0, 256, (230, 310), dtype=np.uint8), (0, 0), 2)
    boxes = patch_boxes(*grey.shape, 50)
    f = grey.astype(np.float32)
    mag = cv2.magnitude(cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3))
    expected = [mag[y : y + h, x : x + w].astype(np.float64).var() for x, y, w, h in boxes]
    np.testing.assert_allclose(sobel_variances(lambda lo, hi: grey[lo:hi], 230, boxes), expected, rtol=1e-6)


def test_patches_read_from_the_tiles_equal_the_whole_image_path(tmp_path):
    """Sobel variances from the tiled file (one patch row at a time) and the judged crops are the
    whole decoded image's, bit for bit."""
    import cv2

    from pixverve.core.tiling import TiledTiffWriter, bands_of
    from pixverve.verify.regions import patches_to_judge

    rng = np.random.default_rng(2)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (260, 330, 3), dtype=np.uint8), (0, 0), 1.5)
    rgb[100:150, 200:260] = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)  # one busy patch
    path = tmp_path / "sr.tif"
    TiledTiffWriter(path, 260, 330, tile=48).write(bands_of(rgb, rows=70))
    boxes, variances, chosen, crops = patches_to_judge(path, "0123456789abcdef", 64, {"n_sobel": 3, "n_random": 2})
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert boxes == patch_boxes(260, 330, 64)
    assert np.array_equal(variances, sobel_variances(lambda lo, hi: grey[lo:hi], 260, boxes))
    assert chosen == choose_patches(variances, "0123456789abcdef", 3, 2)
    assert boxes[chosen[0][0]] == (192, 64, 64, 64)  # the busy region's patch ranks first
    for (index, _), crop in zip(chosen, crops, strict=True):
        x, y, w, h = boxes[index]
        assert np.array_equal(crop, rgb[y : y + h, x : x + w])


def test_six_by_sobel_variance_and_four_random_seeded_by_the_image_id():
    variances = np.arange(30, dtype=float)[::-1].copy()  # patch i has rank i
    variances[[7, 8]] = 100  # a tie: the lower index first
    chosen = choose_patches(variances, "00ff00ff00ff00ff", 6, 4)
    assert [i for i, why in chosen if why == "sobel"] == [7, 8, 0, 1, 2, 3]
    drawn = [i for i, why in chosen if why == "random"]
    assert len(drawn) == 4 and not set(drawn) & {7, 8, 0, 1, 2, 3}
    assert choose_patches(variances, "00ff00ff00ff00ff", 6, 4) == chosen  # reproducible
    others = {tuple(i for i, w in choose_patches(variances, f"{k:016x}", 6, 4) if w == "random") for k in range(1, 6)}
    assert len(others) > 1  # the id seeds the draw
    assert sorted(i for i, _ in choose_patches(np.ones(7), "ab" * 8, 6, 4)) == list(range(7))  # fewer than 10: all


def _red_checker_share(rgb: np.ndarray) -> float:
    return float(((rgb[..., 0] > 200) & (rgb[..., 1] < 60)).mean())


def _judge_by_colour(body) -> str:
    """Flag a patch with a planted red checkerboard (the 'artefact'), pass the rest."""
    content = body["messages"][-1]["content"]
    image = decode_data_url(next(c["image_url"]["url"] for c in content if c["type"] == "image_url"))
    flagged = _red_checker_share(image) > 0.2
    return f"<json>{json.dumps({'flagged': flagged, 'reason': 'red grid' if flagged else 'clean'})}</json>"


def _sr_shard(tmp_path, n_planted: int):
    """One 'SR output' (a smooth image) with ``n_planted`` 64 px patches replaced by a red checkerboard."""
    from pixverve.core.tiling import TiledTiffWriter, bands_of

    yy, xx = np.mgrid[0:256, 0:320]
    sr = np.stack([(xx * 0.6) % 256, (yy * 0.8) % 256, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    checker = ((np.indices((64, 64)).sum(axis=0) // 4) % 2).astype(bool)
    for k in range(n_planted):
        patch = sr[0:64, 64 * k : 64 * k + 64]
        patch[checker] = (255, 0, 0)
        patch[~checker] = (0, 0, 0)
    out = tmp_path / "a.tif"
    TiledTiffWriter(out, *sr.shape[:2]).write(bands_of(sr))
    image_id = "0123456789abcdef"
    verified = pd.DataFrame(
        [{"image_id": image_id, "root": "r", "relpath": "a.png", "shard": "s00000", "passed": True}]
    )
    upscaled = pd.DataFrame([{"image_id": image_id, "output_path": str(out)}])
    return verified, upscaled


def _config(base_url: str, policy: str = "drop", gates: bool = True) -> dict:
    return {
        "target_megapixels": 100,
        "verify": {
            "regions": {"patch_px": 64, "n_sobel": 6, "n_random": 4, "max_flagged": 1, "prompt": str(PROMPT)},
            "max_failed_fraction": 0.05 if gates else 1.0,
        },
        "vlm": {
            "backend": "endpoint",
            "base_url": base_url,
            "model": "fake-vlm",
            "retries": 1,
            "backoff_s": 0.01,
            "invalid_policy": policy,
        }
        | ({} if gates else {"probe": False, "stop_after_consecutive_failures": 0}),
    }


@pytest.mark.parametrize("n_planted, passed", [(1, True), (2, False)])
def test_region_judge_drops_an_image_with_more_than_one_flagged_patch(tmp_path, n_planted, passed):
    from pixverve.models.vlm_local import build_judge

    verified, upscaled = _sr_shard(tmp_path, n_planted)
    with FakeOpenAI(responder=_judge_by_colour) as server:
        config = _config(server.base_url)
        images, patches = judge_regions_shard(
            verified, upscaled, config, build_judge(config), PROMPT, log=lambda *_: None
        )
    row = images.iloc[0]
    assert len(patches) == 10 and row["n_patches"] == 20 and row["n_judged"] == 10
    assert row["n_flagged"] == n_planted and bool(row["passed"]) is passed
    assert row["reason"] == ("" if passed else "region_artifacts") and not row["smoke"]
    flagged = patches[patches["flagged"]]
    assert sorted(flagged["x"]) == [64 * k for k in range(n_planted)] and set(flagged["y"]) == {0}
    assert set(flagged["picked"]) == {"sobel"}  # the checkerboard has the highest Sobel variance
    assert all(json.loads(r)[0].startswith("<json>") for r in patches["raw_replies"])  # raw replies kept
    assert [json.loads(o) for o in patches["request_options"]] == [
        {"max_tokens": 1024, "temperature": 0.1}
    ] * 10  # and how asked


@pytest.mark.parametrize("policy, passed", [("drop", False), ("keep", True)])
def test_unparseable_judge_replies_follow_the_policy_never_a_silent_pass(tmp_path, policy, passed):
    from pixverve.models.vlm_local import build_judge

    verified, upscaled = _sr_shard(tmp_path, 0)
    with FakeOpenAI(responder=lambda body: "looks fine to me") as server:
        config = _config(server.base_url, policy, gates=False)  # the per-image policy, below the job's gates
        images, patches = judge_regions_shard(
            verified, upscaled, config, build_judge(config), PROMPT, log=lambda *_: None
        )
    row = images.iloc[0]
    assert row["n_unjudged"] == 10 and row["n_flagged"] == 0 and bool(row["passed"]) is passed
    assert row["reason"] == ("" if passed else "judge_unparseable")
    assert set(patches["status"]) == {"unparseable"} and set(patches["attempts"]) == {2}
    assert not patches["passed"].any()  # an unjudged patch is never recorded as clean


def test_a_judge_answering_prose_stops_the_job_at_its_probe(tmp_path):
    """The paper's policy (drop): the first request is the probe; prose instead of JSON stops the
    job before any other request goes out, naming the server and what it answered."""
    from pixverve.core.health import StepFailed
    from pixverve.models.vlm_local import build_judge

    verified, upscaled = _sr_shard(tmp_path, 0)
    with FakeOpenAI(responder=lambda body: "looks fine to me") as server:
        config = _config(server.base_url)
        with pytest.raises(StepFailed, match=r"probe of model server http://127\.0\.0\.1:\d+/v1 .*unparseable.*JSON"):
            judge_regions_shard(verified, upscaled, config, build_judge(config), PROMPT, log=lambda *_: None)
        assert server.requests == 2  # the probe and its one retry, nothing else


def test_tiny_judge_runs_the_transformers_path_and_is_marked_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pixverve.models.vlm_local import build_judge

    verified, upscaled = _sr_shard(tmp_path, 0)
    config = _config("http://unused/v1", "keep")
    config["vlm"].update(backend="tiny", tiny={"seed": 0, "max_new_tokens": 8})
    judge = build_judge(config)
    images, patches = judge_regions_shard(verified, upscaled, config, judge, PROMPT, log=lambda *_: None)
    assert judge.smoke and images.iloc[0]["smoke"] and patches["smoke"].all()
    replies = [json.loads(r) for r in patches["raw_replies"]]
    assert all(len(r) == 1 for r in replies)  # one generated reply per patch, kept verbatim
    assert set(patches["status"]) <= {"ok", "unparseable", "invalid"} and images.iloc[0]["passed"]
    # greedy decoding of the same random model: the same replies again
    again = judge.run_many([("region_artifact", "x", [{"role": "user", "content": "hi"}], None)] * 2)
    assert again[0].raw_replies == again[1].raw_replies


def test_transformers_backend_loads_a_saved_model_folder_and_names_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pixverve.models.vlm import user_message
    from pixverve.models.vlm_local import TransformersVLM, VLMUnavailable, build_judge, build_tiny_qwen2_vl

    folder = build_tiny_qwen2_vl(tmp_path / "m", seed=1)
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    judge = TransformersVLM(str(folder), "cpu", "float32", max_new_tokens=4, probe=False)
    image = np.full((40, 50, 3), 128, np.uint8)
    (res,) = judge.run_many([("t", "r", [user_message("judge this", [image])], None)])
    assert res.attempts == 1 and len(res.raw_replies) == 1 and res.status == "unparseable"
    from pixverve.core.health import StepFailed

    probed = TransformersVLM(str(folder), "cpu", "float32", max_new_tokens=4)  # random tokens: the probe stops it
    with pytest.raises(StepFailed, match=r"probe of local model .*\(task t\): unparseable: .*vlm.transformers.model"):
        probed.run_many([("t", "r", [user_message("judge this", [image])], None)])
    with pytest.raises(VLMUnavailable, match="vlm.transformers.model.*nowhere"):
        build_judge(
            {"vlm": {"backend": "transformers", "transformers": {"model": str(tmp_path / "nowhere"), "device": "cpu"}}}
        )


def _fake_vllm(tmp_path, extra: str = "") -> str:
    script = tmp_path / "vllm"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT / "tests" / "fake_openai.py"} "$@" {extra}\n')
    script.chmod(0o755)
    return str(script)


def test_vllm_serve_option_starts_waits_answers_and_stops(tmp_path):
    from pixverve.models.vllm_server import served
    from pixverve.models.vlm import VLMClient, VLMSettings, user_message

    serve = {
        "command": f"{_fake_vllm(tmp_path, '--startup-delay 1')} serve",
        "port": 0,
        "poll_s": 0.2,
        "startup_timeout_s": 30,
    }
    with served(serve, "judge-model", tmp_path / "vllm.log") as base_url:
        client = VLMClient(VLMSettings(base_url=base_url, model="judge-model"))
        (res,) = client.run_many([("t", "r", [user_message("hello")], None)])
        assert res.status == "ok"
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        server_pids = [
            p for p in pids if "fake_openai.py" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        ]
        assert server_pids
    import time

    time.sleep(0.2)
    for pid in server_pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert "serving judge-model" in (tmp_path / "vllm.log").read_text()


def test_vllm_that_dies_or_never_gets_ready_is_a_clear_error(tmp_path):
    from pixverve.models.vllm_server import ServerFailed, served

    dying = tmp_path / "dying"
    dying.write_text("#!/bin/sh\necho 'CUDA out of memory while loading'\nexit 3\n")
    dying.chmod(0o755)
    with pytest.raises(ServerFailed, match=r"(?s)exited with code 3.*CUDA out of memory"):
        with served({"command": str(dying), "poll_s": 0.1}, "m", tmp_path / "a.log"):
            pass
    slow = {"command": f"{_fake_vllm(tmp_path, '--startup-delay 30')} serve", "poll_s": 0.1, "startup_timeout_s": 0.5}
    with pytest.raises(ServerFailed, match="did not list 'm'.*startup_timeout_s"):
        with served(slow, "m", tmp_path / "b.log"):
            pass


def test_images_judged_in_several_batches_keep_their_own_verdicts(tmp_path, monkeypatch):
    import pixverve.verify.regions as regions
    from pixverve.models.vlm_local import build_judge

    monkeypatch.setattr(regions, "IMAGES_PER_BATCH", 1)  # one endpoint run per image: the client is reused
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, up_one = _sr_shard(tmp_path / "a", 2)
    two, up_two = _sr_shard(tmp_path / "b", 0)
    two["image_id"] = up_two["image_id"] = "fedcba9876543210"
    verified, upscaled = pd.concat([one, two], ignore_index=True), pd.concat([up_one, up_two], ignore_index=True)
    with FakeOpenAI(responder=_judge_by_colour) as server:
        config = _config(server.base_url)
        images, patches = judge_regions_shard(
            verified, upscaled, config, build_judge(config), PROMPT, log=lambda *_: None
        )
    by_id = images.set_index("image_id")
    assert by_id.loc["0123456789abcdef", "reason"] == "region_artifacts" and by_id.loc["fedcba9876543210", "passed"]
    assert patches.groupby("image_id")["flagged"].sum().to_dict() == {"0123456789abcdef": 2, "fedcba9876543210": 0}


def test_local_vlm_probe_and_failure_streak_as_the_endpoint_client(tmp_path, monkeypatch):
    """The transformers backend's first answer is checked (drop: an unparseable one stops the job;
    keep: it passes), a step's probe_check applies, and failures on
    stop_after_consecutive_failures images in a row stop it -- parts of one image count once, and
    a usable answer ends the streak."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pixverve.core.health import StepFailed
    from pixverve.models.vlm import user_message
    from pixverve.models.vlm_local import TransformersVLM, build_tiny_qwen2_vl

    folder = build_tiny_qwen2_vl(tmp_path / "m", seed=1)
    message = [user_message("judge")]

    def judge(replies, **kw):
        model = TransformersVLM(str(folder), "cpu", "float32", max_new_tokens=2, **kw)
        answers = iter(replies)
        model.generate = lambda messages: next(answers)
        return model

    def requests(*ids):
        return [("t", i, message, None) for i in ids]

    good, bad = '{"flag": false}', "I cannot judge this."
    ok = judge([good, bad, bad, good, bad, bad], stop_after_consecutive_failures=3)
    statuses = [r.status for r in ok.run_many(requests("a", "b", "c", "d", "e", "f"))]
    assert statuses == ["ok", "unparseable", "unparseable", "ok", "unparseable", "unparseable"]  # never 3 in a row
    with pytest.raises(StepFailed, match="^probe of local model"):
        judge([bad]).run_many(requests("a"))
    assert [r.status for r in judge([bad], invalid_policy="keep").run_many(requests("a"))] == ["unparseable"]
    checked = judge([good])
    checked.probe_check = lambda result: "special tokens stripped"
    with pytest.raises(StepFailed, match="special tokens stripped"):
        checked.run_many(requests("a"))
    answers = [good, bad, bad, bad, bad, bad, good]
    streak = judge(answers, stop_after_consecutive_failures=3)
    asked = []
    generate = streak.generate
    streak.generate = lambda messages: asked.append(1) or generate(messages)
    with pytest.raises(StepFailed, match=r"every request of 3 images in a row failed; first \(t\): unparseable"):
        streak.run_many(requests("a", "b:1", "b:2", "c:1", "c:2", "d", "e"))
    assert len(asked) == 6  # b, c and d failed: the job stops at d, before e is asked
