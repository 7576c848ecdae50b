"""Stage 3: tile geometry, seamless feathered blending, bounded memory, backends, resume."""

from __future__ import annotations

import json
import pickle
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
from pixverve.upscale.sr import (
    SRBackend,
    SRUnavailable,
    lanczos_tiles,
    load_state_dict,
    spandrel_backend,
    tile_function,
    upscale_shard,
)

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
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
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
        rows.append(
            {
                "image_id": f"{i:016x}",
                "root": "r",
                "relpath": f"{i}.png",
                "shard": "s00000",
                "sr_tier": tier,
                "sr_scale": scale,
                "width": 120,
                "height": 90,
            }
        )
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
    _exif_png(tmp_path / "src" / "0.png", 6)  # displayed 90 wide, 120 high: the program must get it so
    (tmp_path / "src" / "1.png").write_bytes(b"broken")  # the second image cannot be read
    table, _ = upscale_shard(rows, _config(tmp_path, "command", template), tmp_path / "out", log=lambda *_: None)
    ok = table.iloc[0]
    assert (
        ok["passed"]
        and ok["backend"] == "command"
        and ok["prompt"] == "sharp"
        and (ok["out_width"], ok["out_height"]) == (180, 240)
    )
    assert not table.iloc[1]["passed"] and table.iloc[1]["reason"] == "not_an_image"  # the project's reader said so
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{0:016x}.tif"]  # no input or raw output left


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


def _exif_png(path, orientation, size=(120, 90)):
    """An asymmetric PNG stored ``size`` (w, h) with an EXIF orientation; returns the stored pixels."""
    from PIL import Image

    stored = np.random.default_rng(4).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(stored).save(path, exif=exif)
    return stored


# A stand-in for odtsr_run.py's protocol without a model: options in the {jobs} file, one JSON job
# per stdin line, one answer line per job on stdout.  It reads the input with plain Pillow (no
# EXIF, RGB as stored: the input must be prepared), upscales by nearest neighbour, and before each
# answer records what scratch holds.  Options pick misbehaviours per image id.
FAKE_RUNNER = """
import json, os, sys
from pathlib import Path
from PIL import Image
opts = json.load(open(sys.argv[1]))["options"]
open(opts["starts"], "a").write("x")
open(opts["pid"], "w").write(str(os.getpid()))
print("loading the model ...", flush=True)  # chatter on stdout is not an answer
print("some warning", file=sys.stderr)
for line in sys.stdin:
    job = json.loads(line)
    iid, folder = job["image_id"], Path(job["output"]).parent
    if iid in opts.get("crash", []) and not os.path.exists(opts["crash_marker"]):
        open(opts["crash_marker"], "w").write("x")
        print("CUDA error: an illegal memory access", file=sys.stderr, flush=True)
        os._exit(3)
    if iid in opts.get("slow", []):
        import time; time.sleep(60)
    if iid in opts.get("fail", []):
        print(f"failed {job['input']}: RuntimeError: out of memory", flush=True)
        continue
    with Image.open(job["input"]) as im:
        assert im.mode == "RGB" and "exif" not in im.info
        w, h = im.width * job["scale"] + (iid in opts.get("wrong_size", [])), im.height * job["scale"]
        if iid not in opts.get("no_output", []):
            im.resize((w, h), Image.NEAREST).save(job["output"], format="TIFF")
    census = {"id": iid, "raw": len(list(folder.glob("*.cmd.tif"))), "inputs": len(list(folder.glob("*.in.tif"))),
              "stored": sorted(p.name for p in folder.glob("*.tif") if p.name.count(".") == 1)}
    open(opts["census"], "a").write(json.dumps(census) + "\\n")
    print(f"ok {job['input']} -> {job['output']}", flush=True)
"""


def _batch_config(tmp_path, **options):
    tool = tmp_path / "fake_runner.py"
    tool.write_text(FAKE_RUNNER)
    cfg = _config(tmp_path, "command")
    options = {
        "starts": str(tmp_path / "starts.txt"),
        "census": str(tmp_path / "census.jsonl"),
        "pid": str(tmp_path / "pid"),
        "crash_marker": str(tmp_path / "crashed"),
        **options,
    }
    cfg["upscale"]["command"] = {
        "template": None,
        "batch_template": f"{sys.executable} {tool} {{jobs}}",
        "options": options,
    }
    return cfg


