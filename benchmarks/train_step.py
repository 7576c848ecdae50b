"""Per-step time and peak memory of the three training schemes, side by side in one run.

    python benchmarks/train_step.py [--resolution 256] [--steps 6] [--device cpu|cuda]
                                    [--flux2 PATH --zimage PATH] [--pattern 4k]

Each scheme runs in its own process (peak memory is per process) on one synthetic batch at
``--resolution`` (random pixels, fixed captions), through the same adapters and loss as rule
train: forward, backward and an AdamW step.  Without ``--flux2/--zimage`` the bases are the
tiny random models (CPU-sized; the ratios then show code overhead more than attention cost);
with the real pipelines on a GPU the table is the paper's comparison.  The first step (warm-up,
lazy allocations) is not timed; the median of the rest is.  Ratios are against scheme I's full
attention at the same resolution.
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


def one(args) -> dict:
    import torch

    from pixverve.config import load_config
    from pixverve.train import FAMILY, Flux2Adapter, L2PAdapter, _trainable, peak_memory_mb, step_generator
    from pixverve.train_config import resolve_run

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
        spec = resolve_run(config, "scheme3_l2p", args.resolution)
        spec["l2p"]["token_grid"] = args.token_grid
    if args.scheme == "scheme2_window":
        spec["window"] = dict(spec["window"], pattern={str(args.resolution): args.pattern})
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    work = Path("/tmp/pixverve-train-bench")
    work.mkdir(exist_ok=True)
    adapter = (L2PAdapter(spec, work, device, dtype) if FAMILY[spec["scheme"]] == "zimage"
               else Flux2Adapter(spec, work, device, dtype))
    model = _trainable(adapter.model.to(device, torch.float32), spec)
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
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=dtype, enabled=args.device == "cuda"):
            loss = adapter.loss(model, pixels, ["a mountain lake at dawn"], step_generator(0, step, 0))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tokens = ((args.resolution // 16) ** 2 if spec["scheme"] != "l2p" else args.token_grid ** 2)
    return {"scheme": args.scheme, "tokens": tokens, "step_s": statistics.median(times[1:]),
            "peak_mb": peak_memory_mb(device), "trainable_m": sum(p.numel() for p in params) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pattern", default="1x1,2x2,4x4", help="scheme II factor pattern (published 4K: 4k preset)")
    parser.add_argument("--token-grid", type=int, default=16, help="L2P token grid side (paper: 64)")
    parser.add_argument("--flux2", default=None, help="FLUX.2-klein pipeline folder (else tiny)")
    parser.add_argument("--zimage", default=None, help="Z-Image pipeline folder (else tiny)")
    parser.add_argument("--scheme", default=None, help=argparse.SUPPRESS)  # internal: one scheme per process
    args = parser.parse_args()
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
    print(f"training step at {args.resolution}x{args.resolution} px, {args.device}, {kind} models, "
          f"median of {args.steps - 1} steps")
    print(f"{'scheme':<16} {'tokens':>7} {'trainable M':>12} {'s/step':>9} {'vs I full':>10} {'peak MB':>9}")
    for r in rows:
        print(f"{r['scheme']:<16} {r['tokens']:>7} {r['trainable_m']:>12.3f} {r['step_s']:>9.4f} "
              f"{r['step_s'] / base:>9.2f}x {r['peak_mb']:>9.0f}")


if __name__ == "__main__":
    main()
