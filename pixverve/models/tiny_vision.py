"""Tiny randomly initialised vision/text models of the real classes (CLIP, Grounding DINO, SAM 2),
built in-process (no download): the `tiny` backends of stage 5 and the tests.  No diffusers here,
so rules that only need these do not need diffusers in their env.  Everything they produce is
smoke output.
"""

from __future__ import annotations

import json
from pathlib import Path

from pixverve.models.tiny_text import byte_level_backend


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


def build_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny CLIPModel (text + vision) and CLIPProcessor into ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tokenizer = tiny_clip_tokenizer(folder / "tokenizer-build")
    text = tiny_clip_text_model(tokenizer).config.to_dict()
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _tiny_bert_tokenizer(folder: Path):
    """A WordPiece tokenizer whose [CLS]/[SEP]/'.'/'?' sit at BERT's ids (101/102/1012/1029):
    Grounding DINO hard-codes those ids to split its prompt into phrases."""
    from transformers import BertTokenizerFast

    vocab = [f"[unused{i}]" for i in range(1100)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    vocab[1012], vocab[1029] = ".", "?"
    letters = "abcdefghijklmnopqrstuvwxyz0123456789-'"
    for i, ch in enumerate(letters):
        vocab[200 + i] = ch
        vocab[300 + i] = "##" + ch
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True), len(vocab)


def build_tiny_grounding_dino(folder: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny GroundingDinoForObjectDetection and its processor."""
    import torch
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder = Path(folder)
    tokenizer, vocab_size = _tiny_bert_tokenizer(folder / "tokenizer-build")
    backbone = SwinConfig(
        window_size=7,
        embed_dim=32,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        image_size=32,
        out_features=["stage2", "stage3", "stage4"],
        out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=12,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=64,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_sam2(folder: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny Sam2Model (128 px input) and its processor."""
    import torch
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    hiera = Sam2HieraDetConfig(
        hidden_size=12,
        num_attention_heads=1,
        image_size=[128, 128],
        patch_kernel_size=[7, 7],
        patch_stride=[4, 4],
        patch_padding=[3, 3],
        query_stride=[2, 2],
        window_positional_embedding_background_size=[4, 4],
        num_query_pool_stages=3,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[12, 24, 48, 96],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],  # not a query-pooling block: transformers divides by its window there
        mlp_ratio=2.0,
    )
    vision = Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        fpn_hidden_size=32,
    )
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(
            hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=32, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    torch.manual_seed(seed)
    model = Sam2Model(config).eval()
    processor = Sam2Processor(
        image_processor=Sam2ImageProcessor(size={"height": 128, "width": 128}, mask_size={"height": 32, "width": 32})
    )
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_siglip2(folder: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny Siglip2Model (NaFlex: variable patch budget) with its
    processor: the stand-in for FG-CLIP2, whose image side is SigLIP 2-style."""
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Siglip2Config,
        Siglip2ImageProcessor,
        Siglip2Model,
        Siglip2Processor,
    )

    backend = byte_level_backend(("<pad>", "<eos>", "<unk>"), unk_token="<unk>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    config = Siglip2Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=196,
            projection_size=32,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            patch_size=16,
            num_patches=64,
        ),
    )
    torch.manual_seed(seed)
    model = Siglip2Model(config).eval()
    processor = Siglip2Processor(
        image_processor=Siglip2ImageProcessor(patch_size=16, max_num_patches=256), tokenizer=tokenizer
    )
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
