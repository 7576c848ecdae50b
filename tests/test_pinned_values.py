"""Published formulas and thresholds pinned to known answers (issue #30 item 5, mutation testing).

Each test feeds a small, hand-computable input and checks the exact published value or the side of
a boundary (< vs <=), so a flipped sign, a transposed crop or a moved boundary fails here; the
property tests elsewhere (the loss falls, FID(set, set) = 0) let such changes pass.
``benchmarks/mutation.sh`` measures how many hand-made changes the tests catch.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

# ------------------------------------------------------------------------------------ training

torch = pytest.importorskip("torch")


def tm():
    from pixverve.train import models

    return models


def test_exponential_shift_known_values():
    s = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    assert tm().shift_sigmas(s, 0.0).tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])  # mu 0: no shift
    # mu = ln 3 is the static shift 3: s' = 3 s / (1 + 2 s)
    assert tm().shift_sigmas(s, math.log(3.0)).tolist() == pytest.approx([0.5, 0.75, 0.9, 1.0])
    # sigma 0 is clamped to 1e-6 (no division by zero): e^0 / (1 + 1e6 - 1)
    assert tm().shift_sigmas(torch.tensor([0.0], dtype=torch.float64), 0.0).item() == pytest.approx(1e-6)


def test_training_sigmas_are_logit_normal_then_shifted():
    g = torch.Generator().manual_seed(0)
    # std 0: every u = sigmoid(mean); the mean and the std are not swapped, the shift applies after
    assert tm().sample_sigmas(3, g, math.log(3.0), 0.0, 0.0).tolist() == pytest.approx([0.75] * 3)
    assert tm().sample_sigmas(3, g, 0.0, math.log(3.0), 0.0).tolist() == pytest.approx([0.75] * 3)
    assert tm().sample_sigmas(3, g, math.log(3.0), math.log(3.0), 0.0).tolist() == pytest.approx([0.9] * 3)
    # std 1: the same draws as sigmoid(randn * std + mean) from the generator
    a = tm().sample_sigmas(5, torch.Generator().manual_seed(7), 0.0, 0.5, 2.0)
    u = torch.sigmoid(torch.randn(5, generator=torch.Generator().manual_seed(7)) * 2.0 + 0.5)
    assert torch.allclose(a, u)


def test_l2p_sigmas_are_the_shifted_grid_without_zero():
    s = tm().l2p_sample_sigmas(400, torch.Generator().manual_seed(0), 3.0, 4)
    assert s.dtype == torch.float32 and s.shape == (400,)
    # grid 1 - i/4 for i < 4 = 1, .75, .5, .25; shifted by 3: 1, .9, .75, .5 (sigma 0 never drawn)
    assert sorted({round(v, 6) for v in s.tolist()}) == [0.5, 0.75, 0.9, 1.0]
    # the published grid has 1000 steps; the patch keeps the 64 x 64 token grid
    default = tm().l2p_sample_sigmas(64, torch.Generator().manual_seed(4), 3.0)
    assert torch.equal(default, tm().l2p_sample_sigmas(64, torch.Generator().manual_seed(4), 3.0, 1000))
    assert [tm().l2p_patch_size(r, 64) for r in (4096, 8192, 10240)] == [64, 128, 160]
    assert all(type(tm().l2p_patch_size(r, 64)) is int for r in (4096, 8192))


def test_training_shift_defaults_and_modes():
    assert tm().train_shift({}) == {"mode": "static", "mu": 0.8}
    assert tm().train_shift({"train_shift": None}) == {"mode": "static", "mu": 0.8}
    assert tm().train_shift({"train_shift": {"mode": "static"}}) == {"mode": "static", "mu": 0.8}
    assert tm().train_shift({"train_shift": {"mode": "static", "mu": 1.5}}) == {"mode": "static", "mu": 1.5}
    assert tm().train_shift({"train_shift": {"mode": "dynamic", "mu": 1.5}}) == {"mode": "dynamic"}


def test_flux2_training_mu_static_and_dynamic():
    from pixverve.train.loop import flux2_train_mu

    assert flux2_train_mu({"inference_steps": 40}, 256 * 256) == 0.8
    spec = {"train_shift": {"mode": "dynamic"}, "inference_steps": 40}
    assert flux2_train_mu(spec, 256 * 256) == pytest.approx(tm().flux2_mu(256 * 256, 40))


def test_flux2_empirical_mu_is_the_papers_at_4k_and_8k():
    # PAPER.md: the published sampler's mu is 11.55 at 4K and 44.8 at 8K ((H/16)(W/16) tokens, 40 steps)
    assert tm().flux2_mu(256 * 256, 40) == pytest.approx(11.55, abs=0.01)
    assert tm().flux2_mu(512 * 512, 40) == pytest.approx(44.8, abs=0.05)


def test_scheduler_mu_line_and_static_shift():
    dyn = {"use_dynamic_shifting": True}  # Flux defaults: 256 -> 0.5, 4096 -> 1.15
    assert tm().scheduler_mu(dyn, 256) == pytest.approx(0.5)
    assert tm().scheduler_mu(dyn, 4096) == pytest.approx(1.15)
    assert tm().scheduler_mu(dyn, 2176) == pytest.approx(0.825)
    own = {"use_dynamic_shifting": True, "base_image_seq_len": 100, "max_image_seq_len": 300}
    own |= {"base_shift": 1.0, "max_shift": 2.0}
    assert tm().scheduler_mu(own, 200) == pytest.approx(1.5)
    assert tm().scheduler_mu({"shift": 3.0}, 999) == pytest.approx(math.log(3.0))
    assert tm().scheduler_mu({}, 999) == 0.0


def test_l2p_frozen_layers_are_the_published_5_to_24():
    assert tm().l2p_frozen_layers(30, 5) == list(range(5, 25))


def test_l2p_model_sees_model_time_and_returns_the_negated_unet():
    """Published L2P: the network sees t = 1 - sigma and predicts -v: forward returns -unet(...);
    the first (H/p)(W/p) output tokens, row-major, are the U-Net's bottleneck feature map."""
    from pixverve.train.models import L2PModel

    class Transformer:
        class config:
            all_patch_size = [2]

        def __init__(self):
            self.all_final_layer, self.calls = {}, []

        def __call__(self, xs, t, caps, patch_size, return_dict):
            assert return_dict is False
            self.calls.append((xs, t, caps, patch_size))
            tokens = torch.arange(2 * 7 * 5, dtype=torch.float32).reshape(2, 7, 5)  # 4 image + 3 text tokens
            self.all_final_layer["2-1"].hidden = tokens

    class UNet(torch.nn.Module):
        def forward(self, noisy, features):
            self.features = features
            return noisy * 2

    transformer, unet = Transformer(), UNet()
    model = L2PModel(transformer, unet)
    noisy = torch.randn(2, 3, 4, 4)
    out = model(noisy, torch.tensor([0.25, 0.5]), ["caps"], 2)
    assert torch.equal(out, -2 * noisy)
    xs, t, caps, patch = transformer.calls[0]
    assert t.tolist() == [0.75, 0.5] and caps == ["caps"] and patch == 2 and xs[0].shape == (3, 1, 4, 4)
    tokens = torch.arange(2 * 7 * 5, dtype=torch.float32).reshape(2, 7, 5)
    assert unet.features.shape == (2, 5, 2, 2)
    assert torch.equal(unet.features[1, :, 1, 0], tokens[1, 2])  # token row 1, column 0 = index 1 * 2 + 0
    assert transformer.all_final_layer["2-1"].hidden is None
    with pytest.raises(ValueError, match="patch 2, asked for 4"):
        model(noisy, torch.tensor([0.25, 0.5]), ["caps"], 4)


class Oracle(torch.nn.Module):
    """A model that knows x0: from x_t and its sigma it recovers the noise and returns noise - x0,
    the rectified-flow target (FLUX / diffusers / Z-Image train v = noise - x0).  With the right
    target and the right x_t = (1 - s) x0 + s noise, the loss is exactly 0."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def v(self, xt, sigma):
        s = sigma.reshape(-1, *([1] * (xt.dim() - 1))).to(xt)
        noise = (xt - (1 - s) * self.x0) / s
        return noise - self.x0

    def forward(self, *args, **kwargs):
        self.seen = (args, kwargs)
        if kwargs:  # the FLUX.2 transformer's call
            return (self.v(kwargs["hidden_states"], kwargs["timestep"]),)
        xt, sigma = args[0], args[1]  # the L2P model's call
        return self.v(xt, sigma)


class Zero(torch.nn.Module):
    """Predicts 0: the loss is then E[(noise - x0)^2], so it shows which noise was drawn."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        xt = kwargs["hidden_states"] if kwargs else args[0]
        out = torch.zeros_like(xt)
        return (out,) if kwargs else out


PIXELS = torch.zeros(2, 3, 8, 8)


def flux2_adapter(x0):
    from pixverve.train.loop import Flux2Adapter

    adapter = object.__new__(Flux2Adapter)  # no pipeline: the loss's own arithmetic only
    adapter.spec = {"logit_mean": 0.0, "logit_std": 1.0, "train_shift": {"mode": "static", "mu": 0.8}}
    adapter.device = "cpu"
    adapter.last_sigmas = None
    # the latents of the pixels the loss was given (PIXELS stands for a batch)
    adapter.encode_images = lambda pixels: (x0 if pixels is PIXELS else None, torch.full((x0.shape[1], 4), 7.0))
    adapter.encode_text = lambda captions: (torch.full((x0.shape[0], 3, 8), float(len(captions))), torch.ones(3, 4))
    return adapter


def test_flux2_loss_target_is_noise_minus_data():
    x0 = torch.linspace(-1, 1, 2 * 6 * 4).reshape(2, 6, 4)
    adapter = flux2_adapter(x0)
    sigmas = torch.tensor([0.3, 0.7])
    assert adapter.loss(Oracle(x0), PIXELS, ["a", "b"], torch.Generator().manual_seed(1), sigmas).item() < 1e-10
    # a model predicting the opposite sign (x0 - noise) is far off: 4 E[(noise - x0)^2]
    flipped = Oracle(x0)
    flipped.v = lambda xt, sigma: -Oracle.v(flipped, xt, sigma)  # predicts x0 - noise
    assert adapter.loss(flipped, PIXELS, ["a", "b"], torch.Generator().manual_seed(1), sigmas).item() > 1.0
    # what the transformer is given: x_t, the text states and ids, sigma as the timestep, no guidance
    oracle = Oracle(x0)
    adapter.loss(oracle, PIXELS, ["a", "b"], torch.Generator().manual_seed(1), sigmas)
    kw = oracle.seen[1]
    assert torch.equal(kw["encoder_hidden_states"], torch.full((2, 3, 8), 2.0)) and torch.equal(
        kw["txt_ids"], torch.ones(3, 4)
    )
    assert torch.equal(kw["img_ids"], torch.full((6, 4), 7.0)) and torch.equal(kw["timestep"], sigmas)
    assert kw["guidance"] is None and kw["return_dict"] is False
    # the noise is the step generator's draw (reproducible per step), not the global RNG's
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    zero = adapter.loss(Zero(), PIXELS, ["a", "b"], torch.Generator().manual_seed(5), sigmas)
    assert zero.item() == pytest.approx(((noise - x0) ** 2).mean().item(), rel=1e-6)


