"""Training (issue #8): the three schemes on tiny random models of the real diffusers classes.

Known answers: scheme II's close + remote attention against an explicit per-query computation, the timestep shift against
diffusers' scheduler, the L2P token grid.  Behaviour: each scheme overfits one batch (the
fixed-batch loss falls), the checkpoint reloads and reproduces its probe and its images, a
resumed run ends with the same weights as an uninterrupted one, two CPU processes (gloo) step
together with equal gradients and write one checkpoint, the paper config's runs dry-run with
SLURM resources.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixverve.core.tiling import TiledTiffWriter, bands_of
from pixverve.train import models as tm
from pixverve.train.config import launch_command, resolve_run
from pixverve.train.data import samples_from_records

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# known answers


def explicit_close_remote(q, k, v, num_txt, grid, factors):
    """The published definition written out one query at a time: text queries attend to all keys;
    an image query at (r, c) attends (a) to the text + its close window [he[i], he[i+1]) x
    [we[j], we[j+1]) with edges i*H//fh, and (b) to the text + every token with the same
    (row mod fh, col mod fw); each is its own softmax, the outputs averaged; 1x1: (a) only."""
    gh, gw = grid
    fh, fw = factors
    scale = q.shape[-1] ** -0.5
    he = [i * gh // fh for i in range(fh + 1)]
    we = [j * gw // fw for j in range(fw + 1)]

    def band(edges, x):
        return next(i for i in range(len(edges) - 1) if edges[i] <= x < edges[i + 1])

    def attend(qv, keys):  # qv (B, H, D); keys: token positions in the full sequence
        kk, vv = k[:, keys], v[:, keys]  # (B, n, H, D)
        w = torch.softmax(torch.einsum("bhd,bnhd->bhn", qv, kk) * scale, dim=-1)
        return torch.einsum("bhn,bnhd->bhd", w, vv)

    out = torch.zeros_like(q)
    text = list(range(num_txt))
    for t in text:
        out[:, t] = attend(q[:, t], list(range(q.shape[1])))
    for r in range(gh):
        for c in range(gw):
            p = num_txt + r * gw + c
            bi, bj = band(he, r), band(we, c)
            close = [
                num_txt + rr * gw + cc
                for rr in range(gh)
                for cc in range(gw)
                if band(he, rr) == bi and band(we, cc) == bj
            ]
            o = attend(q[:, p], text + close)
            if (fh, fw) != (1, 1):
                remote = [
                    num_txt + rr * gw + cc
                    for rr in range(gh)
                    for cc in range(gw)
                    if rr % fh == r % fh and cc % fw == c % fw
                ]
                o = (o + attend(q[:, p], text + remote)) / 2
            out[:, p] = o
    return out


@pytest.mark.parametrize(
    "grid,factors,chunk",
    [((6, 8), (2, 4), 0), ((5, 7), (2, 3), 2), ((7, 5), (3, 2), 1), ((4, 6), (4, 1), 3), ((6, 4), (1, 1), 0)],
)
def test_local_attention_matches_the_explicit_close_remote_definition(grid, factors, chunk):
    """Even and uneven splits (5 rows in 2 bands: 2 + 3), chunked or not."""
    g = torch.Generator().manual_seed(0)
    num_txt = 3
    q, k, v = (torch.randn(2, num_txt + grid[0] * grid[1], 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    parts = tm.close_remote_partitions(grid, factors)
    got = tm.local_attention(q, k, v, num_txt, parts, max_windows=chunk, checkpoint=False)
    assert torch.allclose(got, explicit_close_remote(q, k, v, num_txt, grid, factors), atol=1e-10)
    covered = torch.cat([b.reshape(-1) for b in parts["close"]]).sort().values
    assert torch.equal(covered, torch.arange(grid[0] * grid[1]))  # every token in exactly one close window
    sizes = {int(b.shape[1]) for b in parts["close"]}
    if grid[0] % factors[0] or grid[1] % factors[1]:
        assert len(sizes) > 1  # uneven splits, no padding


def test_local_attention_1x1_is_full_attention_and_checkpointed_grads_agree():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4 + 30, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    full = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(tm.local_attention(q, k, v, 4, tm.close_remote_partitions((5, 6), (1, 1))), full, atol=1e-12)
    parts = tm.close_remote_partitions((5, 6), (2, 3))
    grads = []
    for ckpt in (False, True):
        qq = q.clone().requires_grad_(True)
        tm.local_attention(qq, k, v, 4, parts, max_windows=2, checkpoint=ckpt).square().sum().backward()
        grads.append(qq.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


def test_published_pattern_presets_and_parsing():
    assert tm.parse_pattern("1x1,8x16,16x8,4x32,32x4") == tm.PATTERN_PRESETS["4k"]
    assert tm.window_settings({}, 4096)["pattern"] == [[1, 1], [8, 16], [16, 8], [4, 32], [32, 4]]
    assert tm.window_settings({}, 10240)["pattern"] == [[1, 1], [16, 32], [32, 16], [8, 64], [64, 8]]
    assert tm.block_factors(7, tm.parse_pattern("1x1,2x4,4x2")) == [
        (1, 1),
        (2, 4),
        (4, 2),
        (1, 1),
        (2, 4),
        (4, 2),
        (1, 1),
    ]
    with pytest.raises(ValueError):
        tm.parse_pattern("0x4")


@pytest.fixture(scope="module")
def tiny_flux2(tmp_path_factory):
    return tm.load_pipeline("flux2", {"backend": "tiny"}, torch.float32, tmp_path_factory.mktemp("flux2"))


def _flux2_call(pipe, grid, seed: int):
    """The tiny transformer on seeded random inputs: a grid of image tokens and 5 text tokens."""
    g = torch.Generator().manual_seed(seed)
    cfg = pipe.transformer.config
    hidden = torch.randn(1, grid[0] * grid[1], cfg.in_channels, generator=g)
    text = torch.randn(1, 5, cfg.joint_attention_dim, generator=g)
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(grid[0]), torch.arange(grid[1]), torch.arange(1))
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(5))
    return pipe.transformer(
        hidden_states=hidden,
        encoder_hidden_states=text,
        timestep=torch.tensor([0.4]),
        img_ids=img_ids,
        txt_ids=txt_ids,
        guidance=None,
        return_dict=False,
    )[0]


def _flux2_forward(pipe, grid=(4, 6)):
    with torch.no_grad():
        return _flux2_call(pipe, grid, seed=2)


def test_window_processors_in_the_real_model(tiny_flux2):
    import copy

    pipe = copy.deepcopy(tiny_flux2)
    full = _flux2_forward(pipe)
    tm.install_window_attention(pipe.transformer, {"pattern": [[1, 1]]})  # 1x1 everywhere: global attention
    assert torch.allclose(_flux2_forward(pipe), full, atol=1e-5)
    context = tm.install_window_attention(pipe.transformer, {"pattern": "1x1,2x3,4x1", "max_windows_per_batch": 2})
    windowed = _flux2_forward(pipe)
    assert context.grid == (4, 6) and context.num_txt == 5  # read from img_ids by the pre-hook
    assert (windowed - full).abs().max() > 1e-3  # the local attention is in effect
    procs = [
        b.attn.processor.factors
        for b in list(pipe.transformer.transformer_blocks) + list(pipe.transformer.single_transformer_blocks)
    ]
    assert procs == [(1, 1), (2, 3), (4, 1)]  # block index mod pattern: double-stream block first


@pytest.mark.parametrize("memory", [None, {"seq_chunk_single": 7, "seq_chunk_double": 5}])
def test_window_processors_equal_diffusers_blocks_with_the_explicit_local_attention(tiny_flux2, monkeypatch, memory):
    """Scheme II's processors, whole: diffusers' own Flux2 blocks with their attention call
    replaced by the explicit close + remote definition give the same output.  So the projections,
    the q/k norms, the rotary embedding, the [text, image] order, the split and both blocks'
    output projections are checked, chunked over the sequence or not, not only the attention."""
    import copy

    from diffusers.models.transformers import transformer_flux2 as diffusers_flux2

    grid, factors = (4, 6), (2, 3)
    full = _flux2_forward(tiny_flux2, grid)  # diffusers' own attention: global
    ours = copy.deepcopy(tiny_flux2)
    tm.install_window_attention(ours.transformer, {"pattern": "2x3", "max_windows_per_batch": 2}, memory)
    got = _flux2_forward(ours, grid)

    def explicit(query, key, value, *args, **kwargs):  # diffusers' layout: (batch, sequence, heads, dim)
        return explicit_close_remote(query, key, value, 5, grid, factors)

    monkeypatch.setattr(diffusers_flux2, "dispatch_attention_fn", explicit)
    want = _flux2_forward(tiny_flux2, grid)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    assert (want - full).abs().max() > 1e-3  # the windows matter


# what the published _flux2_auto_factor_pattern (flux2_infer/models/flux2_dit.py) returns for these
# (grid, target window) pairs, computed by running the published function outside this project
PUBLISHED_AUTO = [
    ((256, 256), (24, 24), ((8, 16), (16, 8), (4, 32), (32, 4), (4, 16))),
    ((512, 512), (24, 24), ((16, 32), (32, 16), (8, 64), (64, 8), (8, 32))),
    ((640, 640), (24, 24), ((20, 32), (32, 20), (20, 40), (64, 10), (10, 64))),
    ((256, 128), (16, 16), ((16, 8), (32, 4), (8, 16), (64, 2), (4, 32))),
    ((96, 160), (24, 24), ((3, 8), (6, 5), (3, 10), (6, 4), (2, 16))),
    ((64, 64), (16, 8), ((4, 8), (8, 4), (2, 16), (16, 2), (1, 32))),
    ((12, 18), (4, 4), ((4, 3), (6, 2), (2, 6), (4, 2), (2, 9))),
]


@pytest.mark.parametrize("grid,window,expected", PUBLISHED_AUTO)
def test_auto_pattern_is_the_published_one(grid, window, expected):
    assert tm.auto_pattern(grid, window) == expected


def test_auto_pattern_resolves_per_grid_in_the_real_model(tiny_flux2):
    import copy

    pipe = copy.deepcopy(tiny_flux2)
    assert tm.window_settings({"pattern": {"4096": "auto"}}, 4096)["pattern"] == "auto"
    context = tm.install_window_attention(pipe.transformer, {"pattern": "auto", "window_size": [2, 2]})
    seen = []
    for block in list(pipe.transformer.transformer_blocks) + list(pipe.transformer.single_transformer_blocks):
        proc = block.attn.processor
        block.register_forward_pre_hook(lambda m, a, proc=proc: seen.append(context.resolve(proc.factors)))
    _flux2_forward(pipe, grid=(4, 6))
    expected = tm.auto_pattern((4, 6), (2, 2))
    assert seen == [expected[i % len(expected)] for i in range(len(seen))] and len(set(seen)) > 1
    with pytest.raises(ValueError, match="no auto window pattern"):
        tm.auto_pattern((1, 1), (24, 24))


def _forward_and_grads(pipe, grid=(4, 6)):
    pipe.transformer.zero_grad()
    out = _flux2_call(pipe, grid, seed=3)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in pipe.transformer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("window", [None, {"pattern": "1x1,2x3,4x1", "max_windows_per_batch": 2}])
def test_sequence_chunking_changes_memory_not_results(tiny_flux2, window, monkeypatch):
    """Published --flux2_{single,double}_stream_seq_chunk_size: projections and the image FFN over
    sequence chunks (recomputed in the backward pass) give the same output and gradients; scheme I
    (window None) against diffusers' own processors, scheme II against itself unchunked."""
    import copy

    plain = copy.deepcopy(tiny_flux2)
    if window:
        tm.install_window_attention(plain.transformer, window)
    chunked = copy.deepcopy(tiny_flux2)
    assert tm.needs_own_processors("full_attention", {"seq_chunk_single": 7}) and not tm.needs_own_processors(
        "full_attention", {"seq_chunk_single": 0}
    )
    tm.install_window_attention(chunked.transformer, window, {"seq_chunk_single": 7, "seq_chunk_double": 5})
    calls = {"fused": 0, "whole": 0, "ff": 0, "to_q": 0}
    rows = tm._linear_rows  # the fused single-stream projection, row block by row block (never called whole)

    def counted_rows(*args):
        calls["fused"] += 1
        return rows(*args)

    monkeypatch.setattr(tm, "_linear_rows", counted_rows)
    for block in chunked.transformer.single_transformer_blocks:
        block.attn.to_qkv_mlp_proj.register_forward_hook(lambda *a: calls.__setitem__("whole", calls["whole"] + 1))
    for block in chunked.transformer.transformer_blocks:
        block.ff.linear_in.register_forward_hook(lambda *a: calls.__setitem__("ff", calls["ff"] + 1))
        block.attn.to_q.register_forward_hook(lambda *a: calls.__setitem__("to_q", calls["to_q"] + 1))
    out_a, grads_a = _forward_and_grads(plain)
    out_b, grads_b = _forward_and_grads(chunked)
    assert torch.allclose(out_a, out_b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-4, rtol=1e-4), name
    n_single, n_double = len(chunked.transformer.single_transformer_blocks), len(chunked.transformer.transformer_blocks)
    # 29 tokens in 7s = 5 chunks, twice (QKV pass + output pass), forward + backward recompute;
    # 24 image tokens in 5s = 5 chunks
    assert calls["fused"] == n_single * 5 * 2 * 2 and calls["whole"] == 0
    assert calls["ff"] == n_double * 5 * 2 and calls["to_q"] == n_double * 5 * 2
    with pytest.raises(ValueError, match=">= 0"):
        tm.seq_chunk_sizes({"seq_chunk_single": -1})
    assert tm.seq_chunk_sizes({"seq_chunk_single": 8}) == (8, 8)  # double defaults to single (published)
    assert tm.seq_chunk_sizes({"seq_chunk_single": 8, "seq_chunk_double": 0}) == (8, 0)


