"""Images from a trained checkpoint (rule train_sample; benchmark methods with backend checkpoint).

Schemes I/II: the base Flux2KleinPipeline with the trained transformer (full weights or the LoRA
adapter; window processors re-installed for scheme II), tiled VAE decode (paper: tile 512, stride
256), CFG, and by default the noise shift the checkpoint was trained at (``sample.shift: trained``:
model.json's ``train_shift``, static mu 0.8 unless the run said otherwise); ``sample.shift:
published`` is the published flux2_infer rule (dynamic mu at (H/16)(W/16) tokens, or mu 0.8 with
``dynamic_shift: false``), meant for base models.  Scheme III: the pixel model sampled with an Euler flow-matching loop and CFG (no
pipeline class exists for it), the base pipeline's text encoder, DiffSynth's Z-Image schedule
(static shift ``l2p.shift``, as the published L2P pipeline).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from pixverve.train import models as tm
from pixverve.train.published import (
    CHECKPOINT_FORMATS,
    RELEASED_KINDS,
    fuse_published_lora,
    l2p_layout,
    l2p_to_ours,
    l2p_to_published,
    load_strict,
    lora_target_names,
    resolve_checkpoint_file,
)


def load_checkpoint(final_dir, device: str = "cpu", dtype=torch.float32, sequential: bool = False):
    """(model.json, the loaded pipeline or pixel model) rebuilt from ``final_dir`` (written by
    train.save_final).  A tiny base is rebuilt in a temporary folder that is removed after loading.
    ``sequential`` (FLUX.2 schemes; published flux2_infer loads text encoder, DiT and VAE one after
    another): each of the three sits on ``device`` only while it runs (diffusers' model offload),
    the others wait in host memory; L2P's pipeline is loaded whole, as published."""
    with tempfile.TemporaryDirectory(prefix="pixverve-base-") as work:
        return _load_checkpoint(Path(final_dir), device, dtype, Path(work), sequential)


def _probe_dtype(info: dict, dtype):
    # a model trained with bf16 master weights wrote its probe in bf16: compare at bf16 tolerance
    return dtype if info.get("master_weights", "fp32") == "fp32" else torch.bfloat16


def _load_checkpoint(final_dir: Path, device: str, dtype, work: Path, sequential: bool):
    from safetensors.torch import load_file

    info = json.loads((final_dir / "model.json").read_text())
    if info["family"] == "flux2":
        pipe = tm.load_pipeline("flux2", info["base"], dtype, work)
        transformer = pipe.transformer
        if info.get("lora"):
            from peft import LoraConfig
            from peft.utils import set_peft_model_state_dict

            lora = info["lora"]
            transformer.add_adapter(
                LoraConfig(
                    r=int(lora["rank"]),
                    lora_alpha=float(lora["alpha"]),
                    target_modules=lora_target_names(transformer, lora["target_modules"]),
                )
            )
            weights = {
                k: v
                for k, v in load_file(final_dir / "transformer_lora.safetensors").items()
                if not k.endswith(".alpha")
            }  # alpha: for the published loader; peft has it in its config
            result = set_peft_model_state_dict(transformer, weights)
            if getattr(result, "unexpected_keys", None):
                raise tm.ModelUnavailable(f"LoRA weights do not fit the base model: {result.unexpected_keys[:5]}")
        else:
            transformer.load_state_dict(load_file(final_dir / "transformer.safetensors"))
        if tm.needs_own_processors(info["scheme"], info.get("seq_chunk")):  # settings saved by training
            tm.install_window_attention(
                transformer, info["window"] if info["scheme"] == "window" else None, info.get("seq_chunk")
            )
        pipe = _place_flux2(pipe, info["vae_tile"], info["vae_tile_stride"], device, sequential)
        tm.check_probe(
            load_file(final_dir / "probe.safetensors")["output"],
            tm.probe_output("flux2", transformer),
            _probe_dtype(info, dtype),
        )
        return info, pipe
    pipe = tm.load_pipeline("zimage", info["base"], dtype, work)
    l2p = info["l2p"]
    model = tm.l2p_build(pipe.transformer, int(l2p["patch"]), l2p.get("unet") or {})
    # the trained subset (published or our key names; checkpoints before the key: ours); frozen layers from the base
    trained = l2p_to_ours(
        load_file(final_dir / "l2p_trained.safetensors"), l2p.get("checkpoint_format") or "ours", "L2P checkpoint"
    )
    frozen = tuple(f"transformer.layers.{i}." for i in l2p["frozen_layers"])
    load_strict(model, trained, "L2P checkpoint", may_miss=frozen)
    pipe.transformer, pipe.vae = None, None
    model = model.to(device, dtype).eval()
    tm.check_probe(
        load_file(final_dir / "probe.safetensors")["output"],
        tm.probe_output("zimage", model, info["probe_patch"]),
        _probe_dtype(info, dtype),
    )
    return info, {"pipe": pipe.to(device), "model": model}


def _place_flux2(pipe, vae_tile: int, vae_tile_stride: int, device: str, sequential: bool):
    tm.configure_vae_tiling(pipe.vae, vae_tile, vae_tile_stride)
    if sequential:
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    return pipe.to(device)


# ---------------------------------------------------------------------------------------------
# the authors' released checkpoints (docs/checkpoints.md; formats: pixverve.train.published)

FLUX2_TEXT = {"max_length": 512, "out_layers": [9, 18, 27]}  # Flux2KleinPipeline's defaults (train.text.flux2)
ZIMAGE_TEXT = {"max_length": 512}  # ZImagePipeline's default (train.text.zimage)
RELEASED_L2P_SHIFT = 3.0  # published L2P pipeline: DiffSynth's Z-Image schedule, static shift 3


def released_family(released: dict) -> str:
    kind = released.get("kind")
    if kind not in RELEASED_KINDS:
        raise ValueError(f"released.kind {kind!r}: one of {', '.join(RELEASED_KINDS)}")
    return "zimage" if kind == "l2p" else "flux2"


def load_released(released: dict, base: dict, device: str = "cpu", dtype=torch.float32, sequential: bool = False):
    """(info, loaded) for :func:`generate` from a checkpoint file in the authors' published format
    (``released``: the bench key ``generate.released``) on the base pipeline ``base``
    (:func:`pixverve.train.models.load_pipeline`; its text encoder, VAE and transformer config).

    ``kind: full``: a FLUX.2 transformer file (flux2_infer ``--checkpoint_path``: a file, or a
    folder's newest step-N file), loaded strictly.  ``kind: lora``: a LoRA file (``--lora_path``)
    fused into the base transformer, ``lora_scale`` = ``--lora_alpha`` (default 1).  Both sample
    with the published shift rule.  ``kind: l2p``: a PixVerve-L2P file (the whole pixel DiT + U-Net;
    patch size, U-Net variant and widths read from it), sampled as the published L2P pipeline
    (shift 3).  ``format``: ``published`` (default) or ``ours`` (an L2P file in our L2PModel names);
    a file of the other format is an error.  ``text``: the prompt encoding (as ``train.text``; default
    the pipelines' own: 512 tokens, FLUX.2 hidden layers 9, 18, 27)."""
    from safetensors.torch import load_file

    family = released_family(released)
    fmt = released.get("format") or "published"
    if fmt not in CHECKPOINT_FORMATS:
        raise ValueError(f"released.format {fmt!r}: one of {', '.join(CHECKPOINT_FORMATS)}")
    path = resolve_checkpoint_file(released["path"], f"released {released['kind']} checkpoint")
    state = load_file(path)
    with tempfile.TemporaryDirectory(prefix="pixverve-base-") as work:
        pipe = tm.load_pipeline(family, base, dtype, Path(work))
    if family == "flux2":
        if released["kind"] == "full":
            if fmt != "published":
                raise ValueError("released.format: a FLUX.2 transformer file has one format (published = ours)")
            load_strict(pipe.transformer, state, f"FLUX.2 transformer file {path}")
        else:
            fuse_published_lora(pipe.transformer, state, float(released.get("lora_scale", 1.0)))
        pipe = _place_flux2(
            pipe, int(released.get("vae_tile", 512)), int(released.get("vae_tile_stride", 256)), device, sequential
        )
        info = {
            "family": "flux2",
            "scheme": f"released {released['kind']}",
            "text": dict(FLUX2_TEXT, **(released.get("text") or {})),
            "sample": {"shift": "published"},
            "smoke": base.get("backend") == "tiny",
            "checkpoint_file": str(path),
        }
        return info, pipe
    ours = l2p_to_ours(state, fmt, f"L2P file {path}")
    layout = l2p_layout(l2p_to_published(ours))
    model = tm.l2p_build(pipe.transformer, layout["patch"], {"widths": layout["widths"], "checkpoint_stages": False})
    if model.unet.variant != layout["variant"]:
        raise tm.ModelUnavailable(
            f"L2P file {path}: patch {layout['patch']} with U-Net widths {layout['widths']} makes the "
            f"{model.unet.variant} U-Net, but the file has the {layout['variant']} one"
        )
    load_strict(model, ours, f"L2P file {path}")
    pipe.transformer, pipe.vae = None, None
    model = model.to(device, dtype).eval()
    shift = float(released.get("shift", RELEASED_L2P_SHIFT))
    info = {
        "family": "zimage",
        "scheme": "released l2p",
        "text": dict(ZIMAGE_TEXT, **(released.get("text") or {})),
        "resolution": f"patch {layout['patch']}",
        "l2p": {"patch": layout["patch"], "shift": shift, "unet": {"widths": layout["widths"]}},
        "smoke": base.get("backend") == "tiny",
        "checkpoint_file": str(path),
    }
    return info, {"pipe": pipe.to(device), "model": model}


def export_l2p_published(final_dir, out_file, dtype=None) -> Path:
    """Our L2P checkpoint (``final_dir`` of rule train) as one file in the published format of the
    released PixVerve-L2P checkpoints: the whole pixel DiT + U-Net (the frozen layers from the
    base; published merge_weights.py) under the published ZImageDiT names."""
    from safetensors.torch import save_file

    _, loaded = load_checkpoint(final_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in loaded["model"].state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(l2p_to_published(state), tmp)
    tmp.replace(out)
    return out


STATIC_SAMPLE_MU = 0.8  # the published sampler's mu with --disable_dynamic_shift (flux2_infer/runtime.py)
SAMPLE_SHIFTS = ("trained", "published")
SHIFT_KEYS = ("shift", "dynamic_shift", "dynamic_shift_len")  # the sample / bench generate keys that pick the shift


def flux2_sample_mu(width: int, height: int, steps: int, dynamic_shift: bool = True, dynamic_shift_len=None):
    """The published FLUX.2 sampling shift: None = the pipeline's own dynamic mu at (H/16)(W/16)
    tokens (the published default); a number otherwise (--dynamic_shift_len, or 0.8 with
    --disable_dynamic_shift)."""
    if not dynamic_shift:
        return STATIC_SAMPLE_MU
    if dynamic_shift_len:
        return tm.flux2_mu(int(dynamic_shift_len), int(steps))
    return None


def _shift_settings(info: dict, settings: dict | None) -> dict:
    return (info.get("sample") or {}) if settings is None else settings


def trained_shift(info: dict) -> dict:
    """The training shift a FLUX.2 checkpoint of ours records (model.json ``train_shift``)."""
    if "train_shift" not in info:  # written before the key existed (ad2ee31): those runs trained at the dynamic fit
        return {"mode": "dynamic"}
    return tm.train_shift(info)  # null: the default static mu, as training read it


def checkpoint_sample_mu(info: dict, width: int, height: int, steps: int, settings: dict | None = None):
    """mu a FLUX.2 checkpoint samples at (None = the pipeline's dynamic mu at (H/16)(W/16) tokens).

    ``settings``: the sample keys ``shift`` / ``dynamic_shift`` / ``dynamic_shift_len`` (None: those
    saved with the checkpoint).  ``shift: trained`` (the default) samples where the weights were
    trained -- a model trained at static mu 0.8 never saw the sigmas ~1.0 the dynamic fit gives at
    4K/8K; ``published`` is flux2_infer's rule (:func:`flux2_sample_mu`)."""
    settings = _shift_settings(info, settings)
    mode = settings.get("shift") or "trained"
    if mode not in SAMPLE_SHIFTS:
        raise ValueError(f"sampling shift {mode!r}: one of {', '.join(SAMPLE_SHIFTS)}")
    if mode == "published":
        return flux2_sample_mu(
            width, height, steps, settings.get("dynamic_shift", True), settings.get("dynamic_shift_len")
        )
    shift = trained_shift(info)
    # trained at the dynamic fit (per crop's tokens): the pipeline's own fit at the image's tokens is that rule
    return shift["mu"] if shift["mode"] == "static" else None


def sample_shift_record(info: dict, width: int, height: int, steps: int, settings: dict | None = None) -> dict:
    """The shift an image was sampled at, for its record (sample.json, the bench generation log)."""
    if info["family"] != "flux2":  # L2P: DiffSynth's static Z-Image shift
        return {"sample_shift": "l2p", "sample_mu": math.log(float(info["l2p"].get("shift", 3.0)))}
    settings = _shift_settings(info, settings)
    mu = checkpoint_sample_mu(info, width, height, steps, settings)
    if mu is None:  # what the pipeline computes: its latent sequence is (H/16)(W/16) tokens
        mu = tm.flux2_mu((height // tm.TOKEN_PIXELS_FLUX2) * (width // tm.TOKEN_PIXELS_FLUX2), int(steps))
    return {
        "sample_shift": settings.get("shift") or "trained",
        "sample_mu": float(mu),
        "train_shift": trained_shift(info),
    }


def flux2_published_sigmas(steps: int, mu: float) -> torch.Tensor:
    """flux2_infer's Flux2Scheduler sigmas in its float32 arithmetic: linspace from
    1/N + (1 - 1/N) down to 1/N, N values, then the exponential shift by ``mu``."""
    low = 1 / int(steps)
    return tm.shift_sigmas(torch.linspace(low + (1.0 - low) * 1.0, low, int(steps)), float(mu))


def flux2_infer_scheduler(config):
    """A FlowMatchEulerDiscreteScheduler (identity shift: the sigmas come pre-shifted) whose step is
    flux2_infer's: ``x + v * (sigma_next - sigma)`` in the sample's dtype, the sigma difference a
    float32 CPU scalar (diffusers upcasts the sample to float32 and rounds once).  Steps are taken in
    schedule order (flux2_infer looks each up by its bf16 timestep: the same order wherever its
    timesteps are distinct in bf16)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput

    class Flux2InferSteps(FlowMatchEulerDiscreteScheduler):
        def step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
            if self.step_index is None:
                self._init_step_index(timestep)
            sigma, sigma_next = self.sigmas[self.step_index].cpu(), self.sigmas[self.step_index + 1].cpu()
            prev = sample + model_output * (sigma_next - sigma)
            self._step_index += 1
            return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    return Flux2InferSteps.from_config(config, use_dynamic_shifting=False, shift=1.0)


def flux2_published_noise(pipe, width: int, height: int, seed: int, device: str) -> torch.Tensor:
    """flux2_infer's initial noise: drawn on the run's device (its RAND_DEVICE) in the model's
    dtype, unpacked (1, C, H/16, W/16); the pipeline packs it row-major, as flux2_infer does."""
    grid = 2 * pipe.vae_scale_factor
    shape = (1, int(pipe.transformer.config.in_channels), height // grid, width // grid)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    return torch.randn(shape, generator=generator, device=device, dtype=pipe.transformer.dtype)


def flux2_published_image(pipe, latents: torch.Tensor) -> np.ndarray:
    """flux2_infer's decode and uint8 conversion: the VAE's output x (in its dtype) to
    (x + 1) * 255 / 2 clipped to [0, 255], then cast to uint8 (truncating)."""
    from diffusers.utils.torch_utils import get_module_execution_device

    with torch.no_grad():
        x = pipe.vae.decode(latents.to(get_module_execution_device(pipe.vae)), return_dict=False)[0]
    pipe.maybe_free_model_hooks()
    pixels = ((x[0].permute(1, 2, 0) - (-1)) * (255 / 2)).clip(0, 255)
    return pixels.to(device="cpu", dtype=torch.uint8).numpy()


def generate(
    info,
    loaded,
    prompt: str,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    seed: int,
    device: str = "cpu",
    shift: dict | None = None,
) -> np.ndarray:
    """One uint8 RGB image (height, width, 3).  ``shift``: the FLUX.2 sampling-shift keys
    (:func:`checkpoint_sample_mu`; None = those saved with the checkpoint)."""
    text = info["text"]
    if info["family"] == "flux2":
        mu = checkpoint_sample_mu(info, width, height, steps, shift)
        if mu is None:  # the dynamic fit at (H/16)(W/16) tokens, computed here as flux2_infer does
            mu = tm.flux2_mu((height // tm.TOKEN_PIXELS_FLUX2) * (width // tm.TOKEN_PIXELS_FLUX2), int(steps))
        scheduler = loaded.scheduler
        # flux2_infer's sigmas and step arithmetic, through an identity-shift copy of the pipeline's scheduler
        loaded.scheduler = flux2_infer_scheduler(scheduler.config)
        try:
            out = loaded(
                prompt=prompt,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                latents=flux2_published_noise(loaded, width, height, seed, device),
                sigmas=flux2_published_sigmas(steps, mu).tolist(),
                output_type="latent",
                max_sequence_length=int(text["max_length"]),
                text_encoder_out_layers=tuple(text["out_layers"]),
            )
        finally:
            loaded.scheduler = scheduler
        return flux2_published_image(loaded, out.images)
    pipe, model = loaded["pipe"], loaded["model"]
    l2p = info["l2p"]
    patch = int(l2p["patch"])
    if width % patch or height % patch:
        raise ValueError(f"L2P at {info['resolution']}: width and height must be multiples of the patch {patch}")
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(
            [prompt],
            device=device,
            do_classifier_free_guidance=True,
            negative_prompt=[""],
            max_sequence_length=int(text["max_length"]),
        )
        # DiffSynth's Z-Image schedule (published L2P): linspace(1, 0, N + 1)[:-1], static shift, then 0.
        # As the published pipeline: the sample stays float32 (noise drawn in float32, each step on
        # the prediction in float32), the model sees it and its timestep in the run's dtype
        # (L2PModel.forward), the guidance mixes in that dtype.
        sigmas = torch.cat([tm.z_image_sigmas(steps, float(l2p.get("shift", 3.0))), torch.zeros(1)])
        cfg = 1.0 if guidance is None else float(guidance)  # the published pipeline's default cfg_scale 1
        # the released batch script draws its float32 noise on the run's device (rand_device=device)
        generator = torch.Generator(device=device).manual_seed(int(seed))
        x = torch.randn((1, 3, height, width), generator=generator, device=device, dtype=torch.float32)
        for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            t = s.reshape(1)
            v = model(x.to(dtype), t, [c.to(dtype) for c in cond], patch)
            if cfg != 1.0:  # cfg_guided_model_fn: any scale but 1 mixes in the empty prompt's prediction
                v_u = model(x.to(dtype), t, [c.to(dtype) for c in uncond], patch)
                v = v_u + cfg * (v - v_u)
            x = x + v.float() * (s_next - s)
    # pixel_output_to_image: (x + 1) / 2 clamped to [0, 1], times 255, rounded half to even
    rgb = (((x[0] + 1) / 2).clamp(0, 1) * 255).permute(1, 2, 0).cpu().numpy().round()
    return rgb.astype(np.uint8)
