"""The sd-x4 backend: a tiny randomly initialised StableDiffusionUpscalePipeline, saved and reloaded
offline through the same loader real weights use, run through the tiling engine with a prompt."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from pixverve.core.tiling import TileGrid, upscale_bands  # noqa: E402
from pixverve.upscale.sr import SRUnavailable, build_backend, tile_function  # noqa: E402


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    from pixverve.models.tiny_models import tiny_clip_text_model, tiny_clip_tokenizer

    root = tmp_path_factory.mktemp("sdx4")
    tokenizer = tiny_clip_tokenizer(root / "tok")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, True, False),
        num_class_embeds=100,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4,
    )
    text = tiny_clip_text_model(tokenizer)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"),
        max_noise_level=350,
    )
    pipe.save_pretrained(root / "pipeline")
    return root / "pipeline"


def _spec(model):
    return {
        "backend": "sd-x4",
        "device": "cpu",
        "prompt": "crisp detail",
        "sd_x4": {"model": str(model), "steps": 2, "seed": 0},
    }


def test_tiny_pipeline_reloads_offline_and_upscales_x4(tiny_pipeline_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = build_backend(_spec(tiny_pipeline_dir))
    assert backend.name == "sd-x4" and backend.model_scale == 4 and backend.prompt_guided
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 255, (30, 36, 3), dtype=np.uint8) for _ in range(2)]  # not multiples of 8
    out = tile_function(backend, 4)(tiles)
    assert [o.shape for o in out] == [(120, 144, 3)] * 2 and out[0].dtype == np.uint8
    again = tile_function(backend, 4)(tiles)
    np.testing.assert_array_equal(out[0], again[0])  # seeded
    # x2 from the x4 pipeline through the engine, with blending
    img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    grid = TileGrid(40, 50, 2, tile_px=64, stride_px=48)
    result = np.concatenate(list(upscale_bands(img, grid, tile_function(backend, 2), batch=4)))
    assert result.shape == (80, 100, 3)


def test_missing_pipeline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SRUnavailable, match="sd-x4 pipeline"):
        build_backend(_spec("stabilityai/stable-diffusion-x4-upscaler"))
