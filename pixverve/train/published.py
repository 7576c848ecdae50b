"""Checkpoint files in the authors' published formats (issue #30), and scheme I's LoRA targets.

Read against HaojunChen663/PixVerve-95K (our own code; nothing of theirs is copied):

* FLUX.2 (``flux2_infer/infer.py`` ``load_dit``, ``flux2_infer/runtime.py`` ``load_model``,
  ``load_state_dict``, ``resolve_latest_checkpoint``, ``GeneralLoRALoader``,
  ``models/flux2_dit.py`` ``Flux2DiT``).  A full fine-tune is one safetensors file holding the
  transformer's whole state dict under its own module names (no prefix), loaded strictly; the
  published ``Flux2DiT`` has exactly the parameter names and shapes of diffusers'
  ``Flux2Transformer2DModel`` (checked on a tiny config: 33 of 33 tensors equal), so our
  ``transformer.safetensors`` is that file.  A LoRA file holds ``<module>.lora_A.weight`` (down,
  rank x in) and ``<module>.lora_B.weight`` (up, out x rank) -- or ``lora_down`` / ``lora_up``,
  an optional ``.default`` between the part and ``weight``, an optional ``diffusion_model.``
  prefix -- and optionally ``<module>.alpha``: present, A is scaled by alpha / rank (peft's
  scaling); absent, by 1.  The fuse is W += lora_alpha * B @ A (``--lora_alpha``, default 1.0).
  A path that is a folder means its newest ``*.safetensors`` (largest ``step-N`` / ``epoch-N``,
  else the newest file).
* L2P (``L2P-ZImage-HR/diffsynth/models/z_image_dit_L2P.py`` ``ZImageDiT`` /
  ``MicroDiffusionModel``, ``train_run_ds.sh`` ``--remove_prefix_in_ckpt pipe.dit.``,
  ``merge_weights.py``).  The released PixVerve-L2P checkpoints (``l2p_{4k,8k,10k}_sft``) are one
  safetensors file with the whole pixel-space DiT: the Z-Image transformer's parameters under
  diffusers' names, unprefixed (no final layer), and the U-Net local decoder under
  ``local_decoder.``: levels ``enc0, enc0b, enc1 .. enc4`` (``pool*`` have no weights),
  ``bottleneck``, ``up4 .. up0b, up0`` / ``dec4 .. dec0``, ``out_conv``, and at 8K / 10K the
  outer level ``enc_8k`` / ``up_8k`` / ``dec_8k`` or ``enc_10k_a`` / ``up_10k_a`` /
  ``dec_10k_a``.  A training checkpoint (``step-N.safetensors``) has the same names for the
  trained subset only.  Ours (:class:`pixverve.train.models.L2PModel`) is the same network
  tensor for tensor under ``transformer.`` and ``unet.`` with the U-Net levels as lists
  (``unet.enc.<i>``, ``unet.up.<i>``, ``unet.dec.<i>``, ``unet.outer_<8k|10k>_<enc|up|dec>``):
  :func:`l2p_to_published` / :func:`l2p_from_published` map the names both ways.
"""

from __future__ import annotations

import re
from pathlib import Path

from pixverve.models.loading import ModelUnavailable

CHECKPOINT_FORMATS = ("published", "ours")
RELEASED_KINDS = ("full", "lora", "l2p")

# ---------------------------------------------------------------------------------------------
# files: a path or a folder of step-N / epoch-N files


