"""The models of the three training schemes (issue #8), on diffusers' own classes.

* ``Flux2Family`` (schemes I and II): FLUX.2-klein as a ``Flux2KleinPipeline`` (Qwen3 text
  encoder, ``AutoencoderKLFlux2``, ``Flux2Transformer2DModel``).  Images become VAE latents
  (tiled for UHR crops), 2x2-patchified and batch-normalised exactly as the pipeline does, so one
  token covers 16x16 pixels and the timestep shift follows the token count (H/16)(W/16).
* Scheme II swaps ``WindowAttnProcessor`` / ``WindowParallelAttnProcessor`` into every attention
  module: image tokens attend to their own window of the latent token grid plus all text tokens,
  text tokens attend to everything.  The token grid is read from ``img_ids`` by a forward
  pre-hook, so the stock pipeline samples with the windowed model unchanged.
* ``L2PFamily`` (scheme III, "latent to pixel"): a ``ZImageTransformer2DModel`` whose patch
  embedders and final layers are rebuilt for RGB pixels with one patch size per training
  resolution (resolution / token grid: 64 at 4K, 128 at 8K, 160 at 10K for a 64x64 grid), every
  other weight copied from the latent DiT, plus ``PixelHead``: a light two-level convolutional
  U-Net that refines the unpatchified prediction (zero-initialised, so training starts from the
  transformer's own output).  No VAE.

Flow matching everywhere: x_t = (1 - s) x0 + s noise, the model predicts v = noise - x0 (Z-Image's
transformer is fed t = 1 - s and predicts -v, as ZImagePipeline does).

``build_tiny_*`` write tiny randomly initialised pipelines of the real classes into a folder,
which is then loaded through the same ``from_pretrained`` code as the real weights (smoke runs
and tests; no network).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TOKEN_PIXELS_FLUX2 = 16  # VAE factor 8 x 2x2 patchify


class ModelUnavailable(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# timesteps


def flux2_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's resolution-dependent shift (the same empirical fit as Flux2KleinPipeline)."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    return compute_empirical_mu(image_seq_len, num_steps)


def shift_sigmas(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """The exponential time shift of FlowMatchEulerDiscreteScheduler: e^mu / (e^mu + 1/s - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / sigmas.clamp_min(1e-6) - 1.0))


def sample_sigmas(n: int, generator: torch.Generator, mu: float, logit_mean: float = 0.0, logit_std: float = 1.0):
    """Training noise levels: logit-normal, then shifted by ``mu`` (more noise for more tokens)."""
    u = torch.sigmoid(torch.randn(n, generator=generator) * logit_std + logit_mean)
    return shift_sigmas(u, mu)


def scheduler_mu(scheduler_config, tokens: int) -> float:
    """mu of the base scheduler: dynamic (Flux-style line through base/max sequence lengths) or
    the static ``shift`` (s' = shift s / (1 + (shift - 1) s) is the exponential shift with mu = ln shift)."""
    if scheduler_config.get("use_dynamic_shifting"):
        base_len, max_len = scheduler_config.get("base_image_seq_len", 256), scheduler_config.get("max_image_seq_len", 4096)
        b0, b1 = scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15)
        return b0 + (b1 - b0) * (tokens - base_len) / (max_len - base_len)
    return math.log(float(scheduler_config.get("shift", 1.0)))


def configure_vae_tiling(vae, tile: int, stride: int) -> None:
    """Tiled VAE encode/decode with ``tile`` px tiles every ``stride`` px (paper: 512 / 256)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.enable_tiling()
    vae.tile_sample_min_size = int(tile)
    vae.tile_latent_min_size = int(tile) // factor
    vae.tile_overlap_factor = 1.0 - float(stride) / float(tile)


# ---------------------------------------------------------------------------------------------
# tiny pipelines (tests, demo)


def _tiny_qwen3(hidden: int, layers: int, seed: int):
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from .tiny_text import TINY_CHAT_TEMPLATE, byte_level_backend

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=byte_level_backend(), eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    return Qwen3ForCausalLM(config).eval(), tokenizer


def build_tiny_flux2(folder, seed: int = 0) -> Path:
    """A ~0.1 M-parameter Flux2KleinPipeline (real classes, random weights) saved in ``folder``."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    text_encoder, tokenizer = _tiny_qwen3(hidden=16, layers=3, seed=seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                             sample_size=64, mid_block_add_attention=False)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=3 * 16,
                                          timestep_guidance_channels=16, mlp_ratio=2.0, axes_dims_rope=(2, 2, 2, 2),
                                          guidance_embeds=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=False)
    pipe.save_pretrained(folder)
    return Path(folder)


