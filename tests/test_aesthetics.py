"""Aesthetic predictors: the published LAION head layout, real loading code, tiny smoke models."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pixverve.models import aesthetics as ae  # noqa: E402
from pixverve.purify.aesthetics import score_aesthetics_shard  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from artimuse_stand_in import STAND_IN_PROMPT, STAND_IN_QUESTION, make_checkout, vllm_render  # noqa: E402


def test_mlp_has_the_published_layout():
    shapes = {k: tuple(v.shape) for k, v in ae.laion_mlp().state_dict().items()}
    assert shapes == {
        "0.weight": (1024, 768),
        "0.bias": (1024,),
        "2.weight": (128, 1024),
        "2.bias": (128,),
        "4.weight": (64, 128),
        "4.bias": (64,),
        "6.weight": (16, 64),
        "6.bias": (16,),
        "7.weight": (1, 16),
        "7.bias": (1,),
    }
    # no activations between the linear layers: the head is affine (f(2x) - f(x) = f(x) - f(0))
    mlp = ae.laion_mlp().eval()
    x = torch.randn(3, 768)
    with torch.inference_mode():
        assert torch.allclose(mlp(2 * x) - mlp(x), mlp(x) - mlp(torch.zeros(3, 768)), atol=1e-5)


def test_weights_file_loads_with_layers_prefix_and_checks_sha(tmp_path):
    torch.manual_seed(3)
    ref = ae.laion_mlp()
    path = tmp_path / ae.LAION_MLP_FILE
    torch.save({f"layers.{k}": v for k, v in ref.state_dict().items()}, path)  # the original key names
    mlp, digest = ae.load_laion_mlp(path, None)
    x = torch.randn(2, 768)
    with torch.inference_mode():
        assert torch.equal(mlp(x), ref.eval()(x))
    assert ae.load_laion_mlp(path, digest)[1] == digest
    with pytest.raises(ae.ModelUnavailable, match="does not match"):
        ae.load_laion_mlp(path, "0" * 64)
    with pytest.raises(ae.ModelUnavailable, match=r"not found at .*improved-aesthetic-predictor"):
        ae.load_laion_mlp(tmp_path / "missing.pth", None)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"0.weight": torch.zeros(1), "payload": ae.PredictorInfo("x", "y", False, "z")}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        ae.load_laion_mlp(path, None)  # weights_only=True refuses arbitrary objects


def test_clip_saved_and_reloaded_offline_gives_the_same_embedding(tmp_path, monkeypatch):
    vision, processor = ae.tiny_clip_vision(seed=0)
    vision.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded, loaded_proc = ae.load_clip_vision(str(tmp_path / "clip"))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)
    info = ae.PredictorInfo("laion", "laion", False, "test")
    a = ae.LaionPredictor(vision, processor, ae.laion_mlp().eval(), info).embed([img])
    b = ae.LaionPredictor(loaded, loaded_proc, ae.laion_mlp().eval(), info).embed([img])
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a.norm(dim=-1), torch.ones(1), atol=1e-5)  # L2-normalised, as LAION expects


def test_missing_clip_model_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ae.ModelUnavailable, match="openai/clip-vit-large-patch14"):
        ae.load_clip_vision("openai/clip-vit-large-patch14")


def test_preprocessing_is_clip_224_centre_crop():
    _, processor = ae.tiny_clip_vision()
    out = processor(images=[np.zeros((500, 1000, 3), np.uint8)], return_tensors="pt")["pixel_values"]
    assert tuple(out.shape) == (1, 3, 224, 224)
    # black pixels normalised with CLIP's mean/std
    assert out[0, 0, 0, 0].item() == pytest.approx((0 - 0.48145466) / 0.26862954, abs=1e-4)


@pytest.fixture
def openai_clip_transform(monkeypatch):
    """openai-clip's own preprocess (clip.load returns it); its module imports `packaging` through
    pkg_resources, which current setuptools no longer ships: hand it the real `packaging` for the
    import only (a stand-in left in sys.modules breaks pytest's syspath_prepend later)."""
    import types

    import packaging.version

    if "clip.clip" not in sys.modules:
        monkeypatch.setitem(sys.modules, "pkg_resources", types.SimpleNamespace(packaging=packaging))
    from clip.clip import _transform

    return _transform


@pytest.mark.parametrize("size", [(500, 1000), (301, 400), (224, 227), (640, 479)])
def test_laion_input_equals_openai_clips_preprocess(size, openai_clip_transform):
    """Odd crop margins included (227 - 224 = 3: torchvision rounds the offset, HF's processor floors it)."""
    from PIL import Image

    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    ours = ae.openai_clip_pixels([image])
    assert torch.equal(ours[0], openai_clip_transform(224)(image))
    # the same from the decoded array (what the stages hand over)
    assert torch.equal(ae.openai_clip_pixels([np.asarray(image)]), ours)


def test_hf_processor_sits_one_pixel_off_where_the_crop_margin_is_odd():
    """Why `preprocess: processor` is not the default: it is not the published input."""
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 227, 3), dtype=np.uint8))
    _, processor = ae.tiny_clip_vision()
    theirs = processor(images=[np.asarray(image)], return_tensors="pt")["pixel_values"][0]
    ours = ae.openai_clip_pixels([image])[0]
    assert not torch.allclose(theirs, ours, atol=1e-3)
    # 3 px margin: torchvision starts the crop at round(1.5) = 2, HF's processor at 3 // 2 = 1
    assert torch.allclose(theirs[:, :, 1:], ours[:, :, :-1], atol=1e-5)


