"""The models of the three training schemes (issue #8), on diffusers' own classes.

* ``Flux2Family`` (schemes I and II): FLUX.2-klein as a ``Flux2KleinPipeline`` (Qwen3 text
  encoder, ``AutoencoderKLFlux2``, ``Flux2Transformer2DModel``).  Images become VAE latents
  (tiled for UHR crops), 2x2-patchified and batch-normalised exactly as the pipeline does, so one
  token covers 16x16 pixels.  Training noise levels are logit-normal, shifted by ``train_shift``
  (ours: a static mu, 0.8 by default, at every resolution; ``mode: dynamic`` = FLUX.2's inference
  fit at the crop's (H/16)(W/16) tokens); the checkpoint records it and samples with it
  (pixverve.train.infer).
* Scheme II swaps ``WindowAttnProcessor`` / ``WindowParallelAttnProcessor`` into every attention
  module: the published close + remote local attention (flux2_infer/models/flux2_dit.py): text
  queries attend to every token; each image query attends in two branches -- its close window
  and its remote strided sample of the token grid -- each one softmax over all text tokens plus
  the branch's tokens, the two outputs averaged.  A pattern entry fh x fw counts windows along
  the grid (window ~ H/fh x W/fw, remote stride (fh, fw)); 1x1 = global attention; block i
  (double-stream, then single-stream) takes entry i mod len(pattern).  The token grid is read
  from ``img_ids`` by a forward pre-hook, so the stock pipeline samples the windowed model.
* ``L2PModel`` (scheme III, "latent to pixel", as the published L2P-ZImage-HR): a
  ``ZImageTransformer2DModel`` on RGB pixels with one patch size (resolution / token grid: 64 at
  4K, 128 at 8K, 160 at 10K for a 64x64 grid) and no final layer; its last image tokens become a
  feature map concatenated at the bottleneck of ``PixelUNet``, a convolutional U-Net reading the
  noisy full-size image (4K variant; an extra outer level at 8K; at 10K a bottleneck of
  resolution/64 px with the features upsampled to it, per-stage checkpointing).  Every
  transformer weight but the patch embedder comes from the latent DiT.  No VAE.

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

from pixverve.models.loading import ModelUnavailable

# scheme II pattern parsing lives in a torch-free module (the config check runs in every env)
# (re-exported: callers use tm.window_settings, tm.PATTERN_PRESETS, ...)
from pixverve.train.patterns import (  # noqa: F401
    AUTO,
    PATTERN_PRESETS,
    auto_pattern,
    block_factors,
    default_pattern,
    parse_pattern,
    window_settings,
)

TOKEN_PIXELS_FLUX2 = 16  # VAE factor 8 x 2x2 patchify


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
    """Training noise levels: logit-normal, then shifted by ``mu`` (larger mu, more noise)."""
    u = torch.sigmoid(torch.randn(n, generator=generator) * logit_std + logit_mean)
    return shift_sigmas(u, mu)


DEFAULT_TRAIN_SHIFT = {"mode": "static", "mu": 0.8}  # ours: the published sampler's mu with its dynamic shift off


def train_shift(spec: dict) -> dict:
    """The schemes I/II training shift of a run spec, resolved: ``{"mode": "static", "mu": m}`` or
    ``{"mode": "dynamic"}`` (config key ``train_shift``; absent or null = the default)."""
    shift = spec.get("train_shift") or DEFAULT_TRAIN_SHIFT
    if shift["mode"] == "dynamic":
        return {"mode": "dynamic"}
    return {"mode": "static", "mu": float(shift.get("mu", DEFAULT_TRAIN_SHIFT["mu"]))}


def scheduler_mu(scheduler_config, tokens: int) -> float:
    """mu of the base scheduler: dynamic (Flux-style line through base/max sequence lengths) or
    the static ``shift`` (s' = shift s / (1 + (shift - 1) s) is the exponential shift with mu = ln shift)."""
    if scheduler_config.get("use_dynamic_shifting"):
        base_len, max_len = (
            scheduler_config.get("base_image_seq_len", 256),
            scheduler_config.get("max_image_seq_len", 4096),
        )
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

    from pixverve.models.tiny_text import TINY_CHAT_TEMPLATE, byte_level_backend

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_backend(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3ForCausalLM(config).eval(), tokenizer


def build_tiny_flux2(folder, seed: int = 0) -> Path:
    """A ~0.1 M-parameter Flux2KleinPipeline (real classes, random weights) saved in ``folder``."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )

    text_encoder, tokenizer = _tiny_qwen3(hidden=16, layers=3, seed=seed)
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        mid_block_add_attention=False,
    )
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=3 * 16,
        timestep_guidance_channels=16,
        mlp_ratio=2.0,
        axes_dims_rope=(2, 2, 2, 2),
        guidance_embeds=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    pipe = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=False,
    )
    pipe.save_pretrained(folder)
    return Path(folder)


def build_tiny_zimage(folder, seed: int = 0) -> Path:
    """A tiny ZImagePipeline (latent DiT: the starting point of L2P) saved in ``folder``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    text_encoder, tokenizer = _tiny_qwen3(hidden=16, layers=2, seed=seed)
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8,), latent_channels=4, norm_num_groups=4, sample_size=32)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=3,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,
        axes_dims=[4, 6, 6],
        axes_lens=[256, 64, 64],
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    ).save_pretrained(folder)
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
# scheme II: close + remote local attention (checked against flux2_infer/models/flux2_dit.py and
# flux2_infer/local_attention.py of HaojunChen663/PixVerve-95K)