def build_tiny_zimage(folder, seed: int = 0) -> Path:
    """A tiny ZImagePipeline (latent DiT: the starting point of L2P) saved in ``folder``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    text_encoder, tokenizer = _tiny_qwen3(hidden=16, layers=2, seed=seed)
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8,), latent_channels=4, norm_num_groups=4, sample_size=32)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32,
                                           n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
                                           axes_dims=[4, 6, 6], axes_lens=[256, 64, 64])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                   transformer=transformer).save_pretrained(folder)
    return Path(folder)


TINY_BUILDERS = {"flux2": build_tiny_flux2, "zimage": build_tiny_zimage}


def load_pipeline(family: str, base: dict, dtype, work_dir: Path):
    """The base pipeline: ``base.backend`` ``diffusers`` (``base.model``: local folder or cached
    hub id) or ``tiny`` (built into ``work_dir`` first, then loaded the same way)."""
    from diffusers import Flux2KleinPipeline, ZImagePipeline

    cls = {"flux2": Flux2KleinPipeline, "zimage": ZImagePipeline}[family]
    if base["backend"] == "tiny":
        folder = Path(work_dir) / f"tiny-{family}"
        if not folder.exists():  # built aside and renamed: a killed job never leaves half a model
            import shutil
            import tempfile

            staging = Path(tempfile.mkdtemp(prefix=f".tiny-{family}-", dir=work_dir))
            TINY_BUILDERS[family](staging, seed=int(base.get("seed", 0)))
            try:
                staging.rename(folder)
            except OSError:  # another process finished first
                shutil.rmtree(staging, ignore_errors=True)
        return cls.from_pretrained(folder, dtype=torch.float32)
    if base["backend"] != "diffusers":
        raise ModelUnavailable(f"train base backend must be diffusers or tiny, got {base['backend']!r}")
    model = base.get("model")
    if not model:
        raise ModelUnavailable(f"train base model for {family}: set a local pipeline folder or hub id")
    try:
        return cls.from_pretrained(model, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load the {family} base pipeline {model!r}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# scheme II: window attention


class WindowContext:
    """What the window processors need per forward: the image token grid and the text length."""

    grid: tuple[int, int] | None = None
    num_txt: int = 0


def window_attention(query, key, value, num_txt: int, grid: tuple[int, int], window: tuple[int, int],
                     chunk_windows: int = 0):
    """Attention over (B, S, H, D) tensors laid out [text, image]; image queries see their window
    of the (gh, gw) grid plus all text keys, text queries see every key.  Windows are padded at
    the grid's bottom/right edges with masked keys; ``chunk_windows`` > 0 bounds how many windows
    are attended at once (memory)."""
    b, s, h, d = query.shape
    gh, gw = grid
    if s != num_txt + gh * gw:
        raise ValueError(f"sequence {s} != {num_txt} text + {gh}x{gw} image tokens")
    wh, ww = min(window[0], gh), min(window[1], gw)
    ph, pw = -gh % wh, -gw % ww
    nh, nw = (gh + ph) // wh, (gw + pw) // ww

    def to_windows(x):  # (B, S_img, H, D) -> (B * nWin, wh * ww, H, D)
        x = x.reshape(b, gh, gw, h, d)
        if ph or pw:
            x = F.pad(x, (0, 0, 0, 0, 0, pw, 0, ph))
        x = x.reshape(b, nh, wh, nw, ww, h, d).permute(0, 1, 3, 2, 4, 5, 6)
        return x.reshape(b * nh * nw, wh * ww, h, d)

    qi, ki, vi = (to_windows(t[:, num_txt:]) for t in (query, key, value))
    kt, vt = key[:, :num_txt], value[:, :num_txt]
    n_win = nh * nw
    valid = torch.ones(gh + ph, gw + pw, dtype=torch.bool, device=query.device)
    valid[gh:, :] = False
    valid[:, gw:] = False
    valid = valid.reshape(nh, wh, nw, ww).permute(0, 2, 1, 3).reshape(n_win, wh * ww)
    key_mask = torch.cat([torch.ones(n_win, num_txt, dtype=torch.bool, device=query.device), valid], dim=1)
    step = chunk_windows if chunk_windows > 0 else n_win
    outs = []
    for start in range(0, n_win, step):
        stop = min(n_win, start + step)
        idx = torch.arange(start, stop, device=query.device)
        sel = (torch.arange(b, device=query.device)[:, None] * n_win + idx[None]).reshape(-1)
        k = torch.cat([kt.repeat_interleave(stop - start, dim=0), ki[sel]], dim=1)
        v = torch.cat([vt.repeat_interleave(stop - start, dim=0), vi[sel]], dim=1)
        mask = key_mask[start:stop].repeat(b, 1)[:, None, None, :]
        o = F.scaled_dot_product_attention(qi[sel].transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask if (ph or pw) else None)
        outs.append(o.transpose(1, 2).reshape(b, stop - start, wh * ww, h, d))
    img = torch.cat(outs, dim=1).reshape(b, nh, nw, wh, ww, h, d).permute(0, 1, 3, 2, 4, 5, 6)
    img = img.reshape(b, gh + ph, gw + pw, h, d)[:, :gh, :gw].reshape(b, gh * gw, h, d)
    txt = F.scaled_dot_product_attention(query[:, :num_txt].transpose(1, 2), key.transpose(1, 2),
                                         value.transpose(1, 2)).transpose(1, 2)
    return torch.cat([txt, img], dim=1)


class WindowAttnProcessor:
    """Flux2Attention (double-stream block) with window attention in place of full attention."""

    def __init__(self, context: WindowContext, window: tuple[int, int], chunk_windows: int = 0):
        self.context, self.window, self.chunk_windows = context, tuple(window), chunk_windows

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux2 import _get_qkv_projections

        query, key, value, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
        eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
        query, key, value = torch.cat([eq, query], 1), torch.cat([ek, key], 1), torch.cat([ev, value], 1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = window_attention(query, key, value, encoder_hidden_states.shape[1], self.context.grid, self.window,
                               self.chunk_windows).flatten(2, 3).to(query.dtype)
        txt, img = out.split_with_sizes([encoder_hidden_states.shape[1], hidden_states.shape[1]], dim=1)
        return attn.to_out[1](attn.to_out[0](img)), attn.to_add_out(txt)


class WindowParallelAttnProcessor:
    """Flux2ParallelSelfAttention (single-stream block: text and image already one sequence)."""

    def __init__(self, context: WindowContext, window: tuple[int, int], chunk_windows: int = 0):
        self.context, self.window, self.chunk_windows = context, tuple(window), chunk_windows

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        fused = attn.to_qkv_mlp_proj(hidden_states)
        qkv, mlp = torch.split(fused, [3 * attn.inner_dim, fused.shape[-1] - 3 * attn.inner_dim], dim=-1)
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in qkv.chunk(3, dim=-1))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = window_attention(query, key, value, self.context.num_txt, self.context.grid, self.window,
                               self.chunk_windows).flatten(2, 3).to(query.dtype)
        return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))


def layer_windows(n_layers: int, size: int, shapes: list | None) -> list[tuple[int, int]]:
    """One (rows, cols) window per layer: ``shapes`` cycled over the layers, or size x size."""
    if not shapes:
        return [(size, size)] * n_layers
    return [tuple(int(v) for v in shapes[i % len(shapes)]) for i in range(n_layers)]


def install_window_attention(transformer, size: int, shapes: list | None = None, chunk_windows: int = 0):
    """Swap window processors into a Flux2Transformer2DModel (double blocks first, then single
    blocks, in layer order); returns the shared context the pre-hook fills."""
    context = WindowContext()
    blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
    windows = layer_windows(len(blocks), size, shapes)
    for i, (block, window) in enumerate(zip(blocks, windows)):
        cls = WindowAttnProcessor if i < len(transformer.transformer_blocks) else WindowParallelAttnProcessor
        block.attn.set_processor(cls(context, window, chunk_windows))

    def read_grid(module, args, kwargs):  # the grid from the image position ids (T, H, W, L)
        ids = kwargs["img_ids"]
        ids = ids[0] if ids.ndim == 3 else ids
        context.grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        context.num_txt = kwargs["encoder_hidden_states"].shape[1]

    transformer.register_forward_pre_hook(read_grid, with_kwargs=True)
    return context


# ---------------------------------------------------------------------------------------------
# scheme III: L2P


def l2p_patch_size(resolution: int, token_grid: int) -> int:
    """Pixels per token side so that a resolution x resolution image is token_grid x token_grid."""
    if resolution % token_grid:
        raise ValueError(f"L2P: resolution {resolution} is not a multiple of the token grid {token_grid}")
    return resolution // token_grid


class PixelHead(nn.Module):
    """Light two-level U-Net on [prediction, noisy input] -> residual added to the prediction."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.inp = nn.Conv2d(6, channels, 3, padding=1)
        self.down = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1)
        self.up = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)
        self.out = nn.Conv2d(2 * channels, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # starts as the identity on the transformer's prediction
        nn.init.zeros_(self.out.bias)

    def forward(self, prediction, noisy):
        a = F.silu(self.inp(torch.cat([prediction, noisy], dim=1)))
        b = F.silu(self.mid(F.silu(self.down(a))))
        u = F.silu(self.up(b))[..., : a.shape[-2], : a.shape[-1]]
        return prediction + self.out(torch.cat([u, a], dim=1))


class L2PModel(nn.Module):
    """Pixel-space Z-Image transformer + PixelHead; ``forward`` returns the velocity v."""

    def __init__(self, transformer, head: PixelHead):
        super().__init__()
        self.transformer, self.head = transformer, head

    def forward(self, noisy, sigma, cap_feats: list, patch_size: int):
        x = [n.unsqueeze(1) for n in noisy]  # (C, F=1, H, W) per image
        out = self.transformer(x, 1.0 - sigma, cap_feats, patch_size=patch_size, return_dict=False)[0]
        pred = -torch.stack(out, dim=0).squeeze(2)  # Z-Image predicts -v
        return self.head(pred, noisy)


def l2p_from_latent(latent_transformer, patch_sizes: list[int], head_channels: int) -> L2PModel:
    """Pixel model initialised from a latent Z-Image DiT: same config with 3 input channels and
    the pixel patch sizes; every weight but the patch embedders / final layers copied."""
    from diffusers import ZImageTransformer2DModel

    cfg = dict(latent_transformer.config)
    keep = {k: v for k, v in cfg.items() if not k.startswith("_")}
    keep.update(in_channels=3, all_patch_size=tuple(patch_sizes), all_f_patch_size=tuple([1] * len(patch_sizes)))
    pixel = ZImageTransformer2DModel(**keep).to(latent_transformer.dtype)
    state = {k: v for k, v in latent_transformer.state_dict().items()
             if not k.startswith(("all_x_embedder.", "all_final_layer."))}
    missing, unexpected = pixel.load_state_dict(state, strict=False)
    new = [k for k in missing if not k.startswith(("all_x_embedder.", "all_final_layer."))]
    if new or unexpected:
        raise ModelUnavailable(f"L2P init: unmatched weights {new[:5]} / {unexpected[:5]}")
    return L2PModel(pixel, PixelHead(head_channels).to(latent_transformer.dtype))


# ---------------------------------------------------------------------------------------------
# reload check


def probe_output(family: str, model, patch_size: int | None = None) -> torch.Tensor:
    """The model's prediction on a fixed input (seeded; independent of data).  Saved with the
    final weights and recomputed on every reload, so a checkpoint that does not rebuild the
    trained model (missing adapter, wrong processors, wrong patch size) fails loudly."""
    g = torch.Generator().manual_seed(1234)
    p = next(model.parameters())
    with torch.no_grad():
        if family == "flux2":
            cfg = model.config
            grid = 4
            hidden = torch.randn(1, grid * grid, cfg.in_channels, generator=g)
            text = torch.randn(1, 8, cfg.joint_attention_dim, generator=g)
            img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(grid), torch.arange(grid), torch.arange(1))
            txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(8))
            out = model(hidden_states=hidden.to(p), encoder_hidden_states=text.to(p), timestep=torch.tensor([0.5]).to(p),
                        img_ids=img_ids.to(p.device), txt_ids=txt_ids.to(p.device), guidance=None, return_dict=False)[0]
        else:
            x = torch.randn(1, 3, 2 * patch_size, 2 * patch_size, generator=g)
            cap = torch.randn(8, model.transformer.config.cap_feat_dim, generator=g)
            out = model(x.to(p), torch.tensor([0.5]).to(p), [cap.to(p)], patch_size)
    return out.float().cpu()


def check_probe(expected: torch.Tensor, got: torch.Tensor, dtype) -> None:
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    scale = float(expected.abs().max()) + 1e-6
    diff = float((expected - got).abs().max())
    if diff > tol * scale:
        raise ModelUnavailable(f"the reloaded checkpoint does not reproduce its saved probe output "
                               f"(max difference {diff:.3g} vs scale {scale:.3g})")