def test_flux2_loss_draws_its_sigmas_at_the_training_mu():
    x0 = torch.linspace(-1, 1, 2 * 6 * 4).reshape(2, 6, 4)
    adapter = flux2_adapter(x0)
    adapter.spec = {"logit_mean": 0.3, "logit_std": 0.5, "train_shift": {"mode": "dynamic"}, "inference_steps": 40}
    loss = adapter.loss(Oracle(x0), PIXELS, ["a", "b"], torch.Generator().manual_seed(3))
    assert loss.item() < 1e-6
    mu = tm().flux2_mu(6, 40)  # dynamic: FLUX.2's fit at the batch's 6 tokens
    expected = tm().sample_sigmas(2, torch.Generator().manual_seed(3), mu, 0.3, 0.5)
    assert torch.allclose(adapter.last_sigmas, expected)


def test_l2p_loss_target_is_noise_minus_data():
    from pixverve.train.loop import L2PAdapter

    x0 = (torch.arange(2 * 3 * 4 * 4) * 2 % 256).float().reshape(2, 3, 4, 4) / 127.5 - 1  # 8-bit levels, as read
    adapter = object.__new__(L2PAdapter)
    adapter.device, adapter.patch, adapter.shift, adapter.grid_steps, adapter.last_sigmas = "cpu", 2, 3.0, 4, None
    adapter.encode_text = lambda captions: [torch.zeros(3, 8) for _ in captions]
    sigmas = torch.tensor([0.25, 0.9])
    assert adapter.loss(Oracle(x0), x0, ["a", "b"], torch.Generator().manual_seed(1), sigmas).item() < 1e-10
    flipped = Oracle(x0)
    flipped.v = lambda xt, sigma: -Oracle.v(flipped, xt, sigma)
    assert adapter.loss(flipped, x0, ["a", "b"], torch.Generator().manual_seed(1), sigmas).item() > 1.0
    oracle = Oracle(x0)
    adapter.loss(oracle, x0, ["a", "b"], torch.Generator().manual_seed(1), sigmas)
    assert len(oracle.seen[0][2]) == 2 and oracle.seen[0][3] == 2  # the captions' features, the patch
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    zero = adapter.loss(Zero(), x0, ["a", "b"], torch.Generator().manual_seed(5), sigmas)
    assert zero.item() == pytest.approx(((noise - x0) ** 2).mean().item(), rel=1e-6)
    # no sigmas given: drawn from the shifted grid (shift 3, 4 steps) with the step generator
    adapter.loss(Oracle(x0), x0, ["a", "b"], torch.Generator().manual_seed(9))
    grid = tm().l2p_sample_sigmas(2, torch.Generator().manual_seed(9), 3.0, 4)
    assert torch.equal(adapter.last_sigmas, grid)
    assert adapter.loss(Oracle(x0), x0, ["a", "b"], torch.Generator().manual_seed(2)).item() < 1e-8
    assert {round(v, 6) for v in adapter.last_sigmas.tolist()} <= {0.5, 0.75, 0.9, 1.0}


# --------------------------------------------------------------------------------------- bench


def test_fid_patch_draws_top_before_left_and_crops_rows_then_columns(monkeypatch):
    """Published: top = randint(0, size - 299) drawn before left = randint(...);
    TF.crop(img, top, left, ...) = img[top : top + 299, left : left + 299]."""
    from pixverve.bench import evaluate, fid

    size, crop, per_pair = 12, 3, 4
    rng = random.Random(42)
    draws = [[(rng.randint(0, size - crop), rng.randint(0, size - crop)) for _ in range(per_pair)] for _ in range(2)]
    coords = evaluate.fid_patch_coordinates(2, size, crop, per_pair, 42)
    assert coords == [[(left, top) for top, left in pair] for pair in draws]  # (x, y) = (left, top)
    assert any(x != y for pair in coords for x, y in pair)  # so a transposed crop differs

    # the crop taken from each image: an image whose pixel holds (row, column)
    rows, cols = np.mgrid[0:size, 0:size]
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    seen = []

    class Recorder:
        def update(self, batch, real):
            seen.append((real, batch.permute(0, 2, 3, 1).numpy()))

        def compute(self):
            return torch.tensor(0.0)

    monkeypatch.setattr(fid, "frechet_inception_distance", lambda *a, **k: Recorder())
    monkeypatch.setattr(fid, "square_uint8", lambda *a, **k: image)

    class Item:
        real = generated = "unused"

    evaluate.fid_patch([Item(), Item()], "w", size, crop, per_pair, 42)
    assert [real for real, _ in seen] == [True, False, True, False]
    for (_, crops), pair in zip(seen, [draws[0], draws[0], draws[1], draws[1]]):
        for c, (top, left) in zip(crops, pair):
            assert c[0, 0, 0] == top and c[0, 0, 1] == left and c.shape == (crop, crop, 3)


def test_fid_patch_crops_reach_every_edge_position():
    from pixverve.bench.evaluate import fid_patch_coordinates

    assert fid_patch_coordinates(1, 5, 5, 3, 42) == [[(0, 0)] * 3]  # crop = size: one place
    seen = {c for pair in fid_patch_coordinates(50, 6, 5, 4, 1) for xy in pair for c in xy}
    assert seen == {0, 1}  # randint's upper end (size - crop) is inclusive


@pytest.mark.parametrize(
    "cells, budget",
    [(128, 128), (129, 256), (256, 256), (257, 576), (576, 576), (577, 784), (784, 784), (785, 1024), (5000, 1024)],
)
def test_fgclip2_patch_budget_boundaries_as_published(cells, budget):
    """eval/metrics.py determine_max_value: > 784 -> 1024, > 576 -> 784, > 256 -> 576, > 128 -> 256."""
    from pixverve.bench.evaluate import fgclip2_patch_budget

    assert fgclip2_patch_budget(16 * cells, 16) == budget
    assert fgclip2_patch_budget(16 * cells + 15, 31) == budget  # w // 16, h // 16


class _Batch(dict):
    def to(self, device):
        return self


def test_fgclip2_call_as_published():
    """fg-clip2: the image with its patch budget, the caption lower-cased, padded to max length 196,
    the text in "long" mode; score 100 x max(cos, 0)."""
    from pixverve.bench.evaluate import FGClip2Scorer

    calls = {}

    class Model:
        def get_image_features(self, **kw):
            calls["image_features"] = kw
            return torch.tensor([[1.0, 0.0]])

        def get_text_features(self, **kw):
            calls["text_features"] = kw
            return torch.tensor([calls["direction"]])

    scorer = object.__new__(FGClip2Scorer)
    scorer.device, scorer.long_mode, scorer.model = "cpu", True, Model()
    scorer.image_processor = lambda **kw: calls.setdefault("image", kw) and _Batch(pixel_values=1)
    scorer.tokenizer = lambda texts, **kw: calls.setdefault("text", (texts, kw)) and _Batch(input_ids=2)
    calls["direction"] = [0.6, 0.8]
    assert scorer.score(np.zeros((480, 320, 3), np.uint8), "A Red Fox") == pytest.approx(60.0)
    assert calls["image"]["max_num_patches"] == 784  # (320 // 16) * (480 // 16) = 600 -> 784
    texts, kw = calls["text"]
    assert texts == ["a red fox"] and kw["padding"] == "max_length" and kw["max_length"] == 196 and kw["truncation"]
    assert calls["text_features"] == {"input_ids": 2, "walk_type": "long"}
    assert calls["image_features"] == {"pixel_values": 1}
    calls["direction"] = [-0.6, 0.8]  # cos -0.6: clamped at 0
    assert scorer.score(np.zeros((16, 16, 3), np.uint8), "x") == 0.0


def test_clip_score_clamps_each_batch_mean_not_each_image():
    from pixverve.bench.evaluate import clip_score_of_batches

    # batch 1: mean (10 - 30 + 5 + 5) / 4 = -2.5 -> 0; batch 2: 8 -> mean of batch values 4
    assert clip_score_of_batches([10, -30, 5, 5, 8]) == pytest.approx(4.0)
    assert clip_score_of_batches([10, -2, 5, 5], batch=2) == pytest.approx(4.5)  # (4 + 5) / 2; per image: 5
    assert math.isnan(clip_score_of_batches([]))


def test_msfi_patch_side_boundary():
    from pixverve.bench.scores import msfi_patch_size

    assert msfi_patch_size(7680, 100) == 1024 and msfi_patch_size(100, 7680) == 1024  # long edge >= 7680
    assert msfi_patch_size(7679, 7679) == 512


def test_ics_view_only_shrinks_and_truncates():
    from PIL import Image

    from pixverve.bench.scores import ics_view

    small = Image.new("RGB", (3072, 1000))
    assert ics_view(small) is small  # long edge = 3072: left as it is
    assert ics_view(Image.new("RGB", (3073, 1001))).size == (3072, 1000)  # 1001 * 3072 / 3073 = 1000.67
    assert ics_view(Image.new("RGB", (1001, 6146))).size == (500, 3072)  # 1001 / 2 = 500.5
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 3100, 3), dtype=np.uint8))
    lanczos = noise.resize((3072, 19), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(ics_view(noise)), np.asarray(lanczos))


def test_long_edge_copy_square_and_truncation():
    from PIL import Image

    from pixverve.bench.scores import long_edge_copy

    assert long_edge_copy(Image.new("RGB", (3000, 2000)), 2048).size == (2048, 1365)  # 1365.33
    assert long_edge_copy(Image.new("RGB", (2000, 3000)), 2048).size == (1365, 2048)
    assert long_edge_copy(Image.new("RGB", (300, 300)), 2048).size == (2048, 2048)
    # a square takes the "height is the long edge" branch: int(103 * (2048 / 103)) = 2047 is the width
    assert long_edge_copy(Image.new("RGB", (103, 103)), 2048).size == (2047, 2048)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(long_edge_copy(img, 90)), np.asarray(img.resize((90, 60), Image.LANCZOS)))


