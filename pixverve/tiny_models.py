"""Tiny randomly initialised models of the real classes, built in-process (no download).

They stand in for real checkpoints in tests and in the smoke run, through the same loading code
(``save_pretrained`` then ``from_pretrained``).  Everything they produce is smoke output.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0-255 (GPT-2 / CLIP)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tiny_clip_tokenizer(folder: str | Path):
    """A byte-level CLIP tokenizer with no merges: every byte is a token (vocab and merges files)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    chars = byte_level_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    # transformers 5 ignores vocab_file=/merges_file= keywords: pass the paths positionally
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_clip_text_model(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            hidden_act="gelu",
            projection_dim=32,
        )
    )


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
