"""Aesthetic predictors: the published LAION head layout, real loading code, tiny smoke models."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pixverve import aesthetics as ae  # noqa: E402


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
    with pytest.raises(Exception):
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


def test_tiny_predictor_is_seeded_and_marked_smoke():
    a = ae.build_predictor("laion", {"backend": "tiny", "device": "cpu"})
    b = ae.build_predictor("laion", {"backend": "tiny", "device": "cpu"})
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(2)]
    np.testing.assert_array_equal(a.score(imgs), b.score(imgs))
    assert a.info.smoke and a.info.backend == "tiny"
    assert ae.build_predictor("laion", {"backend": "none"}) is None
    with pytest.raises(ae.ModelUnavailable):
        ae.build_predictor("artimuse", {"backend": "tiny"})


def test_shard_scores_in_the_demo(stage1, demo_workdir, demo_config):
    kept = stage1["dedup"][stage1["dedup"]["passed"]].head(3)
    table = ae.score_aesthetics_shard(kept, demo_config, demo_workdir)
    assert len(table) == 3 and table["passed"].all()
    assert table["laion_smoke"].all() and table["laion_score"].notna().all()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
