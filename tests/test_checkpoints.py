"""Checkpoint files in the authors' published formats (issue #30; pixverve/train/published.py).

Known answers written from the published code (HaojunChen663/PixVerve-95K): the U-Net local
decoder's module names and shapes of L2P-ZImage-HR/diffsynth/models/z_image_dit_L2P.py
(``MicroDiffusionModel``) for each variant, the FLUX.2 LoRA file layout flux2_infer/runtime.py's
``GeneralLoRALoader`` reads.  Behaviour: our L2P model loads a published-names state dict and
computes exactly what it computes from its own names; a released L2P / FLUX.2 full / FLUX.2 LoRA
file goes through the bench generation path; a LoRA file in the published format fuses to the
weights of our in-process adapter; scheme I's LoRA targets cover every linear layer kind,
the single-stream attention output projection included.
"""

from __future__ import annotations

import copy
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pixverve.models.loading import ModelUnavailable
from pixverve.train import models as tm
from pixverve.train import published as pub

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# the published U-Net, module by module: name -> (out channels, in channels, kernel), "D" = the
# transformer width (si_t_hidden_size) and "C" = image channels; read off MicroDiffusionModel.__init__
# (enc*/bottleneck/dec* = Sequential(Conv2d, SiLU): weights at .0; up* = Sequential(Upsample, Conv2d): .1)

_LEVELS_4K = {
    "enc0": (16, "C", 3),
    "enc0b": (32, 16, 3),
    "enc1": (64, 32, 3),
    "enc2": (128, 64, 3),
    "enc3": (256, 128, 3),
    "enc4": (512, 256, 3),
    "bottleneck": (512, "512+D", 1),
    "up4": (512, 512, 3),
    "dec4": (256, 1024, 3),
    "up3": (256, 256, 3),
    "dec3": (128, 512, 3),
    "up2": (128, 128, 3),
    "dec2": (64, 256, 3),
    "up1": (64, 64, 3),
    "dec1": (32, 128, 3),
    "up0b": (32, 32, 3),
    "dec0b": (16, 64, 3),
    "up0": (16, 16, 3),
    "dec0": (16, 32, 3),
    "out_conv": ("C", 16, 1),
}
PUBLISHED_UNET = {
    "4k": _LEVELS_4K,
    "8k": {
        **_LEVELS_4K,
        "enc_8k": ("C", "C", 3),
        "up_8k": (16, 16, 3),
        "dec_8k": (16, "16+C", 3),
    },
    "10k": {
        "enc_10k_a": ("C", "C", 3),
        **{k: _LEVELS_4K[k] for k in ("enc0", "enc0b", "enc1", "enc2", "enc3")},
        "bottleneck": (512, "256+D", 1),
        "up3": (256, 512, 3),
        **{k: _LEVELS_4K[k] for k in ("dec3", "up2", "dec2", "up1", "dec1", "up0b", "dec0b", "up0", "dec0")},
        "up_10k_a": (16, 16, 3),
        "dec_10k_a": (16, "16+C", 3),
        "out_conv": ("C", 16, 1),
    },
}


def published_unet_keys(variant: str, channels: int, dim: int) -> dict:
    """{published key: shape} of the local decoder (weights and biases)."""

    def n(v):
        if isinstance(v, int):
            return v
        return sum(int(t.replace("C", str(channels)).replace("D", str(dim))) for t in v.split("+"))

    out = {}
    for name, (cout, cin, k) in PUBLISHED_UNET[variant].items():
        inner = "" if name == "out_conv" else (".1" if name.startswith("up") else ".0")
        out[f"local_decoder.{name}{inner}.weight"] = (n(cout), n(cin), k, k)
        out[f"local_decoder.{name}{inner}.bias"] = (n(cout),)
    return out


TINY_FLUX2_TEXT = {"max_length": 32, "out_layers": [1, 2, 3]}  # the tiny base's (configs/demo.yaml train.text)
PATCH = {"4k": 64, "8k": 128, "10k": 160}  # published patch sizes at the published widths