def test_sobel_variance_known_answer():
    from pixverve.bench.scores import sobel_variance

    assert sobel_variance(np.zeros((8, 8), np.uint8)) == 0.0
    # a horizontal ramp of 1 per column: |gx| = 8 inside, 0 on the edge columns (reflect-101 mirrors
    # the neighbour: equal values on both sides)
    ramp = np.tile(np.arange(6, dtype=np.uint8), (6, 1))
    mag = np.array([0, 8, 8, 8, 8, 0], float)
    assert sobel_variance(ramp) == pytest.approx(np.var(np.tile(mag, (6, 1))))
    # float64 Sobel, negative gradients kept: the 3x3 Sobel magnitude with reflect-101 (scipy's "mirror")
    from scipy import ndimage

    g = np.random.default_rng(1).integers(0, 256, (12, 9), dtype=np.uint8)
    f = g.astype(np.float64)
    ref = np.hypot(ndimage.sobel(f, axis=1, mode="mirror"), ndimage.sobel(f, axis=0, mode="mirror"))
    assert sobel_variance(g) == pytest.approx(float(np.var(ref)), rel=1e-12)


def test_msfi_cells_are_whole_squares_and_relative_boxes_have_six_decimals():
    from PIL import Image

    from pixverve.bench.scores import msfi_layout

    rng = np.random.default_rng(0)

    def layout(w, h):
        return msfi_layout(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), seed=0)[1]

    # long edge 2048: scale 1, 512 px squares; one pixel short of a second row / column: no partial square
    assert sorted(p["box"] for p in layout(2048, 1023)) == [(x, 0, x + 512, 512) for x in (0, 512, 1024, 1536)]
    assert sorted(p["box"] for p in layout(1023, 2048)) == [(0, y, 512, y + 512) for y in (0, 512, 1024, 1536)]
    patches = layout(2048, 1500)  # rows at 0 and 512: 512 / 1500 = 0.341333...
    assert len(patches) == 8 and {p["box"][1] for p in patches} == {0, 512}
    for p in patches:
        left, top, right, bottom = p["box"]
        assert p["relative"] == [
            round(left / 2048, 6),
            round(top / 1500, 6),
            round(right / 2048, 6),
            round(bottom / 1500, 6),
        ]
    assert 0.341333 in {p["relative"][1] for p in patches}


# ------------------------------------------------------------------------------- verify, core


def test_psnr_known_values_across_bands():
    from pixverve.verify.fidelity import psnr

    a = np.zeros((600, 3, 3), np.uint8)  # 600 rows: two 512-row bands
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255.0**2))  # MSE 1: 48.13 dB
    assert psnr(a, a + 255) == pytest.approx(0.0)
    b = a.copy()
    b[550:] = 10  # only in the second band: MSE = 100 * 50 / 600
    assert psnr(a, b) == pytest.approx(10 * math.log10(255.0**2 / (100 * 50 / 600)))


def test_ssim_equals_scikit_image_in_small_bands():
    from skimage.metrics import structural_similarity

    from pixverve.verify.fidelity import ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    ref = structural_similarity(a, b, channel_axis=-1, data_range=255)
    for band in (5, 7, 512):
        assert ssim(a, b, band_rows=band) == pytest.approx(ref, abs=1e-12)
    assert ssim(a[..., 0], b[..., 0]) == pytest.approx(structural_similarity(a[..., 0], b[..., 0], data_range=255))
    assert ssim(a, a) == pytest.approx(1.0)


def test_seam_ratio_known_answers_and_edges():
    from pixverve.verify.fidelity import seam_ratios

    x = np.arange(40)
    grey = np.tile(np.where(x < 20, x, x + 9), (5, 1)).astype(np.uint8)  # steps of 1, 10 across column 20
    assert seam_ratios(grey, [20], [], beside=6) == [("x", 20, pytest.approx(10.0))]
    assert seam_ratios(grey.T, [], [20], beside=6) == [("y", 20, pytest.approx(10.0))]
    flat = np.tile(np.where(x < 20, 100, 103), (5, 1)).astype(np.uint8)  # no steps beside: floored at min_step
    assert seam_ratios(flat, [20], [], beside=6) == [("x", 20, pytest.approx(3.0))]
    assert seam_ratios(flat, [20], [], beside=6, min_step=2.0) == [("x", 20, pytest.approx(1.5))]
    # a seam needs beside + 1 lines before it and beside lines from it on
    assert [p for _, p, _ in seam_ratios(grey, [6, 7, 33, 34], [], beside=6)] == [7, 33]


def test_verify_thresholds_drop_only_beyond_them(tmp_path):
    """A measure exactly at its threshold passes: seam ratio <= max_ratio, PSNR >= min_psnr,
    SSIM >= min_ssim, LPIPS <= max; just beyond any one of them fails on that check."""
    from test_verify import _shard_fixture  # the source + lanczos SR fixture (tests/ is on sys.path)

    from pixverve.verify.fidelity import load_lpips, verify_shard

    table, config = _shard_fixture(tmp_path, lambda sr: sr)
    model = load_lpips(config["verify"]["consistency"]["lpips"])
    row = verify_shard(table, config, tmp_path, log=lambda *_: None, lpips_model=model).iloc[0]
    ratio, p, s, lp = row["max_seam_ratio"], row["psnr"], row["ssim"], row["lpips"]
    assert row["passed"] and 0 < ratio and lp > 0

    def run(ratio=ratio, p=p, s=s, lp=lp):
        config["verify"]["seam"]["max_ratio"] = ratio
        c = config["verify"]["consistency"]
        c["min_psnr"], c["min_ssim"], c["lpips"]["max"] = p, s, lp
        return verify_shard(table, config, tmp_path, log=lambda *_: None, lpips_model=model).iloc[0]

    at = run()
    assert at["passed"] and at["seam_ok"] and at["consistency_ok"]
    assert run(ratio=ratio * (1 - 1e-9))["reason"] == "seam"
    for beyond in ({"p": p + 1e-6}, {"s": s + 1e-7}, {"lp": lp - 1e-7}):
        out = run(**beyond)
        assert out["reason"] == "consistency" and out["seam_ok"] and not out["consistency_ok"], beyond


def test_seam_positions_of_a_small_grid():
    from pixverve.core.tiling import TileGrid
    from pixverve.verify.fidelity import seam_positions

    # scale 2, tiles of 8 px every 6 px (output): input tiles 4, stride 3; 10 wide -> starts 0, 3, 6
    grid = TileGrid(in_h=4, in_w=10, scale=2, tile_px=8, stride_px=6)
    assert grid.cols() == [0, 3, 6] and grid.rows() == [0]
    assert seam_positions(grid) == ([6, 8, 12, 14], [])


def test_tile_grid_of_the_paper_and_its_edges():
    from pixverve.core.tiling import TileGrid

    g = TileGrid(in_h=512, in_w=1000, scale=1)  # ODTSR: 512 px tiles, 384 px stride
    assert g.cols() == [0, 384, 488] and g.rows() == [0] and g.n_tiles == 3
    g4 = TileGrid(in_h=128, in_w=300, scale=4)  # 4x: 128 px input tiles every 96 px
    assert g4.tile_in(300) == 128 and g4.cols() == [0, 96, 172] and g4.out_w == 1200 and g4.out_h == 512
    assert TileGrid(in_h=129, in_w=100, scale=4).rows() == [0, 1]  # one pixel over: a second tile
    assert TileGrid(in_h=100, in_w=50, scale=4).tile_in(50) == 50  # smaller than a tile: one tile
    TileGrid(in_h=10, in_w=10, scale=2, tile_px=8, stride_px=8)  # stride = tile is allowed
    for bad in ({"tile_px": 8, "stride_px": 10}, {"tile_px": 8, "stride_px": 0}, {"tile_px": 9, "stride_px": 6}):
        with pytest.raises(ValueError):
            TileGrid(in_h=10, in_w=10, scale=2, **bad)


def test_feather_ramps():
    from pixverve.core.tiling import feather

    r = [0.125, 0.375, 0.625, 0.875]
    assert feather(8, 4, False, False).tolist() == r + r[::-1]
    assert feather(8, 4, True, False).tolist() == [1, 1, 1, 1] + r[::-1]
    assert feather(8, 4, False, True).tolist() == r + [1, 1, 1, 1]
    assert feather(8, 0, False, False).tolist() == [1] * 8
    assert feather(2, 4, False, True).tolist() == [0.125, 0.375]  # ramp longer than the tile


def test_bands_of_a_wide_image():
    from pixverve.core.tiling import bands_of

    image = np.zeros((5, 40, 3), np.uint8)
    assert [b.shape[0] for b in bands_of(image, rows=2)] == [2, 2, 1]


# -------------------------------------------------------------------------------------- purify