def resolve_checkpoint_file(path, label: str) -> Path:
    """``path`` itself when it is a file; for a folder, its ``*.safetensors`` with the largest
    ``step-N`` / ``epoch-N`` number (then the newest), as the published loader picks one."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise ModelUnavailable(f"{label}: {p} does not exist")
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise ModelUnavailable(f"{label}: no *.safetensors file in {p}")

    def rank(f: Path):
        m = re.search(r"(?:step|epoch)-(\d+)\.safetensors$", f.name)
        return (int(m.group(1)) if m else 0, f.stat().st_mtime)

    return max(files, key=rank)


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(model, state: dict, label: str, may_miss=()) -> None:
    """Load ``state`` into ``model``; every key must exist with the same shape, and every model
    tensor must be given (but those starting with a ``may_miss`` prefix).  The error names them."""
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    missing = [k for k in own if k not in state and not k.startswith(tuple(may_miss))]
    problems = []
    if unknown:
        problems.append(f"unknown keys (not in the model): {_names(unknown)}")
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if wrong:
        problems.append(f"shape mismatches (file vs model): {_names(wrong)}")
    if problems:
        raise ModelUnavailable(f"{label} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------------------------------
# L2P: our names <-> the published ZImageDiT's

DECODER = "local_decoder."
_OUTER = {
    "outer_8k_enc": "enc_8k",
    "outer_8k_up": "up_8k",
    "outer_8k_dec": "dec_8k",
    "outer_10k_enc": "enc_10k_a",
    "outer_10k_up": "up_10k_a",
    "outer_10k_dec": "dec_10k_a",
}
_OUTER_BACK = {v: k for k, v in _OUTER.items()}
_LEVEL = re.compile(r"^(enc|up|dec)(0b|\d+)$")


def level_name(i: int) -> str:
    """Published suffix of U-Net level ``i`` (outermost first): 0, 0b, 1, 2, 3, 4."""
    return "0" if i == 0 else "0b" if i == 1 else str(i - 1)


def level_index(name: str) -> int:
    return 0 if name == "0" else 1 if name == "0b" else int(name) + 1


def unet_key_to_published(key: str) -> str:
    """``enc.2.0.weight`` -> ``enc1.0.weight`` (a key of our PixelUNet, without ``unet.``)."""
    head, _, rest = key.partition(".")
    if head in ("enc", "up", "dec"):
        index, _, rest = rest.partition(".")
        if index.isdigit():
            return f"{head}{level_name(int(index))}.{rest}"
    elif head in _OUTER:
        return f"{_OUTER[head]}.{rest}"
    elif head in ("bottleneck", "out_conv"):
        return key
    raise KeyError(key)


def unet_key_from_published(key: str) -> str:
    """``enc1.0.weight`` -> ``enc.2.0.weight`` (a key under ``local_decoder.``, without it)."""
    head, _, rest = key.partition(".")
    m = _LEVEL.match(head)
    if m and (m.group(2) == "0b" or m.group(2) == "0" or not m.group(2).startswith("0")):
        return f"{m.group(1)}.{level_index(m.group(2))}.{rest}"
    if head in _OUTER_BACK:
        return f"{_OUTER_BACK[head]}.{rest}"
    if head in ("bottleneck", "out_conv"):
        return key
    raise KeyError(key)


def l2p_names(state) -> str:
    """``ours`` (every key under ``transformer.`` / ``unet.``) or ``published`` (none is)."""
    ours = [k for k in state if k.startswith(("transformer.", "unet."))]
    if len(ours) == len(state):
        return "ours"
    if not ours:
        return "published"
    other = [k for k in state if not k.startswith(("transformer.", "unet."))]
    raise ModelUnavailable(
        f"L2P weights mix our key names ({_names(ours, 3)}) with others ({_names(other, 3)}): not one format"
    )


def l2p_to_published(state: dict) -> dict:
    """Our L2PModel keys -> the published ZImageDiT's (``transformer.x`` -> ``x``,
    ``unet.enc.0...`` -> ``local_decoder.enc0...``); an unknown key is an error naming it."""
    out, bad = {}, []
    for k, v in state.items():
        if k.startswith("transformer."):
            out[k[len("transformer.") :]] = v
        elif k.startswith("unet."):
            try:
                out[DECODER + unet_key_to_published(k[len("unet.") :])] = v
            except KeyError:
                bad.append(k)
        else:
            bad.append(k)
    if bad:
        raise ModelUnavailable(f"L2P: keys with no published name: {_names(bad)}")
    return out


def l2p_from_published(state: dict) -> dict:
    """The published ZImageDiT's keys -> our L2PModel's (inverse of :func:`l2p_to_published`)."""
    out, bad = {}, []
    for k, v in state.items():
        if k.startswith(DECODER):
            try:
                out["unet." + unet_key_from_published(k[len(DECODER) :])] = v
            except KeyError:
                bad.append(k)
        elif k.startswith(("transformer.", "unet.")):
            bad.append(k)
        else:
            out["transformer." + k] = v
    if bad:
        raise ModelUnavailable(f"L2P: unknown local_decoder / prefixed keys in a published-format file: {_names(bad)}")
    return out


def l2p_to_ours(state: dict, expected: str | None = None, label: str = "L2P weights") -> dict:
    """``state`` in our names whichever format it has; with ``expected`` (``published`` | ``ours``,
    the declared format), a file of the other format is an error that says so."""
    found = l2p_names(state)
    if expected is not None and found != expected:
        raise ModelUnavailable(
            f"{label}: declared format {expected!r}, but the file has {found!r} key names "
            f"(e.g. {_names(state, 3)}); set the format key to {found!r}"
        )
    return dict(state) if found == "ours" else l2p_from_published(state)


def l2p_layout(state: dict, family_dim: int | None = None) -> dict:
    """What a published L2P file says about its network: patch size (from
    ``all_x_embedder.<p>-1``), U-Net variant (its outer level) and widths (from the levels'
    convolutions), as :func:`pixverve.train.models.l2p_build` takes them."""
    patches = sorted({int(m.group(1)) for k in state if (m := re.match(r"all_x_embedder\.(\d+)-1\.weight$", k))})
    if len(patches) != 1:
        raise ModelUnavailable(f"L2P file: expected one all_x_embedder.<patch>-1 (the pixel patch), found {patches}")
    variant = (
        "8k" if DECODER + "enc_8k.0.weight" in state else "10k" if DECODER + "enc_10k_a.0.weight" in state else "4k"
    )
    levels = {}
    for k, v in state.items():
        m = re.match(re.escape(DECODER) + r"enc(0b|\d+)\.0\.weight$", k)
        if m:
            levels[level_index(m.group(1))] = int(v.shape[0])
    if not levels or sorted(levels) != list(range(len(levels))):
        raise ModelUnavailable(f"L2P file: U-Net encoder levels {sorted(levels)} (expected enc0, enc0b, enc1, ...)")
    widths = [levels[i] for i in range(len(levels))]
    if variant == "10k":  # one level fewer; the bottleneck keeps the deepest width
        widths.append(int(state[DECODER + "bottleneck.0.weight"].shape[0]))
    return {"patch": patches[0], "variant": variant, "widths": widths}


# ---------------------------------------------------------------------------------------------
# FLUX.2 LoRA files as flux2_infer's GeneralLoRALoader reads them


def published_lora_modules(state: dict) -> dict:
    """{module name: (up, down, alpha or None)} of a LoRA state dict, named as the published
    loader names them (``<module>.lora_B[.default].weight`` / ``lora_up``, an optional
    ``diffusion_model.`` prefix dropped, ``<module>.alpha`` beside them)."""
    out = {}
    for key in state:
        up_part, down_part = ("lora_up", "lora_down") if ".lora_up." in key else ("lora_B", "lora_A")
        parts = key.split(".")
        if up_part not in parts:
            continue
        i = parts.index(up_part)
        module_parts = parts[:i]
        if module_parts and module_parts[0] == "diffusion_model":
            module_parts = module_parts[1:]
        down_key = key.replace(up_part, down_part)
        alpha_key = ".".join(parts[:i]) + ".alpha"
        if down_key not in state:
            raise ModelUnavailable(f"LoRA file: {key} has no {down_key}")
        out[".".join(module_parts)] = (state[key], state[down_key], state.get(alpha_key))
    if not out:
        raise ModelUnavailable(f"LoRA file: no lora_B / lora_up weights among {_names(state, 5)}")
    return out


def fuse_published_lora(model, state: dict, scale: float = 1.0) -> list[str]:
    """W += scale * B @ (A * alpha / rank) for each module of a published-format LoRA file
    (alpha / rank only when the file has ``<module>.alpha``), computed in float32.  Unlike the
    published loader (which skips names it does not find), a module the model lacks, or one that
    is not a linear layer, is an error naming it.  Returns the fused module names."""
    import torch
    from torch import nn

    pairs = published_lora_modules(state)
    modules = dict(model.named_modules())
    unknown = [n for n in pairs if n not in modules]
    if unknown:
        raise ModelUnavailable(f"LoRA file: modules not in the transformer: {_names(unknown)}")
    not_linear = [f"{n} ({type(modules[n]).__name__})" for n in pairs if not isinstance(modules[n], nn.Linear)]
    if not_linear:
        raise ModelUnavailable(f"LoRA file: targets that are not linear layers: {_names(not_linear)}")
    with torch.no_grad():
        for name, (up, down, alpha) in pairs.items():
            weight = modules[name].weight
            up, down = up.float().to(weight.device), down.float().to(weight.device)
            if alpha is not None:
                down = down * (float(alpha) / down.shape[0])
            weight.add_((float(scale) * (up @ down)).to(weight.dtype))
    return sorted(pairs)


def published_lora_state(peft_state: dict, alpha: float) -> dict:
    """Our adapter (peft's ``get_peft_model_state_dict`` of the diffusers transformer) as the
    published loader reads it: ``<module>.lora_A.weight`` / ``lora_B.weight`` under the
    transformer's own module names, and ``<module>.alpha`` (so A is scaled by alpha / rank, as
    peft scales it, and ``--lora_alpha 1.0`` reproduces the trained model)."""
    import torch

    out = {}
    for k, v in peft_state.items():
        name = k.replace(".default.", ".")
        if name.startswith("base_model.model."):
            name = name[len("base_model.model.") :]
        out[name] = v.detach().cpu().contiguous()
    for k in list(out):
        if k.endswith(".lora_A.weight"):
            out[k[: -len(".lora_A.weight")] + ".alpha"] = torch.tensor(float(alpha))
    return out


# ---------------------------------------------------------------------------------------------
# scheme I LoRA targets


def lora_target_names(model, entries) -> list[str]:
    """The exact module names a list of LoRA targets picks in ``model``.  An entry matches a
    module whose name is the entry or ends with ``.<entry>`` (peft's rule for a list); ``*``
    stands for one block index (``single_transformer_blocks.*.attn.to_out``).  Every entry must
    pick at least one module, and only linear layers: in diffusers' (and the published)
    FLUX.2 transformer the double-stream ``attn.to_out`` is a ModuleList (its linear layer is
    ``to_out.0``) while the single-stream ``attn.to_out`` is the linear layer itself."""
    from torch import nn

    names, problems = [], []
    modules = list(model.named_modules())
    for entry in entries:
        pattern = re.compile(r"(^|.*\.)" + re.escape(str(entry)).replace(r"\*", r"\d+") + "$")
        hit = [(n, m) for n, m in modules if n and pattern.match(n)]
        if not hit:
            problems.append(f"{entry!r} matches no module")
            continue
        wrong = [f"{n} ({type(m).__name__})" for n, m in hit if not isinstance(m, nn.Linear)]
        if wrong:
            problems.append(f"{entry!r} matches modules that are not linear layers: {_names(wrong, 3)}")
            continue
        names.extend(n for n, _ in hit if n not in names)
    if problems:
        raise ValueError("LoRA target_modules: " + "; ".join(problems))
    return names