@pytest.mark.parametrize("variant", ["4k", "8k", "10k"])
def test_our_unet_in_published_names_is_the_published_decoder(variant):
    """Our PixelUNet at the published widths, renamed, has exactly the published module names and
    shapes (every tensor), and the names map back."""
    dim = 24
    assert tm.l2p_variant(PATCH[variant], tm.UNET_WIDTHS) == variant
    unet = tm.PixelUNet(3, dim, variant, tm.UNET_WIDTHS)
    ours = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    renamed = pub.l2p_to_published(ours)
    assert {k: tuple(v.shape) for k, v in renamed.items()} == published_unet_keys(variant, 3, dim)
    assert pub.l2p_from_published(renamed).keys() == ours.keys()
    for k, v in ours.items():  # the same tensors, renamed
        assert renamed["local_decoder." + pub.unet_key_to_published(k[len("unet.") :])] is v


@pytest.fixture(scope="module")
def zimage(tmp_path_factory):
    return tm.load_pipeline("zimage", {"backend": "tiny"}, torch.float32, tmp_path_factory.mktemp("zimage"))


def _l2p(zimage, patch=8, widths=(4, 8, 16), seed=0):
    torch.manual_seed(seed)
    model = tm.l2p_build(zimage.transformer, patch, {"widths": list(widths)})
    with torch.no_grad():  # every tensor different from the base (the U-Net's biases too)
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()) + seed)
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _l2p_out(model, patch=8):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 2 * patch, 2 * patch, generator=g)
    cap = torch.randn(8, model.transformer.config.cap_feat_dim, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([0.3]), [cap], patch)


@pytest.mark.parametrize("patch", [8, 16, 20], ids=["4k", "8k", "10k"])
def test_published_l2p_state_loads_into_our_model_with_identical_outputs(zimage, patch):
    """A state dict in the published ZImageDiT names (transformer keys unprefixed, the U-Net under
    local_decoder.enc0 ...) loads into a fresh L2PModel and gives the same output as loading our own
    names; its transformer keys are the pixel ZImageTransformer2DModel's (no final layer)."""
    trained = _l2p(zimage, patch)
    ours = trained.state_dict()
    published = pub.l2p_to_published(ours)
    assert not any(k.startswith(("transformer.", "unet.")) for k in published)
    assert "local_decoder.enc0.0.weight" in published and f"all_x_embedder.{patch}-1.weight" in published
    pixel_keys = {k for k in trained.transformer.state_dict() if not k.startswith("all_final_layer.")}
    assert {k for k in published if not k.startswith("local_decoder.")} == pixel_keys
    assert pub.l2p_names(published) == "published" and pub.l2p_names(ours) == "ours"
    assert pub.l2p_layout(published) == {
        "patch": patch,
        "variant": trained.unet.variant,
        "widths": [4, 8, 16],
    }

    from_ours, from_published = _l2p(zimage, patch, seed=1), _l2p(zimage, patch, seed=2)
    pub.load_strict(from_ours, ours, "ours")
    pub.load_strict(from_published, pub.l2p_to_ours(published, "published"), "published")
    want = _l2p_out(trained, patch)
    assert torch.equal(_l2p_out(from_ours, patch), want) and torch.equal(_l2p_out(from_published, patch), want)


def test_unknown_missing_and_misdeclared_l2p_keys_are_named(zimage):
    model = _l2p(zimage)
    published = pub.l2p_to_published(model.state_dict())
    bad = dict(published, **{"local_decoder.enc9x.0.weight": torch.zeros(1)})
    with pytest.raises(ModelUnavailable, match=r"local_decoder\.enc9x\.0\.weight"):
        pub.l2p_to_ours(bad, "published")
    extra = pub.l2p_to_ours(dict(published, **{"layers.99.attention.to_q.weight": torch.zeros(1)}))
    with pytest.raises(ModelUnavailable, match=r"unknown keys.*transformer\.layers\.99\.attention\.to_q\.weight"):
        pub.load_strict(model, extra, "L2P file")
    short = pub.l2p_to_ours({k: v for k, v in published.items() if k != "local_decoder.dec0b.0.bias"})
    with pytest.raises(ModelUnavailable, match=r"missing keys: unet\.dec\.1\.0\.bias"):
        pub.load_strict(model, short, "L2P file")
    with pytest.raises(ModelUnavailable, match=r"declared format 'ours'.*'published'"):
        pub.l2p_to_ours(published, "ours")
    with pytest.raises(ModelUnavailable, match="mix"):
        pub.l2p_names({"unet.enc.0.0.weight": 0, "layers.0.x": 0})