def test_purify_thresholds_drop_only_beyond_the_published_cut_offs(tmp_path, demo_config):
    """Paper: dropped if the exposure share > 20 %, the Laplacian variance < 10, the smooth share
    > 97.5 %: a value exactly at the threshold passes."""
    import copy

    import pandas as pd
    from PIL import Image

    from pixverve.purify.classical import score_classical_shard

    rng = np.random.default_rng(0)
    grey = np.full((96, 96), 128, np.uint8)
    grey[:40] = rng.integers(0, 256, (40, 96), dtype=np.uint8)  # noise on top, flat below
    grey[90:] = 255  # some over-exposed rows
    (tmp_path / "src").mkdir()
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(tmp_path / "src" / "a.png")
    (tmp_path / "src" / "b.png").write_text("not an image")
    rows = pd.DataFrame(
        [
            {"image_id": "a" * 16, "root": "r", "relpath": "a.png", "shard": "s00000"},
            {"image_id": "b" * 16, "root": "r", "relpath": "b.png", "shard": "s00000"},
        ]
    )

    def run(**cut):
        config = copy.deepcopy(demo_config)
        config["sources"] = {"roots": [{"name": "r", "path": str(tmp_path / "src")}]}
        p = config["purify"]
        p["flatness"]["patch_px"] = 16 / math.sqrt(config["target_megapixels"] / 100)  # 16 px patches here
        p["exposure"]["max_share"] = cut.get("exposure", 0.2)
        p["sharpness"]["min_laplacian_var"] = cut.get("sharpness", 10)
        p["flatness"]["max_smooth_share"] = cut.get("flatness", 0.975)
        return score_classical_shard(rows, config, tmp_path).iloc[0]

    bad = score_classical_shard(rows, demo_config | {"sources": {"roots": [{"name": "r", "path": "src"}]}}, tmp_path)
    assert bad.iloc[0]["passed"]  # the root's relative path is read against base_dir
    bad = bad.iloc[1].to_dict()
    assert not bad["passed"] and bad["grey_source"] == ""
    assert (
        isinstance(bad["reason"], str)
        and bad["reason"]
        and isinstance(bad["reason_detail"], str)
        and bad["reason_detail"]
    )
    assert (bad["flat_patches"], bad["total_patches"]) == (0, 0) and math.isnan(bad["exposure_share"])
    assert not (bad["exposure_ok"] or bad["sharpness_ok"] or bad["flatness_ok"])
    assert (bad["image_id"], bad["root"], bad["relpath"], bad["shard"]) == ("b" * 16, "r", "b.png", "s00000")
    row = run()
    assert (row["image_id"], row["root"], row["relpath"], row["shard"]) == ("a" * 16, "r", "a.png", "s00000")
    assert row["grey_source"] == "bt601 luma of rgb"
    assert row["flatness_patch_px"] == 16 and row["total_patches"] == 36
    assert row["exposure_low_value"] == 5 and row["exposure_high_value"] == 250
    share, lap, flat = row["exposure_share"], row["laplacian_var"], row["flat_share"]
    assert 0 < share < 0.2 and lap > 10 and 0 < flat < 0.975 and row["passed"]
    assert row["flat_patches"] == flat * 36 and row["entropy_bits"] > 1
    at = run(exposure=share, sharpness=lap, flatness=flat)  # every measure exactly at its threshold
    assert at["passed"] and at["exposure_ok"] and at["sharpness_ok"] and at["flatness_ok"]
    over = run(exposure=share * (1 - 1e-9), sharpness=lap, flatness=flat)
    assert not over["passed"] and over["reason"] == "exposure" and not over["exposure_ok"]
    over = run(exposure=share, sharpness=lap * (1 + 1e-9), flatness=flat)
    assert over["reason"] == "sharpness" and not over["sharpness_ok"] and over["exposure_ok"]
    over = run(exposure=share, sharpness=lap, flatness=flat * (1 - 1e-9))
    assert over["reason"] == "flatness" and not over["flatness_ok"] and over["sharpness_ok"]
    assert "flatness:" in over["reason_detail"] and "exposure" not in over["reason_detail"]


def test_classical_measures_known_answers():
    from pixverve.purify.classical import ClassicalParams, classical_scores

    p = ClassicalParams(patch_px=4, smooth_variance=800.0)
    spot = np.zeros((5, 5), np.uint8)
    spot[2, 2] = 10  # Laplacian: -40 at the spot, +10 at its 4 neighbours: var = (1600 + 400) / 25
    s = classical_scores(spot, p)
    assert s.laplacian_var == pytest.approx(80.0)
    assert s.exposure_share == pytest.approx(24 / 25)  # 24 zeros are < 5; 10 is not
    assert s.entropy_bits == pytest.approx(-(24 / 25) * math.log2(24 / 25) - (1 / 25) * math.log2(1 / 25))
    edge = np.array([[4, 5, 250, 251]] * 4, np.uint8)  # < 5 and > 250 only
    assert classical_scores(edge, p).exposure_share == 0.5
    flat = np.full((8, 8), 100, np.uint8)  # Sobel variance 0: smooth only when 0 < threshold
    assert classical_scores(flat, ClassicalParams(patch_px=4, smooth_variance=0.0)).flat_share == 0.0
    assert classical_scores(flat, ClassicalParams(patch_px=4, smooth_variance=1e-9)).flat_share == 1.0
    assert classical_scores(np.zeros((3, 3), np.uint8), p).flat_share == 1.0  # no whole patch
    for bad in (np.zeros((8, 8), np.uint16), np.zeros((8, 8, 3), np.uint8)):  # either is refused
        with pytest.raises(ValueError, match="2-D uint8"):
            classical_scores(bad, p)


def test_top_fraction_keeps_ceil_of_the_share_without_float_creep():
    from pixverve.purify.classical import top_fraction

    ids = np.array(list("abcde"))
    kept, cut = top_fraction(np.array([5.0, 4, 3, 2, 1]), ids, 0.6)  # 0.6 * 5 = 3.0000000000000004: 3, not 4
    assert kept.tolist() == [True, True, True, False, False] and cut == 3.0
    kept, cut = top_fraction(np.array([5.0, 4, 3, 2, 1]), ids, 0.61)  # 3.05: 4
    assert kept.sum() == 4 and cut == 2.0
    kept, cut = top_fraction(np.array([1.0, 2, 2, np.nan, 0]), ids, 0.5)  # 4 scored: 2 kept, tie by id
    assert kept.tolist() == [False, True, True, False, False] and cut == 2.0
    kept, cut = top_fraction(np.array([1.0, 2]), ids[:2], 0.0)
    assert not kept.any() and math.isnan(cut)


def test_tiled_tiff_is_a_zlib_rgb_bigtiff_written_in_place_at_the_end(tmp_path):
    import tifffile

    from pixverve.core.tiling import TiledTiffWriter, bands_of

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    out = tmp_path / "new" / "dir" / "a.tif"  # parent folders are made
    TiledTiffWriter(out, 40, 70, tile=16).write(bands_of(image, rows=7))
    assert list(out.parent.iterdir()) == [out]  # no .tmp left
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.photometric == tifffile.PHOTOMETRIC.RGB
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and page.is_tiled
        assert (page.tilelength, page.tilewidth) == (16, 16)
        assert np.array_equal(page.asarray(), image)
    with pytest.raises(ValueError, match="bands gave 35 rows, expected 40"):
        TiledTiffWriter(tmp_path / "b.tif", 40, 70, tile=16).write(bands_of(image[:35], rows=7))


