"""Stage 3: tile geometry, seamless feathered blending, bounded memory, backends, resume."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile

from pixverve.core.tiling import TiledTiffWriter, TileGrid, feather, naive_full_canvas, upscale_bands
from pixverve.upscale import weights as sr_weights
from pixverve.upscale.sr import SRBackend, SRUnavailable, lanczos_tiles, load_state_dict, spandrel_backend, tile_function, upscale_shard

torch = pytest.importorskip("torch")


def lanczos_fn(scale):
    return lambda tiles: lanczos_tiles(tiles, scale)


def banded(image, grid, fn):
    return np.concatenate(list(upscale_bands(image, grid, fn)))


def test_grid_tiles_are_equal_and_cover_the_image():
    g = TileGrid(300, 457, 4)  # x4: input tiles 128, stride 96
    assert g.rows() == [0, 96, 172] and g.cols() == [0, 96, 192, 288, 329]
    assert all(r + 128 <= 300 for r in g.rows()) and g.cols()[-1] + 128 == 457
    assert TileGrid(50, 60, 4).rows() == [0]  # smaller than a tile: one tile of the image's size
    with pytest.raises(ValueError):
        TileGrid(100, 100, 3)  # 512 / 3 is not whole


def test_feather_weights_ramp_inside_only():
    w = feather(512, 128, first=True, last=False)
    assert w[0] == 1 and w[383] == 1 and w[-1] == pytest.approx(0.5 / 128) and (w > 0).all()
    # neighbouring ramps sum to one over a nominal overlap
    left, right = feather(512, 128, True, False), feather(512, 128, False, True)
    np.testing.assert_allclose(left[384:] + right[:128], 1.0, atol=1e-6)


def test_banded_assembly_equals_full_canvas_blend():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 457, 3), dtype=np.uint8)
    for scale in (2, 4):
        g = TileGrid(300, 457, scale)
        out = banded(img, g, lanczos_fn(scale))
        assert out.shape == (300 * scale, 457 * scale, 3)
        np.testing.assert_array_equal(out, naive_full_canvas(img, g, lanczos_fn(scale)))


def test_constant_image_stays_constant():
    img = np.full((260, 390, 3), 77, np.uint8)
    out = banded(img, TileGrid(260, 390, 4), lanczos_fn(4))
    assert out.min() == 77 and out.max() == 77


def seam_ratio(out: np.ndarray, positions: list[int], axis: int) -> float:
    """Largest step across a tile border relative to the typical step beside it."""
    g = out.astype(np.float64).mean(axis=2)
    d = np.abs(np.diff(g, axis=axis)).mean(axis=1 - axis)  # mean step between neighbouring lines
    ratios = []
    for p in positions:
        across = d[p - 2 : p + 1].max()
        beside = np.concatenate([d[p - 10 : p - 3], d[p + 2 : p + 9]]).mean()
        ratios.append(across / max(beside, 1e-6))
    return max(ratios)


def ramp_image(h=300, w=457):
    """Steep sawtooth ramps along both axes (period 60 px): ~1.5 grey levels per output pixel."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([(xx % 60) * 4, (yy % 60) * 4, ((xx + yy) % 60) * 4]).astype(np.uint8)


def test_gradient_has_no_seams():
    img = ramp_image()
    g = TileGrid(300, 457, 4)
    out = banded(img, g, lanczos_fn(4))
    assert seam_ratio(out, [c * 4 for c in g.cols()[1:]], axis=1) < 1.6
    assert seam_ratio(out, [r * 4 for r in g.rows()[1:]], axis=0) < 1.6
    # and the result matches a whole-image Lanczos resize away from the image border
    whole = cv2.resize(img, (457 * 4, 300 * 4), interpolation=cv2.INTER_LANCZOS4).astype(int)
    assert np.abs(out[16:-16, 16:-16].astype(int) - whole[16:-16, 16:-16]).max() <= 2