def _edges(size: int, parts: int) -> list[int]:
    return [i * size // parts for i in range(parts + 1)]  # uneven splits, no padding


def close_remote_partitions(
    grid: tuple[int, int], factors: tuple[int, int] | None = None, window: tuple[int, int] | None = None
) -> dict[str, list[torch.Tensor]]:
    """Index sets over the row-major (gh, gw) image grid, grouped by size into (n, size) tensors.

    ``factors`` (fh, fw): fh x fw close windows of about gh/fh x gw/fw tokens; remote sets are
    the strided samples grid[i::fh, j::fw]; (1, 1) = one close window (global attention), no
    remote.  Without factors, ``window`` (wh, ww) is the close window size and also the stride
    of the remote sets (the published fallback when no pattern is given)."""
    gh, gw = grid
    tok = torch.arange(gh * gw).reshape(gh, gw)
    close, remote = {}, {}

    def add(bucket, idx):
        if idx.numel():
            bucket.setdefault(idx.numel(), []).append(idx.reshape(-1))

    if factors is not None:
        fh, fw = factors
        he, we = _edges(gh, fh), _edges(gw, fw)
        for i in range(fh):
            for j in range(fw):
                add(close, tok[he[i] : he[i + 1], we[j] : we[j + 1]])
        if (fh, fw) != (1, 1):
            for i in range(fh):
                for j in range(fw):
                    add(remote, tok[i::fh, j::fw])
    else:
        wh, ww = window
        for r in range(0, gh, wh):
            for c in range(0, gw, ww):
                add(close, tok[r : r + wh, c : c + ww])
        if wh < gh or ww < gw:
            for i in range(min(wh, gh)):
                for j in range(min(ww, gw)):
                    add(remote, tok[i::wh, j::ww])
    return {name: [torch.stack(v) for _, v in sorted(b.items())] for name, b in (("close", close), ("remote", remote))}


def _branch_attention(qi, ki, vi, kt, vt, buckets, max_windows: int, checkpoint: bool):
    """One branch: every index set attends to all text keys + its own image keys (one softmax
    each, plain SDPA with no mask); outputs scattered back to the image positions."""
    b, n, h, d = qi.shape
    out = qi.new_zeros(b, n, h, d)
    nt = kt.shape[1]
    for bucket in buckets:
        bucket = bucket.to(qi.device)
        step = bucket.shape[0] if max_windows <= 0 else max_windows
        for start in range(0, bucket.shape[0], step):
            sets = bucket[start : start + step]
            w, size = sets.shape

            def chunk(q_, k_, v_, kt_, vt_, sets_=sets, w_=w, size_=size):
                flat = sets_.reshape(-1)
                q = q_[:, flat].reshape(b * w_, size_, h, d)
                k = k_[:, flat].reshape(b * w_, size_, h, d)
                v = v_[:, flat].reshape(b * w_, size_, h, d)
                if nt:
                    k = torch.cat([kt_[:, None].expand(b, w_, nt, h, d).reshape(b * w_, nt, h, d), k], dim=1)
                    v = torch.cat([vt_[:, None].expand(b, w_, nt, h, d).reshape(b * w_, nt, h, d), v], dim=1)
                o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
                return o.transpose(1, 2).reshape(b, w_ * size_, h, d)

            if checkpoint and torch.is_grad_enabled() and qi.requires_grad:
                o = torch.utils.checkpoint.checkpoint(chunk, qi, ki, vi, kt, vt, use_reentrant=False)
            else:
                o = chunk(qi, ki, vi, kt, vt)
            out[:, sets.reshape(-1)] = o.to(out.dtype)
    return out


def local_attention(query, key, value, num_txt: int, partitions: dict, max_windows: int = 4, checkpoint: bool = True):
    """Scheme II attention over (B, S, H, D) tensors laid out [text, image]: text queries attend
    to every key (one SDPA); image queries attend in the close and the remote branch (each over
    all text keys + the branch's set), the two outputs averaged (close only when there is no
    remote branch: 1x1 = full attention).  ``max_windows`` sets per attention call (<= 0: all);
    ``checkpoint`` recomputes each chunk in the backward pass (activation memory)."""
    tq = query[:, :num_txt]
    txt = F.scaled_dot_product_attention(tq.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)).transpose(1, 2)
    qi, ki, vi = query[:, num_txt:], key[:, num_txt:], value[:, num_txt:]
    kt, vt = key[:, :num_txt], value[:, :num_txt]
    branches = [
        _branch_attention(qi, ki, vi, kt, vt, partitions[name], max_windows, checkpoint)
        for name in ("close", "remote")
        if partitions.get(name)
    ]
    img = branches[0] if len(branches) == 1 else sum(branches) / len(branches)
    return torch.cat([txt, img], dim=1)