def test_glcm_layout_and_values_are_the_published_ones():
    """eval/metrics.py: grey // 4 (64 levels), 64 px patches, graycomatrix(distances [1, 2, 3, 4],
    angles [0, 45, 90, 135] degrees, levels 64, symmetric, normed), shannon_entropy of it all."""
    from skimage.feature import graycomatrix
    from skimage.measure import shannon_entropy

    from pixverve.bench import glcm, glcm_layout

    assert (glcm_layout.PATCH, glcm_layout.LEVELS, glcm_layout.DISTANCES) == (64, 64, (1, 2, 3, 4))
    assert glcm_layout.ANGLES == pytest.approx((0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4))
    assert glcm_layout.quantise(np.array([0, 3, 4, 255], np.uint8)).tolist() == [0, 0, 1, 63]
    # a constant patch: each of the 16 slices holds one 1.0 among 64 x 64 zeros
    a = 16 / (64 * 64 * 16)
    known = -(a * math.log2(a) + (1 - a) * math.log2(1 - a))
    assert glcm.patch_entropies(np.full((64, 64), 77, np.uint8)).tolist() == pytest.approx([known])
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (64, 128), dtype=np.uint8)
    grey[:, 64:] //= 3  # another range
    published = [
        shannon_entropy(
            graycomatrix(
                grey[:, x : x + 64] // 4,
                [1, 2, 3, 4],
                [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                levels=64,
                symmetric=True,
                normed=True,
            )
        )
        for x in (0, 64)
    ]
    assert glcm.patch_entropies(grey).tolist() == pytest.approx(published, abs=1e-12)
    assert glcm.reference_patch_entropies(grey).tolist() == pytest.approx(published, abs=1e-12)
    assert glcm.glcm_score(grey) == pytest.approx(sum(published) / 2)
    assert len(glcm.patch_entropies(np.zeros((64, 127), np.uint8))) == 1  # 64 x 64 is a whole patch


def test_classical_params_scale_the_patch_with_the_side():
    from pixverve.purify.classical import classical_params

    def params(target, patch):
        purify = {
            "exposure": {"low_value": 7, "high_value": 240},  # not the dataclass defaults: read from the config
            "flatness": {"patch_px": patch, "smooth_variance": 500},
        }
        return classical_params({"target_megapixels": target, "purify": purify})

    p = params(100, 240)  # the 100 MP reference: the configured 240 px
    assert (p.exposure_low, p.exposure_high, p.patch_px, p.smooth_variance) == (7, 240, 240, 500.0)
    assert params(25, 240).patch_px == 120  # a quarter of the pixels: half the side
    assert params(400, 240).patch_px == 480
    assert params(100, 8).patch_px == 8 and params(100, 3).patch_px == 8  # never below 8 px


def test_stage4_decision_takes_the_checks_in_the_papers_order():
    """Seam, then consistency (verify table), then the region judge: each image leaves at its
    first failed check, and the counts chain (what one check keeps, the next receives)."""
    import pandas as pd

    from pixverve.verify.fidelity import decide_stage4

    def v(i, passed, reason=""):
        return {"image_id": i, "root": "r", "relpath": f"{i}.png", "shard": "s0", "scale": 2, "passed": passed}, {
            "reason": reason,
            "reason_detail": f"{reason} of {i}" if reason else "",
        }

    verify = pd.DataFrame(
        [
            a | b
            for a, b in [
                v("a", True),
                v("b", False, "seam"),
                v("c", False, "consistency"),
                v("d", False, "no_sr_output"),
                v("e", True),
                v("f", False, "unreadable"),
            ]
        ]
    )
    regions = pd.DataFrame(
        [
            {"image_id": "a", "passed": True, "reason": "", "reason_detail": "", "smoke": False},
            {"image_id": "e", "passed": False, "reason": "region_artifacts", "reason_detail": "2 of 10", "smoke": True},
        ]
    )
    upscaled = pd.DataFrame({"image_id": list("abcdef"), "output_path": [f"/sr/{i}.tif" for i in "abcdef"]})
    decisions, counts = decide_stage4(verify, regions, upscaled)
    d = decisions.set_index("image_id")
    assert d["failed_check"].to_dict() == {
        "a": "",
        "b": "seam",
        "c": "consistency",
        "d": "sr_output",
        "e": "regions",
        "f": "sr_output",
    }
    assert d["passed"].to_dict() == {"a": True, "b": False, "c": False, "d": False, "e": False, "f": False}
    assert d.loc["b", "reason"] == "seam" and d.loc["b", "reason_detail"] == "seam of b"
    assert d.loc["e", "reason"] == "region_artifacts" and d.loc["e", "reason_detail"] == "2 of 10"
    assert d["judge_smoke"].to_dict() == {"a": False, "b": False, "c": False, "d": False, "e": True, "f": False}
    assert d.loc["c", "output_path"] == "/sr/c.tif" and d.loc["a", "relpath"] == "a.png" and d.loc["a", "scale"] == 2
    assert list(decisions.columns[:6]) == ["image_id", "root", "relpath", "shard", "scale", "output_path"]
    assert counts.to_dict("records") == [
        {"check": "sr_output", "entering": 6, "dropped": 2, "kept": 4},
        {"check": "seam", "entering": 4, "dropped": 1, "kept": 3},
        {"check": "consistency", "entering": 3, "dropped": 1, "kept": 2},
        {"check": "regions", "entering": 2, "dropped": 1, "kept": 1},
    ]
    with pytest.raises(ValueError, match="image e passed seam/consistency but has no region judgment"):
        decide_stage4(verify, regions.iloc[:1], upscaled)
    empty, counts = decide_stage4(verify.iloc[:0], regions.iloc[:0], upscaled.iloc[:0])
    assert len(empty) == 0 and counts["entering"].tolist() == [0, 0, 0, 0]


def test_the_shipped_config_holds_the_papers_numbers(repo_root):
    """config.yaml's values marked "paper" (PAPER.md): a changed number there changes the reproduction."""
    import yaml

    c = yaml.safe_load((repo_root / "config.yaml").read_text())
    p = c["purify"]
    assert c["target_megapixels"] == 100
    assert (p["exposure"]["low_value"], p["exposure"]["high_value"], p["exposure"]["max_share"]) == (5, 250, 0.2)
    assert p["sharpness"]["min_laplacian_var"] == 10 and p["flatness"]["max_smooth_share"] == 0.975
    assert p["entropy"]["keep_top_fraction"] == 0.6 and p["aesthetics"]["keep_top_fraction"] == 0.6
    assert (c["upscale"]["tile_px"], c["upscale"]["stride_px"]) == (512, 384)
    r = c["verify"]["regions"]
    assert (r["patch_px"], r["n_sobel"], r["n_random"], r["max_flagged"]) == (768, 6, 4, 1)
    assert c["verify"]["instances"]["max_flagged"] == 0
    assert c["caption"]["instances"]["padding"] == 0.05 and c["caption"]["export"]["benchmark_size"] == 200
    assert (c["bench"]["judge"]["msfi"]["n_sobel"], c["bench"]["judge"]["msfi"]["n_random"]) == (6, 4)
    assert (c["train"]["defaults"]["vae_tile"], c["train"]["defaults"]["vae_tile_stride"]) == (512, 256)


def test_msfi_left_out_image_record():
    from pixverve.bench.scores import msfi

    out = msfi(None, [{"NGE": 5}, None])
    assert not out["included"] and math.isnan(out["msfi"]) and math.isnan(out["s_global"])
    assert (out["defaulted_global"], out["defaulted_local"], out["valid_patches"]) == ([], 0, 1)
    out = msfi({"SC-global": 5}, [{"NGE": 5}, {"TF": 1, "GA": 2}])  # missing keys count 3, and are counted
    assert out["defaulted_global"] == ["PI", "LC", "CH"] and out["defaulted_local"] == 4 + 3


def test_published_fid_defaults():
    import inspect

    from pixverve.bench.evaluate import fid_patch_coordinates
    from pixverve.bench.fid import fid_for_pairs

    assert inspect.signature(fid_for_pairs).parameters["size"].default == 4096
    assert inspect.signature(fid_for_pairs).parameters["resample"].default == "bilinear"
    defaults = {k: v.default for k, v in inspect.signature(fid_patch_coordinates).parameters.items()}
    assert (defaults["crop"], defaults["per_pair"], defaults["seed"], defaults["order"]) == (299, 20, 42, "yx")


def _sets(buckets):
    return sorted(sorted(row.tolist()) for t in buckets for row in t)


def test_close_and_remote_index_sets_known_answers():
    """Published local attention: fh x fw close windows, remote = the strided grid[i::fh, j::fw];
    1x1 = one global window and no remote; without a pattern, a window (wh, ww) that is also the stride."""
    part = tm().close_remote_partitions
    # 4 x 6 tokens (row-major ids), factors 2 x 3: close 2x2 blocks, remote grid[i::2, j::3]
    p = part((4, 6), factors=(2, 3))
    assert _sets(p["close"])[:2] == [[0, 1, 6, 7], [2, 3, 8, 9]] and len(_sets(p["close"])) == 6
    assert _sets(p["remote"]) == sorted(
        sorted((r * 6 + c) for r in range(i, 4, 2) for c in range(j, 6, 3)) for i in range(2) for j in range(3)
    )
    assert _sets(p["remote"])[0] == [0, 3, 12, 15]
    one = part((3, 4), factors=(1, 1))
    assert _sets(one["close"]) == [list(range(12))] and one["remote"] == []
    assert _sets(part((2, 4), factors=(1, 2))["remote"]) == [[0, 2, 4, 6], [1, 3, 5, 7]]  # (1, 2) has remote sets
    ragged = part((5, 2), factors=(2, 1))  # 5 rows in 2 windows: rows 0-1 and 2-4 (i * 5 // 2), no padding
    assert _sets(ragged["close"]) == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    # no pattern: window (2, 2) on 3 x 4 (ragged: a last row of 1); remote stride 2
    w = part((3, 4), window=(2, 2))
    assert _sets(w["close"]) == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9], [10, 11]]
    assert _sets(w["remote"]) == [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6], [5, 7]]
    assert [t.shape for t in w["close"]] == [(2, 2), (2, 4)]  # grouped by size, smallest first
    whole = part((2, 2), window=(2, 2))  # the window covers the grid: global, no remote
    assert _sets(whole["close"]) == [[0, 1, 2, 3]] and whole["remote"] == []
    wide = part((2, 4), window=(2, 2))  # covers the rows only: still remote sets (along columns)
    assert _sets(wide["remote"]) == [[0, 2], [1, 3], [4, 6], [5, 7]]


def test_window_fallback_and_auto_factors_per_block():
    """Without a pattern a block attends in (wh, ww) windows with the same stride for the remote sets
    (the published fallback); ("auto", i) is entry i mod 5 of the auto pattern for the current grid."""
    from pixverve.train import patterns

    ctx = tm().WindowContext((2, 2))
    ctx.grid = (3, 4)
    fallback = ctx.partitions(None)
    assert _sets(fallback["close"]) == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9], [10, 11]]
    assert _sets(fallback["remote"]) == [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6], [5, 7]]
    assert _sets(ctx.partitions((1, 2))["close"]) == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]]
    ctx.grid = (12, 18)
    auto = patterns.auto_pattern.__wrapped__((12, 18), (2, 2))  # the lru cache bypassed
    assert [ctx.resolve(("auto", i)) for i in range(7)] == [auto[i % 5] for i in range(7)]
    assert ctx.resolve(None) is None and ctx.resolve((2, 3)) == (2, 3)


def test_auto_pattern_divisors_and_the_preset_per_resolution():
    """auto_pattern's candidates are all divisor pairs (1 and n included); infer.sh's presets: 4k below
    8192, 8k from 8192 on (8K and 10K); a block without a pattern gets None (the window fallback)."""
    from pixverve.train import patterns

    assert patterns._divisors(12) == [1, 2, 3, 4, 6, 12]
    assert patterns._divisors(1) == [1] and patterns._divisors(7) == [1, 7]
    # published (test_train.PUBLISHED_AUTO), computed without the cache so the divisors are used
    assert patterns.auto_pattern.__wrapped__((12, 18), (4, 4)) == ((4, 3), (6, 2), (2, 6), (4, 2), (2, 9))
    assert patterns.auto_pattern.__wrapped__((64, 64), (16, 8)) == ((4, 8), (8, 4), (2, 16), (16, 2), (1, 32))
    presets = patterns.PATTERN_PRESETS
    assert presets["4k"] == ((1, 1), (8, 16), (16, 8), (4, 32), (32, 4))
    assert presets["8k"] == presets["10k"] == ((1, 1), (16, 32), (32, 16), (8, 64), (64, 8))
    assert patterns.default_pattern(4096) == patterns.default_pattern(8191) == presets["4k"]
    assert patterns.default_pattern(8192) == patterns.default_pattern(10240) == presets["8k"]
    assert patterns.block_factors(3, None) == [None, None, None]
    assert patterns.block_factors(7, ((1, 1), (2, 3))) == [(1, 1), (2, 3)] * 3 + [(1, 1)]


def test_local_attention_with_more_windows_than_tokens_per_window():
    """4 x 4 tokens with factors 4 x 4: 16 one-token close windows and 16 one-token remote sets, in
    chunks of max_windows: each image query attends to the text keys + itself in both branches."""
    g = torch.Generator().manual_seed(0)
    num_txt, n, h, d = 2, 16, 2, 4
    q, k, v = (torch.randn(1, num_txt + n, h, d, generator=g, dtype=torch.float64) for _ in range(3))
    got = tm().local_attention(q, k, v, num_txt, tm().close_remote_partitions((4, 4), (4, 4)), max_windows=3)
    for t in range(n):
        keys = [0, 1, num_txt + t]
        w = torch.softmax(torch.einsum("hd,nhd->hn", q[0, num_txt + t], k[0, keys]) / math.sqrt(d), dim=-1)
        assert torch.allclose(got[0, num_txt + t], torch.einsum("hn,nhd->hd", w, v[0, keys]), atol=1e-12)


def _unet_layers(module):
    out = []
    for layer in module if isinstance(module, torch.nn.Sequential) else [module]:
        if isinstance(layer, torch.nn.Conv2d):
            out.append(("conv", layer.in_channels, layer.out_channels, layer.kernel_size[0], layer.padding[0]))
        elif isinstance(layer, torch.nn.Upsample):
            out.append(("up", layer.scale_factor, layer.mode))
        else:
            out.append(type(layer).__name__)
    return out