def test_a_planted_seam_is_visible_to_the_measure():
    out = banded(ramp_image(), TileGrid(300, 457, 4), lanczos_fn(4)).copy()
    out[:, 384:] = np.clip(out[:, 384:].astype(int) + 12, 0, 255)
    assert seam_ratio(out, [384], axis=1) > 3


def test_tiff_writer_roundtrip_and_layout(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (300, 457, 3), dtype=np.uint8)
    g = TileGrid(300, 457, 2)
    path = tmp_path / "o.tif"
    TiledTiffWriter(path, g.out_h, g.out_w, tile=256).write(upscale_bands(img, g, lanczos_fn(2)))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert tif.is_bigtiff and page.is_tiled and page.tilelength == 256
        np.testing.assert_array_equal(page.asarray(), banded(img, g, lanczos_fn(2)))
    with pytest.raises(ValueError, match="rows"):
        TiledTiffWriter(tmp_path / "bad.tif", 100, 50).write(iter([np.zeros((60, 50, 3), np.uint8)]))
    assert not (tmp_path / "bad.tif").exists()  # no half-written output


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from pixverve.core.tiling import TiledTiffWriter, TileGrid, upscale_bands
    from pixverve.upscale.sr import lanczos_tiles
    img = np.random.default_rng(0).integers(0, 255, (2560, 2560, 3), dtype=np.uint8)
    g = TileGrid(2560, 2560, 4)
    TiledTiffWriter(sys.argv[2], g.out_h, g.out_w, compression=None).write(
        upscale_bands(img, g, lambda t: lanczos_tiles(t, 4), batch=8))
    # VmHWM: this process's own peak (ru_maxrss would carry the forking parent's over exec)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
    print(int(hwm.split()[1]) * 1024)
    """
)


def test_memory_is_bounded_by_the_band_not_the_canvas(tmp_path):
    out = tmp_path / "big.tif"
    res = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(Path(__file__).resolve().parent.parent), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    peak = int(res.stdout.split()[-1])
    out_w = out_h = 2560 * 4  # 104.9 MP output
    canvas_float = out_h * out_w * 3 * 4 + out_h * out_w * 4  # a naive float32 canvas + weights: 1.68 GB
    band = 512 * out_w * (3 * 4 + 4)  # one tile row of accumulator + weights: 84 MB
    baseline = 2560 * 2560 * 3 + 200 * 2**20  # the input image + interpreter and libraries
    assert peak < baseline + 2 * band, f"peak RSS {peak / 2**20:.0f} MB"
    assert peak < canvas_float / 3
    with tifffile.TiffFile(out) as tif:
        assert (tif.pages.first.imagelength, tif.pages.first.imagewidth) == (out_h, out_w)


def test_x2_from_an_x4_model_is_area_downsampled():
    calls = []

    def x4(tiles, scale):
        calls.append(scale)
        return lanczos_tiles(tiles, 4)

    backend = SRBackend("fake-x4", 4, x4)
    tile = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    (out,) = tile_function(backend, 2)([tile])
    expected = cv2.resize(lanczos_tiles([tile], 4)[0], (128, 128), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out, expected)
    assert calls == [4]
    with pytest.raises(SRUnavailable, match="x2"):
        tile_function(SRBackend("x2", 2, x4), 4)


@pytest.fixture(scope="session")
def realesrgan_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "RealESRGAN_x4plus.safetensors"
    sr_weights.write_safetensors(sr_weights.convert(*sr_weights.wheel_model_files()), path)
    return path


def test_real_esrgan_weights_from_the_wheel(realesrgan_weights):
    state = load_state_dict(realesrgan_weights)
    assert len(state) == 2 * len(sr_weights.rrdbnet_keys())
    assert tuple(state["conv_first.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["body.22.rdb3.conv5.weight"].shape) == (64, 192, 3, 3)
    backend = spandrel_backend(str(realesrgan_weights))
    assert backend.model_scale == 4
    from skimage import data

    img = np.ascontiguousarray(data.astronaut()[180:228, 200:264])  # 48 x 64, a face
    (out,) = backend.run([img], 4)
    assert out.shape == (192, 256, 3) and out.dtype == np.uint8
    bicubic = cv2.resize(img, (256, 192), interpolation=cv2.INTER_CUBIC).astype(int)
    assert np.abs(out.astype(int) - bicubic).mean() < 12  # a real SR model, not random weights
    # random weights of the same architecture would be far off
    assert np.abs(out.astype(int) - bicubic).mean() < np.abs(np.full_like(bicubic, 128) - bicubic).mean() / 3


def test_pickled_weights_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv_first.weight": torch.zeros(1), "x": SRBackend("a", 1, None)}, path)
    with pytest.raises(Exception):
        load_state_dict(path)
    with pytest.raises(SRUnavailable, match="sr_weights"):
        load_state_dict(tmp_path / "missing.pth")


def _config(tmp_path, backend="lanczos", template=None):
    return {
        "sources": {"roots": [{"name": "r", "path": str(tmp_path / "src")}]},
        "io": {"max_megapixels": 50, "alpha_background": [255, 255, 255]},
        "upscale": {
            "backend": backend,
            "tile_px": 512,
            "stride_px": 384,
            "tile_batch": 4,
            "prompt": "sharp",
            "command": {"template": template},
            "output": {"tiff_tile": 256, "compression": "zlib"},
        },
    }


def _rows(tmp_path, specs):
    from PIL import Image

    (tmp_path / "src").mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    rows = []
    for i, (scale, tier) in enumerate(specs):
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "src" / f"{i}.png")
        rows.append({"image_id": f"{i:016x}", "root": "r", "relpath": f"{i}.png", "shard": "s00000", "sr_tier": tier, "sr_scale": scale,
                     "width": 120, "height": 90})
    return pd.DataFrame(rows)


def test_shard_resume_skips_finished_images(tmp_path):
    rows = _rows(tmp_path, [(4, "x4"), (2, "x2"), (1, "native")])
    cfg = _config(tmp_path)
    table, timings = upscale_shard(rows, cfg, tmp_path / "out", log=lambda *_: None)
    assert table["passed"].all() and list(timings["status"]) == ["done"] * 3
    assert list(zip(table["out_width"], table["out_height"])) == [(480, 360), (240, 180), (120, 90)]
    assert list(table["backend"]) == ["lanczos", "lanczos", "archive"]
    table2, timings2 = upscale_shard(rows, cfg, tmp_path / "out", log=lambda *_: None)
    assert list(timings2["status"]) == ["existing"] * 3
    pd.testing.assert_frame_equal(table, table2)  # the record does not depend on whether work was redone


def test_command_backend_and_a_failing_image(tmp_path):
    tool = tmp_path / "sr_tool.py"
    tool.write_text(
        "import sys\nfrom PIL import Image\n"
        "a = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
        "assert a['--prompt'] == 'sharp'\n"
        "im = Image.open(a['--input']); s = int(a['--scale'])\n"
        "im.resize((im.width * s, im.height * s)).save(a['--output'], format='TIFF')\n"
    )
    template = f"{sys.executable} {tool} --input {{input}} --output {{output}} --scale {{scale}} --prompt {{prompt}}"
    rows = _rows(tmp_path, [(2, "x2"), (4, "x4")])
    (tmp_path / "src" / "1.png").write_bytes(b"broken")  # the second image cannot be read
    table, _ = upscale_shard(rows, _config(tmp_path, "command", template), tmp_path / "out", log=lambda *_: None)
    ok = table.iloc[0]
    assert ok["passed"] and ok["backend"] == "command" and ok["prompt"] == "sharp" and ok["out_width"] == 240
    assert not table.iloc[1]["passed"] and table.iloc[1]["reason"] == "sr_failed"


def test_real_esrgan_through_the_engine_shows_no_seams(realesrgan_weights):
    from skimage import data

    from pixverve.verify.fidelity import seam_positions, seam_ratios

    backend = spandrel_backend(str(realesrgan_weights))
    img = np.ascontiguousarray(data.astronaut()[150:310, 140:300])  # 160 x 160: 2 x 2 tiles of 128
    g = TileGrid(160, 160, 4)
    out = np.concatenate(list(upscale_bands(img, g, tile_function(backend, 4), batch=4)))
    assert out.shape == (640, 640, 3)
    grey = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    ratios = seam_ratios(grey, *seam_positions(g))
    assert ratios and max(r for _, _, r in ratios) < 2.0, ratios


def test_a_missing_sr_program_stops_the_job(tmp_path):
    rows = _rows(tmp_path, [(2, "x2")])
    cfg = _config(tmp_path, "command", "pixverve-no-such-sr-tool --input {input} --output {output}")
    with pytest.raises(SRUnavailable, match="cannot be run"):
        upscale_shard(rows, cfg, tmp_path / "out", log=lambda *_: None)


def test_batch_command_runs_once_per_shard_and_checks_every_output(tmp_path):
    """One process gets every image's job (ODTSR loads once); an image it could not do is that
    image's row; a rerun finds the outputs and starts no process."""
    tool = tmp_path / "batch_tool.py"
    tool.write_text(
        "import json, sys\nfrom PIL import Image\n"
        f"open({str(tmp_path / 'starts.txt')!r}, 'a').write('x')\n"
        "spec = json.load(open(sys.argv[1]))\n"
        "assert spec['options'] == {'tile': 32, 'color_fix': 'wavelet'}\n"
        "bad = 0\n"
        "for job in spec['jobs']:\n"
        "    assert job['prompt'] == 'sharp'\n"
        "    try:\n"
        "        im = Image.open(job['input']); s = job['scale']\n"
        "        im.resize((im.width * s, im.height * s)).save(job['output'], format='TIFF')\n"
        "    except Exception as exc:\n"
        "        bad += 1; print('failed', job['input'], exc, file=sys.stderr)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    rows = _rows(tmp_path, [(2, "x2"), (4, "x4"), (1, "native"), (4, "x4")])
    (tmp_path / "src" / "1.png").write_bytes(b"broken")
    cfg = _config(tmp_path, "command")
    cfg["upscale"]["command"] = {"template": None, "batch_template": f"{sys.executable} {tool} {{jobs}}",
                                 "options": {"tile": 32, "color_fix": "wavelet"}}
    table, timings = upscale_shard(rows, cfg, tmp_path / "out", log=lambda *_: None)
    assert (tmp_path / "starts.txt").read_text() == "x"  # one process for the three images to upscale
    assert list(table["passed"]) == [True, False, True, True]
    assert list(table["out_width"]) == [240, 0, 120, 480] and list(table["backend"]) == ["command", "command", "archive", "command"]
    assert table.iloc[1]["reason"] == "sr_failed" and "batch command failed (1)" in table.iloc[1]["reason_detail"]
    assert not list((tmp_path / "out").glob("*.json")) and not list((tmp_path / "out").glob("*.cmd.tif"))
    table2, timings2 = upscale_shard(rows.drop(index=1), cfg, tmp_path / "out", log=lambda *_: None)
    assert (tmp_path / "starts.txt").read_text() == "x" and set(timings2["status"]) == {"existing"}


STAND_IN_ODTSR = {
    "examples/qwen_image/generator.py": (
        "import json, torch\nfrom PIL import Image\n"
        "class _Pipe:\n    def requires_grad_(self, flag):\n        self.grad = flag\n"
        "class Generator(torch.nn.Module):\n"
        "    def __init__(self, torch_dtype=None, pretrained_weights=None, tokenizer_path=None, learning_rate=1e-4,\n"
        "                 use_gradient_checkpointing=True, pretrained_ckpt_path_gen=None):\n"
        "        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.zeros(1))\n"
        "        self.pipe = _Pipe()\n"
        "        weights = json.loads(pretrained_weights)\n"
        "        assert len(weights[0]) == 2 and len(weights[1]) == 1 and weights[2].endswith('vae/diffusion_pytorch_model.safetensors')\n"
        "        assert tokenizer_path.endswith('tokenizer') and pretrained_ckpt_path_gen.endswith('odtsr.ckpt')\n"
        "        open(pretrained_ckpt_path_gen + '.loads', 'a').write('x')\n"
        "    def infer(self, prompt, negative_prompt, condition_image, cfg_scale, fidelity, tiled, tile_size, tile_stride):\n"
        "        open(self.log, 'a').write(json.dumps([prompt, negative_prompt, list(condition_image.size), cfg_scale, fidelity,\n"
        "                                              tiled, tile_size, tile_stride]) + '\\n')\n"
        "        return condition_image\n"),
    "examples/qwen_image/wavelet_color_fix.py": (
        "def adain_color_fix(target, source):\n    return target.point(lambda v: 255 - v)\n"
        "def wavelet_color_fix(target, source):\n    return target\n"),
}


def test_odtsr_wrapper_runs_the_published_inference_steps_once_loaded(tmp_path):
    import json
    import subprocess

    from PIL import Image

    checkout = tmp_path / "ODTSR"
    for rel, text in STAND_IN_ODTSR.items():
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text(text.replace("self.log", repr(str(tmp_path / "infer.jsonl"))))
    qwen = tmp_path / "Qwen-Image"
    for rel in ("transformer/diffusion_pytorch_model-00001-of-00002.safetensors", "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
                "text_encoder/model-00001-of-00001.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        (qwen / rel).parent.mkdir(parents=True, exist_ok=True)
        (qwen / rel).write_bytes(b"")
    (tmp_path / "odtsr.ckpt").write_bytes(b"")
    Image.new("RGB", (120, 90), (10, 20, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (700, 60), (10, 20, 30)).save(tmp_path / "b.png")
    jobs = {"options": {"checkout": str(checkout), "trained_ckpt": str(tmp_path / "odtsr.ckpt"), "qwen_path": str(qwen), "device": "cpu"},
            "jobs": [{"input": str(tmp_path / "a.png"), "output": str(tmp_path / "a.tif"), "scale": 2, "prompt": "sharp"},
                     {"input": str(tmp_path / "missing.png"), "output": str(tmp_path / "m.tif"), "scale": 2, "prompt": "sharp"},
                     {"input": str(tmp_path / "b.png"), "output": str(tmp_path / "b.tif"), "scale": 1, "prompt": "sharp"}]}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    wrapper = Path(__file__).resolve().parent.parent / "pixverve" / "upscale" / "odtsr_run.py"
    res = subprocess.run([sys.executable, str(wrapper), str(tmp_path / "jobs.json")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "missing.png" in res.stderr  # one image failed, the others were done
    assert (tmp_path / "odtsr.ckpt.loads").read_text() == "x"  # the model was built once
    calls = [json.loads(line) for line in (tmp_path / "infer.jsonl").read_text().splitlines()]
    # test_sr.py: bicubic to the target size, padded to the 512 px (64 latent) tile grid with stride 384, cfg 1, fidelity 1
    assert calls[0] == ["sharp", "", [512, 512], 1.0, 1.0, True, 64, 48]
    assert calls[1][2] == [896, 512]  # 700 wide: 512 + 1 stride of 384
    with Image.open(tmp_path / "a.tif") as out:
        assert out.size == (240, 180) and out.getpixel((5, 5)) == (245, 235, 225)  # cropped back, adain colour fix applied
    assert not (tmp_path / "m.tif").exists()