class WindowContext:
    """What the local-attention processors need per forward: the image token grid, the text
    length, and the index sets per (grid, factors) (built once, shared by the blocks)."""

    def __init__(self, window: tuple[int, int] = (24, 24)):
        self.grid: tuple[int, int] | None = None
        self.num_txt = 0
        self.window = tuple(window)
        self._cache: dict = {}

    def resolve(self, factors):
        """A block's factors: ("auto", i) becomes entry i (mod its length) of the auto pattern
        for the current grid; anything else is returned as is."""
        if factors is None or factors[0] != AUTO:
            return factors
        pattern = auto_pattern(self.grid, self.window)
        return pattern[factors[1] % len(pattern)]

    def partitions(self, factors):
        factors = self.resolve(factors)
        key = (self.grid, factors)
        if key not in self._cache:
            self._cache[key] = close_remote_partitions(self.grid, factors, None if factors else self.window)
        return self._cache[key]


GLOBAL = "global"  # a processor's factors for plain full attention (sequence chunking without windows)


def run_in_chunks(fn, inputs, chunk: int, checkpoint: bool):
    """``fn`` applied to consecutive sequence slices (dim 1) of the (B, S, ...) ``inputs``, each
    slice recomputed in the backward pass when ``checkpoint``; the outputs are written into one
    preallocated tensor each (the published flux2_infer sequence chunking of projections / FFN:
    only one chunk's intermediates are alive at a time).  Returns a tuple of outputs."""
    n = inputs[0].shape[1]
    outs = None
    for start in range(0, n, chunk):
        parts = [t[:, start : start + chunk] for t in inputs]
        y = torch.utils.checkpoint.checkpoint(fn, *parts, use_reentrant=False) if checkpoint else fn(*parts)
        y = y if isinstance(y, tuple) else (y,)
        if outs is None:
            outs = [t.new_empty((t.shape[0], n, *t.shape[2:])) for t in y]
        for o, t in zip(outs, y):
            o[:, start : start + chunk] = t
    return tuple(outs)


