"""Images of one benchmark method that the workflow generates itself (rule bench_generate).

Backends (``bench.methods.<name>.generate.backend``):
* ``diffusers``: any diffusers text-to-image pipeline from a local folder or cached hub id (a
  checkpoint of ours saved as a pipeline, or a base model sampled directly at high resolution --
  the training-free baseline); the long caption is the prompt (as the published code does), tiled
  VAE decode when the pipeline offers it.
  With ``released`` (docs/checkpoints.md), ``model`` is the base and the authors' released
  weights replace or adapt its model: ``kind: full`` (a FLUX.2 transformer file, published
  flux2_infer ``--checkpoint_path``), ``lora`` (a LoRA file, ``--lora_path``, ``lora_scale`` =
  ``--lora_alpha``), both sampled with the published shift rule; ``l2p`` (a PixVerve-L2P file on
  the Z-Image base, the L2P sampler); ``format: published`` (default) | ``ours``.
* ``tiny``: a tiny random StableDiffusionPipeline through the same code (smoke output).
* ``checkpoint``: a checkpoint of ours from rule train (``run``, ``train_resolution``), through
  pixverve.train.infer (schemes I/II: the Flux2KleinPipeline with tiled VAE decode; III: the L2P
  sampler); smoke when the run's base was tiny.  Schemes I/II sample at the noise shift the
  checkpoint was trained with, as rule train_sample does (``shift: trained``, the default: the
  checkpoint's own sample settings); ``shift: published`` (+ ``dynamic_shift``,
  ``dynamic_shift_len``) is the published flux2_infer rule.  The folder's settings include a
  fingerprint of the checkpoint's weights, so retraining regenerates.
* ``degrade``: the real image shrunk by ``factor`` and blown back up (bicubic) -- a sanity
  baseline that must score between the real images and noise; not a method of the paper.
Seeds: ``seed_mode: fixed`` (default, as the published inference scripts: every prompt with
``seed``, 42) or ``per_image`` (ours: ``seed`` plus a hash of the image's name).  Each image is
written as ``<basename>.jpg`` at ``jpeg_quality`` (default 75: Pillow's default, with which the
published scripts save) atomically; a rerun skips images already written, so a killed generation
job resumes where it stopped.  The folder keeps the generation
settings it was filled with (``settings.json``): when they change, its images are deleted first,
so a new model never inherits an old model's images.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from pixverve.models.loading import ModelUnavailable, torch_dtype


class GeneratorUnavailable(ModelUnavailable):
    pass


PUBLISHED_SEED = 42  # flux2_infer's infer.sh and the L2P batch script: every prompt with seed 42
PUBLISHED_JPEG_QUALITY = 75  # Pillow's default, with which both scripts save their .jpg images


def image_seed(name: str, base: int) -> int:
    return (int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) + base) % (2**31)


def seed_for(spec: dict, file_name: str) -> int:
    """The seed of one benchmark image: ``seed`` itself (``seed_mode: fixed``, published) or
    ``seed`` plus a hash of the file's stem (``per_image``, ours)."""
    base = int(spec.get("seed", PUBLISHED_SEED))
    mode = spec.get("seed_mode", "fixed")
    if mode == "fixed":
        return base
    if mode == "per_image":
        return image_seed(Path(file_name).stem, base)
    raise ValueError(f"bench.methods.<method>.generate.seed_mode: {mode!r} is not fixed or per_image")


def _save_jpeg(rgb: np.ndarray, path: Path, spec: dict) -> None:
    """``rgb`` as ``path`` at the method's ``jpeg_quality`` (published 75), written atomically."""
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp.jpg")
    Image.fromarray(rgb).save(tmp, quality=int(spec.get("jpeg_quality", PUBLISHED_JPEG_QUALITY)))
    tmp.replace(path)


def load_pipeline(spec: dict):
    backend = spec["backend"]
    if backend == "tiny":
        from diffusers import DiffusionPipeline

        from pixverve.models.tiny_models import build_tiny_sd_pipeline

        with tempfile.TemporaryDirectory(prefix="pixverve-tiny-sd-") as folder:
            build_tiny_sd_pipeline(folder, seed=int(spec.get("seed", 0)))
            pipe = DiffusionPipeline.from_pretrained(folder)
        return pipe, "cpu", "tiny random StableDiffusionPipeline"
    if backend == "diffusers":
        from diffusers import DiffusionPipeline

        from pixverve.models.devices import resolve_device

        model = spec.get("model")
        if not model:
            raise GeneratorUnavailable(
                "bench method generate.model: set a local pipeline folder or hub id for backend diffusers"
            )
        dtype = torch_dtype(spec.get("dtype"), "bench.methods.<method>.generate.dtype")
        try:
            pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dtype)
        except (OSError, ValueError) as exc:
            raise GeneratorUnavailable(f"bench method generate.model: cannot load {model!r}: {exc}") from exc
        device = resolve_device(spec.get("device", "auto"))
        return pipe.to(device), device, model
    raise GeneratorUnavailable(f"unknown generate backend {backend!r} (diffusers | tiny | degrade)")


