"""Loading a configured model: one error for every stage, and the device a model block asks for.

Compute nodes run offline, so a hub id is only looked up in the local Hugging Face cache
(``HF_HUB_OFFLINE=1``) and a folder is read as it is; a model that cannot be found stops the job
with the config key that named it and what to put there.
"""

from __future__ import annotations

import os
from pathlib import Path


class ModelUnavailable(RuntimeError):
    """A configured model cannot be loaded; the message names the config key and what to do.

    The stages' own errors for their models (SR, text-to-image, VLM, LPIPS, FID weights, bench
    generators) derive from it, so one ``except ModelUnavailable`` sees them all."""


def offline(model: str) -> bool:
    """Whether ``from_pretrained`` must not reach the hub for ``model`` (a folder, or offline mode)."""
    return os.environ.get("HF_HUB_OFFLINE") == "1" or Path(model).is_dir()


def load_pretrained(loader, model: str, key: str):
    """``loader(model)`` (a ``from_pretrained``), failing with the config key ``key`` when the files are missing."""
    try:
        return loader(model, local_files_only=offline(model))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"config key {key}: cannot load {model!r} ({type(exc).__name__}: {exc}). Give a local folder with the "
            "model and processor files, or a hub id already in the Hugging Face cache (compute nodes run offline)."
        ) from exc


TORCH_DTYPES = ("bfloat16", "float16", "float32")


def torch_dtype(name: str | None, key: str, default: str = "bfloat16"):
    """The torch dtype a config key names (``None``: ``default``); ``auto`` is passed on as the
    string transformers reads (let the checkpoint's own dtype decide)."""
    import torch

    name = name or default
    if name == "auto":
        return "auto"
    if name not in TORCH_DTYPES:
        raise ValueError(f"config key {key}: dtype {name!r} is not one of {', '.join(TORCH_DTYPES)}")
    return getattr(torch, name)


def model_device(spec: dict) -> str:
    """The torch device of a model block's ``device`` key (``auto``: the GPU when there is one)."""
    from pixverve.models.devices import resolve_device

    return resolve_device(spec.get("device", "auto"))