def _chunking(chunk: int, seq_len: int) -> bool:
    return 0 < int(chunk) < seq_len


def _recompute(module, checkpoint: bool) -> bool:  # as published: checkpoint chunks only when something trains
    return checkpoint and torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())


def _linear_rows(layer, h, start: int, end: int):
    """Output features start:end of a linear layer: from those rows of a plain nn.Linear's weight
    (published: the fused single-stream projection is never computed whole); a wrapped layer (a
    peft LoRA) is called whole and sliced, so its adapter applies."""
    if type(layer) is nn.Linear:
        return F.linear(h, layer.weight[start:end], None if layer.bias is None else layer.bias[start:end])
    return layer(h)[..., start:end]


class _LocalMixin:
    def __init__(
        self, context: WindowContext, factors, max_windows: int = 4, checkpoint: bool = True, seq_chunk: int = 0
    ):
        self.context, self.factors = context, (tuple(factors) if factors else None)  # ("auto", i) kept as is
        self.max_windows, self.checkpoint = int(max_windows), bool(checkpoint)
        self.seq_chunk = int(seq_chunk or 0)

    def _recompute(self, module) -> bool:
        return _recompute(module, self.checkpoint)

    def _attend(self, query, key, value, num_txt):
        if self.factors == (GLOBAL,):
            out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
            return out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        gh, gw = self.context.grid
        if query.shape[1] != num_txt + gh * gw:
            raise ValueError(f"sequence {query.shape[1]} != {num_txt} text + {gh}x{gw} image tokens")
        return (
            local_attention(
                query, key, value, num_txt, self.context.partitions(self.factors), self.max_windows, self.checkpoint
            )
            .flatten(2, 3)
            .to(query.dtype)
        )


class WindowAttnProcessor(_LocalMixin):
    """Flux2Attention (double-stream block) with scheme II's local attention; with ``seq_chunk``
    the image QKV and output projections run over sequence chunks (published
    --flux2_double_stream_seq_chunk_size; the image FFN is chunked by ``chunk_feed_forward``)."""

    def _image_qkv(self, attn, hidden_states):
        def project(h):
            q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
            q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))
            return attn.norm_q(q), attn.norm_k(k), v

        if not _chunking(self.seq_chunk, hidden_states.shape[1]):
            return project(hidden_states)
        if attn.fused_projections:
            raise ValueError("sequence chunking needs unfused projections (to_q / to_k / to_v)")
        return run_in_chunks(project, [hidden_states], self.seq_chunk, self._recompute(attn))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux2 import _get_qkv_projections

        if self.seq_chunk:
            query, key, value = self._image_qkv(attn, hidden_states)
            eq, ek, ev = (
                attn.add_q_proj(encoder_hidden_states),
                attn.add_k_proj(encoder_hidden_states),
                attn.add_v_proj(encoder_hidden_states),
            )
        else:
            query, key, value, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
            query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
            query, key = attn.norm_q(query), attn.norm_k(key)
        eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
        eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
        query, key, value = torch.cat([eq, query], 1), torch.cat([ek, key], 1), torch.cat([ev, value], 1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = self._attend(query, key, value, encoder_hidden_states.shape[1])
        txt, img = out.split_with_sizes([encoder_hidden_states.shape[1], hidden_states.shape[1]], dim=1)
        if _chunking(self.seq_chunk, img.shape[1]):
            img = run_in_chunks(attn.to_out[0], [img], self.seq_chunk, self._recompute(attn.to_out[0]))[0]
        else:
            img = attn.to_out[0](img)
        return attn.to_out[1](img), attn.to_add_out(txt)


class WindowParallelAttnProcessor(_LocalMixin):
    """Flux2ParallelSelfAttention (single-stream block: text and image already one sequence);
    with ``seq_chunk`` the fused QKV/MLP input projection and the output projection run over
    sequence chunks (published --flux2_single_stream_seq_chunk_size): the QKV rows of the input
    projection in the first pass, its MLP rows chunk by chunk in the output pass, so the MLP
    activations are never held for the whole sequence (``_linear_rows``)."""

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        qkv_dim = 3 * attn.inner_dim

        def project(h):
            q, k, v = _linear_rows(attn.to_qkv_mlp_proj, h, 0, qkv_dim).chunk(3, dim=-1)
            q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))
            return attn.norm_q(q), attn.norm_k(k), v

        chunked = _chunking(self.seq_chunk, hidden_states.shape[1])
        if chunked:
            query, key, value = run_in_chunks(project, [hidden_states], self.seq_chunk, self._recompute(attn))
        else:
            fused = attn.to_qkv_mlp_proj(hidden_states)
            qkv, mlp = torch.split(fused, [qkv_dim, fused.shape[-1] - qkv_dim], dim=-1)
            query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in qkv.chunk(3, dim=-1))
            query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = self._attend(query, key, value, self.context.num_txt)
        if not chunked:
            return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))

        def output(h, a):
            mlp_rows = _linear_rows(attn.to_qkv_mlp_proj, h, qkv_dim, attn.to_qkv_mlp_proj.out_features)
            return attn.to_out(torch.cat([a, attn.mlp_act_fn(mlp_rows)], dim=-1))

        return run_in_chunks(output, [hidden_states, out], self.seq_chunk, self._recompute(attn))[0]