def generate_method(rows: list[dict], spec: dict, out_dir, real_dir, max_megapixels: float, log=print) -> dict:
    """Write every benchmark row's image into ``out_dir``; returns a summary for the log/record."""
    import json

    import torch
    from PIL import Image
    from tqdm import tqdm

    from pixverve.core import images

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec["backend"] == "checkpoint":
        spec = _checkpoint_settings(spec)
    elif spec.get("released"):
        spec = _released_settings(spec)
    settings = out_dir / "settings.json"
    wanted = json.dumps(spec, sort_keys=True)
    if settings.exists() and settings.read_text() != wanted:
        stale = sorted(out_dir.glob("*.jpg"))
        log(f"generation settings changed: deleting {len(stale)} images made with the old ones")
        for path in stale:
            path.unlink()
    settings.write_text(wanted)
    todo = [r for r in rows if not (out_dir / f"{Path(r['file_name']).stem}.jpg").exists()]
    log(f"{len(rows) - len(todo)} of {len(rows)} images already generated; {len(todo)} to go")
    if spec["backend"] == "degrade":
        f = int(spec["factor"])
        for r in tqdm(todo, desc="degrade", unit="img"):
            rgb, _ = images.read_rgb(Path(real_dir) / r["file_name"], max_megapixels)
            h, w = rgb.shape[:2]
            small = Image.fromarray(rgb).resize((max(1, w // f), max(1, h // f)), Image.Resampling.BICUBIC)
            _save_jpeg(
                np.asarray(small.resize((w, h), Image.Resampling.BICUBIC)),
                out_dir / f"{Path(r['file_name']).stem}.jpg",
                spec,
            )
        return {"model": f"real image down/up x{f} (sanity baseline)", "smoke": False, "generated": len(todo)}
    if spec["backend"] == "checkpoint":
        return _generate_from_checkpoint(todo, spec, out_dir, log)
    if spec.get("released"):
        return _generate_from_released(todo, spec, out_dir, log)
    if not todo:
        return {"model": spec.get("model") or spec["backend"], "smoke": spec["backend"] == "tiny", "generated": 0}
    pipe, device, model_name = load_pipeline(spec)
    if hasattr(pipe, "vae") and hasattr(pipe.vae, "enable_tiling"):
        pipe.vae.enable_tiling()  # UHR decode in tiles
    pipe.set_progress_bar_config(disable=True)
    for r in tqdm(todo, desc="generate", unit="img"):
        generator = torch.Generator(device="cpu").manual_seed(seed_for(spec, r["file_name"]))
        kwargs = {
            "height": int(spec["height"]),
            "width": int(spec["width"]),
            "num_inference_steps": int(spec["steps"]),
            "generator": generator,
            "output_type": "np",
        }
        if spec.get("guidance") is not None:
            kwargs["guidance_scale"] = float(spec["guidance"])
        out = pipe(r["long_caption"], **kwargs).images[0]
        rgb = np.clip(np.asarray(out) * 255 + 0.5, 0, 255).astype(np.uint8)
        _save_jpeg(rgb, out_dir / f"{Path(r['file_name']).stem}.jpg", spec)
    return {"model": model_name, "smoke": spec["backend"] == "tiny", "generated": len(todo), "device": device}


def _shift_keys(spec: dict) -> dict | None:
    from pixverve.train.infer import SHIFT_KEYS

    # the method's own shift keys, if any; else the checkpoint's saved sample settings (default: as trained)
    return {k: spec[k] for k in SHIFT_KEYS if k in spec} or None


def _checkpoint_settings(spec: dict) -> dict:
    """The settings a checkpoint method's images depend on beyond its config: a fingerprint of the
    trained weights and the shift it samples at, so a retrained model or a changed shift rule
    regenerates instead of keeping images from another sampler."""
    import json

    from pixverve.train.infer import sample_shift_record

    folder = Path(spec["checkpoint_dir"])
    info = json.loads((folder / "model.json").read_text())
    record = sample_shift_record(info, int(spec["width"]), int(spec["height"]), int(spec["steps"]), _shift_keys(spec))
    return dict(
        spec,
        checkpoint_fingerprint=hashlib.sha256((folder / "probe.safetensors").read_bytes()).hexdigest()[:16],
        **record,
    )


def _generate_from_checkpoint(todo: list[dict], spec: dict, out_dir: Path, log) -> dict:
    import json

    from pixverve.models.devices import resolve_device
    from pixverve.train.infer import load_checkpoint

    info = json.loads((Path(spec["checkpoint_dir"]) / "model.json").read_text())
    name = f"ours: {spec['run']} @ {spec['train_resolution']} px ({info['scheme']}, {info['steps']} steps)"
    shift = _shift_keys(spec)
    record = {k: spec[k] for k in ("sample_shift", "sample_mu", "train_shift") if k in spec}  # _checkpoint_settings
    if not todo:
        return {"model": name, "smoke": info["smoke"], "generated": 0, **record}
    device = resolve_device(spec.get("device", "auto"))
    info, loaded = load_checkpoint(
        spec["checkpoint_dir"],
        device=device,
        dtype=torch_dtype(spec.get("dtype"), "bench.methods.<method>.generate.dtype"),
        sequential=bool(spec.get("sequential_loading", True)),
    )
    _sample_each(todo, info, loaded, spec, out_dir, device, shift)
    log(
        f"generated {len(todo)} images from {spec['checkpoint_dir']} (shift {record['sample_shift']}, mu {record['sample_mu']:.3f})"
    )
    return {"model": name, "smoke": info["smoke"], "generated": len(todo), "device": device, **record}


def _sample_each(todo: list[dict], info: dict, loaded, spec: dict, out_dir: Path, device: str, shift: dict) -> None:
    """One image per benchmark row from a loaded checkpoint (ours or a released one), seeded by
    the row's file stem, saved as ``<stem>.jpg``."""
    from tqdm import tqdm

    from pixverve.train.infer import generate

    for r in tqdm(todo, desc="generate", unit="img"):
        rgb = generate(
            info,
            loaded,
            r["long_caption"],
            int(spec["width"]),
            int(spec["height"]),
            int(spec["steps"]),
            1.0 if spec.get("guidance") is None else float(spec["guidance"]),
            seed_for(spec, r["file_name"]),
            device=device,
            shift=shift,
        )
        _save_jpeg(rgb, out_dir / f"{Path(r['file_name']).stem}.jpg", spec)


def _released_settings(spec: dict) -> dict:
    """A released-weights method's settings plus the file it reads (resolved path, size, mtime),
    so another file -- or a newer step in a folder -- regenerates."""
    from pixverve.train.published import resolve_checkpoint_file

    released = spec["released"]
    path = resolve_checkpoint_file(released["path"], f"bench released {released.get('kind')} checkpoint")
    stat = path.stat()
    return dict(spec, released_file={"path": str(path.resolve()), "bytes": stat.st_size, "mtime": stat.st_mtime})


def _generate_from_released(todo: list[dict], spec: dict, out_dir: Path, log) -> dict:
    from pixverve.models.devices import resolve_device
    from pixverve.train.infer import SHIFT_KEYS, load_released

    released = spec["released"]
    name = f"released {released['kind']} {spec['released_file']['path']} on {spec.get('model')}"
    if not todo:
        return {"model": name, "smoke": False, "generated": 0}
    if not spec.get("model"):
        raise GeneratorUnavailable("bench method generate.model: the base pipeline the released weights go into")
    device = resolve_device(spec.get("device", "auto"))
    info, loaded = load_released(
        released,
        {"backend": "diffusers", "model": spec["model"]},
        device=device,
        dtype=torch_dtype(spec.get("dtype"), "bench.methods.<method>.generate.dtype"),
        sequential=bool(spec.get("sequential_loading", True)),
    )
    # FLUX.2: the published shift rule (dynamic_shift / dynamic_shift_len as the method sets them)
    shift = dict({k: spec[k] for k in SHIFT_KEYS if k in spec}, shift="published")
    _sample_each(todo, info, loaded, spec, out_dir, device, shift)
    log(f"generated {len(todo)} images from {spec['released_file']['path']}")
    return {"model": name, "smoke": info["smoke"], "generated": len(todo), "device": device}