def test_tiny_predictor_is_seeded_and_marked_smoke():
    a = ae.build_predictor("laion", {"backend": "tiny", "device": "cpu"})
    b = ae.build_predictor("laion", {"backend": "tiny", "device": "cpu"})
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(2)]
    np.testing.assert_array_equal(a.score(imgs), b.score(imgs))
    assert a.info.smoke and a.info.backend == "tiny"
    assert ae.build_predictor("laion", {"backend": "none"}) is None
    with pytest.raises(ae.ModelUnavailable, match="artimuse.backend: unknown backend 'laion'"):
        ae.build_predictor("artimuse", {"backend": "laion"})


def test_shard_scores_in_the_demo(stage1, demo_workdir, demo_config):
    kept = stage1["dedup"][stage1["dedup"]["passed"]].head(3)
    table = score_aesthetics_shard(kept, demo_config, demo_workdir)
    assert len(table) == 3 and table["passed"].all()
    assert table["laion_smoke"].all() and table["laion_score"].notna().all()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


# -- ArtiMuse ---------------------------------------------------------------------------------


def test_artimuse_answer_tokens_match_the_published_mapping():
    from pixverve.models.aesthetics import ARTIMUSE_TOKENS, artimuse_token

    assert [artimuse_token(i) for i in (0, 25, 26, 50, 51, 75, 76, 100)] == [
        "aa",
        "az",
        "ca",
        "cy",
        "da",
        "dy",
        "ea",
        "ey",
    ]
    assert len(set(ARTIMUSE_TOKENS)) == 101 and not any(t.startswith("b") for t in ARTIMUSE_TOKENS)
    with pytest.raises(ValueError):
        artimuse_token(101)


def test_artimuse_score_is_the_expectation_over_the_answer_tokens_renormalised():
    import math

    from pixverve.models.aesthetics import artimuse_expectation, artimuse_token

    # 0.3 on 40, 0.1 on 90, 0.6 on tokens that are not answers: renormalised over the answers
    lp = {artimuse_token(40): math.log(0.3), artimuse_token(90): math.log(0.1), "the": math.log(0.6)}
    score, found, mass = artimuse_expectation(lp)
    assert score == pytest.approx((40 * 0.3 + 90 * 0.1) / 0.4) and found == 2 and mass == pytest.approx(0.4)
    # equal to the softmax over the 101 logits when all are present
    rng = np.random.default_rng(0)
    logits = rng.normal(size=101)
    full = {artimuse_token(i): float(v - np.log(np.exp(logits).sum() * 3)) for i, v in enumerate(logits)}
    soft = np.exp(logits) / np.exp(logits).sum()
    assert artimuse_expectation(full)[0] == pytest.approx(float(soft @ np.arange(101)), rel=1e-12)
    assert math.isnan(artimuse_expectation({"x": -1.0})[0])