def chunk_feed_forward(ff: nn.Module, chunk: int, checkpoint: bool = True) -> None:
    """Run a token-wise feed-forward module over sequence chunks (published: the double-stream
    blocks' image FFN); the forward is replaced on the instance, so parameter names stay."""
    plain = type(ff).forward

    def forward(x):
        if not _chunking(chunk, x.shape[1]):
            return plain(ff, x)
        return run_in_chunks(lambda t: plain(ff, t), [x], chunk, _recompute(ff, checkpoint))[0]

    ff.forward = forward


def seq_chunk_sizes(memory: dict | None) -> tuple[int, int]:
    """(single-stream, double-stream) chunk sizes from a run's ``memory`` settings; the
    double-stream size defaults to the single-stream one (published)."""
    memory = memory or {}
    single = int(memory.get("seq_chunk_single") or 0)
    double = memory.get("seq_chunk_double")
    double = single if double is None else int(double)
    if single < 0 or double < 0:
        raise ValueError(f"sequence chunk sizes must be >= 0, got single {single}, double {double}")
    return single, double


def install_window_attention(transformer, settings: dict | None, memory: dict | None = None):
    """Swap our processors into a Flux2Transformer2DModel: with window ``settings`` (scheme II)
    block i (double-stream blocks first, then single-stream, as numbered in the published code)
    gets pattern entry i mod len(pattern); without them (scheme I with sequence chunking) every
    block keeps full attention.  ``memory``'s seq_chunk_single / seq_chunk_double chunk the
    projections and the image FFN.  Returns the shared context the forward pre-hook fills."""
    settings = settings or {}
    single_chunk, double_chunk = seq_chunk_sizes(memory)
    local = bool(settings)
    pattern = parse_pattern(settings.get("pattern")) if local else None  # AUTO: resolved per grid by the context
    context = WindowContext(tuple(settings.get("window_size") or (24, 24)))
    doubles, singles = list(transformer.transformer_blocks), list(transformer.single_transformer_blocks)
    factors = (
        block_factors(len(doubles) + len(singles), pattern) if local else [(GLOBAL,)] * (len(doubles) + len(singles))
    )
    max_windows, checkpoint = settings.get("max_windows_per_batch", 4), settings.get("checkpoint_chunks", True)
    for i, block in enumerate(doubles + singles):
        cls = WindowAttnProcessor if i < len(doubles) else WindowParallelAttnProcessor
        block.attn.set_processor(
            cls(context, factors[i], max_windows, checkpoint, double_chunk if i < len(doubles) else single_chunk)
        )
        if i < len(doubles) and double_chunk:
            chunk_feed_forward(block.ff, double_chunk, checkpoint)

    def read_grid(module, args, kwargs):  # the grid from the image position ids (T, H, W, L)
        ids = kwargs["img_ids"]
        ids = ids[0] if ids.ndim == 3 else ids
        context.grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
        context.num_txt = kwargs["encoder_hidden_states"].shape[1]

    transformer.register_forward_pre_hook(read_grid, with_kwargs=True)
    return context


