"""Run ODTSR (RedMediaTech/ODTSR, the paper's one-step SR on Qwen-Image) over a shard's images,
the model loaded once: ``python pixverve/upscale/odtsr_run.py JOBS.json`` (``upscale.command.batch_template``).

Standalone on purpose (no pixverve import): it runs in ODTSR's own environment.  JOBS.json is
``{"options": upscale.command.options}``; the jobs (``{"input", "output", "scale", "prompt"}``)
come one JSON line at a time on stdin, and each gets one answer line on stdout, ``ok INPUT ->
OUTPUT`` or ``failed INPUT: ERROR`` (the traceback goes to stderr).  pixverve
(``pixverve.upscale.sr.command_batch_backend``) sends the next job only after it has checked,
re-tiled and deleted the previous output, so scratch holds one image at a time; EOF on stdin ends
the run.  A JOBS.json with its own ``"jobs"`` list is run from that list instead (by hand).
Everything else the model prints goes to stderr, so stdout carries only the answers.

Inputs are pixverve's prepared files (the project's reader: EXIF orientation applied, alpha
composited on ``io.alpha_background``, 8-bit RGB, size checked against ``io.max_megapixels``), so
this file reads them as plain RGB.  Per image it does what ODTSR's published inference
``examples/qwen_image/test_sr.py`` does (checked against that file and ``generator.py``): bicubic
upsampling to the target size, zero padding on the right/bottom to the tile grid, one tiled
``Generator.infer`` call (prompt, empty negative prompt, ``cfg``, ``fidelity``, latent tiles of
``tile`` with stride ``tile - tile // 4``), the crop back to the target size, then the colour fix
(``adain`` | ``wavelet`` | ``none``) against the upsampled input.  Options (config
``upscale.command.options``): ``checkout`` (the ODTSR clone), ``trained_ckpt``, ``qwen_path``
(the Qwen-Image folder), ``tile`` 64, ``fidelity`` 1.0, ``cfg`` 1.0, ``color_fix`` adain -- the
defaults of test_sr.py.  One image's failure is answered and the others go on; the exit status is
1 if any failed (pixverve checks every output's size either way).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

DEFAULTS = {"tile": 64, "fidelity": 1.0, "cfg": 1.0, "color_fix": "adain"}
VAE_FACTOR = 8  # ODTSR's tiles are in latent pixels; the image grid is 8x finer


def padded_size(size: int, tile: int, stride: int) -> int:
    """The smallest size >= ``size`` covered exactly by tiles of ``tile`` moved by ``stride``."""
    if size <= tile:
        return tile
    steps = -(-(size - tile) // stride)  # ceiling division
    return tile + steps * stride


def weight_files(qwen_path: Path) -> str:
    """Generator's ``pretrained_weights``: JSON of [transformer shards, text encoder shards, VAE]."""
    transformer = sorted(str(p) for p in (qwen_path / "transformer").glob("diffusion_pytorch_model-*.safetensors"))
    text = sorted(str(p) for p in (qwen_path / "text_encoder").glob("model-*.safetensors"))
    vae = qwen_path / "vae" / "diffusion_pytorch_model.safetensors"
    missing = [
        name
        for name, ok in (("transformer shards", transformer), ("text encoder shards", text), (str(vae), vae.is_file()))
        if not ok
    ]
    if missing:
        raise SystemExit(
            f"upscale.command.options.qwen_path: {qwen_path} lacks {', '.join(missing)} (a Qwen-Image download)"
        )
    return json.dumps([transformer, text, str(vae)])


def load(options: dict):
    """(Generator, colour-fix functions) from the ODTSR checkout, built the way test_sr.py builds it."""
    for key in ("checkout", "trained_ckpt", "qwen_path"):
        if not options.get(key):
            raise SystemExit(f"config key upscale.command.options.{key} is not set")
    example = Path(options["checkout"]) / "examples" / "qwen_image"
    if not (example / "generator.py").is_file():
        raise SystemExit(
            f"upscale.command.options.checkout: {example / 'generator.py'} not found "
            "(git clone https://github.com/RedMediaTech/ODTSR)"
        )
    sys.path[:0] = [str(example), str(Path(options["checkout"]))]
    import torch
    from generator import Generator
    from wavelet_color_fix import adain_color_fix, wavelet_color_fix

    qwen = Path(options["qwen_path"])
    model = Generator(
        torch_dtype=torch.bfloat16,
        pretrained_weights=weight_files(qwen),
        tokenizer_path=str(qwen / "tokenizer"),
        learning_rate=0,
        use_gradient_checkpointing=False,
        pretrained_ckpt_path_gen=options["trained_ckpt"],
    )
    model.pipe.requires_grad_(False)
    device = options.get("device", "cuda")
    model = model.to(device=device)
    model.device = next(model.parameters()).device
    model.pipe.device = model.device
    return model, {"adain": adain_color_fix, "wavelet": wavelet_color_fix}


def upscale_one(model, fixes: dict, job: dict, options: dict) -> None:
    from PIL import Image

    # the input is pixverve's prepared file, already checked against io.max_megapixels; outputs
    # of up to 400 MP would otherwise trip Pillow's decompression-bomb limit (89 MP)
    Image.MAX_IMAGE_PIXELS = None
    tile = int(options["tile"])
    stride = tile - tile // 4
    with Image.open(job["input"]) as im:
        img = im.convert("RGB")
    w, h = round(img.width * float(job["scale"])), round(img.height * float(job["scale"]))
    upsampled = img.resize((w, h), Image.BICUBIC)
    canvas = Image.new(
        "RGB",
        (
            padded_size(w, tile * VAE_FACTOR, stride * VAE_FACTOR),
            padded_size(h, tile * VAE_FACTOR, stride * VAE_FACTOR),
        ),
        0,
    )
    canvas.paste(upsampled, (0, 0))
    out = model.infer(
        prompt=job["prompt"],
        negative_prompt="",
        condition_image=canvas,
        cfg_scale=float(options["cfg"]),
        fidelity=float(options["fidelity"]),
        tiled=True,
        tile_size=tile,
        tile_stride=stride,
    )
    out = out.crop((0, 0, w, h))
    fix = options["color_fix"]
    if fix != "none":
        if fix not in fixes:
            raise SystemExit(f"upscale.command.options.color_fix: {fix!r} is not one of adain, wavelet, none")
        out = fixes[fix](target=out, source=upsampled)
    Path(job["output"]).parent.mkdir(parents=True, exist_ok=True)
    out.save(job["output"], format="TIFF")


def jobs_of(spec: dict):
    """The jobs: the file's own list (a run by hand), else one JSON line at a time from stdin,
    read only when the previous answer is out (pixverve writes the next job after it)."""
    if "jobs" in spec:
        yield from spec["jobs"]
        return
    for line in sys.stdin:
        if line.strip():
            yield json.loads(line)


def one_line(exc: BaseException) -> str:
    """An exception as one answer line (pixverve reads answers line by line)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python pixverve/upscale/odtsr_run.py JOBS.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    options = DEFAULTS | (spec.get("options") or {})
    answers = sys.stdout
    sys.stdout = sys.stderr  # the model's own prints must not mix with the answers pixverve reads
    model, fixes = load(options)
    failed = 0
    for job in jobs_of(spec):
        try:
            upscale_one(model, fixes, job, options)
            answer = f"ok {job['input']} -> {job['output']}"
        except SystemExit:
            raise
        except Exception as exc:  # one image (e.g. unreadable, out of memory) must not end the others
            failed += 1
            print(f"failed {job['input']}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            answer = f"failed {job['input']}: {one_line(exc)}"
        print(answer, file=answers, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