def _published_unet(variant, d):
    """MicroDiffusionModel (L2P-ZImage-HR/diffsynth/models/z_image_dit_L2P.py) in this project's names:
    enc0, enc0b, enc1..enc4 = enc[0..5]; up0, up0b, up1..up4 = up[0..5]; dec likewise."""

    def conv(cin, cout, k=3):
        return [("conv", cin, cout, k, k // 2), "SiLU"]

    def up(cin, cout):
        return [("up", 2.0, "nearest"), ("conv", cin, cout, 3, 1)]

    w = [16, 32, 64, 128, 256, 512] if variant != "10k" else [16, 32, 64, 128, 256]
    net = {f"enc.{i}": conv(3 if i == 0 else w[i - 1], w[i]) for i in range(len(w))}
    net["bottleneck"] = conv(w[-1] + d, 512, k=1)
    for i in range(len(w)):
        net[f"up.{i}"] = up(512 if i == len(w) - 1 else w[i], w[i])
        net[f"dec.{i}"] = conv(2 * w[i], w[max(i - 1, 0)])
    if variant != "4k":
        net[f"outer_{variant}_enc"] = conv(3, 3)
        net[f"outer_{variant}_up"] = up(16, 16)
        net[f"outer_{variant}_dec"] = conv(16 + 3, 16)
    net["out_conv"] = [("conv", 16, 3, 1, 0)]
    return net


@pytest.mark.parametrize("variant", ["4k", "8k", "10k"])
def test_l2p_unet_layers_are_the_published_ones(variant):
    """Every U-Net layer of the published 4K / 8K / 10K local decoder: 3x3 conv (padding 1) + SiLU per
    encoder level, 1x1 conv + SiLU bottleneck on [deepest level, token features], nearest 2x upsample +
    3x3 conv (no activation) then 3x3 conv + SiLU on [up, skip], 1x1 output conv."""
    unet = tm().PixelUNet(3, 24, variant)
    got = {
        name: _unet_layers(m)
        for name, m in unet.named_modules()
        if name
        and name.count(".") == (1 if name.split(".")[0] in ("enc", "up", "dec") else 0)
        and not isinstance(m, torch.nn.ModuleList)
    }
    assert got == _published_unet(variant, 24)


def test_l2p_unet_recomputes_each_stage_only_at_10k(monkeypatch):
    """Published: the 10K decoder wraps every stage in gradient checkpointing (4K / 8K do not); the
    recomputation changes memory only, the gradients are those of the plain forward."""
    import torch.utils.checkpoint as ckpt

    real, calls = ckpt.checkpoint, []
    monkeypatch.setattr(ckpt, "checkpoint", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    torch.manual_seed(0)
    x, feats = torch.randn(1, 3, 16, 16), torch.randn(1, 5, 2, 2)
    for variant, size in (("4k", 16), ("8k", 32)):
        tm().PixelUNet(3, 5, variant, widths=(4, 8, 16))(torch.randn(1, 3, size, size), feats).sum().backward()
    assert calls == []
    net = tm().PixelUNet(3, 5, "10k", widths=(4, 8, 16))
    net(x, feats).sum().backward()
    assert len(calls) == 7 and all(
        kw == {"use_reentrant": False} for kw in calls
    )  # outer, 2 enc, bottleneck, 2 dec, outer
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    net.checkpoint_stages = False
    net(x, feats).sum().backward()
    assert len(calls) == 7
    assert all(torch.allclose(p.grad, grads[n], atol=1e-6) for n, p in net.named_parameters())


def test_verify_rows_of_a_failed_sr_and_an_unreadable_output(tmp_path):
    import pandas as pd
    from test_verify import _shard_fixture

    from pixverve.verify.fidelity import load_lpips, verify_shard

    table, config = _shard_fixture(tmp_path, lambda sr: sr)
    failed = table.iloc[0].to_dict() | {"image_id": "b" * 16, "passed": False, "reason": "sr_failed"}
    missing = table.iloc[0].to_dict() | {"image_id": "c" * 16, "output_path": str(tmp_path / "none.tif")}
    rows = verify_shard(
        pd.DataFrame([failed, missing]),
        config,
        tmp_path,
        log=lambda *_: None,
        lpips_model=load_lpips(config["verify"]["consistency"]["lpips"]),
    )
    b, c = rows.iloc[0].to_dict(), rows.iloc[1].to_dict()
    assert (b["reason"], b["reason_detail"]) == ("no_sr_output", "SR failed: sr_failed") and not b["passed"]
    assert c["reason"] == "unreadable" and "none.tif" in c["reason_detail"] and not c["passed"]
    for r in (b, c):
        assert (r["n_seams"], r["max_seam_ratio"], r["worst_seam"], r["seams"]) == (0, 0.0, "", "[]")
        assert not r["seam_ok"] and not r["consistency_ok"] and math.isnan(r["psnr"]) and math.isnan(r["lpips"])
        assert (r["root"], r["relpath"], r["shard"], r["scale"]) == ("r", "a.png", "s00000", 4)
        assert math.isnan(r["ssim"]) and math.isnan(r["max_lpips"]) and r["seam_max_ratio"] == 2.0
    assert [r["image_id"] for r in (b, c)] == ["b" * 16, "c" * 16]


# ------------------------------------------------------------------------------------ super-resolution (stage 3)


def test_sr_tiles_reflect_pad_to_the_models_multiple():
    """A tile is padded at its bottom / right edge (reflected, not zeros) to the next multiple the
    model needs, and the original size is returned so the output can be cropped back."""
    from pixverve.upscale.sr import _pad_to

    tile = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5, 1)
    padded, h, w = _pad_to(tile, 4)
    assert (h, w) == (3, 5) and padded.shape == (4, 8, 1)
    assert np.array_equal(padded[:3, :5], tile)
    assert padded[3, :5, 0].tolist() == tile[1, :, 0].tolist()  # row 3 reflects row 1
    assert padded[:3, 5:, 0].tolist() == tile[:, [3, 2, 1], 0].tolist()  # columns 5-7 reflect 3, 2, 1
    for shape, want in (((4, 6, 1), (4, 8, 1)), ((5, 4, 1), (8, 4, 1))):  # one side a multiple: the other padded
        padded, h, w = _pad_to(np.ones(shape, np.uint8), 4)
        assert padded.shape == want and (h, w) == shape[:2]
    same, h, w = _pad_to(np.ones((4, 8, 1), np.uint8), 4)
    assert same.shape == (4, 8, 1) and (h, w) == (4, 8)


def test_a_models_larger_scale_is_area_averaged_down_to_the_tier():
    """A x8 model serving a x2 tier: its output is shrunk by 4 with area averaging (block means) to
    exactly x2; a scale that does not divide the model's is refused."""
    from pixverve.upscale.sr import SRBackend, SRUnavailable, tile_function

    block = np.array([9, -3, -3, -3])  # zero mean over 4, not over the 2 centre samples bilinear uses
    offsets = (block[:, None] + block[None, :])[..., None]

    def run(tiles, scale):
        assert scale == 8
        outs = []
        for t in tiles:
            base = np.kron(t.astype(int), np.ones((8, 8, 1), int))
            outs.append((base + np.tile(offsets, (2 * t.shape[0], 2 * t.shape[1], 1))).astype(np.uint8))
        return outs

    tile = np.repeat(np.array([[40, 80, 120], [160, 200, 100]], np.uint8)[..., None], 3, axis=2)  # 2 x 3 RGB
    (out,) = tile_function(SRBackend("x8", 8, run), 2)([tile])
    assert out.shape == (4, 6, 3)
    assert np.array_equal(out, np.kron(tile, np.ones((2, 2, 1), np.uint8)))
    assert tile_function(SRBackend("x2", 2, lambda t, s: ["same"]), 2)([tile]) == ["same"]
    with pytest.raises(SRUnavailable):
        tile_function(SRBackend("x3", 3, run), 2)
    with pytest.raises(SRUnavailable):
        tile_function(SRBackend("x2", 2, run), 4)


def test_sr_tile_geometry_of_a_row():
    """The geometry recorded per image: none for an archived copy (x1) or a whole-image program; the
    configured tile and stride otherwise."""
    from pixverve.core.tiling import TileGrid
    from pixverve.upscale.sr import SRBackend, _geometry

    rec, spec = {"height": 600, "width": 1000}, {"tile_px": 512, "stride_px": 256}
    tiled = SRBackend("t", 4, lambda t, s: t)
    none = {"tile_px": 0, "stride_px": 0, "tiles": 0}
    assert _geometry(rec, 1, tiled, spec) == none
    assert _geometry(rec, 4, None, spec) == none
    assert _geometry(rec, 4, SRBackend("cmd", 4, None), spec) == none
    tiles = TileGrid(600, 1000, 4, 512, 256).n_tiles
    assert tiles != TileGrid(600, 1000, 4, 512).n_tiles  # the stride matters here
    assert _geometry(rec, 4, tiled, spec) == {"tile_px": 512, "stride_px": 256, "tiles": tiles}


# ------------------------------------------------------------------------------------ captions (stage 5)


def test_rex_omni_bins_map_to_pixels_as_published():
    """Rex-Omni (rex_omni/parser.py): bin / (bins - 1) * size, groups of exactly four bins, a reply cut by
    the token limit keeps its complete boxes, everything after <|im_end|> is ignored."""
    from pixverve.caption.models import parse_rex_boxes

    ref = "<|object_ref_start|> Red Sofa <|object_ref_end|><|box_start|>"
    boxes = parse_rex_boxes(ref + "<0><0><999><999>, <333><111><666><222><|box_end|>", 999, 1998)
    assert [b["box"] for b in boxes] == [[0.0, 0.0, 999.0, 1998.0], [333.0, 222.0, 666.0, 444.0]]
    assert boxes[0]["label"] == "red sofa" and boxes[0]["phrase"] == "Red Sofa" and boxes[0]["score"] == 1.0
    assert parse_rex_boxes(ref + "<0><0><9><9><|box_end|>", 90, 45, bins=10)[0]["box"] == [0.0, 0.0, 90.0, 45.0]
    assert parse_rex_boxes(ref + "<5><5><6><6><|box_end|>", 900, 900, bins=10)[0]["box"] == [500.0, 500.0, 600.0, 600.0]
    # three or five bins, a zero-width or zero-height box: skipped
    assert parse_rex_boxes(ref + "<1><2><3>, <1><2><3><4><5>, <5><1><5><9>, <1><5><9><5><|box_end|>", 999, 999) == []
    broken_first = parse_rex_boxes(ref + "<1><2><3>, <0><0><10><10><|box_end|>", 999, 999)
    assert [b["box"] for b in broken_first] == [[0.0, 0.0, 10.0, 10.0]]  # a broken group does not end the list
    # cut off mid-box: the complete box stays; after <|im_end|>: ignored
    cut = parse_rex_boxes(ref + "<0><0><10><10>, <20><2", 999, 999)
    assert [b["box"] for b in cut] == [[0.0, 0.0, 10.0, 10.0]]
    tail = ref + "<0><0><10><10><|box_end|><|im_end|>" + ref + "<0><0><20><20><|box_end|>"
    assert len(parse_rex_boxes(tail, 999, 999)) == 1


def test_box_nms_keeps_an_iou_equal_to_the_threshold():
    """Greedy box NMS: highest score first (ties by index); a box is dropped only when its IoU with a kept
    box exceeds the threshold (IoU == threshold is kept)."""
    from pixverve.core.views import box_iou, box_nms

    a, b = [0, 0, 3, 1], [1, 0, 4, 1]  # overlap 2, union 4: IoU exactly 0.5
    assert box_iou(a, b) == 0.5 and box_iou(b, a) == 0.5
    assert box_iou([0, 0, 2, 2], [2, 0, 4, 2]) == 0.0 and box_iou([0, 0, 2, 2], [3, 3, 5, 5]) == 0.0
    assert box_iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0  # empty union
    assert box_iou([0, 0, 4, 2], [1, 0, 2, 1]) == 1 / 8
    assert box_iou([0, 1, 2, 3], [0, 2, 2, 4]) == 1 / 3  # y offsets: overlap 2 x 1, union 6
    assert box_iou([0, 0, 2, 2], [1, 3, 3, 5]) == 0.0  # overlapping columns, disjoint rows
    assert box_iou([0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]) == 1.0  # a union below one pixel
    assert box_nms([a, b], [0.5, 0.9], 0.5) == [1, 0]
    assert box_nms([a, b], [0.5, 0.9], 0.4999) == [1]
    assert box_nms([a, b], [0.7, 0.7], 0.4999) == [0]  # a tie: the lower index wins
    assert box_nms([], [], 0.5) == []


def test_mask_nms_boundaries_and_reasons():
    """Mask NMS: IoU == threshold is kept, > dropped as a duplicate of the kept mask; an area fraction
    == min_area_fraction is kept, < dropped as small; kept indices returned sorted."""
    from pixverve.core.views import mask_iou, mask_nms

    a = np.zeros((4, 4), bool)
    a[:, :2] = True  # 8 px
    b = np.zeros((4, 4), bool)
    b[:, 1:3] = True  # 8 px, overlap 4, union 12: IoU 1/3
    c = np.zeros((4, 4), bool)
    c[0, 3] = True  # 1 px = 1/16 of the image
    assert mask_iou(a, b) == 1 / 3 and mask_iou(a, np.zeros((4, 4), bool)) == 0.0
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
    kept, dropped = mask_nms([a, b, c], [0.2, 0.9, 0.5], iou_threshold=1 / 3, min_area_fraction=1 / 16)
    assert kept == [0, 1, 2] and dropped == {}
    kept, dropped = mask_nms([a, b, c], [0.2, 0.9, 0.5], iou_threshold=0.333, min_area_fraction=0.0626)
    assert kept == [1]
    assert dropped == {
        0: "overlap: IoU 0.333 > 0.333 with instance 1",
        2: "small: area 0.06250 < 0.0626",
    }
    kept, dropped = mask_nms([a, b], [0.5, 0.5], iou_threshold=0.3)
    assert kept == [0] and dropped[1].endswith("with instance 0")  # a tie: the lower index wins


def test_rle_is_cocos_column_major_uncompressed_form():
    """COCO uncompressed RLE: column-major runs, the first one of zeros (0 when the mask starts set);
    decoding gives the mask back and refuses counts that do not fill h x w."""
    from pixverve.core.views import rle_decode, rle_encode

    m = np.array([[1, 0, 0], [1, 1, 0]], bool)  # column-major: 1 1 0 1 0 0
    assert rle_encode(m) == {"size": [2, 3], "counts": [0, 2, 1, 1, 2]}
    assert rle_encode(~m) == {"size": [2, 3], "counts": [2, 1, 1, 2]}
    for mask in (m, ~m, np.ones((3, 1), bool), np.zeros((1, 4), bool)):
        assert np.array_equal(rle_decode(rle_encode(mask)), mask)
    assert rle_decode({"size": [2, 3], "counts": [0, 2, 1, 1, 2]}).dtype == bool
    with pytest.raises(ValueError, match="sum to 5, expected 6"):
        rle_decode({"size": [2, 3], "counts": [0, 2, 1, 1, 1]})


def test_instance_crop_is_the_box_plus_5_percent_a_side_rounded_up():
    """The paper's instance crop: the box grown by 5 % of its size on each side (ceil, after rounding
    the product to 6 decimals so 100 * 1.1 is 110 pixels), at least 1 pixel, centred, kept inside."""
    from pixverve.core.views import padded_crop_box

    assert padded_crop_box([100, 100, 200, 300], 1000, 1000) == (95, 90, 110, 220)  # the default pad
    assert padded_crop_box([0, 0, 15, 15], 100, 100) == (0, 0, 17, 17)  # 16.5 -> 17, not rounded to 16
    assert padded_crop_box([0, 0, 100.0000004, 100.0000004], 1000, 1000) == (0, 0, 110, 110)  # 110.00000044
    assert padded_crop_box([5, 5, 5, 5], 100, 100) == (4, 4, 1, 1)  # an empty box: one pixel


def test_a_view_box_maps_back_to_full_resolution_pixels():
    """map_box: scale by region / view size per axis, add the region's offset, clip to the region."""
    from pixverve.core.views import map_box

    assert map_box([10, 20, 30, 40], (100, 50), (1000, 2000, 400, 100)) == [1040.0, 2040.0, 1120.0, 2080.0]
    assert map_box([-10, -5, 110, 60], (100, 50), (1000, 2000, 400, 100)) == [1000.0, 2000.0, 1400.0, 2100.0]
    assert map_box([50, 25, 150, 75], (100, 50), (0, 0, 200, 100)) == [100.0, 50.0, 200.0, 100.0]


def test_detector_tiles_default_overlap_and_even_spread():
    """grid x grid tiles of ceil(side / grid * 1.1) (10 % overlap by default), the first at 0, the last at
    the far edge, the ones between spread evenly (rounded)."""
    from pixverve.core.views import tile_regions

    xs, ys = (0, 316, 633), (0, 222, 443)  # (1000 - 367) / 2 = 316.5, (700 - 257) / 2 = 221.5
    assert tile_regions(1000, 700, 3) == [(x, y, 367, 257) for y in ys for x in xs]
    assert tile_regions(1000, 700, 2) == [(x, y, 550, 386) for y in (0, 314) for x in (0, 450)]
    assert tile_regions(1000, 700, 1) == tile_regions(1000, 700, 0) == [(0, 0, 1000, 700)]


def test_scheme2_window_settings_defaults_and_pattern_spelling():
    """train.runs.*.window: the published 24 x 24 window and the resolution's preset by default; patterns
    spelled "FHxFW" / "FH*FW" / "N", separated by "," or ";"; none / off / "" = no pattern (the fallback)."""
    from pixverve.train import patterns

    assert patterns.window_settings({}, 4096) == {
        "pattern": [[1, 1], [8, 16], [16, 8], [4, 32], [32, 4]],
        "window_size": [24, 24],
        "max_windows_per_batch": 4,
        "checkpoint_chunks": True,
    }
    own = {"window_size": [16, 32], "pattern": {"8192": "off"}, "max_windows_per_batch": 2, "checkpoint_chunks": False}
    assert patterns.window_settings(own, 8192) == {
        "pattern": None,
        "window_size": [16, 32],
        "max_windows_per_batch": 2,
        "checkpoint_chunks": False,
    }
    assert patterns.window_settings({"window_size": 12}, 8192)["window_size"] == [12, 12]
    assert patterns.parse_pattern("2*3; 4x1,3") == ((2, 3), (4, 1), (3, 3))
    assert patterns.parse_pattern([3, [1, 2]]) == ((3, 3), (1, 2))
    for off in ("", "none", "OFF", None):
        assert patterns.parse_pattern(off) is None
    for bad in ("2x0", "0x2", "-1"):
        with pytest.raises(ValueError, match="positive"):
            patterns.parse_pattern(bad)


def test_training_sigmas_default_to_the_standard_logit_normal():
    """sample_sigmas' defaults are the spec's logit-normal mean 0, std 1."""
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(tm().sample_sigmas(64, g1, 1.5), tm().sample_sigmas(64, g2, 1.5, 0.0, 1.0))


def test_local_attention_calls_per_window_batch_and_its_recomputation(monkeypatch):
    """Published --max_windows_per_batch: each SDPA call takes at most that many index sets (<= 0:
    all of a size at once); a chunk is recomputed in the backward pass (non-reentrant checkpoint)
    only when asked and something needs its gradient.  The results are the same either way, so
    only the calls show these settings."""
    import torch.nn.functional as F
    import torch.utils.checkpoint

    models = tm()
    sdpa, ckpt = F.scaled_dot_product_attention, torch.utils.checkpoint.checkpoint
    calls, recomputed = [], []

    def counted_sdpa(q, *args, **kwargs):
        calls.append(q.shape[0])  # batch x index sets in this call
        return sdpa(q, *args, **kwargs)

    def counted_checkpoint(fn, *args, **kwargs):
        recomputed.append(kwargs)
        return ckpt(fn, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted_sdpa)
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counted_checkpoint)
    assert models._edges(5, 2) == [0, 2, 5] and models._edges(6, 3) == [0, 2, 4, 6]
    parts = models.close_remote_partitions((4, 6), (2, 3))  # 6 close windows and 6 remote sets of 4 tokens
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3 + 24, 2, 4, generator=g) for _ in range(3))

    def run(max_windows, checkpoint, grad=True):
        calls.clear(), recomputed.clear()
        qq = q.clone().requires_grad_(grad)
        models.local_attention(qq, k, v, 3, parts, max_windows, checkpoint)
        return list(calls), len(recomputed)

    assert run(4, False) == ([1, 4, 2, 4, 2], 0)  # text, then per branch: 4 sets + the other 2
    assert run(1, False) == ([1] + [1] * 12, 0)
    assert run(0, False) == ([1, 6, 6], 0)
    assert run(-1, False) == ([1, 6, 6], 0)
    assert run(4, True) == ([1, 4, 2, 4, 2], 4) and recomputed == [{"use_reentrant": False}] * 4
    assert run(4, True, grad=False)[1] == 0  # nothing needs the gradient of q
    calls.clear(), recomputed.clear()
    models.local_attention(q.clone().requires_grad_(True), k, v, 3, parts)  # the defaults: 4 sets, recomputed
    assert (calls, len(recomputed)) == ([1, 4, 2, 4, 2], 4)
    with torch.no_grad():
        assert run(4, True)[1] == 0
    # a processor passes its own max_windows and checkpoint through
    ctx = models.WindowContext()
    ctx.grid, ctx.num_txt = (4, 6), 3
    for checkpoint, expected in ((False, 0), (True, 4)):
        proc = models.WindowAttnProcessor(ctx, (2, 3), max_windows=4, checkpoint=checkpoint)
        calls.clear(), recomputed.clear()
        out = proc._attend(q.clone().requires_grad_(True), k, v, 3)
        assert calls == [1, 4, 2, 4, 2] and len(recomputed) == expected and out.shape == (1, 27, 8)
    with pytest.raises(ValueError, match=r"sequence 26 != 3 text \+ 4x6 image tokens"):
        proc._attend(q[:, 1:], k[:, 1:], v[:, 1:], 3)