def test_l2p_patch_size_keeps_the_token_grid():
    assert [tm.l2p_patch_size(r, 64) for r in (4096, 8192, 10240)] == [64, 128, 160]  # paper
    with pytest.raises(ValueError, match="multiple"):
        tm.l2p_patch_size(1000, 64)


@pytest.mark.parametrize("res,variant", [(64, "4k"), (128, "8k"), (160, "10k")])
def test_l2p_unet_variants_and_the_token_feature_map(res, variant, tmp_path_factory):
    """Tiny widths (3 levels = the published 6 scaled down): 64 px / patch 8 = the 4K net (bottleneck
    = token grid), 128 px / patch 16 = 8K (one outer level), 160 px / patch 20 = 10K (bottleneck
    160/8 = 20 px with the 8x8 token features upsampled to it).  No final layer: the transformer's
    last image tokens reach the U-Net's bottleneck."""
    pipe = tm.load_pipeline("zimage", {"backend": "tiny"}, torch.float32, tmp_path_factory.mktemp("zimage"))
    patch = tm.l2p_patch_size(res, 8)
    model = tm.l2p_build(pipe.transformer, patch, {"widths": [4, 8, 16]})
    assert model.unet.variant == variant
    assert not any(k.startswith("transformer.all_final_layer") for k in model.state_dict())
    names = {k.split(".")[1] for k in model.state_dict() if k.startswith("unet.")}
    assert (f"outer_{variant}_enc" in names) == (variant != "4k")
    assert len(model.unet.enc) == (2 if variant == "10k" else 3)  # 10K: no deepest level
    seen = {}
    model.unet.bottleneck.register_forward_pre_hook(lambda m, a: seen.update(shape=a[0].shape))
    out = model(torch.randn(2, 3, res, res), torch.tensor([0.3, 0.7]), [torch.randn(6, 16), torch.randn(4, 16)], patch)
    assert out.shape == (2, 3, res, res)
    bottleneck = {"4k": 8, "8k": 8, "10k": 20}[variant]
    deepest = {"4k": 16, "8k": 16, "10k": 8}[variant]
    assert tuple(seen["shape"]) == (2, deepest + 32, bottleneck, bottleneck)  # [deepest U-Net level, dim-32 tokens]
    src, dst = pipe.transformer.state_dict(), model.transformer.state_dict()
    assert torch.equal(src["layers.0.attention.to_q.weight"], dst["layers.0.attention.to_q.weight"])


def test_l2p_progressive_start_carries_weights_by_name_and_shape(tmp_path):
    pipe = tm.load_pipeline("zimage", {"backend": "tiny"}, torch.float32, tmp_path)
    small = tm.l2p_build(pipe.transformer, 8, {"widths": [4, 8, 16]})
    torch.nn.init.normal_(small.unet.enc[0][0].weight)
    big = tm.l2p_build(pipe.transformer, 16, {"widths": [4, 8, 16]})
    loaded, skipped = tm.load_matching(big, small.state_dict())
    assert torch.equal(big.unet.enc[0][0].weight, small.unet.enc[0][0].weight)  # the 4K net sits inside the 8K one
    assert "transformer.all_x_embedder.8-1.weight" in skipped  # another patch: not carried
    huge = tm.l2p_build(pipe.transformer, 20, {"widths": [4, 8, 16]})
    loaded, skipped = tm.load_matching(huge, big.state_dict())
    assert "unet.bottleneck.0.weight" in skipped and "unet.enc.0.0.weight" in loaded  # 10K: new bottleneck shape