def needs_own_processors(scheme: str, memory: dict | None) -> bool:
    """Scheme II always; scheme I only when it chunks sequences (else diffusers' own processors)."""
    return scheme == "window" or any(seq_chunk_sizes(memory))


# ---------------------------------------------------------------------------------------------
# scheme III: L2P (checked against L2P-ZImage-HR/diffsynth/models/z_image_dit_L2P.py,
# diffusion/base_pipeline_L2P.py, diffusion/loss.py and train_run_ds.sh of HaojunChen663/PixVerve-95K)

UNET_WIDTHS = (16, 32, 64, 128, 256, 512)  # published U-Net channel widths (4K: 64 px patch = 2^6 levels)


def l2p_patch_size(resolution: int, token_grid: int) -> int:
    """Pixels per token side so that a resolution x resolution image is token_grid x token_grid."""
    if resolution % token_grid:
        raise ValueError(f"L2P: resolution {resolution} is not a multiple of the token grid {token_grid}")
    return resolution // token_grid


def l2p_variant(patch: int, widths) -> str:
    """Which published U-Net a patch size gets: ``4k`` (patch = 2^levels: the bottleneck is the
    token grid), ``8k`` (patch = 2^(levels+1): one extra outer level), otherwise ``10k`` (an
    outer level, one level fewer, the bottleneck at resolution / 2^levels with the token
    features upsampled to it)."""
    levels = len(widths)
    if patch == 2**levels:
        return "4k"
    if patch == 2 ** (levels + 1):
        return "8k"
    return "10k"


def _conv(cin, cout, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.SiLU())


def _up(cin, cout):
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))