def test_l2p_adapter_freezes_the_published_middle_layers():
    """Published train_run_ds.sh: of Z-Image's 30 main layers, 5-24 are frozen (and kept in eval
    mode), the first and last 5 train."""
    from pixverve.train.loop import L2PAdapter

    adapter = object.__new__(L2PAdapter)
    adapter.frozen = tm().l2p_frozen_layers(30, 5)
    model = torch.nn.Module()
    model.transformer = torch.nn.Module()
    model.transformer.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(30))
    model.train()
    adapter.freeze(model)
    layers = model.transformer.layers
    assert [i for i, layer in enumerate(layers) if not layer.weight.requires_grad] == list(range(5, 25))
    assert [i for i, layer in enumerate(layers) if not layer.training] == list(range(5, 25))


def test_sigma_stats_names_and_values():
    """What model.json records of the noise levels a run trained on: count, mean, the share above
    0.99 (strictly) and the quantiles q01 .. q99 (NOTES "Measured" quotes these names)."""
    from pixverve.train.loop import sigma_stats

    values = [0.2, 0.5, 0.99, 0.995, 1.0]
    got = sigma_stats(values)
    assert list(got) == ["count", "mean", "frac_above_0.99", "q01", "q05", "q25", "q50", "q75", "q95", "q99"]
    assert got["count"] == 5 and got["mean"] == pytest.approx(0.737) and got["frac_above_0.99"] == 0.4
    assert got["q50"] == 0.99 and got["q25"] == 0.5 and got["q99"] == pytest.approx(0.9998)
    assert sigma_stats([]) == {"count": 0}
    assert isinstance(sigma_stats([1, 0])["mean"], float) and sigma_stats([1, 0])["mean"] == 0.5  # ints as floats


