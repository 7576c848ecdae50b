"""Tiny randomly initialised models of the real classes, built in-process (no download).

They stand in for real checkpoints in tests and in the smoke run, through the same loading code
(``save_pretrained`` then ``from_pretrained``).  Everything they produce is smoke output.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pixverve.models.tiny_vision import tiny_clip_text_model, tiny_clip_tokenizer


def build_tiny_sd_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """Save a ~1 M-parameter StableDiffusionPipeline (text-to-image) into ``folder``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = tiny_clip_tokenizer(tok_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=tiny_clip_text_model(tokenizer),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder
