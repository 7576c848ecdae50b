"""Per-step time and peak memory of the three training schemes, side by side in one run.

    python benchmarks/train_step.py [--resolution 256] [--steps 6] [--device cpu|cuda]
                                    [--flux2 PATH --zimage PATH] [--pattern 4k]
    python benchmarks/train_step.py --real-shapes [--quick] [--presets 4k 8k 10k] [--device cuda]

Each scheme runs in its own process (peak memory is per process) on one synthetic batch at
``--resolution`` (random pixels, fixed captions), through the same adapters and loss as rule
train: forward, backward and an AdamW step.  Without ``--flux2/--zimage`` the bases are the
tiny random models (CPU-sized; the ratios then show code overhead more than attention cost);
with the real pipelines on a GPU the table is the paper's comparison.  The first step (warm-up,
lazy allocations) is not timed; the median of the rest is.  Ratios are against scheme I's full
attention at the same resolution.

``--real-shapes``: no pipelines, no data -- the transformers themselves as published
(FLUX.2-klein-base-4B: flux2_infer/runtime.py's config; Z-Image L2P with the published U-Net and
layers 5-24 frozen), random bf16 weights, random inputs at 4K/8K/10K (FLUX.2: (res/16)^2 tokens +
512 text tokens; scheme II with the published pattern presets, also with sequence chunking of
projections / FFN (scheme2_chunked, --seq-chunk tokens); L2P patch 64/128/160), one AdamW
step per iteration (lr 5e-5, wd 0.01), gradient checkpointing.  ``--quick`` keeps the layer types
and head size but cuts heads/depth/width and sizes (4 x 4 L2P tokens) so it runs on a CPU: a smoke
of the code path, not a measurement.  A preset that does not fit prints "failed".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEMES = ["scheme1_full", "scheme1_lora", "scheme2_window", "scheme3_l2p"]
# --real-shapes also runs scheme II with the published sequence chunking of projections / FFN
REAL_SCHEMES = SCHEMES[:3] + ["scheme2_chunked"] + SCHEMES[3:]


def timed_step(loss_fn, opt, cuda: bool) -> float:
    """Seconds of one optimiser step (forward, backward, update), GPU work included."""
    t0 = time.perf_counter()
    loss_fn().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if cuda:
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - t0


def one(args) -> dict:
    import torch

    from pixverve.train.config import resolve_run
    from pixverve.train.loop import FAMILY, Flux2Adapter, L2PAdapter, peak_memory_mb, step_generator, trainable_model
    from pixverve.workflow import load_config

    config = load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml")
    if args.flux2:
        config["train"]["bases"]["flux2"] = {"backend": "diffusers", "model": args.flux2}
        config["train"]["text"]["flux2"] = {"max_length": 512, "out_layers": [9, 18, 27]}
    if args.zimage:
        config["train"]["bases"]["zimage"] = {"backend": "diffusers", "model": args.zimage}
        config["train"]["text"]["zimage"] = {"max_length": 512}
    spec = resolve_run(config, args.scheme, args.resolution) if args.scheme != "scheme3_l2p" else None
    if spec is None:  # L2P: the benchmark resolution must be one of the run's resolutions
        config["train"]["runs"]["scheme3_l2p"]["resolutions"] = [args.resolution]
        config["train"]["runs"]["scheme3_l2p"]["sizes"] = {
            str(args.resolution): "square"
        }  # a square step, as the others
        spec = resolve_run(config, "scheme3_l2p", args.resolution)
        spec["l2p"]["token_grid"] = args.token_grid
    if args.scheme == "scheme2_window":
        spec["window"] = dict(spec["window"], pattern={str(args.resolution): args.pattern})
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    work = Path("/tmp/pixverve-train-bench")
    work.mkdir(exist_ok=True)
    adapter = (
        L2PAdapter(spec, work, device, dtype)
        if FAMILY[spec["scheme"]] == "zimage"
        else Flux2Adapter(spec, work, device, dtype)
    )
    model = trainable_model(adapter.model.to(device, torch.float32), spec)
    if args.device == "cuda":
        inner = model.transformer if spec["scheme"] == "l2p" else model
        inner.enable_gradient_checkpointing()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    pixels = torch.rand(1, 3, args.resolution, args.resolution) * 2 - 1
    times = []
    for step in range(args.steps):
        if args.device == "cuda":
            torch.cuda.synchronize()

        def loss_fn(step=step):
            with torch.autocast(args.device, dtype=dtype, enabled=args.device == "cuda"):
                return adapter.loss(model, pixels, ["a mountain lake at dawn"], step_generator(0, step, 0))

        times.append(timed_step(loss_fn, opt, args.device == "cuda"))
    tokens = (args.resolution // 16) ** 2 if spec["scheme"] != "l2p" else args.token_grid**2
    return {
        "scheme": args.scheme,
        "tokens": tokens,
        "step_s": statistics.median(times[1:]),
        "peak_mb": peak_memory_mb(device),
        "trainable_m": sum(p.numel() for p in params) / 1e6,
    }


# ---------------------------------------------------------------------------------------------
# --real-shapes: the published architectures with random weights (nothing downloaded)

# flux2_infer/runtime.py KLEIN_BASE_4B_DIT_CONFIG (the rest: the class defaults, equal in the
# published Flux2DiT and diffusers' Flux2Transformer2DModel)
KLEIN_4B = {
    "guidance_embeds": False,
    "joint_attention_dim": 7680,
    "num_attention_heads": 24,
    "num_layers": 5,
    "num_single_layers": 20,
}
QUICK_FLUX2 = {"num_attention_heads": 2, "num_layers": 1, "num_single_layers": 1}  # CPU: real head size, 2 heads
# Z-Image (diffusers' ZImageTransformer2DModel defaults = the published ZImageDiT's: dim 3840, 30 layers)
QUICK_ZIMAGE = {"dim": 256, "n_heads": 2, "n_kv_heads": 2, "n_layers": 2, "n_refiner_layers": 1}
REAL_RES = {"4k": 4096, "8k": 8192, "10k": 10240}
QUICK_RES = {"4k": 256, "8k": 512, "10k": 640}  # L2P: the same 4 x 4 token grid at patch 64/128/160


def build_real(args, device, dtype) -> dict:
    """The --real-shapes model of one scheme and preset with its inputs: model, forward(), target,
    resolution, tokens.  On the meta device it allocates nothing (tests/test_benchmarks_quick.py
    builds every preset at the real shapes that way, so the mode cannot rot unseen)."""
    import torch
    from diffusers import Flux2Transformer2DModel, ZImageTransformer2DModel

    from pixverve.train import models as tm

    res = (QUICK_RES if args.quick else REAL_RES)[args.preset]
    torch.manual_seed(0)
    if args.scheme == "scheme3_l2p":
        cfg = dict(QUICK_ZIMAGE) if args.quick else {}
        patch = {"4k": 64, "8k": 128, "10k": 160}[args.preset]
        with torch.device(device):  # built where it runs: a random fp32 init of 6B on a CPU takes minutes
            latent = ZImageTransformer2DModel(**cfg)
            model = tm.l2p_build(latent, patch, {"checkpoint_stages": True}).to(device, dtype)
        del latent
        if not args.quick:
            model.transformer.enable_gradient_checkpointing()
        model.requires_grad_(True)
        for i in tm.l2p_frozen_layers(len(model.transformer.layers), 5):
            model.transformer.layers[i].requires_grad_(False)
        x = torch.randn(1, 3, res, res, device=device, dtype=dtype)
        cap = [torch.randn(512, model.transformer.config.cap_feat_dim, device=device, dtype=dtype)]
        tokens = (res // patch) ** 2

        def forward():
            return model(x, torch.tensor([0.5], device=device, dtype=dtype), cap, patch)

        target = torch.randn_like(x)
    else:
        cfg = dict(KLEIN_4B, **(QUICK_FLUX2 if args.quick else {}))
        with torch.device(device):
            model = Flux2Transformer2DModel(**cfg).to(device, dtype)
        if not args.quick:
            model.enable_gradient_checkpointing()
        if args.scheme == "scheme1_lora":
            import yaml

            from pixverve.train.loop import trainable_model

            # the paper config's scheme I LoRA (rank, alpha, targets), added as rule train adds it
            lora = yaml.safe_load((ROOT / "config.yaml").read_text())["train"]["runs"]["scheme1_lora"]["lora"]
            model = trainable_model(model, {"lora": lora})
        if args.scheme in ("scheme2_window", "scheme2_chunked"):
            chunk = args.seq_chunk if not args.quick else (res // 16) ** 2 // 4
            memory = {"seq_chunk_single": chunk} if args.scheme == "scheme2_chunked" else None
            tm.install_window_attention(model, tm.window_settings({}, res), memory)
        grid = res // 16
        tokens = grid * grid
        hidden = torch.randn(1, tokens, cfg.get("in_channels", 128), device=device, dtype=dtype)
        text = torch.randn(1, 512, cfg["joint_attention_dim"], device=device, dtype=dtype)
        img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(grid), torch.arange(grid), torch.arange(1)).to(
            device
        )
        txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(512)).to(device)

        def forward():
            return model(
                hidden_states=hidden,
                encoder_hidden_states=text,
                timestep=torch.tensor([0.5], device=device, dtype=dtype),
                img_ids=img_ids,
                txt_ids=txt_ids,
                guidance=None,
                return_dict=False,
            )[0]

        target = torch.randn_like(hidden)
    return {"model": model, "forward": forward, "target": target, "resolution": res, "tokens": tokens}


def real_step(args) -> dict:
    import torch
    import torch.nn.functional as F

    from pixverve.train.loop import peak_memory_mb

    device = torch.device(args.device)
    # bf16 weights (and Adam states) as in the published runs; fp32 on a CPU (no fast bf16 matmul there)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    built = build_real(args, device, dtype)
    if device.type == "cuda":  # the peak of training, not of the fp32 init before the bf16 cast
        torch.cuda.reset_peak_memory_stats(device)
    model, forward, target, res, tokens = (built[k] for k in ("model", "forward", "target", "resolution", "tokens"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(timed_step(lambda: F.mse_loss(forward().float(), target.float()), opt, device.type == "cuda"))
    return {
        "scheme": args.scheme,
        "preset": args.preset,
        "resolution": res,
        "tokens": tokens,
        "step_s": statistics.median(times[1:]) if len(times) > 1 else times[0],
        "peak_mb": peak_memory_mb(device),
        "trainable_m": sum(p.numel() for p in params) / 1e6,
        "total_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def real_table(args) -> None:
    kind = "quick (real layer types, cut widths/depths, small sizes)" if args.quick else "real shapes"
    print(
        f"training step, {kind}, random {'bf16' if args.device == 'cuda' else 'fp32'} weights, {args.device}, median of {args.steps - 1} steps after one"
    )
    print(
        f"{'scheme':<16} {'preset':>6} {'px':>6} {'tokens':>7} {'params M':>10} {'trainable M':>12} {'s/step':>9} {'peak MB':>9}"
    )
    failed = []
    for preset in args.presets:
        for scheme in args.schemes:
            cmd = [
                sys.executable,
                __file__,
                "--real-shapes",
                "--scheme",
                scheme,
                "--preset",
                preset,
                "--device",
                args.device,
                "--steps",
                str(args.steps),
                "--seq-chunk",
                str(args.seq_chunk),
            ] + (["--quick"] if args.quick else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(
                    f"{scheme:<16} {preset:>6} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
                )
                failed.append(f"{scheme} {preset}: {out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{scheme:<16} {preset:>6} {r['resolution']:>6} {r['tokens']:>7} {r['total_m']:>10.1f} "
                f"{r['trainable_m']:>12.1f} {r['step_s']:>9.3f} {r['peak_mb']:>9.0f}",
                flush=True,
            )
    if failed and args.quick:  # on a GPU a preset may not fit (a result); in CI's tiny mode a failure is a bug
        raise SystemExit("\n".join(failed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pattern", default="1x1,2x2,4x4", help="scheme II factor pattern (published 4K: 4k preset)")
    parser.add_argument("--token-grid", type=int, default=16, help="L2P token grid side (paper: 64)")
    parser.add_argument("--flux2", default=None, help="FLUX.2-klein pipeline folder (else tiny)")
    parser.add_argument("--zimage", default=None, help="Z-Image pipeline folder (else tiny)")
    parser.add_argument(
        "--real-shapes",
        action="store_true",
        help="the published architectures (FLUX.2-klein-base-4B; Z-Image L2P + U-Net) with random "
        "bf16 weights at 4K/8K/10K (a GPU)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="seconds, tiny sizes (CI checks that it still runs); with --real-shapes: cut widths/depths",
    )
    parser.add_argument("--presets", nargs="+", default=["4k", "8k", "10k"], choices=["4k", "8k", "10k"])
    parser.add_argument(
        "--seq-chunk",
        type=int,
        default=16384,
        help="tokens per projection/FFN chunk of the scheme2_chunked row (--real-shapes; quick: a quarter of the grid)",
    )
    parser.add_argument(
        "--schemes", nargs="+", default=REAL_SCHEMES, choices=REAL_SCHEMES, help="--real-shapes rows to run"
    )
    parser.add_argument("--preset", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scheme", default=None, help=argparse.SUPPRESS)  # internal: one scheme per process
    args = parser.parse_args()
    if args.real_shapes:
        if args.scheme:
            print(json.dumps(real_step(args)))
        else:
            real_table(args)
        return
    if args.quick:
        args.resolution, args.steps = 64, 2
    if args.scheme:
        print(json.dumps(one(args)))
        return
    rows = []
    for scheme in SCHEMES:
        cmd = [sys.executable, __file__, "--scheme", scheme] + [a for a in sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{scheme} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["step_s"]
    kind = "real" if (args.flux2 or args.zimage) else "tiny random"
    print(
        f"training step at {args.resolution}x{args.resolution} px, {args.device}, {kind} models, "
        f"median of {args.steps - 1} steps"
    )
    print(f"{'scheme':<16} {'tokens':>7} {'trainable M':>12} {'s/step':>9} {'vs I full':>10} {'peak MB':>9}")
    for r in rows:
        print(
            f"{r['scheme']:<16} {r['tokens']:>7} {r['trainable_m']:>12.3f} {r['step_s']:>9.4f} "
            f"{r['step_s'] / base:>9.2f}x {r['peak_mb']:>9.0f}"
        )


if __name__ == "__main__":
    main()
