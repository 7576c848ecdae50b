"""Where models run: one rule for every backend.

A job that holds a GPU (SLURM gave it one, or CUDA_VISIBLE_DEVICES names one) but whose torch
sees none -- a CPU build of pytorch in the job's conda env, a missing driver -- stops here with
the reason instead of running on the CPU for days.  CI's one-node SLURM declares GPUs it does not
have; it sets PIXVERVE_ALLOW_CPU_FALLBACK=1 so those jobs run on the CPU.
"""

from __future__ import annotations

import os

ALLOW_CPU_ENV = "PIXVERVE_ALLOW_CPU_FALLBACK"
# what SLURM sets in a job / job step that was given GPUs (SLURM_GPUS only for --gpus)
GPU_ENV = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_GPUS", "CUDA_VISIBLE_DEVICES")


def allocated_gpus() -> list[str]:
    """``NAME=value`` of every variable that says this process was given a GPU."""
    found = []
    for name in GPU_ENV:
        value = os.environ.get(name, "").strip()
        counts = name in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS")  # a count; the others list devices
        if value and value != "-1" and not (counts and value == "0"):
            found.append(f"{name}={value}")
    return found


def resolve_device(setting: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given.

    Raises when the job holds a GPU (or the setting names ``cuda``) but torch sees none, unless
    PIXVERVE_ALLOW_CPU_FALLBACK=1 (then ``cpu``)."""
    if setting != "auto" and not setting.startswith("cuda"):
        return setting
    import torch

    if torch.cuda.is_available():
        return "cuda" if setting == "auto" else setting
    held = allocated_gpus()
    if setting == "auto" and not held:
        return "cpu"  # no GPU asked for, none there: a CPU job
    if os.environ.get(ALLOW_CPU_ENV) == "1":
        return "cpu"
    why = f"the job holds a GPU ({', '.join(held)})" if held else f"the device setting is {setting!r}"
    raise RuntimeError(
        f"{why} but torch {torch.__version__} sees no CUDA device (torch.version.cuda = "
        f"{torch.version.cuda}): a CPU build of pytorch in this env, or no driver on the node. "
        "Build the conda envs with CONDA_OVERRIDE_CUDA set on a GPU-less submit host (docs/cluster.md), "
        f"set the step's `device: cpu` to run on the CPU, or {ALLOW_CPU_ENV}=1 to allow the CPU."
    )