def _ids(*numbers):
    return [f"{n:016x}" for n in numbers]


def test_batch_command_prepares_inputs_checks_sizes_and_holds_one_image_in_scratch(tmp_path):
    """One process for the shard; inputs come through the project's reader (EXIF orientation,
    alpha on io.alpha_background); a wrong-sized, missing or refused output is that image's failed
    row while the rest go on; each output is re-tiled before the next job is sent."""
    from pixverve.core.images import read_rgb

    rows = _rows(tmp_path, [(2, "x2"), (4, "x4"), (2, "x2"), (1, "native"), (2, "x2"), (2, "x2"), (2, "x2"), (2, "x2")])
    src = tmp_path / "src"
    stored = _exif_png(src / "0.png", 6)  # stored 120 x 90, displayed 90 wide and 120 high
    from PIL import Image

    rgba = np.random.default_rng(5).integers(0, 255, (90, 120, 4), dtype=np.uint8)
    rgba[:10, :10, 3] = 0  # a transparent corner
    Image.fromarray(rgba).save(src / "1.png")
    (src / "7.png").write_bytes(b"broken")
    cfg = _batch_config(tmp_path, wrong_size=_ids(2), fail=_ids(5), no_output=_ids(6))
    cfg["io"]["alpha_background"] = [0, 128, 255]
    out = tmp_path / "out"
    table, timings = upscale_shard(rows, cfg, out, log=lambda *_: None)
    assert (tmp_path / "starts.txt").read_text() == "x"  # one process for the shard
    assert list(table["passed"]) == [True, True, False, True, True, False, False, False]
    assert list(table["reason"]) == ["", "", "sr_wrong_size", "", "", "sr_failed", "sr_no_output", "not_an_image"]
    assert "SR output is 241x180, expected 240x180" in table.iloc[2]["reason_detail"]
    assert "out of memory" in table.iloc[5]["reason_detail"]
    assert list(timings["status"]) == ["done", "done", "failed", "done", "done", "failed", "failed", "failed"]
    # orientation 6: displayed = stored turned clockwise, so the x2 output is 180 x 240 of that
    assert (table.iloc[0]["out_width"], table.iloc[0]["out_height"]) == (180, 240)
    np.testing.assert_array_equal(tifffile.imread(out / f"{0:016x}.tif")[::2, ::2], np.rot90(stored, k=-1))
    # RGBA: composited on io.alpha_background as every stage reads it
    sr = tifffile.imread(out / f"{1:016x}.tif")
    np.testing.assert_array_equal(sr[::4, ::4], read_rgb(src / "1.png", 50, background=(0, 128, 255))[0])
    assert tuple(sr[5, 5]) == (0, 128, 255)
    assert not (out / f"{2:016x}.tif").exists()  # a wrong size is stored nowhere
    # scratch: when the runner wrote each output it held that one raw output and that one input,
    # and every earlier good image was already stored as its tiled TIFF (the native 3 is archived after)
    census = [json.loads(line) for line in (tmp_path / "census.jsonl").read_text().splitlines()]
    assert [c["id"] for c in census] == _ids(0, 1, 2, 4, 6)
    assert [c["raw"] for c in census] == [1, 1, 1, 1, 0] and all(c["inputs"] == 1 for c in census)  # 6 wrote none
    assert [c["stored"] for c in census] == [
        [f"{i}.tif" for i in ids] for ids in ([], _ids(0), _ids(0, 1), _ids(0, 1), _ids(0, 1, 4))
    ]
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.tif" for i in _ids(0, 1, 3, 4)]  # no scratch left
    # a rerun finds the stored outputs and asks the runner only for the failed images
    table2, timings2 = upscale_shard(rows, _batch_config(tmp_path), out, log=lambda *_: None)
    assert (tmp_path / "starts.txt").read_text() == "xx" and table2["passed"].tolist() == [True] * 7 + [False]
    assert list(timings2["status"]) == [
        "existing",
        "existing",
        "done",
        "existing",
        "existing",
        "done",
        "done",
        "failed",
    ]