def test_fid_patch_defaults_are_the_published_ones():
    """PixVerve-Bench's FID_patch (PV eval/metrics.py): 299 px crops, 20 per pair, Random(42), top then left."""
    import inspect

    from pixverve.bench.evaluate import fid_patch_coordinates

    defaults = {k: v.default for k, v in inspect.signature(fid_patch_coordinates).parameters.items()}
    assert (defaults["crop"], defaults["per_pair"], defaults["seed"], defaults["order"]) == (299, 20, 42, "yx")


def test_z_image_table_timesteps_and_the_bf16_noise_pick_as_published():
    """DiffSynth's Z-Image table in float32: s = linspace(1, 0, N + 1)[:-1], shift s / (1 + (shift - 1) s);
    the model's timestep is s * 1000 cast to the run's dtype (bf16: multiples of 4 above 512), and
    add_noise mixes with the table entry nearest that rounded timestep."""
    models = tm()
    table = models.z_image_sigmas(4, 3.0)
    assert torch.equal(table, torch.tensor([1.0, 0.9, 0.75, 0.5]))  # float32
    big = models.z_image_sigmas(1000, 3.0)
    assert big[0] == 1.0 and len(big) == 1000 and big[-1] > 0  # zero is never a training level
    t = models.l2p_timestep(torch.tensor([0.7213, 0.25]), torch.bfloat16)
    assert t.dtype == torch.bfloat16 and t.float().tolist() == [720.0, 250.0]  # 721.3 -> the multiple of 4 below
    assert torch.equal(models.l2p_noise_sigmas(big, torch.float32, 3.0), big)  # float32: the drawn level itself
    picked = models.l2p_noise_sigmas(big, torch.bfloat16, 3.0)
    moved = (picked != big).nonzero().flatten()
    assert 0 < len(moved) < 1000 and int(moved.min()) < 100  # near t = 1000 the bf16 grid is coarser than the table's
    i = int(moved[0])
    rounded = float(models.l2p_timestep(big[i : i + 1], torch.bfloat16))
    nearest = int((big * 1000 - rounded).abs().argmin())
    assert picked[i] == big[nearest] and nearest != i


def test_l2p_model_time_is_the_published_bf16_timestep():
    """model_fn_z_image: t = (1000 - timestep) / 1000 on the bf16 timestep -- not 1 - sigma rounded."""
    from pixverve.train.models import L2PModel

    class Transformer:
        class config:
            all_patch_size = [2]

        def __init__(self):
            self.all_final_layer, self.t = {}, None

        def __call__(self, xs, t, caps, patch_size, return_dict):
            self.t = t
            self.all_final_layer["2-1"].hidden = torch.zeros(1, 4, 5, dtype=torch.bfloat16)

    class UNet(torch.nn.Module):
        def forward(self, noisy, features):
            return noisy

    transformer = Transformer()
    model = L2PModel(transformer, UNet())
    model(torch.zeros(1, 3, 4, 4, dtype=torch.bfloat16), torch.tensor([0.7213]), ["c"], 2)
    published = (1000 - torch.tensor([721.3]).to(torch.bfloat16)) / 1000
    assert transformer.t.dtype == torch.bfloat16 and torch.equal(transformer.t, published)
    assert not torch.equal(transformer.t, 1.0 - torch.tensor([0.7213]).to(torch.bfloat16))  # the old reading differs


def test_l2p_sampling_keeps_the_sample_in_float32_as_the_published_pipeline():
    """z_image_L2P.__call__: float32 noise, each Euler step x + v.float() * (s' - s) in float32 on
    the Z-Image table then 0, the model fed x in its dtype, guidance mixed in that dtype, and the
    output ((x + 1) / 2).clamp(0, 1) * 255 rounded half to even."""
    from pixverve.train.infer import generate

    calls = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))

        def forward(self, x, t, caps, patch):
            calls.append((x.dtype, t.clone(), caps[0].dtype))
            return torch.full_like(x, 0.3 if caps[0].sum() > 0 else 0.1)  # conditional 0.3, unconditional 0.1

    class Pipe:
        def encode_prompt(self, prompts, device, do_classifier_free_guidance, negative_prompt, max_sequence_length):
            return [torch.ones(2, 4)], [torch.zeros(2, 4)]

    info = {"family": "l2p", "text": {"max_length": 8}, "l2p": {"patch": 2, "shift": 3.0}, "resolution": 4}
    out = generate(info, {"pipe": Pipe(), "model": Model()}, "p", 4, 2, 4, 2.5, seed=3)
    sigmas = torch.cat([tm().z_image_sigmas(4, 3.0), torch.zeros(1)])
    x = torch.randn((1, 3, 2, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    u, c = torch.tensor(0.1, dtype=torch.bfloat16), torch.tensor(0.3, dtype=torch.bfloat16)
    v = (u + 2.5 * (c - u)).float()  # guidance in bf16: 0.6 rounded there
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = x + v * (s_next - s)
    want = (((x[0] + 1) / 2).clamp(0, 1) * 255).permute(1, 2, 0).numpy().round().astype(np.uint8)
    assert out.dtype == np.uint8 and np.array_equal(out, want)
    assert len(calls) == 8 and all(d == torch.bfloat16 and cd == torch.bfloat16 for d, _, cd in calls)
    assert [float(t) for _, t, _ in calls[::2]] == pytest.approx(sigmas[:-1].tolist())  # the table's sigma, float32
    for guidance, n_calls in ((1.0, 4), (None, 4), (0.0, 8)):  # cfg_guided_model_fn: any scale but 1 mixes
        calls.clear()
        generate(info, {"pipe": Pipe(), "model": Model()}, "p", 4, 2, 4, guidance, seed=3)
        assert len(calls) == n_calls


def test_l2p_pixels_are_diffsynths_preprocess_in_the_run_dtype():
    """preprocess_image: levels in the run's dtype, * 2/255 + (-1) there (two bf16 roundings), then
    float32: in bf16 half the 256 levels land one bf16 step away from level / 127.5 - 1."""
    from pixverve.train.loop import published_l2p_pixels

    levels = torch.arange(256, dtype=torch.float32)
    pixels = levels / 127.5 - 1
    exact = published_l2p_pixels(pixels, "cpu", torch.float32)
    assert exact.dtype == torch.float32 and torch.allclose(exact, pixels, atol=1e-6)
    bf16 = published_l2p_pixels(pixels, "cpu", torch.bfloat16)
    published = (levels.to(torch.bfloat16) * (2 / 255) + (-1)).float()
    assert torch.equal(bf16, published) and float(bf16[64]) == -0.49609375
    assert int((bf16 != pixels.to(torch.bfloat16).float()).sum()) == 128  # not one rounding of our float32 value


def test_l2p_text_encoding_leaves_the_callers_captions_alone():
    """ZImagePipeline.encode_prompt writes each chat-templated prompt back into the list it is given:
    the eval batch's captions, encoded at every eval, must not grow a template per call."""
    from pixverve.train.loop import L2PAdapter

    class Pipe:
        def encode_prompt(self, prompt, **kwargs):
            for i, p in enumerate(prompt):
                prompt[i] = f"<u>{p}</u>"  # what diffusers does with its chat template
            return [list(prompt)], None

    adapter = object.__new__(L2PAdapter)
    adapter.text_pipe, adapter.device, adapter.spec = Pipe(), "cpu", {"text": {"max_length": 8}}
    captions = ["a cat"]
    assert adapter.encode_text(captions) == [["<u>a cat</u>"]] and adapter.encode_text(captions) == [["<u>a cat</u>"]]
    assert captions == ["a cat"]