class PixelUNet(nn.Module):
    """The L2P local decoder: a convolutional U-Net on the full-size noisy image with the
    transformer's last image tokens (as a feature map) concatenated at its bottleneck.

    ``4k``: levels of ``widths`` (conv + SiLU, 2x max-pool) down to the token grid; 1x1 bottleneck
    conv on [deepest features, token features] -> widths[-1]; mirrored decoder (nearest 2x
    upsample + conv, concat skip, conv + SiLU); 1x1 output conv.  ``8k``: the 4k net inside
    one outer level (its own names, so a 4k checkpoint loads into the inner net).  ``10k``: an
    outer level, the levels without the deepest one, token features resized (nearest) to the
    bottleneck; every stage recomputed in the backward pass when ``checkpoint_stages``."""

    def __init__(
        self, in_channels: int, feature_dim: int, variant: str, widths=UNET_WIDTHS, checkpoint_stages: bool = True
    ):
        super().__init__()
        self.variant, self.checkpoint_stages = variant, checkpoint_stages
        w = list(widths)
        levels = len(w) if variant != "10k" else len(w) - 1
        if variant in ("8k", "10k"):
            setattr(self, f"outer_{variant}_enc", _conv(in_channels, in_channels))
        self.enc = nn.ModuleList([_conv(in_channels if i == 0 else w[i - 1], w[i]) for i in range(levels)])
        self.bottleneck = _conv(w[levels - 1] + feature_dim, w[-1], k=1)
        # decoder level i: upsample+conv to w[i] (from the bottleneck's w[-1] at the deepest level), then
        # [up, skip] -> w[i-1] (w[0] at the top)
        self.up = nn.ModuleList([_up(w[-1] if i == levels - 1 else w[i], w[i]) for i in range(levels)])
        self.dec = nn.ModuleList([_conv(2 * w[i], w[max(i - 1, 0)]) for i in range(levels)])
        if variant in ("8k", "10k"):
            setattr(self, f"outer_{variant}_up", _up(w[0], w[0]))
            setattr(self, f"outer_{variant}_dec", _conv(w[0] + in_channels, w[0]))
        self.out_conv = nn.Conv2d(w[0], in_channels, 1)

    def _stage(self, fn, *args):
        if self.checkpoint_stages and self.variant == "10k" and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x, features):
        outer = None
        if self.variant != "4k":
            outer = self._stage(getattr(self, f"outer_{self.variant}_enc"), x)
            x = F.max_pool2d(outer, 2)
        skips = []
        for enc in self.enc:
            s = self._stage(enc, x)
            skips.append(s)
            x = F.max_pool2d(s, 2)
        if features.shape[-2:] != x.shape[-2:]:
            if self.variant != "10k":
                raise ValueError(
                    f"L2P U-Net: bottleneck {tuple(x.shape[-2:])} != token grid {tuple(features.shape[-2:])}"
                )
            features = F.interpolate(features, size=x.shape[-2:], mode="nearest")
        x = self._stage(lambda a, b: self.bottleneck(torch.cat([a, b], 1)), x, features.to(x.dtype))
        for i in reversed(range(len(self.enc))):
            x = self._stage(lambda a, s, i=i: self.dec[i](torch.cat([self.up[i](a), s], 1)), x, skips[i])
        if outer is not None:
            up, dec = getattr(self, f"outer_{self.variant}_up"), getattr(self, f"outer_{self.variant}_dec")
            x = self._stage(lambda a, s: dec(torch.cat([up(a), s], 1)), x, outer)
        return self.out_conv(x)


class _TokenTap(nn.Module):
    """Stands in for Z-Image's final layer: keeps the last hidden states and hands the
    unpatchify a zero-width tensor (the transformer's out_channels is set to 0)."""

    def __init__(self):
        super().__init__()
        self.hidden = None

    def forward(self, x, c=None, **kwargs):
        self.hidden = x
        return x[..., :0]


class L2PModel(nn.Module):
    """Pixel-space Z-Image transformer without a final layer + PixelUNet; ``forward`` returns the
    velocity v (Z-Image's convention: the network sees t = 1 - sigma and predicts -v)."""

    def __init__(self, transformer, unet: PixelUNet):
        super().__init__()
        self.transformer, self.unet = transformer, unet
        self.patch = int(transformer.config.all_patch_size[0])
        key = f"{self.patch}-1"
        transformer.all_final_layer[key] = _TokenTap()
        transformer.out_channels = 0  # only read by unpatchify: zero-width outputs, no pixels from the DiT

    def forward(self, noisy, sigma, cap_feats: list, patch_size: int | None = None):
        p = self.patch
        if patch_size is not None and int(patch_size) != p:
            raise ValueError(f"L2P model has patch {p}, asked for {patch_size}")
        b, _, h, w = noisy.shape
        tap = self.transformer.all_final_layer[f"{p}-1"]
        # the published model_fn: t = (1000 - timestep) / 1000 on the timestep in the run's dtype
        timestep = l2p_timestep(torch.as_tensor(sigma, device=noisy.device), noisy.dtype)
        self.transformer(
            [n.unsqueeze(1) for n in noisy], (1000 - timestep) / 1000, cap_feats, patch_size=p, return_dict=False
        )
        gh, gw = h // p, w // p
        tokens = tap.hidden[:, : gh * gw]  # image tokens come first in the unified sequence
        tap.hidden = None
        features = tokens.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)
        return -self.unet(noisy, features)


def z_image_sigmas(steps: int, shift: float) -> torch.Tensor:
    """DiffSynth's Z-Image table (FlowMatchScheduler "Z-Image", denoising strength 1), in float32
    and in its order of operations: s = linspace(1, 0, steps + 1)[:-1], then shift s / (1 + (shift - 1) s)."""
    s = torch.linspace(1.0, 0.0, int(steps) + 1)[:-1]
    return float(shift) * s / (1 + (float(shift) - 1) * s)