def test_a_runner_crash_mid_shard_keeps_the_finished_images(tmp_path):
    rows = _rows(tmp_path, [(2, "x2")] * 4)
    cfg = _batch_config(tmp_path, crash=_ids(2))
    table, _ = upscale_shard(rows, cfg, tmp_path / "out", log=lambda *_: None)
    assert list(table["passed"]) == [True, True, False, False] and set(table["reason"][2:]) == {"sr_failed"}
    assert table.iloc[2]["reason_detail"].startswith(
        f"SRImageFailed: the SR batch command exited (3) while on {0x2:016x}.tif.in.tif"
    )
    assert "illegal memory access" in table.iloc[2]["reason_detail"]  # the tail of its stderr says why
    assert table.iloc[3]["reason_detail"].startswith("SRImageFailed: not run: the SR batch command exited (3)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.tif" for i in _ids(0, 1)]
    table2, timings2 = upscale_shard(rows, cfg, tmp_path / "out", log=lambda *_: None)  # the crash does not recur
    assert table2["passed"].all() and list(timings2["status"]) == ["existing", "existing", "done", "done"]


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class _Stop(BaseException):
    """An interrupt of the job (as Ctrl-C or a cancel would be), not one image's error."""


def test_an_interrupted_job_kills_its_runner_mid_image(tmp_path):
    import os
    import signal
    import time

    rows = _rows(tmp_path, [(2, "x2")] * 3)
    cfg = _batch_config(tmp_path, slow=_ids(1))

    def stop(*_):
        raise _Stop

    def log(line):
        if line.startswith("SR batch 1/3:"):  # image 0 is stored; the runner now works on image 1 (60 s)
            signal.setitimer(signal.ITIMER_REAL, 1.0)

    previous = signal.signal(signal.SIGALRM, stop)
    t0 = time.monotonic()
    try:
        with pytest.raises(_Stop):
            upscale_shard(rows, cfg, tmp_path / "out", log=log)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pid = int((tmp_path / "pid").read_text())
    while _running(pid) and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    assert time.monotonic() - t0 < 30, "the runner (a child of sh -c) was left working"
    assert os.path.exists(tmp_path / "out" / f"{0:016x}.tif")  # what was finished stays
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith((".in.tif", ".cmd.tif", ".json"))]


def test_a_runner_that_never_answers_stops_the_job(tmp_path):
    from pixverve.upscale.sr import command_batch_backend

    rows = _rows(tmp_path, [(2, "x2")])
    cfg = _config(tmp_path, "command")
    exits = f"{sys.executable} -c 'import sys; sys.exit(\"config key upscale.command.options.checkout is not set\")' {{jobs}}"
    for template, message in (
        (exits, r"exited \(1\) before answering its first image(?s:.*)checkout is not set"),
        ("pixverve-no-such-runner {jobs}", r"cannot be run \(127\)"),
    ):
        cfg["upscale"]["command"] = {"template": None, "batch_template": template, "options": {}}
        with pytest.raises(SRUnavailable, match=message):
            upscale_shard(rows, cfg, tmp_path / "out", log=lambda *_: None)
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []
    # conda run would close the runner's stdin and hold its answers: refused before anything starts
    with pytest.raises(SRUnavailable, match="--no-capture-output"):
        command_batch_backend("conda run -n odtsr python pixverve/upscale/odtsr_run.py {jobs}")
    command_batch_backend("conda run --no-capture-output -n odtsr python pixverve/upscale/odtsr_run.py {jobs}")


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
        "        return condition_image\n"
    ),
    "examples/qwen_image/wavelet_color_fix.py": (
        "def adain_color_fix(target, source):\n    return target.point(lambda v: 255 - v)\n"
        "def wavelet_color_fix(target, source):\n    return target\n"
    ),
}