def test_l2p_noise_levels_are_uniform_over_the_shifted_grid():
    g = torch.Generator().manual_seed(0)
    s = tm.l2p_sample_sigmas(50000, g, 3.0, 1000).double()
    index = 1000 * (1 - s / (3 - 2 * s))  # undo the shift s' = 3s / (1 + 2s), then s = 1 - i/1000
    assert (
        (index - index.round()).abs().max() < 1e-2 and index.min() >= -1e-3 and index.max() < 1000
    )  # grid points only
    counts = torch.bincount(index.round().long(), minlength=1000)
    assert counts.min() > 20 and counts.max() < 90  # ~50 each: uniform in the index


def test_timestep_shift_matches_the_diffusers_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    base = np.linspace(1.0, 1 / 40, 40)
    mu = tm.flux2_mu(256 * 256, 40)  # 4K: (4096/16)^2 tokens
    sched.set_timesteps(sigmas=base, mu=mu)
    ours = tm.shift_sigmas(torch.tensor(base), mu)
    assert torch.allclose(ours.float(), sched.sigmas[:-1].float(), atol=0)
    assert tm.flux2_mu(512 * 512, 40) > mu  # more tokens, more noise


def test_training_noise_levels_at_4k_are_spread_not_pure_noise():
    """The configured schemes I/II training shift at the 4K token count (256 x 256) trains across
    noise levels; the old rule (FLUX.2's inference shift, mode dynamic) put nearly all at ~1."""
    import yaml

    from pixverve.train.loop import flux2_train_mu, sigma_stats

    defaults = yaml.safe_load((ROOT / "config.yaml").read_text())["train"]["defaults"]
    g = torch.Generator().manual_seed(0)

    def draw(spec):
        return tm.sample_sigmas(20000, g, flux2_train_mu(spec, 256 * 256), spec["logit_mean"], spec["logit_std"])

    stats = sigma_stats(draw(defaults).numpy())
    assert stats["q05"] < 0.3 and 0.4 < stats["q50"] < 0.9 and stats["q95"] > 0.9 and stats["frac_above_0.99"] < 0.05
    old = sigma_stats(draw(dict(defaults, train_shift={"mode": "dynamic"})).numpy())
    assert old["q05"] > 0.999  # degenerate: what the issue found


def test_sampling_shift_is_the_published_one():
    from pixverve.train.infer import flux2_sample_mu

    assert flux2_sample_mu(4096, 4096, 40) is None  # the pipeline's own dynamic mu at (H/16)(W/16) tokens
    assert flux2_sample_mu(4096, 4096, 40, dynamic_shift=False) == 0.8  # --disable_dynamic_shift
    assert flux2_sample_mu(4096, 4096, 40, dynamic_shift_len=4096) == pytest.approx(tm.flux2_mu(4096, 40))