def l2p_timestep(sigma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The timestep the published L2P pipeline hands its model: the scheduler's sigma * 1000
    (float32) cast to the run's dtype -- in bf16 a multiple of 4 above 512."""
    return (sigma.float() * 1000).to(dtype)


def l2p_sample_sigmas(n: int, generator: torch.Generator, shift: float, grid_steps: int = 1000) -> torch.Tensor:
    """L2P training noise levels: a uniform draw from DiffSynth's Z-Image table of ``grid_steps``
    (``z_image_sigmas``), as the published FlowMatchSFTLoss draws its timestep id."""
    idx = torch.randint(0, int(grid_steps), (n,), generator=generator)
    return z_image_sigmas(grid_steps, shift)[idx]


def l2p_noise_sigmas(sigmas: torch.Tensor, dtype: torch.dtype, shift: float, grid_steps: int = 1000) -> torch.Tensor:
    """The noise level the published loss mixes with for each drawn sigma: ``add_noise`` takes the
    table entry nearest the timestep as cast to the run's dtype (``l2p_timestep``), so in bf16 it
    can be a neighbour of the drawn one; in float32 it is the drawn one."""
    table = z_image_sigmas(grid_steps, shift)
    t = l2p_timestep(sigmas, dtype).float().cpu()
    return table[(table[None, :] * 1000 - t[:, None]).abs().argmin(dim=1)]


def l2p_frozen_layers(n_layers: int, train_edge: int) -> list[int]:
    """Main layers frozen in L2P training: all but the first and last ``train_edge`` (published 5:
    layers 5-24 of 30)."""
    return list(range(train_edge, n_layers - train_edge))


def l2p_build(latent_transformer, patch: int, unet: dict) -> L2PModel:
    """Pixel model for one patch size from a latent Z-Image DiT: the same config with 3 input
    channels and that patch; every transformer weight but the patch embedder copied; a new U-Net
    of the patch's variant."""
    from diffusers import ZImageTransformer2DModel

    cfg = {k: v for k, v in dict(latent_transformer.config).items() if not k.startswith("_")}
    cfg.update(in_channels=3, all_patch_size=(int(patch),), all_f_patch_size=(1,))
    pixel = ZImageTransformer2DModel(**cfg).to(latent_transformer.dtype)
    state = {
        k: v
        for k, v in latent_transformer.state_dict().items()
        if not k.startswith(("all_x_embedder.", "all_final_layer."))
    }
    missing, unexpected = pixel.load_state_dict(state, strict=False)
    new = [k for k in missing if not k.startswith(("all_x_embedder.", "all_final_layer."))]
    if new or unexpected:
        raise ModelUnavailable(f"L2P init: unmatched weights {new[:5]} / {unexpected[:5]}")
    widths = tuple(unet.get("widths") or UNET_WIDTHS)
    net = PixelUNet(
        3, int(cfg["dim"]), l2p_variant(int(patch), widths), widths, bool(unet.get("checkpoint_stages", True))
    ).to(latent_transformer.dtype)
    return L2PModel(pixel, net)


def load_matching(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    """Load the entries of ``state`` whose name and shape match ``model`` (progressive L2P:
    each resolution starts from the previous one); returns (loaded, skipped) names."""
    own = model.state_dict()
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(take, strict=False)
    return sorted(take), sorted(set(state) - set(take))


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
            out = model(
                hidden_states=hidden.to(p),
                encoder_hidden_states=text.to(p),
                timestep=torch.tensor([0.5]).to(p),
                img_ids=img_ids.to(p.device),
                txt_ids=txt_ids.to(p.device),
                guidance=None,
                return_dict=False,
            )[0]
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
        raise ModelUnavailable(
            f"the reloaded checkpoint does not reproduce its saved probe output "
            f"(max difference {diff:.3g} vs scale {scale:.3g})"
        )