def test_a_released_l2p_file_generates_through_the_bench_path(zimage, tmp_path):
    """A PixVerve-L2P-format file (the whole pixel DiT + U-Net; patch, variant and widths read
    from it) on the tiny Z-Image base: the loaded model is the saved one, and generation runs."""
    from pixverve.train.infer import generate, load_released

    trained = _l2p(zimage, 16)  # the 8k variant (one outer level)
    path = tmp_path / "l2p_8k_sft.safetensors"
    save_file({k: v.contiguous() for k, v in pub.l2p_to_published(trained.state_dict()).items()}, path)
    released = {"kind": "l2p", "path": str(tmp_path), "text": {"max_length": 32}}  # the tiny base's text length
    info, loaded = load_released(released, {"backend": "tiny"})
    assert loaded["model"].unet.variant == "8k" and info["l2p"]["patch"] == 16
    assert torch.equal(_l2p_out(loaded["model"], 16), _l2p_out(trained, 16))
    rgb = generate(info, loaded, "a red car", 32, 32, 2, 4.0, seed=1)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    with pytest.raises(ModelUnavailable, match="declared format 'ours'"):
        load_released({"kind": "l2p", "path": str(path), "format": "ours"}, {"backend": "tiny"})


# ---------------------------------------------------------------------------------------------
# FLUX.2: LoRA targets, the LoRA file, the full transformer file


@pytest.fixture(scope="module")
def flux2(tmp_path_factory):
    return tm.load_pipeline("flux2", {"backend": "tiny"}, torch.float32, tmp_path_factory.mktemp("flux2"))


def _config_targets():
    import yaml

    return yaml.safe_load((ROOT / "config.yaml").read_text())["train"]["runs"]["scheme1_lora"]["lora"]


def _kind(name: str) -> str:
    block = "double" if name.startswith("transformer_blocks.") else "single"
    return f"{block} {'.'.join(name.split('.')[2:])}"


