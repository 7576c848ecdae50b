"""Training (issue #8): the three schemes on tiny random models of the real diffusers classes.

Known answers: window attention against a dense masked reference, the timestep shift against
diffusers' scheduler, the L2P token grid.  Behaviour: each scheme overfits one batch (the
fixed-batch loss falls), the checkpoint reloads and reproduces its probe and its images, a
resumed run ends with the same weights as an uninterrupted one, two CPU processes (gloo) step
together with equal gradients and write one checkpoint, the paper config's runs dry-run with
SLURM resources.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixverve import train_models as tm
from pixverve.tiling import TiledTiffWriter, bands_of
from pixverve.train_config import launch_command, resolve_run
from pixverve.train_data import samples_from_records

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# known answers


def dense_window_reference(q, k, v, num_txt, grid, window):
    """Full attention with an explicit boolean mask: the definition window_attention must meet."""
    gh, gw = grid
    s = q.shape[1]
    allowed = torch.zeros(s, s, dtype=torch.bool)
    allowed[:num_txt, :] = True  # text sees everything
    allowed[:, :num_txt] = True  # everything sees the text
    rows = torch.arange(gh * gw) // gw
    cols = torch.arange(gh * gw) % gw
    same = ((rows[:, None] // window[0]) == (rows[None] // window[0])) & ((cols[:, None] // window[1]) == (cols[None] // window[1]))
    allowed[num_txt:, num_txt:] = same
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed)
    return out.transpose(1, 2)


@pytest.mark.parametrize("grid,window,chunk", [((5, 7), (2, 3), 0), ((5, 7), (2, 3), 2), ((4, 6), (4, 6), 0),
                                               ((6, 4), (1, 4), 3)])
def test_window_attention_matches_the_masked_definition(grid, window, chunk):
    g = torch.Generator().manual_seed(0)
    num_txt = 3
    q, k, v = (torch.randn(2, num_txt + grid[0] * grid[1], 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    got = tm.window_attention(q, k, v, num_txt, grid, window, chunk)
    want = dense_window_reference(q, k, v, num_txt, grid, window)
    assert torch.allclose(got, want, atol=1e-12)


def test_window_covering_the_grid_is_full_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4 + 30, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    full = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(tm.window_attention(q, k, v, 4, (5, 6), (24, 24)), full, atol=1e-12)


@pytest.fixture(scope="module")
def tiny_flux2(tmp_path_factory):
    return tm.load_pipeline("flux2", {"backend": "tiny"}, torch.float32, tmp_path_factory.mktemp("flux2"))


def _flux2_forward(pipe, grid=(4, 6)):
    g = torch.Generator().manual_seed(2)
    cfg = pipe.transformer.config
    hidden = torch.randn(1, grid[0] * grid[1], cfg.in_channels, generator=g)
    text = torch.randn(1, 5, cfg.joint_attention_dim, generator=g)
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(grid[0]), torch.arange(grid[1]), torch.arange(1))
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(5))
    with torch.no_grad():
        return pipe.transformer(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([0.4]),
                                img_ids=img_ids, txt_ids=txt_ids, guidance=None, return_dict=False)[0]


def test_window_processors_in_the_real_model(tiny_flux2):
    import copy

    pipe = copy.deepcopy(tiny_flux2)
    full = _flux2_forward(pipe)
    tm.install_window_attention(pipe.transformer, size=24)  # covers the 4x6 grid: same model
    assert torch.allclose(_flux2_forward(pipe), full, atol=1e-5)
    context = tm.install_window_attention(pipe.transformer, size=2, shapes=[[2, 2], [1, 3], [4, 1]])
    windowed = _flux2_forward(pipe)
    assert context.grid == (4, 6) and context.num_txt == 5  # read from img_ids by the pre-hook
    assert (windowed - full).abs().max() > 1e-3  # the windows are in effect
    procs = [b.attn.processor.window for b in list(pipe.transformer.transformer_blocks)
             + list(pipe.transformer.single_transformer_blocks)]
    assert procs == [(2, 2), (1, 3), (4, 1)]  # per-layer shapes, in layer order


def test_l2p_patch_size_keeps_the_token_grid():
    assert [tm.l2p_patch_size(r, 64) for r in (4096, 8192, 10240)] == [64, 128, 160]  # paper
    with pytest.raises(ValueError, match="multiple"):
        tm.l2p_patch_size(1000, 64)


def test_l2p_model_sees_the_same_token_grid_at_every_resolution(tmp_path):
    pipe = tm.load_pipeline("zimage", {"backend": "tiny"}, torch.float32, tmp_path)
    model = tm.l2p_from_latent(pipe.transformer, [8, 16], head_channels=4)
    counts = {}

    def count(name):
        def hook(module, args):
            counts[name] = args[0].shape[0]
        return hook

    for p in (8, 16):
        model.transformer.all_x_embedder[f"{p}-1"].register_forward_pre_hook(count(p))
    cap = [torch.randn(6, 16)]
    for res, p in ((64, 8), (128, 16)):
        out = model(torch.randn(1, 3, res, res), torch.tensor([0.5]), cap, p)
        assert out.shape == (1, 3, res, res)
    assert counts == {8: 64, 16: 64}  # 8x8 tokens at 64 px and at 128 px
    # the latent DiT's weights were carried over, the embedders are new
    src, dst = pipe.transformer.state_dict(), model.transformer.state_dict()
    assert torch.equal(src["layers.0.attention.to_q.weight"], dst["layers.0.attention.to_q.weight"])
    assert "all_x_embedder.16-1.weight" in dst and "all_x_embedder.2-1.weight" not in dst


def test_timestep_shift_matches_the_diffusers_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    base = np.linspace(1.0, 1 / 40, 40)
    mu = tm.flux2_mu(256 * 256, 40)  # 4K: (4096/16)^2 tokens
    sched.set_timesteps(sigmas=base, mu=mu)
    ours = tm.shift_sigmas(torch.tensor(base), mu)
    assert torch.allclose(ours.float(), sched.sigmas[:-1].float(), atol=1e-6)
    assert tm.flux2_mu(512 * 512, 40) > mu  # more tokens, more noise


# ---------------------------------------------------------------------------------------------
# training on a tiny dataset


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """Four tiled 'SR outputs' (smooth colour fields with texture) and their training rows."""
    folder = tmp_path_factory.mktemp("srdata")
    rng = np.random.default_rng(0)
    rows = []
    for k, (h, w) in enumerate([(300, 300), (320, 280), (280, 300), (300, 310)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (k + 1)) % 256, (yy * 2) % 256, ((xx + yy) * 3) % 256], -1)
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{k:016x}.tif"
        TiledTiffWriter(path, h, w, tile=128).write(bands_of(image, 64))
        rows.append({"image_id": f"{k:016x}", "width": w, "height": h, "long_caption": f"picture number {k}",
                     "short_caption": f"pic {k}", "provenance": {"sr_output": str(path)}})
    return rows


def demo_spec(run: str, resolution: int, **changes) -> dict:
    """A run of the demo config (tiny bases, CPU), with test-sized changes."""
    from pixverve.config import load_config

    spec = resolve_run(load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml"), run, resolution)
    spec.update({"batch_size": 2, "seed": 0, **changes})
    return spec


def read_log(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


SCHEMES = [("scheme1_full", 128, {}), ("scheme1_lora", 128, {"lr": 3e-2}), ("scheme2_window", 128, {}),
           ("scheme3_l2p", 64, {})]


@pytest.mark.parametrize("run,res,changes", SCHEMES, ids=[s[0] for s in SCHEMES])
def test_each_scheme_overfits_one_batch_and_reloads(run, res, changes, demo_data, tmp_path):
    from pixverve.train import train_run
    from pixverve.train_config import bucket_multiple
    from pixverve.train_infer import generate, load_checkpoint

    spec = demo_spec(run, res, max_steps=30, overfit_batches=1, log_every=10, eval_every=10, checkpoint_every=30,
                     **changes)
    samples = samples_from_records(demo_data, res, "long", bucket_multiple(spec))
    summary = train_run(spec, samples, tmp_path, log=lambda m: None)
    assert summary["steps"] == 30 and summary["smoke"] is True
    log = read_log(tmp_path / "train_log.csv")
    evals = [float(r["eval_loss"]) for r in log]
    assert len(evals) == 3 and evals[-1] < 0.9 * evals[0], evals  # it learns the batch
    final = tmp_path / "final"
    info = json.loads((final / "model.json").read_text())
    assert info["scheme"] == spec["scheme"] and info["smoke"] is True and info["steps"] == 30
    if run == "scheme1_lora":  # only the adapter is saved, and it is small
        assert (final / "transformer_lora.safetensors").exists() and not (final / "transformer.safetensors").exists()
    leftovers = set(Path(tempfile.gettempdir()).glob("pixverve-base-*"))
    info, loaded = load_checkpoint(final)  # recomputes the probe: raises if the model differs
    assert set(Path(tempfile.gettempdir()).glob("pixverve-base-*")) == leftovers  # its temp folder is gone
    a = generate(info, loaded, "a red car", res, res, 3, 4.0, seed=5)
    b = generate(info, load_checkpoint(final)[1], "a red car", res, res, 3, 4.0, seed=5)
    assert a.shape == (res, res, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_a_reload_that_misses_the_training_is_refused(demo_data, tmp_path):
    """The probe catches a checkpoint whose weights were swapped (here: another run's)."""
    from safetensors.torch import load_file, save_file

    from pixverve.train import train_run
    from pixverve.train_infer import load_checkpoint

    spec = demo_spec("scheme1_full", 128, max_steps=4, log_every=2, eval_every=0, checkpoint_every=4)
    samples = samples_from_records(demo_data, 128, "long", 16)
    train_run(spec, samples, tmp_path / "a", log=lambda m: None)
    weights = load_file(tmp_path / "a" / "final" / "transformer.safetensors")
    save_file({k: v + 0.05 * torch.randn_like(v) for k, v in weights.items()},
              tmp_path / "a" / "final" / "transformer.safetensors")
    with pytest.raises(tm.ModelUnavailable, match="probe"):
        load_checkpoint(tmp_path / "a" / "final")


def test_resume_continues_at_the_right_step_with_the_same_result(demo_data, tmp_path):
    from safetensors.torch import load_file

    from pixverve.train import newest_checkpoint, train_run

    samples = samples_from_records(demo_data, 128, "long", 16)
    common = dict(log_every=2, eval_every=0, checkpoint_every=4, keep_checkpoints=5)
    straight = train_run(demo_spec("scheme2_window", 128, max_steps=8, **common), samples, tmp_path / "straight",
                         log=lambda m: None)
    assert straight["resumed_from"] == 0
    # "killed" after step 4: its checkpoint is the newest; a half-written one (no marker) is ignored
    first = train_run(demo_spec("scheme2_window", 128, max_steps=4, **common), samples, tmp_path / "resumed",
                      log=lambda m: None)
    assert first["resumed_from"] == 0
    (tmp_path / "resumed" / "checkpoints" / "step-000006").mkdir()  # no `done`: a job killed mid-save
    assert newest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step-000004"
    messages = []
    again = train_run(demo_spec("scheme2_window", 128, max_steps=8, **common), samples, tmp_path / "resumed",
                      log=messages.append)
    assert again["resumed_from"] == 4 and any("resumed from step-000004" in m for m in messages)
    log = read_log(tmp_path / "resumed" / "train_log.csv")
    assert [int(r["step"]) for r in log] == [2, 4, 6, 8]  # no step twice, none missing
    assert [r["loss"] for r in log] == [r["loss"] for r in read_log(tmp_path / "straight" / "train_log.csv")]
    a = load_file(tmp_path / "straight" / "final" / "transformer.safetensors")
    b = load_file(tmp_path / "resumed" / "final" / "transformer.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_two_processes_step_together(demo_data, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks step on different batches, gradients and
    parameters agree after every logged step, and one final checkpoint is written."""
    import pandas as pd

    meta = pd.DataFrame([{"image_id": r["image_id"], "file_name": r["image_id"] + ".tif", "split": "train",
                          "width": r["width"], "height": r["height"], "long_caption": r["long_caption"],
                          "short_caption": r["short_caption"], "prov_sr_output": r["provenance"]["sr_output"]}
                         for r in demo_data])
    meta.to_parquet(tmp_path / "metadata.parquet")
    spec = demo_spec("scheme1_full", 128, max_steps=6, log_every=2, eval_every=0, checkpoint_every=3, batch_size=1)
    spec["data"]["metadata"] = str(tmp_path / "metadata.parquet")
    spec["resources"]["cpu_processes"] = 2
    spec["distributed"]["port"] = 29613
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "run"
    cmd = launch_command(spec, ["--spec", str(tmp_path / "spec.json"), "--out", str(out)])
    assert "torch.distributed.run" in cmd and "2" in cmd
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = read_log(out / "train_log.csv")
    assert [int(r["step"]) for r in log] == [2, 4, 6]
    for r in log:
        assert int(r["ranks_stepped"]) == 2
        assert float(r["grad_norm_spread"]) < 1e-6 and float(r["param_spread"]) < 1e-6
    assert any(float(r["rank_loss_spread"]) > 0 for r in log)  # the ranks saw different images
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000003", "step-000006"]
    assert sorted(p.name for p in (out / "final").iterdir()) == ["model.json", "probe.safetensors",
                                                                 "transformer.safetensors"]
    assert done.stderr.count('"world_size": 2') == 2  # both ranks report the world size


def test_launch_commands_for_a_cluster():
    spec = demo_spec("scheme3_l2p", 64, device="cuda")
    spec["resources"].update(nodes=2, gpus_per_node=8)
    spec["distributed"] = {"strategy": "deepspeed", "zero_stage": 2, "port": 29500}
    cmd = launch_command(spec, ["--spec", "s.json", "--out", "o"])
    # one task per node, stated explicitly: the step must not inherit a 1-task geometry
    assert cmd[:5] == ["srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]
    script = cmd[-1]
    assert "--num_processes 16" in script and "--num_machines 2" in script and "--use_deepspeed" in script
    assert "--machine_rank $SLURM_NODEID" in script and "scontrol show hostnames" in script
    spec["resources"].update(nodes=1)
    spec["distributed"]["strategy"] = "ddp"
    cmd = launch_command(spec, [])
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "8" and "srun" not in cmd


def test_paper_config_train_rules_dry_run(tmp_path):
    """The paper's runs (all enabled) plan with their SLURM resources and the progressive chain."""
    (tmp_path / "results" / "dataset").mkdir(parents=True)
    (tmp_path / "results" / "dataset" / "metadata.parquet").write_bytes(b"")
    (tmp_path / "overlay.yaml").write_text(
        "train:\n  enabled: [scheme1_full, scheme1_lora, scheme2_window, scheme3_l2p]\n")
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(ROOT / "config.yaml"), str(tmp_path / "overlay.yaml"),
         "--allowed-rules", "train", "train_sample", "train_all", "--", "train_all"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    text = res.stdout
    assert "train               9" in text.replace("\t", " ") or text.count("rule train:") == 9
    assert "gres=gpu:8" in text and "nodes=1" in text and "runtime=2880" in text and "tasks=1" in text and "tasks_per_gpu=0" in text
    assert "input: results/dataset/metadata.parquet, results/train/scheme3_l2p/8192/final" in text  # 10K from 8K


def test_bad_train_config_is_an_error(tmp_path):
    from pixverve.train_config import check_train_config

    import yaml

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["train"]["enabled"] = ["scheme9"]
    with pytest.raises(ValueError, match="train.enabled"):
        check_train_config(config)
    config["train"]["enabled"] = []
    config["train"]["runs"]["scheme3_l2p"]["resolutions"] = [4096, 5000]
    with pytest.raises(ValueError, match="token_grid"):
        check_train_config(config)
    config["train"]["runs"]["scheme3_l2p"]["resolutions"] = [4096]
    config["train"]["runs"]["scheme3_l2p"]["lora"] = {"rank": 4, "alpha": 4, "target_modules": ["to_q"]}
    with pytest.raises(ValueError, match="LoRA"):
        check_train_config(config)
    config["train"]["runs"]["scheme3_l2p"]["lora"] = None
    config["train"]["runs"]["scheme1_full"]["vae_tile_stride"] = 1024
    with pytest.raises(ValueError, match="vae_tile_stride"):
        check_train_config(config)
    del config["train"]["runs"]["scheme1_full"]["vae_tile_stride"]
    config["bench"]["methods"] = {"ours": {"generate": {"backend": "checkpoint", "run": "scheme1_full",
                                                       "train_resolution": 1024, "width": 64, "height": 64, "steps": 2}}}
    with pytest.raises(ValueError, match="train_resolution"):
        check_train_config(config)