@pytest.fixture
def artimuse_checkout(tmp_path):
    return make_checkout(tmp_path / "ArtiMuse")


def _artimuse_server(body):
    """Check the request the way vLLM would get it; answer one token with its alternatives."""
    import base64
    import io
    import math

    from PIL import Image

    from pixverve.models.aesthetics import artimuse_token

    assert body["logprobs"] is True and body["top_logprobs"] == 128 and body["max_tokens"] == 1
    assert vllm_render(body) == STAND_IN_PROMPT  # the model's own conversation, the question byte for byte
    content = body["messages"][-1]["content"]
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and content[1]["text"] == STAND_IN_QUESTION
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        assert im.size == (448, 448)
        bright = np.asarray(im).mean() > 128
    best = 80 if bright else 20  # the "model" likes bright images
    alts = [(artimuse_token(best), 0.5), (artimuse_token(best + 10), 0.3), ("Sure", 0.2)]
    top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in alts]
    return {
        "message": {"role": "assistant", "content": alts[0][0]},
        "logprobs": {"content": [{"token": alts[0][0], "logprob": math.log(0.5), "bytes": [], "top_logprobs": top}]},
    }


def test_artimuse_endpoint_backend_scores_from_logprobs(tmp_path, artimuse_checkout):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_openai import FakeOpenAI

    from pixverve.models.aesthetics import build_predictor

    with FakeOpenAI(responder=_artimuse_server, max_logprobs=128) as server:  # vllm serve --max-logprobs 128
        spec = {
            "backend": "endpoint",
            "base_url": server.base_url,
            "model": "fake-vlm",
            "top_logprobs": 128,
            "retries": 0,
            "upstream": str(artimuse_checkout),
            "template": "internvl2_5",
            "system_message": None,
        }
        pred = build_predictor("artimuse", spec)
        scores = pred.score([np.full((300, 500, 3), 220, np.uint8), np.full((64, 64, 3), 20, np.uint8)])
        again = pred.score([np.full((64, 64, 3), 20, np.uint8)])  # the client is reusable across calls
    assert again[0] == pytest.approx(scores[1])
    assert scores == pytest.approx([(80 * 0.5 + 90 * 0.3) / 0.8, (20 * 0.5 + 30 * 0.3) / 0.8])
    assert pred.details[0] == {"tokens_found": 2, "token_mass": 0.8, "error": ""} and not pred.info.smoke


def test_artimuse_without_a_checkout_is_a_clear_error(tmp_path):
    from pixverve.models.aesthetics import build_predictor
    from pixverve.models.artimuse_upstream import UpstreamUnavailable

    spec = {"backend": "endpoint", "base_url": "http://127.0.0.1:9/v1", "model": "m", "upstream": None}
    with pytest.raises(
        UpstreamUnavailable, match=r"artimuse.upstream: not set; `git clone https://github.com/thunderbolt215/ArtiMuse`"
    ):
        build_predictor("artimuse", spec)
    with pytest.raises(UpstreamUnavailable, match="modeling_artimuse.py not found"):
        build_predictor("artimuse", spec | {"upstream": str(tmp_path)})


def test_artimuse_endpoint_that_does_not_answer_is_a_clear_error_before_any_image(artimuse_checkout):
    from pixverve.models.aesthetics import build_predictor
    from pixverve.models.vlm import VLMConfigError

    spec = {
        "backend": "endpoint",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "m",
        "timeout_s": 2,
        "upstream": str(artimuse_checkout),
    }
    with pytest.raises(
        VLMConfigError, match=r"artimuse.base_url: the model server at http://127.0.0.1:9/v1/models does not answer"
    ):
        build_predictor("artimuse", spec)


def test_artimuse_tiny_backend_scores_through_a_real_model_forward(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pixverve.models.aesthetics import build_predictor

    pred = build_predictor("artimuse", {"backend": "tiny"})
    images = [
        np.full((100, 120, 3), 200, np.uint8),
        np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8),
    ]
    scores = pred.score(images)
    assert pred.info.smoke and all(0 <= s <= 100 for s in scores)
    assert all(d["tokens_found"] == 101 for d in pred.details)  # the whole distribution: exact
    assert pred.score(images) == pytest.approx(scores)  # deterministic
    assert scores[0] != pytest.approx(scores[1])  # the image reaches the model