def test_scheme1_lora_targets_cover_every_linear_layer_kind_the_single_stream_output_included(flux2):
    """The paper config's targets on the tiny FLUX.2 transformer (1 double-, 2 single-stream
    blocks): one adapter per block for each kind, the single-stream attn.to_out (a Linear, where
    the double-stream attn.to_out is a ModuleList) included; the saved LoRA file's modules are the
    ones the published loader fuses, each a linear layer of the (published-identical) model."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    from pixverve.train.loop import trainable_model

    model = copy.deepcopy(flux2.transformer)
    lora = _config_targets()
    trainable_model(model, {"lora": lora})
    adapted = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    counts = {}
    for n in adapted:
        counts[_kind(n)] = counts.get(_kind(n), 0) + 1
    double = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj"]
    double += ["attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out"]
    double += ["ff_context.linear_in", "ff_context.linear_out"]
    assert counts == {**{f"double {k}": 1 for k in double}, "single attn.to_qkv_mlp_proj": 2, "single attn.to_out": 2}
    base_linear = {n for n, m in flux2.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    outside = {"x_embedder", "context_embedder", "proj_out", "norm_out.linear"}  # not in blocks: not adapted
    assert base_linear - set(adapted) == outside | {
        n for n in base_linear if "modulation" in n or n.startswith("time_guidance_embed.")
    }
    saved = pub.published_lora_state(get_peft_model_state_dict(model), lora["alpha"])
    assert sorted(pub.published_lora_modules(saved)) == sorted(adapted)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight", ".alpha")) for k in saved)
    # DiffSynth's spelled-out list (one entry per single-stream block) picks the same modules
    spelled = [t for t in lora["target_modules"] if "*" not in t] + [
        f"single_transformer_blocks.{i}.attn.to_out" for i in range(2)
    ]
    assert sorted(pub.lora_target_names(flux2.transformer, spelled)) == sorted(adapted)


def test_bad_lora_targets_are_named(flux2):
    with pytest.raises(ValueError, match=r"'to_out' matches modules that are not linear.*ModuleList"):
        pub.lora_target_names(flux2.transformer, ["to_q", "to_out"])
    with pytest.raises(ValueError, match=r"'to_qq' matches no module"):
        pub.lora_target_names(flux2.transformer, ["to_qq"])


def _flux2_out(transformer):
    g = torch.Generator().manual_seed(2)
    cfg = transformer.config
    hidden = torch.randn(1, 12, cfg.in_channels, generator=g)
    text = torch.randn(1, 5, cfg.joint_attention_dim, generator=g)
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(3), torch.arange(4), torch.arange(1))
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(5))
    with torch.no_grad():
        return transformer(
            hidden_states=hidden,
            encoder_hidden_states=text,
            timestep=torch.tensor([0.4]),
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=None,
            return_dict=False,
        )[0]


def _adapted(flux2, rank=4, alpha=8.0):
    from peft.utils import get_peft_model_state_dict

    from pixverve.train.loop import trainable_model

    model = copy.deepcopy(flux2.transformer)
    lora = dict(_config_targets(), rank=rank, alpha=alpha)
    trainable_model(model, {"lora": lora})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
    return model, pub.published_lora_state(get_peft_model_state_dict(model), alpha)


def test_a_published_lora_file_fuses_to_the_weights_of_our_adapter(flux2):
    """Our saved LoRA (alpha 8, rank 4), fused the published way (A * alpha / rank, W += B A), gives
    every adapted layer the weight peft's merge gives it, and the adapted model's output; the
    published file variants (lora_up / lora_down, .default., diffusion_model. prefix, no alpha)
    fuse as the published loader reads them."""
    model, state = _adapted(flux2)
    want = _flux2_out(model)
    fused = copy.deepcopy(flux2.transformer)
    names = pub.fuse_published_lora(fused, state)
    assert len(names) == 16
    assert torch.allclose(_flux2_out(fused), want, atol=1e-5)
    adapted, fused_modules = dict(model.named_modules()), dict(fused.named_modules())
    for n in names:  # peft's merged weight: base + its delta (B A * alpha / rank)
        layer = adapted[n]
        merged = layer.base_layer.weight + layer.get_delta_weight("default")
        assert torch.allclose(fused_modules[n].weight, merged, atol=1e-6)
        assert not torch.allclose(fused_modules[n].weight, layer.base_layer.weight, atol=1e-4)
    # the other spellings the published loader reads; without alpha the scale is 1 (not alpha / rank)
    name = names[0]
    up, down = state[f"{name}.lora_B.weight"], state[f"{name}.lora_A.weight"]
    base_w = dict(flux2.transformer.named_modules())[name].weight
    for spelled, scale in [
        ({f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(8.0)}, 2.0),
        ({f"{name}.lora_B.default.weight": up, f"{name}.lora_A.default.weight": down}, 1.0),
        ({f"diffusion_model.{name}.lora_B.weight": up, f"diffusion_model.{name}.lora_A.weight": down}, 1.0),
    ]:
        t = copy.deepcopy(flux2.transformer)
        assert pub.fuse_published_lora(t, spelled, scale=0.5) == [name]
        assert torch.allclose(dict(t.named_modules())[name].weight, base_w + 0.5 * scale * up @ down, atol=1e-6)
    with pytest.raises(ModelUnavailable, match=r"not in the transformer: blocks\.0\.nope"):
        pub.fuse_published_lora(
            copy.deepcopy(flux2.transformer), {"blocks.0.nope.lora_B.weight": up, "blocks.0.nope.lora_A.weight": down}
        )


def test_released_flux2_full_and_lora_files_load_through_the_bench_path(flux2, tmp_path):
    """A full transformer file (a folder: its newest step-N file, as flux2_infer picks it) and a
    LoRA file (``lora_scale`` = --lora_alpha) through load_released on a tiny base pipeline folder,
    and the bench's diffusers backend with ``released`` writes images from them."""
    from pixverve.bench.generate import generate_method
    from pixverve.train.infer import load_released

    model, lora_state = _adapted(flux2)
    want = _flux2_out(model)
    (tmp_path / "lora").mkdir()
    save_file(lora_state, tmp_path / "lora" / "epoch-1.safetensors")
    info, pipe = load_released({"kind": "lora", "path": str(tmp_path / "lora")}, {"backend": "tiny"})
    assert info["sample"] == {"shift": "published"} and torch.allclose(_flux2_out(pipe.transformer), want, atol=1e-5)

    full = copy.deepcopy(flux2.transformer)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.01)
    folder = tmp_path / "full"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in flux2.transformer.state_dict().items()}, folder / "step-2.safetensors")
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, folder / "step-10.safetensors")
    assert pub.resolve_checkpoint_file(folder, "x").name == "step-10.safetensors"
    _, pipe = load_released({"kind": "full", "path": str(folder)}, {"backend": "tiny"})
    loaded = pipe.transformer.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in full.state_dict().items())
    assert torch.allclose(_flux2_out(pipe.transformer), _flux2_out(full), atol=1e-6)
    partial = {k: v.contiguous() for k, v in full.state_dict().items() if k != "proj_out.weight"}
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(ModelUnavailable, match=r"missing keys: proj_out\.weight"):
        load_released({"kind": "full", "path": str(tmp_path / "partial.safetensors")}, {"backend": "tiny"})

    base = tmp_path / "base"
    tm.build_tiny_flux2(base)
    rows = [{"file_name": "a.png", "long_caption": "a red car"}, {"file_name": "b.png", "long_caption": "a boat"}]
    spec = {
        "backend": "diffusers",
        "model": str(base),
        "width": 32,
        "height": 32,
        "steps": 2,
        "guidance": 4.0,
        "seed": 0,
        "dtype": "float32",
        "device": "cpu",
        "sequential_loading": False,
        "released": {"kind": "lora", "path": str(tmp_path / "lora"), "lora_scale": 1.0, "text": TINY_FLUX2_TEXT},
    }
    out = tmp_path / "images"
    summary = generate_method(rows, spec, out, tmp_path, 100.0, log=lambda m: None)
    assert summary["generated"] == 2 and sorted(p.name for p in out.glob("*.jpg")) == ["a.jpg", "b.jpg"]
    recorded = json.loads((out / "settings.json").read_text())
    assert recorded["released_file"]["path"].endswith("epoch-1.safetensors")