def _stand_in_odtsr(tmp_path) -> dict:
    """A fake ODTSR checkout and Qwen-Image folder; returns the runner's options."""
    checkout = tmp_path / "ODTSR"
    for rel, text in STAND_IN_ODTSR.items():
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text(text.replace("self.log", repr(str(tmp_path / "infer.jsonl"))))
    qwen = tmp_path / "Qwen-Image"
    for rel in (
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "text_encoder/model-00001-of-00001.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ):
        (qwen / rel).parent.mkdir(parents=True, exist_ok=True)
        (qwen / rel).write_bytes(b"")
    (tmp_path / "odtsr.ckpt").write_bytes(b"")
    return {
        "checkout": str(checkout),
        "trained_ckpt": str(tmp_path / "odtsr.ckpt"),
        "qwen_path": str(qwen),
        "device": "cpu",
    }


ODTSR_RUN = Path(__file__).resolve().parent.parent / "pixverve" / "upscale" / "odtsr_run.py"


def test_odtsr_wrapper_runs_the_published_inference_steps_once_loaded(tmp_path):
    from PIL import Image

    options = _stand_in_odtsr(tmp_path)
    Image.new("RGB", (120, 90), (10, 20, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (700, 60), (10, 20, 30)).save(tmp_path / "b.png")
    jobs = {
        "options": options,
        "jobs": [
            {"input": str(tmp_path / "a.png"), "output": str(tmp_path / "a.tif"), "scale": 2, "prompt": "sharp"},
            {"input": str(tmp_path / "missing.png"), "output": str(tmp_path / "m.tif"), "scale": 2, "prompt": "sharp"},
            {"input": str(tmp_path / "b.png"), "output": str(tmp_path / "b.tif"), "scale": 1, "prompt": "sharp"},
        ],
    }
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    res = subprocess.run(
        [sys.executable, str(ODTSR_RUN), str(tmp_path / "jobs.json")], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 1 and "missing.png" in res.stderr  # one image failed, the others were done
    # stdout carries exactly one answer per job, in order
    assert [line.split()[0] for line in res.stdout.splitlines()] == ["ok", "failed", "ok"]
    assert res.stdout.splitlines()[1].startswith(f"failed {tmp_path / 'missing.png'}: FileNotFoundError")
    assert (tmp_path / "odtsr.ckpt.loads").read_text() == "x"  # the model was built once
    calls = [json.loads(line) for line in (tmp_path / "infer.jsonl").read_text().splitlines()]
    # test_sr.py: bicubic to the target size, padded to the 512 px (64 latent) tile grid with stride 384, cfg 1, fidelity 1
    assert calls[0] == ["sharp", "", [512, 512], 1.0, 1.0, True, 64, 48]
    assert calls[1][2] == [896, 512]  # 700 wide: 512 + 1 stride of 384
    with Image.open(tmp_path / "a.tif") as out:
        assert out.size == (240, 180) and out.getpixel((5, 5)) == (
            245,
            235,
            225,
        )  # cropped back, adain colour fix applied
    assert not (tmp_path / "m.tif").exists()


def test_odtsr_padded_size():
    from pixverve.upscale.odtsr_run import padded_size

    assert [padded_size(n, 512, 384) for n in (1, 512, 513, 896, 897, 1280)] == [512, 512, 896, 896, 1280, 1280]


def test_odtsr_runner_through_the_shard_job(tmp_path):
    """The real runner (stand-in model) under upscale_shard's batch protocol: an EXIF-rotated
    image comes back upright at x2 of its displayed size."""
    from PIL import Image

    from pixverve.core.images import read_rgb

    rows = _rows(tmp_path, [(2, "x2"), (4, "x4")])
    _exif_png(tmp_path / "src" / "0.png", 8)
    cfg = _config(tmp_path, "command")
    cfg["upscale"]["command"] = {
        "template": None,
        "batch_template": f"{sys.executable} {ODTSR_RUN} {{jobs}}",
        "options": _stand_in_odtsr(tmp_path) | {"color_fix": "wavelet"},
    }
    table, _ = upscale_shard(rows, cfg, tmp_path / "out", log=lambda *_: None)
    assert table["passed"].all() and list(zip(table["out_width"], table["out_height"])) == [(180, 240), (480, 360)]
    assert (tmp_path / "odtsr.ckpt.loads").read_text() == "x"
    upright = read_rgb(tmp_path / "src" / "0.png", 50)[0]  # 120 high, 90 wide
    bicubic = np.asarray(Image.fromarray(upright).resize((180, 240), Image.BICUBIC))  # what the stand-in model returns
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{0:016x}.tif"), bicubic)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.tif" for i in _ids(0, 1)]


def _pillow_tiff(path, rgb, **kw):
    from PIL import Image

    Image.fromarray(rgb).save(path, format="TIFF", **kw)
    return path


@pytest.mark.parametrize("rows", [1, 7, 256, 5000])
def test_plain_tiff_bands_read_pillow_and_multi_strip_tiffs_as_stored(tmp_path, rows):
    from pixverve.core.tiling import plain_tiff_bands

    rgb = np.random.default_rng(rows).integers(0, 256, (301, 123, 3), dtype=np.uint8)
    single = _pillow_tiff(tmp_path / "pil.tif", rgb)  # what ODTSR's runner writes: one strip
    multi = tmp_path / "strips.tif"
    tifffile.imwrite(multi, rgb, photometric="rgb", rowsperstrip=7, metadata=None)
    for path in (single, multi):
        bands = list(plain_tiff_bands(path, rows))
        assert all(len(b) == min(rows, 301 - i * rows) for i, b in enumerate(bands))
        np.testing.assert_array_equal(np.concatenate(bands), rgb)


def test_plain_tiff_bands_leave_every_other_file_to_the_decoder(tmp_path):
    from PIL import Image

    from pixverve.core.tiling import plain_tiff_bands

    rgb = np.zeros((40, 30, 3), np.uint8)
    others = {
        "zlib.tif": lambda p: tifffile.imwrite(p, rgb, photometric="rgb", compression="zlib"),
        "tiled.tif": lambda p: tifffile.imwrite(p, rgb, photometric="rgb", tile=(16, 16)),
        "rgba.tif": lambda p: _pillow_tiff(p, np.zeros((40, 30, 4), np.uint8)),
        "grey.tif": lambda p: _pillow_tiff(p, np.zeros((40, 30), np.uint8)),
        "16bit.tif": lambda p: tifffile.imwrite(p, rgb.astype(np.uint16), photometric="rgb"),
        "rotated.tif": lambda p: tifffile.imwrite(p, rgb, photometric="rgb", extratags=[(274, 3, 1, 6, True)]),
        "png.tif": lambda p: Image.fromarray(rgb).save(p, format="PNG"),
    }
    for name, write in others.items():
        write(tmp_path / name)
        assert plain_tiff_bands(tmp_path / name) is None, name
    short = tmp_path / "short.tif"  # a strip that declares fewer bytes than its rows need
    tifffile.imwrite(short, rgb, photometric="rgb", rowsperstrip=16, metadata=None)
    with tifffile.TiffFile(short, mode="r+b") as tif:
        counts = list(tif.pages[0].databytecounts)
        tif.pages[0].tags["StripByteCounts"].overwrite([counts[0] + 5, counts[1] - 3, counts[2]])
    assert plain_tiff_bands(short) is None
    straight = tmp_path / "straight.tif"
    tifffile.imwrite(straight, rgb, photometric="rgb", extratags=[(274, 3, 1, 1, True)])
    assert plain_tiff_bands(straight) is not None  # orientation 1 is no orientation


def test_a_truncated_command_output_fails_the_image_and_leaves_no_file(tmp_path):
    from pixverve.upscale.sr import SRImageFailed, store_output

    rgb = np.random.default_rng(0).integers(0, 256, (200, 160, 3), dtype=np.uint8)
    raw = _pillow_tiff(tmp_path / "a.tif.cmd.tif", rgb)
    raw.write_bytes(raw.read_bytes()[: -160 * 3 * 50])  # the last 50 rows lost
    io = {"max_megapixels": 10, "background": (255, 255, 255), "output": {"tiff_tile": 64, "compression": "zlib"}}
    with pytest.raises(SRImageFailed) as err:
        store_output(raw, tmp_path / "a.tif", (80, 100), 2, io)
    assert err.value.code == "sr_bad_output" and "truncated" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no raw, no output, no .tmp


def test_a_command_output_is_retiled_in_bands(tmp_path):
    """A 500 x 4000 Pillow TIFF (6 MB) re-tiled with numpy holding a few 256-row bands at a time."""
    import tracemalloc

    from pixverve.upscale.sr import store_output

    rgb = np.random.default_rng(1).integers(0, 256, (4000, 500, 3), dtype=np.uint8)
    raw = _pillow_tiff(tmp_path / "a.tif.cmd.tif", rgb)
    io = {"max_megapixels": 10, "background": (255, 255, 255), "output": {"tiff_tile": 256, "compression": None}}
    tracemalloc.start()
    record = store_output(raw, tmp_path / "a.tif", (250, 2000), 2, io)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (record["out_width"], record["out_height"]) == (500, 4000) and not raw.exists()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a.tif"), rgb)
    assert peak < rgb.nbytes / 4, f"peak {peak / 1e6:.1f} MB for a {rgb.nbytes / 1e6:.1f} MB image"