@pytest.mark.parametrize(
    "fault, trust, max_logprobs, expect",
    [
        # a server that answers without log-probabilities (not vLLM's way: it refuses, below)
        ("no_logprobs", True, 128, r"no_logprobs: the server returned no top_logprobs.*--max-logprobs"),
        # vLLM >= 0.11 refusing the request's template
        (None, False, 128, r"failed: .*400.*--trust-request-chat-template"),
        # vLLM 0.34.0 started without --max-logprobs (20): a 400, not a template problem
        (None, True, 20, r"failed: .*400.*greater than max allowed: 20 -- start vLLM with --max-logprobs"),
    ],
)
def test_a_misconfigured_artimuse_server_stops_at_the_probe_with_the_fix(
    artimuse_checkout, fault, trust, max_logprobs, expect
):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_openai import FakeOpenAI

    from pixverve.core.health import StepFailed
    from pixverve.models.aesthetics import build_predictor

    with FakeOpenAI(
        responder=_artimuse_server, fault=fault, trust_request_chat_template=trust, max_logprobs=max_logprobs
    ) as server:
        spec = {
            "backend": "endpoint",
            "base_url": server.base_url,
            "model": "fake-vlm",
            "top_logprobs": 128,
            "retries": 0,
            "upstream": str(artimuse_checkout),
            "template": "internvl2_5",
            "system_message": None,
        }
        with pytest.raises(StepFailed, match=expect):
            build_predictor("artimuse", spec).score([np.full((64, 64, 3), v, np.uint8) for v in (20, 220, 30)])
        assert server.requests == 1


def test_artimuse_failures_are_statuses_never_scores(artimuse_checkout):
    """Refused on the dark images only (after a good probe): those have NaN and status failed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_openai import FakeOpenAI

    from pixverve.models.aesthetics import build_predictor
    from pixverve.purify.aesthetics import _scores_with_status

    def dark(body):
        import base64
        import io

        from PIL import Image

        url = body["messages"][-1]["content"][0]["image_url"]["url"]
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            return np.asarray(im).mean() < 128

    with FakeOpenAI(responder=_artimuse_server, fault="refuse", fault_when=dark, max_logprobs=128) as server:
        spec = {
            "backend": "endpoint",
            "base_url": server.base_url,
            "model": "fake-vlm",
            "top_logprobs": 128,
            "retries": 0,
            "upstream": str(artimuse_checkout),
            "template": "internvl2_5",
            "system_message": None,
        }
        out = _scores_with_status(
            build_predictor("artimuse", spec), [np.full((64, 64, 3), v, np.uint8) for v in (220, 20, 230)]
        )
    assert [s for _, s, _ in out] == ["ok", "failed", "ok"] and np.isnan(out[1][0]) and "400" in out[1][2]["error"]


def test_a_job_stop_is_not_swallowed_by_the_per_image_error_capture(artimuse_checkout):
    """The shard loop runs a failing batch image by image (MODEL_ERRORS); a server stop must pass
    through it as the job's error, not become a model_error row per image."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_openai import FakeOpenAI

    from pixverve.core.health import StepFailed
    from pixverve.models.aesthetics import build_predictor
    from pixverve.purify.aesthetics import _scores_with_status

    with FakeOpenAI(responder=_artimuse_server, fault="refuse") as server:
        spec = {
            "backend": "endpoint",
            "base_url": server.base_url,
            "model": "fake-vlm",
            "top_logprobs": 128,
            "retries": 0,
            "upstream": str(artimuse_checkout),
            "template": "internvl2_5",
            "system_message": None,
        }
        with pytest.raises(StepFailed, match="probe of model server"):
            _scores_with_status(
                build_predictor("artimuse", spec), [np.full((64, 64, 3), v, np.uint8) for v in (20, 220, 30)]
            )
        assert server.requests == 1