def test_released_and_format_keys_validate(tmp_path):
    import yaml

    from pixverve.workflow import load_config

    overlay = {
        "bench": {
            "methods": {
                "authors_lora": {
                    "generate": {
                        "backend": "diffusers",
                        "model": "black-forest-labs/FLUX.2-klein-base-4B",
                        "released": {"kind": "lora", "path": "/x/lora.safetensors", "lora_scale": 1.0},
                    },
                    "resolution": "4K",
                }
            }
        },
        "train": {"runs": {"scheme3_l2p": {"l2p": {"token_grid": 64, "checkpoint_format": "ours"}}}},
    }
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    config = load_config(ROOT / "config.yaml", path)
    assert config["bench"]["methods"]["authors_lora"]["generate"]["released"]["kind"] == "lora"
    assert (
        yaml.safe_load((ROOT / "config.yaml").read_text())["train"]["runs"]["scheme3_l2p"]["l2p"]["checkpoint_format"]
        == "published"
    )
    for bad, match in [
        ({"kind": "dora", "path": "/x"}, "'dora' is not one of"),
        ({"kind": "l2p", "path": "/x", "format": "diffsynth"}, "'diffsynth' is not one of"),
    ]:
        overlay["bench"]["methods"]["authors_lora"]["generate"]["released"] = bad
        path.write_text(yaml.safe_dump(overlay))
        with pytest.raises(Exception, match=match):
            load_config(ROOT / "config.yaml", path)