class SchedulePipe:
    """Stands in for Flux2KleinPipeline at its timestep step: default sigmas linspace(1, 1/N, N), mu
    = compute_empirical_mu((H/16)(W/16), N), then ``self.scheduler.set_timesteps`` -- so it records
    the sigmas the real pipeline would sample at, with whatever scheduler generate() installed --
    and the call's other arguments (``calls``); its "latents" output is the given noise's first 3
    channels at 8x, which its VAE returns as the decoded image."""

    vae_scale_factor = 8

    def __init__(self):
        from types import SimpleNamespace

        from diffusers import FlowMatchEulerDiscreteScheduler

        self.scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)  # the Flux2 base's kind
        self.sigmas, self.calls, self.freed = [], [], 0
        self.transformer = SimpleNamespace(config=SimpleNamespace(in_channels=128), dtype=torch.bfloat16)
        self.vae = torch.nn.Linear(1, 1)  # a module with a device
        self.vae.decode = lambda latents, return_dict: (latents,)

    def maybe_free_model_hooks(self):
        self.freed += 1

    def __call__(self, width, height, num_inference_steps, sigmas=None, latents=None, **kwargs):
        from types import SimpleNamespace

        n = num_inference_steps
        sigmas = np.linspace(1.0, 1 / n, n) if sigmas is None else sigmas
        self.scheduler.set_timesteps(sigmas=sigmas, mu=tm.flux2_mu((height // 16) * (width // 16), n))
        self.sigmas.append(self.scheduler.sigmas[:-1].double())
        self.calls.append(dict(kwargs, latents=latents, sigmas=sigmas))
        image = latents[:, :3].repeat_interleave(16, 2).repeat_interleave(16, 3)  # (1, 3, H, W), in [-1, 1]-ish
        return SimpleNamespace(images=image)


def published_sigmas(width, height, steps, mu=None):
    """flux2_infer/runtime.py Flux2Scheduler.set_timesteps, written out in its float32: linspace(1, 1/N, N),
    mu from dynamic_shift_len = (H/16)(W/16) tokens (infer.py's default) or given, exponential shift."""
    import math

    mu = tm.flux2_mu((height // 16) * (width // 16), steps) if mu is None else mu
    s = torch.linspace(1.0, 1.0 / steps, steps)
    return (math.exp(mu) / (math.exp(mu) + (1 / s - 1))).double()


def flux2_info(**changes):
    info = {
        "family": "flux2",
        "text": {"max_length": 8, "out_layers": [1]},
        "train_shift": {"mode": "static", "mu": 0.8},
        "sample": {"steps": 40, "guidance": 4.0, "seed": 0, "dynamic_shift": True, "dynamic_shift_len": None},
    }
    return {**info, **changes}


def test_a_checkpoint_samples_at_the_shift_it_was_trained_with():
    """Issue #27: trained at static mu 0.8, sampled by default at mu 0.8 (the same sigmas at 4K and
    8K); the published dynamic shift (an option) puts every 4K sigma >= 0.9996 and every 8K one at 1."""
    from pixverve.train.infer import checkpoint_sample_mu, generate, sample_shift_record

    pipe, info = SchedulePipe(), flux2_info()
    for side in (4096, 8192):  # the sample settings saved with it (no `shift` key, dynamic_shift true) -> trained
        assert checkpoint_sample_mu(info, side, side, 40) == 0.8
        generate(info, pipe, "p", side, side, 40, 4.0, seed=0)
        assert torch.allclose(pipe.sigmas[-1], published_sigmas(side, side, 40, mu=0.8), atol=0)
    assert pipe.sigmas[-1].median() < 0.8 and pipe.sigmas[-1].min() < 0.06  # spread, as in training
    assert pipe.scheduler.config.use_dynamic_shifting  # the pipeline's own scheduler is back after the call
    record = sample_shift_record(info, 4096, 4096, 40)
    assert record == {"sample_shift": "trained", "sample_mu": 0.8, "train_shift": {"mode": "static", "mu": 0.8}}

    published = {"shift": "published", "dynamic_shift": True, "dynamic_shift_len": None}
    generate(info, pipe, "p", 4096, 4096, 40, 4.0, seed=0, shift=published)
    assert torch.allclose(pipe.sigmas[-1], published_sigmas(4096, 4096, 40), atol=0) and pipe.sigmas[-1].min() >= 0.9996
    generate(info, pipe, "p", 8192, 8192, 40, 4.0, seed=0, shift=published)
    assert torch.all(pipe.sigmas[-1] == 1.0)
    disabled = dict(published, dynamic_shift=False)  # --disable_dynamic_shift: mu 0.8
    assert checkpoint_sample_mu(info, 8192, 8192, 40, disabled) == 0.8

    other = flux2_info(train_shift={"mode": "static", "mu": 1.5})  # another trained mu is read, not assumed
    generate(other, pipe, "p", 4096, 4096, 40, 4.0, seed=0)
    assert torch.allclose(pipe.sigmas[-1], published_sigmas(4096, 4096, 40, mu=1.5), atol=0)
    dynamic = flux2_info(train_shift={"mode": "dynamic"})  # trained at the dynamic fit: sampled at it
    assert checkpoint_sample_mu(dynamic, 4096, 4096, 40) is None
    old = {k: v for k, v in info.items() if k != "train_shift"}  # model.json from before train_shift was recorded
    assert checkpoint_sample_mu(old, 4096, 4096, 40) is None
    assert checkpoint_sample_mu(flux2_info(train_shift=None), 4096, 4096, 40) == 0.8  # null: the default, as trained
    with pytest.raises(ValueError, match="sampling shift"):
        checkpoint_sample_mu(info, 64, 64, 4, {"shift": "dynamic"})


def test_the_bench_checkpoint_backend_samples_as_trained(tmp_path, monkeypatch):
    """A benchmark method of ours follows the same rule (no shift key: as trained), records the mu,
    and regenerates its images when the shift changes."""
    from pixverve.bench.generate import generate_method
    from pixverve.train import infer

    ckpt = tmp_path / "final"
    ckpt.mkdir()
    info = dict(flux2_info(), scheme="full_attention", steps=10, smoke=True)
    (ckpt / "model.json").write_text(json.dumps(info))
    (ckpt / "probe.safetensors").write_bytes(b"weights")
    pipe = SchedulePipe()
    monkeypatch.setattr(infer, "load_checkpoint", lambda *a, **k: (info, pipe))
    rows = [{"file_name": "a.png", "long_caption": "a red car"}]
    spec = {
        "backend": "checkpoint",
        "checkpoint_dir": str(ckpt),
        "run": "scheme1_full",
        "train_resolution": 4096,
        "width": 64,
        "height": 64,
        "steps": 4,
        "device": "cpu",
    }
    out = tmp_path / "gen"
    summary = generate_method(rows, spec, out, tmp_path, 100.0, log=lambda m: None)
    assert torch.allclose(pipe.sigmas[-1], published_sigmas(64, 64, 4, mu=0.8), atol=0)
    assert summary["sample_shift"] == "trained" and summary["sample_mu"] == 0.8 and (out / "a.jpg").exists()
    assert json.loads((out / "settings.json").read_text())["sample_mu"] == 0.8

    summary = generate_method(rows, dict(spec, shift="published"), out, tmp_path, 100.0, log=lambda m: None)
    assert summary["generated"] == 1 and len(pipe.sigmas) == 2  # a changed shift regenerates
    assert torch.allclose(pipe.sigmas[-1], published_sigmas(64, 64, 4), atol=0)
    assert summary["sample_mu"] == pytest.approx(tm.flux2_mu(16, 4))


def test_the_sampling_shift_keys_validate(tmp_path):
    import yaml

    from pixverve.workflow import load_config

    overlay = {
        "train": {"defaults": {"sample": {"steps": 4, "guidance": 4.0, "seed": 0, "shift": "published"}}},
        "bench": {
            "fgclip2": {"backend": "none"},
            "methods": {
                "ours": {
                    "resolution": "4K",
                    "generate": {
                        "backend": "checkpoint",
                        "run": "scheme1_full",
                        "train_resolution": 4096,
                        "width": 64,
                        "height": 64,
                        "steps": 2,
                        "shift": "published",
                        "dynamic_shift": False,
                        "dynamic_shift_len": None,
                    },
                }
            },
        },
    }
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    config = load_config(ROOT / "config.yaml", path)
    assert config["bench"]["methods"]["ours"]["generate"]["shift"] == "published"
    assert yaml.safe_load((ROOT / "config.yaml").read_text())["train"]["defaults"]["sample"]["shift"] == "trained"
    overlay["bench"]["methods"]["ours"]["generate"]["shift"] = "dynamic"
    path.write_text(yaml.safe_dump(overlay))
    with pytest.raises(Exception, match=r"'dynamic' is not one of"):
        load_config(ROOT / "config.yaml", path)


# ---------------------------------------------------------------------------------------------
# training on a tiny dataset


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """Four tiled 'SR outputs' (smooth colour fields with texture) and their training rows."""
    folder = tmp_path_factory.mktemp("srdata")
    rng = np.random.default_rng(0)
    rows = []
    for k, (h, w) in enumerate([(300, 300), (320, 280), (280, 300), (300, 310)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (k + 1)) % 256, (yy * 2) % 256, ((xx + yy) * 3) % 256], -1)
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{k:016x}.tif"
        TiledTiffWriter(path, h, w, tile=128).write(bands_of(image, 64))
        rows.append(
            {
                "image_id": f"{k:016x}",
                "width": w,
                "height": h,
                "long_caption": f"picture number {k}",
                "short_caption": f"pic {k}",
                "provenance": {"sr_output": str(path)},
            }
        )
    return rows


def demo_spec(run: str, resolution: int, **changes) -> dict:
    """A run of the demo config (tiny bases, CPU), with test-sized changes."""
    from pixverve.workflow import load_config

    spec = resolve_run(load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml"), run, resolution)
    spec.update({"batch_size": 2, "seed": 0, **changes})
    return spec


def test_adapters_set_up_the_published_pieces_from_the_run_spec(tmp_path, monkeypatch):
    """What each adapter takes from its run: FLUX.2 -- the text encoder's output layers, frozen
    encoders, tiled VAE (tile / stride), window processors only for scheme II; L2P -- the patch
    (resolution / token grid), main layers 5-24 of 30 frozen, shift 3 and a 1000-step timestep
    grid, the published values also when the keys are left out."""
    from pixverve.train.loop import Flux2Adapter, L2PAdapter

    spec = demo_spec("scheme2_window", 128, vae_tile=64, vae_tile_stride=48)
    flux2 = Flux2Adapter(spec, tmp_path, "cpu", torch.float32)
    assert flux2.text_layers == tuple(spec["text"]["out_layers"]) and flux2.model is flux2.pipe.transformer
    assert not any(p.requires_grad for p in flux2.pipe.text_encoder.parameters())
    assert not any(p.requires_grad for p in flux2.pipe.vae.parameters())
    vae = flux2.pipe.vae
    assert vae.use_tiling and vae.tile_sample_min_size == 64 and vae.tile_overlap_factor == 0.25
    assert {type(b.attn.processor).__name__ for b in flux2.model.transformer_blocks} == {"WindowAttnProcessor"}
    blocks = list(flux2.model.transformer_blocks) + list(flux2.model.single_transformer_blocks)
    pattern = tm.parse_pattern(tm.window_settings(spec["window"], 128)["pattern"])
    assert [b.attn.processor.factors for b in blocks] == tm.block_factors(len(blocks), pattern)
    chunked = Flux2Adapter(
        dict(spec, memory={"seq_chunk_single": 6, "seq_chunk_double": 4}), tmp_path, "cpu", torch.float32
    )
    assert [b.attn.processor.seq_chunk for b in chunked.model.transformer_blocks] == [4]
    assert {b.attn.processor.seq_chunk for b in chunked.model.single_transformer_blocks} == {6}
    scheme1_chunked = Flux2Adapter(
        demo_spec("scheme1_full", 128, memory={"seq_chunk_single": 6}), tmp_path, "cpu", torch.float32
    )
    assert {b.attn.processor.factors for b in scheme1_chunked.model.single_transformer_blocks} == {(tm.GLOBAL,)}
    full = Flux2Adapter(demo_spec("scheme1_full", 128), tmp_path, "cpu", torch.float32)
    assert "Window" not in type(full.model.transformer_blocks[0].attn.processor).__name__
    l2p_spec = demo_spec("scheme3_l2p", 64)
    l2p_spec["l2p"] = dict(l2p_spec["l2p"], token_grid=4, shift=2.5, timestep_grid=500, train_edge_layers=1)
    l2p_spec["l2p"]["unet"] = {"widths": [4, 8, 16, 32], "checkpoint_stages": False}
    l2p = L2PAdapter(l2p_spec, tmp_path, "cpu", torch.float32)
    assert [c[0].out_channels for c in l2p.model.unet.enc] == [4, 8, 16, 32] and not l2p.model.unet.checkpoint_stages
    # progressive: the next resolution starts from the weights the previous one saved (by name and shape)
    from safetensors.torch import save_file

    saved = {k: torch.full_like(v, 0.125) for k, v in l2p.model.state_dict().items()}
    save_file(saved, str(tmp_path / "l2p_trained.safetensors"))
    logged = []
    again = L2PAdapter(l2p_spec, tmp_path, "cpu", torch.float32, init_from=tmp_path, log=logged.append)
    assert all(torch.equal(v, saved[k]) for k, v in again.model.state_dict().items())
    assert logged and f"{len(saved)} tensors carried, 0 new" in logged[0]
    n = len(l2p.model.transformer.layers)
    assert (l2p.patch, l2p.shift, l2p.grid_steps, l2p.frozen) == (16, 2.5, 500, tm.l2p_frozen_layers(n, 1))
    assert l2p.text_pipe.transformer is None and l2p.text_pipe.vae is None  # only its text encoder is kept
    assert not any(p.requires_grad for p in l2p.text_pipe.text_encoder.parameters())
    l2p_spec["l2p"] = {"token_grid": 4}  # the published values by default
    edges = []
    frozen_layers = tm.l2p_frozen_layers
    monkeypatch.setattr(tm, "l2p_frozen_layers", lambda n, edge: edges.append((n, edge)) or frozen_layers(n, edge))
    l2p = L2PAdapter(l2p_spec, tmp_path, "cpu", torch.float32)
    assert (l2p.shift, l2p.grid_steps, edges) == (3.0, 1000, [(n, 5)])  # the tiny model has 3 layers: none frozen


def read_log(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


SCHEMES = [
    ("scheme1_full", 128, {}),
    ("scheme1_lora", 128, {"lr": 3e-2}),
    ("scheme2_window", 128, {}),
    ("scheme3_l2p", 64, {}),
]


@pytest.mark.parametrize("run,res,changes", SCHEMES, ids=[s[0] for s in SCHEMES])
def test_each_scheme_overfits_one_batch_and_reloads(run, res, changes, demo_data, tmp_path):
    from pixverve.train.config import bucket_multiple
    from pixverve.train.infer import generate, load_checkpoint
    from pixverve.train.loop import train_run

    spec = demo_spec(
        run, res, max_steps=30, overfit_batches=1, log_every=10, eval_every=10, checkpoint_every=30, **changes
    )
    # the mechanics on aspect buckets and random crops, as before the demo's L2P run took the
    # published square / budget sizes (those: tests/test_train_data.py; the demo trains on them)
    spec["sizes"], spec["data"]["crop_mode"] = "buckets", "crop"
    samples = samples_from_records(demo_data, res, "long", bucket_multiple(spec))
    summary = train_run(spec, samples, tmp_path, log=lambda m: None)
    assert summary["steps"] == 30 and summary["smoke"] is True
    log = read_log(tmp_path / "train_log.csv")
    evals = [float(r["eval_loss"]) for r in log]
    assert len(evals) == 3 and evals[-1] < 0.9 * evals[0], evals  # it learns the batch
    final = tmp_path / "final"
    info = json.loads((final / "model.json").read_text())
    assert info["scheme"] == spec["scheme"] and info["smoke"] is True and info["steps"] == 30
    if run == "scheme1_lora":  # only the adapter is saved, and it is small
        assert (final / "transformer_lora.safetensors").exists() and not (final / "transformer.safetensors").exists()
    leftovers = set(Path(tempfile.gettempdir()).glob("pixverve-base-*"))
    info, loaded = load_checkpoint(final)  # recomputes the probe: raises if the model differs
    assert set(Path(tempfile.gettempdir()).glob("pixverve-base-*")) == leftovers  # its temp folder is gone
    a = generate(info, loaded, "a red car", res, res, 3, 4.0, seed=5)
    b = generate(info, load_checkpoint(final)[1], "a red car", res, res, 3, 4.0, seed=5)
    assert a.shape == (res, res, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    if run == "scheme3_l2p":  # published: main layers train_edge .. n - train_edge frozen, only the rest saved
        from safetensors.torch import load_file

        saved = load_file(final / "l2p_trained.safetensors")  # in the published ZImageDiT names (the default)
        assert info["l2p"]["frozen_layers"] == [1] and info["l2p"]["checkpoint_format"] == "published"
        assert not any(k.startswith("layers.1.") for k in saved) and "layers.0.attention.to_q.weight" in saved
        assert "local_decoder.enc0.0.weight" in saved and not any(
            k.startswith(("transformer.", "unet.")) for k in saved
        )
        base = tm.load_pipeline("zimage", {"backend": "tiny"}, torch.float32, tmp_path / "checkpoints").transformer
        trained = loaded["model"].transformer
        assert torch.equal(trained.layers[1].attention.to_q.weight, base.layers[1].attention.to_q.weight)  # frozen
        assert not torch.equal(trained.layers[0].attention.to_q.weight, base.layers[0].attention.to_q.weight)
    stats = json.loads((tmp_path / "sigma_stats.json").read_text())  # what the run trained on
    assert stats["count"] == 30 * 2 and 0.0 < stats["q05"] < stats["q50"] < stats["q95"] < 1.0
    assert all(r["sigma_q50"] for r in log)
    if (
        info["family"] == "flux2"
    ):  # sampled where it was trained (mu 0.8): the published dynamic shift is another schedule
        assert info["train_shift"] == {"mode": "static", "mu": 0.8}
        c = generate(info, loaded, "a red car", res, res, 3, 4.0, seed=5, shift={"shift": "published"})
        assert c.shape == a.shape and not np.array_equal(a, c)
        d = generate(
            info,
            loaded,
            "a red car",
            res,
            res,
            3,
            4.0,
            seed=5,  # --disable_dynamic_shift: mu 0.8 as well
            shift={"shift": "published", "dynamic_shift": False},
        )
        assert np.array_equal(a, d)


def test_a_reload_that_misses_the_training_is_refused(demo_data, tmp_path):
    """The probe catches a checkpoint whose weights were swapped (here: another run's)."""
    from safetensors.torch import load_file, save_file

    from pixverve.train.infer import load_checkpoint
    from pixverve.train.loop import train_run

    spec = demo_spec("scheme1_full", 128, max_steps=4, log_every=2, eval_every=0, checkpoint_every=4)
    samples = samples_from_records(demo_data, 128, "long", 16)
    train_run(spec, samples, tmp_path / "a", log=lambda m: None)
    weights = load_file(tmp_path / "a" / "final" / "transformer.safetensors")
    save_file(
        {k: v + 0.05 * torch.randn_like(v) for k, v in weights.items()},
        tmp_path / "a" / "final" / "transformer.safetensors",
    )
    with pytest.raises(tm.ModelUnavailable, match="probe"):
        load_checkpoint(tmp_path / "a" / "final")


def test_l2p_trains_with_bf16_master_weights_as_published(demo_data, tmp_path):
    """master_weights bf16 (published L2P: the model itself in bf16): the trained subset is saved in
    bf16, it moved, the frozen layers did not, and the checkpoint reloads (probe at bf16 tolerance)
    in bf16 and in fp32."""
    from safetensors.torch import load_file

    from pixverve.train.config import bucket_multiple
    from pixverve.train.infer import generate, load_checkpoint
    from pixverve.train.loop import train_run

    spec = demo_spec(
        "scheme3_l2p", 64, max_steps=3, log_every=1, eval_every=0, checkpoint_every=3, master_weights="bf16", lr=5e-2
    )
    spec["sizes"], spec["data"]["crop_mode"] = "buckets", "crop"
    train_run(spec, samples_from_records(demo_data, 64, "long", bucket_multiple(spec)), tmp_path, log=lambda m: None)
    saved = load_file(tmp_path / "final" / "l2p_trained.safetensors")
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}
    info, loaded = load_checkpoint(tmp_path / "final", dtype=torch.bfloat16)
    assert info["master_weights"] == "bf16" and next(loaded["model"].parameters()).dtype == torch.bfloat16
    base = tm.load_pipeline("zimage", {"backend": "tiny"}, torch.float32, tmp_path / "checkpoints").transformer
    trained = loaded["model"].transformer
    assert torch.equal(
        trained.layers[1].attention.to_q.weight.float(), base.layers[1].attention.to_q.weight.to(torch.bfloat16).float()
    )  # frozen: the bf16 base
    assert not torch.equal(
        trained.layers[0].attention.to_q.weight.float(), base.layers[0].attention.to_q.weight.to(torch.bfloat16).float()
    )
    assert generate(info, loaded, "a red car", 64, 64, 2, 4.0, seed=1).shape == (64, 64, 3)
    load_checkpoint(tmp_path / "final")  # fp32 reload of bf16 weights: the probe still matches


def test_l2p_checkpoints_in_either_names_export_to_the_released_format(demo_data, tmp_path):
    """checkpoint_format published (default) / ours: the trained subset in the authors' ZImageDiT
    names or ours, both reload; the next resolution starts from either (progressive); the export
    is one file of the whole model in the released PixVerve-L2P format, which the released-weights
    loader rebuilds into the same model."""
    from safetensors.torch import load_file

    from pixverve.train.config import bucket_multiple
    from pixverve.train.infer import export_l2p_published, load_checkpoint, load_released
    from pixverve.train.loop import train_run

    finals = {}
    for res, names, previous in [(64, "published", None), (128, "ours", 64)]:
        spec = demo_spec("scheme3_l2p", res, max_steps=2, log_every=1, eval_every=0, checkpoint_every=2)
        spec["l2p"]["checkpoint_format"] = names
        spec["sizes"], spec["data"]["crop_mode"] = "buckets", "crop"
        lines = []
        samples = samples_from_records(demo_data, res, "long", bucket_multiple(spec))
        train_run(spec, samples, tmp_path / str(res), init_from=finals.get(previous), log=lines.append)
        finals[res] = tmp_path / str(res) / "final"
        saved = load_file(finals[res] / "l2p_trained.safetensors")
        ours = all(k.startswith(("transformer.", "unet.")) for k in saved)
        assert ours == (names == "ours") and (names == "ours" or "local_decoder.enc0.0.weight" in saved)
        load_checkpoint(finals[res])  # reloads (the probe matches)
        if previous:  # the 4k-variant net's weights carried into the 8k-variant net, by name and shape
            carried = [m for m in lines if "tensors carried" in m]
            assert carried and int(carried[0].split(": ")[1].split()[0]) > 0
    out = export_l2p_published(finals[64], tmp_path / "export" / "l2p_sft.safetensors")
    whole = load_file(out)
    assert "layers.1.attention.to_q.weight" in whole  # the frozen layer too (published merge_weights.py)
    assert not any(k.startswith(("transformer.", "unet.")) for k in whole)
    info, loaded = load_checkpoint(finals[64])
    rinfo, released = load_released({"kind": "l2p", "path": str(out), "text": {"max_length": 32}}, {"backend": "tiny"})
    assert rinfo["l2p"]["patch"] == info["l2p"]["patch"]
    assert torch.equal(
        tm.probe_output("zimage", released["model"], info["probe_patch"]),
        tm.probe_output("zimage", loaded["model"], info["probe_patch"]),
    )


def test_sequential_loading_puts_each_flux2_model_on_the_device_in_turn(demo_data, tmp_path):
    """sample.sequential_loading (published flux2_infer: text encoder, DiT, VAE one after another):
    diffusers' model offload moves each to the device when it runs, in that order; the same image."""
    from pixverve.train.infer import generate, load_checkpoint
    from pixverve.train.loop import train_run

    spec = demo_spec("scheme1_full", 128, max_steps=2, log_every=1, eval_every=0, checkpoint_every=2)
    train_run(spec, samples_from_records(demo_data, 128, "long", 16), tmp_path, log=lambda m: None)
    info, together = load_checkpoint(tmp_path / "final")
    expected = generate(info, together, "a red car", 64, 64, 2, 4.0, seed=3)
    info, pipe = load_checkpoint(tmp_path / "final", sequential=True)
    used = []
    for name, method in (("text_encoder", "forward"), ("transformer", "forward"), ("vae", "decode")):
        module = getattr(pipe, name)
        assert hasattr(module, "_hf_hook")  # diffusers' model offload: moved to the device when it runs
        call = getattr(module, method)
        setattr(module, method, lambda *a, _call=call, _name=name, **k: (used.append(_name), _call(*a, **k))[1])
    got = generate(info, pipe, "a red car", 64, 64, 2, 4.0, seed=3)
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # the same image up to float rounding
    first = [used.index(name) for name in ("text_encoder", "transformer", "vae")]
    assert first == sorted(first), used  # each runs (and is loaded) in turn, in the published order
    assert all(hasattr(getattr(pipe, n), "_hf_hook") for n in ("text_encoder", "transformer", "vae"))  # offloaded again


def test_resume_continues_at_the_right_step_with_the_same_result(demo_data, tmp_path):
    from safetensors.torch import load_file

    from pixverve.train.loop import newest_checkpoint, train_run

    samples = samples_from_records(demo_data, 128, "long", 16)
    common = dict(log_every=2, eval_every=0, checkpoint_every=4, keep_checkpoints=5)
    straight = train_run(
        demo_spec("scheme2_window", 128, max_steps=8, **common), samples, tmp_path / "straight", log=lambda m: None
    )
    assert straight["resumed_from"] == 0
    # "killed" after step 4: its checkpoint is the newest; a half-written one (no marker) is ignored
    first = train_run(
        demo_spec("scheme2_window", 128, max_steps=4, **common), samples, tmp_path / "resumed", log=lambda m: None
    )
    assert first["resumed_from"] == 0
    (tmp_path / "resumed" / "checkpoints" / "step-000006").mkdir()  # no `done`: a job killed mid-save
    assert newest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step-000004"
    messages = []
    again = train_run(
        demo_spec("scheme2_window", 128, max_steps=8, **common), samples, tmp_path / "resumed", log=messages.append
    )
    assert again["resumed_from"] == 4 and any("resumed from step-000004" in m for m in messages)
    log = read_log(tmp_path / "resumed" / "train_log.csv")
    assert [int(r["step"]) for r in log] == [2, 4, 6, 8]  # no step twice, none missing
    assert [r["loss"] for r in log] == [r["loss"] for r in read_log(tmp_path / "straight" / "train_log.csv")]
    a = load_file(tmp_path / "straight" / "final" / "transformer.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "transformer.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=0) for k in a)


def test_two_processes_step_together(demo_data, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks step on different batches, gradients and
    parameters agree after every logged step, and one final checkpoint is written."""
    import pandas as pd

    meta = pd.DataFrame(
        [
            {
                "image_id": r["image_id"],
                "file_name": r["image_id"] + ".tif",
                "split": "train",
                "width": r["width"],
                "height": r["height"],
                "long_caption": r["long_caption"],
                "short_caption": r["short_caption"],
                "prov_sr_output": r["provenance"]["sr_output"],
            }
            for r in demo_data
        ]
    )
    meta.to_parquet(tmp_path / "metadata.parquet")
    spec = demo_spec("scheme1_full", 128, max_steps=6, log_every=2, eval_every=0, checkpoint_every=3, batch_size=1)
    spec["data"]["metadata"] = str(tmp_path / "metadata.parquet")
    spec["resources"]["cpu_processes"] = 2
    spec["distributed"]["port"] = 29613
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "run"
    cmd = launch_command(spec, ["--spec", str(tmp_path / "spec.json"), "--out", str(out)])
    assert "torch.distributed.run" in cmd and "2" in cmd
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = read_log(out / "train_log.csv")
    assert [int(r["step"]) for r in log] == [2, 4, 6]
    for r in log:
        assert int(r["ranks_stepped"]) == 2
        assert float(r["grad_norm_spread"]) < 1e-6 and float(r["param_spread"]) < 1e-6
    assert any(float(r["rank_loss_spread"]) > 0 for r in log)  # the ranks saw different images
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000003", "step-000006"]
    assert sorted(p.name for p in (out / "final").iterdir()) == [
        "model.json",
        "probe.safetensors",
        "transformer.safetensors",
    ]
    assert done.stderr.count('"world_size": 2') == 2  # both ranks report the world size


def test_launch_commands_for_a_cluster():
    spec = demo_spec("scheme3_l2p", 64, device="cuda")
    spec["resources"].update(nodes=2, gpus_per_node=8)
    spec["distributed"] = {"strategy": "deepspeed", "zero_stage": 2, "port": 29500}
    cmd = launch_command(spec, ["--spec", "s.json", "--out", "o"])
    # one task per node, stated explicitly: the step must not inherit a 1-task geometry
    assert cmd[:5] == ["srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]
    script = cmd[-1]
    assert "--num_processes 16" in script and "--num_machines 2" in script and "--use_deepspeed" in script
    assert "--machine_rank $SLURM_NODEID" in script and "scontrol show hostnames" in script
    spec["resources"].update(nodes=1)
    spec["distributed"]["strategy"] = "ddp"
    cmd = launch_command(spec, [])
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "8" and "srun" not in cmd


def test_paper_config_train_rules_dry_run(tmp_path):
    """The paper's runs (all enabled) plan with their SLURM resources and the progressive chain."""
    (tmp_path / "results" / "dataset").mkdir(parents=True)
    (tmp_path / "results" / "dataset" / "metadata.parquet").write_bytes(b"")
    (tmp_path / "overlay.yaml").write_text(
        "train:\n  enabled: [scheme1_full, scheme1_lora, scheme2_window, scheme3_l2p]\n"
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(ROOT / "config.yaml"),
            str(tmp_path / "overlay.yaml"),
            "--allowed-rules",
            "train",
            "train_sample",
            "train_all",
            "--",
            "train_all",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    text = res.stdout
    assert "train               9" in text.replace("\t", " ") or text.count("rule train:") == 9
    assert (
        "gres=gpu:8" in text
        and "nodes=1" in text
        and "runtime=2880" in text
        and "tasks=1" in text
        and "tasks_per_gpu=0" in text
    )
    assert "input: results/dataset/metadata.parquet, results/train/scheme3_l2p/8192/final" in text  # 10K from 8K


def test_bad_train_config_is_an_error(tmp_path):
    import yaml

    from pixverve.train.config import check_train_config

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["train"]["enabled"] = ["scheme9"]
    with pytest.raises(ValueError, match="train.enabled"):
        check_train_config(config)
    config["train"]["enabled"] = []
    config["train"]["runs"]["scheme3_l2p"]["resolutions"] = [4096, 5000]
    with pytest.raises(ValueError, match="token_grid"):
        check_train_config(config)
    config["train"]["runs"]["scheme3_l2p"]["resolutions"] = [4096]
    config["train"]["runs"]["scheme3_l2p"]["lora"] = {"rank": 4, "alpha": 4, "target_modules": ["to_q"]}
    with pytest.raises(ValueError, match="LoRA"):
        check_train_config(config)
    config["train"]["runs"]["scheme3_l2p"]["lora"] = None
    config["train"]["runs"]["scheme1_full"]["vae_tile_stride"] = 1024
    with pytest.raises(ValueError, match="vae_tile_stride"):
        check_train_config(config)
    del config["train"]["runs"]["scheme1_full"]["vae_tile_stride"]
    config["bench"]["methods"] = {
        "ours": {
            "generate": {
                "backend": "checkpoint",
                "run": "scheme1_full",
                "train_resolution": 1024,
                "width": 64,
                "height": 64,
                "steps": 2,
            }
        }
    }
    with pytest.raises(ValueError, match="train_resolution"):
        check_train_config(config)


def test_lora_file_fuses_as_the_published_loader_reads_it(demo_data, tmp_path):
    """The LoRA we save, read the way flux2_infer's GeneralLoRALoader reads it (target = key without
    lora_B/.weight; A scaled by alpha / rank when '<module>.alpha' is present; W += B @ A), gives the
    same transformer output as our peft-loaded model -- here with alpha != rank."""
    import copy

    from safetensors.torch import load_file

    from pixverve.train.infer import load_checkpoint
    from pixverve.train.loop import train_run

    spec = demo_spec(
        "scheme1_lora",
        128,
        max_steps=2,
        log_every=2,
        eval_every=0,
        checkpoint_every=2,
        lr=3e-2,
        lora={"rank": 4, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "to_qkv_mlp_proj"]},
    )
    train_run(spec, samples_from_records(demo_data, 128, "long", 16), tmp_path, log=lambda m: None)
    info, pipe = load_checkpoint(tmp_path / "final")
    want = _flux2_forward(pipe)
    base = tm.load_pipeline("flux2", {"backend": "tiny"}, torch.float32, tmp_path / "checkpoints")
    fused = copy.deepcopy(base)
    lora = load_file(tmp_path / "final" / "transformer_lora.safetensors")
    modules = dict(fused.transformer.named_modules())
    n = 0
    for key, up in lora.items():
        if ".lora_B." not in key:
            continue
        name = key[: key.index(".lora_B.")]
        down = lora[name + ".lora_A.weight"] * (lora[name + ".alpha"] / lora[name + ".lora_A.weight"].shape[0])
        modules[name].weight.data += up @ down
        n += 1
    assert n > 0 and float(lora[name + ".alpha"]) == 8.0
    assert torch.allclose(_flux2_forward(fused), want, atol=1e-5)
    assert not torch.allclose(_flux2_forward(base), want, atol=1e-5)  # the adapter moved the model


def test_sequence_chunking_boundaries_and_recomputation(tiny_flux2, monkeypatch):
    """Published --flux2_*_seq_chunk_size: a chunk size >= the sequence (or 0) runs each layer whole;
    size 1 runs every token alone.  A chunk is recomputed in the backward pass (non-reentrant
    checkpoint) only while something trains: never under no_grad or with every weight frozen.
    The results are the same either way (test above), so only the calls show it."""
    import copy

    import torch.utils.checkpoint

    ckpt, rows = torch.utils.checkpoint.checkpoint, tm._linear_rows
    recomputed, fused = [], []
    monkeypatch.setattr(
        torch.utils.checkpoint, "checkpoint", lambda fn, *a, **kw: recomputed.append(kw) or ckpt(fn, *a, **kw)
    )
    monkeypatch.setattr(tm, "_linear_rows", lambda *a: fused.append(a[2:]) or rows(*a))
    n_single, n_double = (
        len(tiny_flux2.transformer.single_transformer_blocks),
        len(tiny_flux2.transformer.transformer_blocks),
    )

    def run(single, double, mode="train"):
        pipe = copy.deepcopy(tiny_flux2)  # full attention (no window settings): only the chunking recomputes
        tm.install_window_attention(pipe.transformer, None, {"seq_chunk_single": single, "seq_chunk_double": double})
        if mode == "frozen":
            pipe.transformer.requires_grad_(False)
        recomputed.clear(), fused.clear()
        if mode == "eval":
            _flux2_forward(pipe)
        else:
            pipe.transformer.requires_grad_(mode != "frozen")
            out = _flux2_call(pipe, (4, 6), seed=3)  # 5 text + 24 image tokens
            if out.requires_grad:
                out.sum().backward()
        return len(fused), len(recomputed)

    assert run(29, 24) == (0, 0)  # the whole sequence in one chunk: the layers run whole
    # every token alone: per single-stream block 29 chunks in each of its two passes, per double-stream
    # block 24 image tokens through the QKV, the output projection and the FFN; forward + recompute
    assert run(1, 1) == (n_single * 29 * 2 * 2, n_single * 29 * 2 + n_double * 24 * 3)
    assert recomputed == [{"use_reentrant": False}] * (n_single * 29 * 2 + n_double * 24 * 3)
    assert run(1, 1, "frozen") == (n_single * 29 * 2, 0)
    assert run(1, 1, "eval") == (n_single * 29 * 2, 0)
    assert run(28, 0)[0] == n_single * 2 * 2 * 2  # 28 + 1 tokens
    assert run(29, 20) == (0, n_double * 2 * 3)  # 20 + 4 image tokens (a size between the width 16 and 24)
    # the published defaults of a processor, and the window fallback's processor (no factors)
    proc = tm.WindowAttnProcessor(tm.WindowContext(), None)
    assert (proc.factors, proc.max_windows, proc.checkpoint, proc.seq_chunk) == (None, 4, True, 0)
    assert tm.needs_own_processors("window", None) and not tm.needs_own_processors("full_attention", None)
    # a linear layer with a bias (a LoRA base may have one): its rows with their bias
    layer = torch.nn.Linear(6, 9)
    h = torch.randn(2, 3, 6)
    assert torch.allclose(rows(layer, h, 2, 7), layer(h)[..., 2:7])
    chunked = tm.WindowAttnProcessor(tm.WindowContext(), (2, 3), seq_chunk=2)
    ff = torch.nn.Linear(4, 4)  # the FFN's chunks are recomputed by default
    tm.chunk_feed_forward(ff, 2)
    recomputed.clear()
    ff(torch.randn(1, 5, 4)).sum().backward()
    assert len(recomputed) == 3
    with pytest.raises(ValueError, match=r"^sequence chunking needs unfused projections \(to_q / to_k / to_v\)$"):
        chunked._image_qkv(type("FusedAttention", (), {"fused_projections": True})(), torch.zeros(1, 5, 4))


def test_window_settings_reach_every_processor_with_the_published_defaults(tiny_flux2, monkeypatch):
    """install_window_attention: published defaults (fallback window 24 x 24, 4 index sets per
    call, recomputed chunks), the config keys that change them (the FFN chunks too), full attention
    in every block without window settings, batched (3-D) position ids, negative chunk sizes refused."""
    import copy

    import torch.utils.checkpoint

    def processors(pipe):
        blocks = list(pipe.transformer.transformer_blocks) + list(pipe.transformer.single_transformer_blocks)
        return [b.attn.processor for b in blocks]

    pipe = copy.deepcopy(tiny_flux2)
    context = tm.install_window_attention(pipe.transformer, {"pattern": "2x3"})
    assert context.window == (24, 24)
    assert {(p.max_windows, p.checkpoint, p.seq_chunk) for p in processors(pipe)} == {(4, True, 0)}
    pipe = copy.deepcopy(tiny_flux2)
    settings = {"pattern": "2x3", "max_windows_per_batch": 3, "checkpoint_chunks": False, "window_size": [2, 5]}
    context = tm.install_window_attention(pipe.transformer, settings, {"seq_chunk_single": 1})
    assert context.window == (2, 5)
    assert {(p.max_windows, p.checkpoint) for p in processors(pipe)} == {(3, False)}
    ckpt, recomputed = torch.utils.checkpoint.checkpoint, []
    monkeypatch.setattr(
        torch.utils.checkpoint, "checkpoint", lambda fn, *a, **kw: recomputed.append(1) or ckpt(fn, *a, **kw)
    )
    _flux2_call(pipe, (4, 6), seed=3).sum().backward()  # chunked (double size = single) but nothing recomputed
    assert recomputed == []
    # no window settings: every block keeps full attention (sequence chunking alone)
    pipe = copy.deepcopy(tiny_flux2)
    tm.install_window_attention(pipe.transformer, None, {"seq_chunk_single": 4})
    assert {p.factors for p in processors(pipe)} == {(tm.GLOBAL,)}
    # batched position ids (batch, tokens, 4), as diffusers accepts them
    pipe = copy.deepcopy(tiny_flux2)
    context = tm.install_window_attention(pipe.transformer, {"pattern": "2x3"})
    g = torch.Generator().manual_seed(0)
    cfg = pipe.transformer.config
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(3), torch.arange(5), torch.arange(1))
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(4))
    with torch.no_grad():
        pipe.transformer(
            hidden_states=torch.randn(1, 15, cfg.in_channels, generator=g),
            encoder_hidden_states=torch.randn(1, 4, cfg.joint_attention_dim, generator=g),
            timestep=torch.tensor([0.4]),
            img_ids=img_ids[None],
            txt_ids=txt_ids[None],
            guidance=None,
            return_dict=False,
        )
    assert (context.grid, context.num_txt) == ((3, 5), 4)
    for memory in ({"seq_chunk_single": -1}, {"seq_chunk_single": 4, "seq_chunk_double": -1}):
        with pytest.raises(ValueError, match="sequence chunk sizes must be >= 0"):
            tm.seq_chunk_sizes(memory)


def test_trainable_model_full_or_a_gaussian_lora_of_the_configured_rank(tiny_flux2):
    """Full fine-tuning trains every parameter; the LoRA variant freezes the base and adds peft
    adapters of rank r with scale alpha / r (12 / 4), A drawn from N(0, 1/r) ("gaussian") and B zero, so
    the adapted model starts equal to the base."""
    import copy

    from pixverve.train.loop import trainable_model

    model = copy.deepcopy(tiny_flux2.transformer)
    model.requires_grad_(False)
    assert trainable_model(model, {}) is model and all(p.requires_grad for p in model.parameters())
    model = copy.deepcopy(tiny_flux2.transformer)
    before = _flux2_forward(tiny_flux2)
    lora = {"rank": 4, "alpha": 12, "target_modules": ["to_q", "to_k", "single_transformer_blocks.*.attn.to_out"]}
    trainable_model(model, {"lora": lora})
    adapted = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A")}
    # single-stream blocks have no to_q / to_k (one fused projection): only their output projection
    assert sorted(adapted) == [
        "single_transformer_blocks.0.attn.to_out",
        "single_transformer_blocks.1.attn.to_out",
        "transformer_blocks.0.attn.to_k",
        "transformer_blocks.0.attn.to_q",
    ]
    for name, module in adapted.items():
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        assert a.shape[0] == 4 and b.shape[1] == 4 and module.scaling["default"] == 3.0, name
        assert torch.count_nonzero(b) == 0 and a.std().item() == pytest.approx(0.25, rel=0.5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * len(adapted)
    pipe = copy.copy(tiny_flux2)
    pipe.transformer = model
    assert torch.allclose(_flux2_forward(pipe), before, atol=0)  # B = 0: the base model's output


def test_sequence_chunking_keeps_a_lora_on_the_fused_projection(tiny_flux2):
    """A peft LoRA wraps to_qkv_mlp_proj: the chunked path calls it whole per chunk, so the adapter
    still applies (weight rows of the base layer alone would drop it)."""
    import copy
    import zlib

    from peft import LoraConfig

    models = []
    for memory in (None, {"seq_chunk_single": 7}):
        pipe = copy.deepcopy(tiny_flux2)
        torch.manual_seed(0)
        pipe.transformer.add_adapter(
            LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_qkv_mlp_proj"])
        )
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
        if memory:
            tm.install_window_attention(pipe.transformer, None, memory)
        models.append(_flux2_forward(pipe))
    plain_base = _flux2_forward(tiny_flux2)
    assert torch.allclose(models[0], models[1], atol=1e-5) and not torch.allclose(models[0], plain_base, atol=1e-3)


def test_the_rendezvous_port_is_free_per_job_and_the_launcher_gets_the_node_cpus():
    """#28: a fixed 29500 collides when two training jobs share a node; `auto` picks a free port
    on the first node (where the command is built); the multi-node launcher step asks for the
    node's CPUs (the job step would otherwise give it one)."""
    import socket

    from pixverve.train.config import rendezvous_port

    assert rendezvous_port({"port": 29613}) == 29613
    ports = {rendezvous_port({"port": "auto"}) for _ in range(5)}
    assert all(1024 <= p <= 65535 for p in ports)
    for port in ports:  # free now: it can be bound
        with socket.socket() as sock:
            sock.bind(("", port))
    spec = demo_spec("scheme3_l2p", 64, device="cuda")
    spec["resources"].update(nodes=2, gpus_per_node=4, cpus_per_gpu=8)
    spec["distributed"] = {"strategy": "ddp", "port": "auto"}
    cmd = launch_command(spec, [])
    assert "--cpus-per-task=32" in cmd[:7]
    port = int(cmd[-1].split("--main_process_port ")[1].split()[0])
    with socket.socket() as sock:  # the command's port is one nobody listens on
        sock.bind(("", port))


def test_training_finds_a_dataset_curated_in_another_folder(tmp_path, monkeypatch):
    """The metadata's image paths are relative to the folder the curation ran in: training from
    elsewhere resolves them there (or at train.data.root), and stops before loading a model when
    a file is missing, naming the key."""
    import pandas as pd
    from PIL import Image

    from pixverve.train.data import dataset_folder
    from pixverve.train.worker import samples_for

    curation = tmp_path / "curate"
    image = curation / "results/upscale/images/s00000/abc.tif"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(image)
    metadata = curation / "results/dataset/metadata.parquet"
    metadata.parent.mkdir(parents=True)
    row = {"image_id": "abc", "width": 64, "height": 48, "long_caption": "a grey field", "short_caption": "grey"}
    pd.DataFrame([{**row, "split": "train", "prov_sr_output": "results/upscale/images/s00000/abc.tif"}]).to_parquet(
        metadata
    )
    assert dataset_folder(metadata) == curation and dataset_folder("results/dataset/m.parquet") == Path(".")
    assert dataset_folder(tmp_path / "m.parquet") == tmp_path and dataset_folder(metadata, "/data") == Path("/data")
    monkeypatch.chdir(tmp_path)  # the training runs elsewhere
    data = {"metadata": str(metadata), "caption": "long", "bucket_max_ratio": 4.0, "root": None}
    spec = {"resolution": 32, "data": data, "sizes": "buckets", "scheme": "full"}  # FLUX.2: 16 px buckets
    (sample,) = samples_for(spec)
    assert sample.path == image and sample.caption == "a grey field"
    with pytest.raises(FileNotFoundError, match=r"1 of 1 training images not found.*set train.data.root"):
        samples_for({**spec, "data": {**data, "root": str(tmp_path / "elsewhere")}})


def test_a_flux2_checkpoint_samples_with_flux2_infers_noise_sigmas_and_pixels():
    """flux2_infer: noise drawn on the run's device in the model's dtype, (1, 128, H/16, W/16); its
    float32 sigmas (exactly); the VAE's output to uint8 as (x + 1) * 255 / 2, clipped, truncated."""
    import math

    from pixverve.train.infer import flux2_published_image, generate

    pipe = SchedulePipe()
    image = generate(flux2_info(), pipe, "p", 64, 32, 4, 4.0, seed=7, device="cpu")
    call = pipe.calls[-1]
    noise = torch.randn((1, 128, 2, 4), generator=torch.Generator().manual_seed(7), dtype=torch.bfloat16)
    assert call["latents"].dtype == torch.bfloat16 and torch.equal(call["latents"], noise)
    s = torch.linspace(1.0, 0.25, 4)
    assert call["sigmas"] == (math.exp(0.8) / (math.exp(0.8) + (1 / s - 1))).tolist()  # mu 0.8, as trained
    assert call["output_type"] == "latent" and image.shape == (32, 64, 3) and image.dtype == np.uint8
    assert pipe.freed == 1  # the VAE offloaded again after the decode
    pipe.vae.decode = lambda latents, return_dict: (latents,)
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, -3.0], dtype=torch.bfloat16).reshape(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert flux2_published_image(pipe, x)[0, :, 0].tolist() == [0, 127, 191, 255, 255, 0]  # 127.5 -> 127


def test_flux2_steps_are_flux2_infers_arithmetic():
    """flux2_infer's step: sample + v * (sigma_next - sigma) with bf16 tensors and a float32 CPU
    scalar (two bf16 roundings), in schedule order; diffusers' own step rounds once from float32."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pixverve.train.infer import flux2_infer_scheduler, flux2_published_sigmas

    base = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    ours = flux2_infer_scheduler(base.config)
    stock = FlowMatchEulerDiscreteScheduler.from_config(base.config, use_dynamic_shifting=False, shift=1.0)
    sigmas = flux2_published_sigmas(8, 0.8).tolist()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 64, 16, generator=gen).to(torch.bfloat16)
    vs = [torch.randn(1, 64, 16, generator=gen).to(torch.bfloat16) for _ in sigmas]
    for scheduler in (ours, stock):
        scheduler.set_timesteps(sigmas=sigmas)
    x, y, want = x0, x0, x0
    table = torch.tensor(sigmas + [0.0])
    for i, (t, v) in enumerate(zip(ours.timesteps, vs, strict=True)):
        x = ours.step(v, t, x, return_dict=False)[0]
        y = stock.step(v, t, y, return_dict=False)[0]
        want = want + v * (table[i + 1] - table[i])  # flux2_infer: bf16 latents, CPU float32 sigma difference
    assert x.dtype == torch.bfloat16 and torch.equal(x, want)
    assert not torch.equal(y, want)  # the stock step's single rounding gives other bf16 values
