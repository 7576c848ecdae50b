"""The sbatch arguments the SLURM executor plugin builds for this workflow's jobs, read from the
plugin's own submit-string builder and partition selection (tests/slurm_submit.py), no cluster:
the paper config over a 10-shard index, the shipped profiles (site lines filled in), vLLM started
in the judges' jobs (so every stage 5 step asks for a GPU) and a 2-node training run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
CAPTION_RULES = {
    "caption_tags",
    "caption_boxes",
    "caption_masks",
    "verify_instances",
    "caption_instances",
    "caption_aesthetics",
    "caption_text",
    "caption_records",
}
SHARDS = 10


def site_profile(dest: Path) -> Path:
    """The shipped site profile with only its EDIT lines set (and conda off: no channels here)."""
    dest.mkdir(parents=True)
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile.pop("software-deployment-method")
    profile.pop("conda-frontend")
    profile.pop("conda-prefix")  # no conda here: Snakemake would still create the shared folder
    profile["default-resources"]["slurm_account"] = "acct"
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    shutil.copy(ROOT / "profiles/slurm/partitions.yaml", dest / "partitions.yaml")
    return dest


@pytest.fixture(scope="module")
def submits(tmp_path_factory):
    from conftest import copy_workflow
    from dag_scale import synthetic_index

    from pixverve.ingest.index import write_shards

    work = copy_workflow(tmp_path_factory.mktemp("slurm") / "w")
    shutil.copytree(ROOT / "profiles/default", work / "profiles/default")
    site = site_profile(work / "site")
    for folder in ("data/raw/pexels", "data/raw/unsplash"):
        (work / folder).mkdir(parents=True)
        (work / folder / "stand_in.jpg").touch()  # a scanned root must hold an image file
        past = time.time() - 3600  # older than the index: the index is up to date
        os.utime(work / folder / "stand_in.jpg", (past, past))
        os.utime(work / folder, (past, past))
    (work / "resources/weights").mkdir(parents=True)
    (work / "resources/weights/sac+logos+ava1-l14-linearMSE.pth").touch()
    write_shards(synthetic_index(4 * SHARDS, 4), work / "results/index/index.parquet", work / "results/index/shards")
    (work / "eval/util").mkdir(parents=True)
    (work / "eval/util/build_prompts.py").touch()  # the EDIT lines naming files: stand-ins
    (work / "overlay.yaml").write_text(
        yaml.safe_dump(
            {
                "bench": {"fgclip2": {"model": "fg-clip2-base"}, "judge": {"published_eval": "eval"}},
                "vlm": {"serve": {"enabled": True}},
                "train": {
                    "enabled": ["scheme3_l2p"],
                    "runs": {"scheme3_l2p": {"resources": {"nodes": 2, "gpus_per_node": 4}}},
                },
            }
        )
    )
    out = work / "submits.json"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/slurm_submit.py"),
            str(out),
            str(site / "partitions.yaml"),
            "--",
            "-n",
            "--cores",
            "10000",
            "--rerun-triggers",
            "mtime",
            "--profile",
            str(site),
            "--configfile",
            "config.yaml",
            "overlay.yaml",
            "--quiet",
            "rules",
            "--",
            "all",
            "atlas",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "workflow specific profile profiles/default" in res.stderr  # read by itself
    records = json.loads(out.read_text())
    limits = yaml.safe_load((site / "partitions.yaml").read_text())["partitions"]
    return records, limits


def flag(sbatch: str, name: str) -> str | None:
    m = re.search(rf"(?:^| ){re.escape(name)}[= ]?(\S+)", sbatch)
    return m.group(1) if m else None


def gpus_of(sbatch: str) -> int:
    m = re.search(r"--gpus=(?:\w+:)?(\d+)|--gres=gpu:(?:\w+:)?(\d+)", sbatch)
    return int(next(g for g in m.groups() if g)) if m else 0


def test_every_job_fits_its_partition(submits):
    records, limits = submits
    assert {r["name"] for r in records} >= {"dedup", "upscale", "train", "purify_aesthetics"}
    for r in records:
        sbatch = r["sbatch"]
        assert r["partition"] in limits, f"{r['name']}: no partition fits: {sbatch}"
        lim = limits[r["partition"]]
        assert f"-p {r['partition']}" in sbatch and " -A acct " in sbatch  # the account, explicit
        # a job without a GPU never lands in a GPU partition, and never asks `--gpus=<model>:0`
        assert (gpus_of(sbatch) > 0) == (lim.get("max_gpu", 0) > 0), sbatch
        assert not re.search(r"--gpus=(\w+:)?0\b", sbatch) and "gpu_model" not in r["resources"]
        assert "--cpus-per-gpu" not in sbatch  # CPUs as threads: a group would sum a ratio
        assert int(flag(sbatch, "-t")) <= lim["max_runtime"], sbatch
        assert int(flag(sbatch, "--cpus-per-task")) <= lim["max_threads"], sbatch
        assert int(flag(sbatch, "--mem")) <= lim["max_mem_mb"], sbatch
        assert gpus_of(sbatch) <= lim.get("max_gpu", 0)


def test_gpu_rule(submits):
    records, _ = submits
    up = next(r for r in records if r["name"] == "upscale")
    assert up["partition"] == "gpu" and "--gpus=1" in up["sbatch"] and "--cpus-per-task=8" in up["sbatch"]
    # the step asks for the job's memory itself (pixverve/snakemake_fixes.py: steps share a group's)
    mem = flag(up["sbatch"], "--mem")
    assert up["steps"][0]["srun"] == f"srun -n1 --cpus-per-task=8 --gpus=1 --nodes=1 --mem={mem}M"


def test_every_allocation_covers_what_runs_in_it(submits):
    """Each job modelled as the plugin runs it (tests/slurm_submit.py inner_run): its inner Snakemake
    starts the ready members, SLURM starts each member's step when the allocation has room.  Every
    job's -t covers its members' runtimes as they then run, and a group's members run side by side."""
    from slurm_submit import inner_run

    records, _ = submits
    runs = {}
    for r in records:
        if r["steps"][0]["srun"] is None:  # the MPI path (multi-node train): one command, no steps
            continue
        assert "--jobs unlimited" in r["inner_args"], r["inner_args"]  # not the plugin's --jobs 1
        assert r["steps_in_background"]  # and the jobstep does not wait for one step to start the next
        runs[id(r)] = run = inner_run(r)
        assert run["minutes"] <= int(flag(r["sbatch"], "-t")), (r["name"], run, r["sbatch"])
    caption = next(r for r in records if r["group"] and "caption_tags" in r["rules"])
    t = int(flag(caption["sbatch"], "-t"))
    # at its widest level, every GPU of the allocation holds a member (2 shards x instances, aesthetics)
    assert runs[id(caption)]["widest"] >= gpus_of(caption["sbatch"]) == 4
    # the model has teeth: the plugin's own `--jobs 1` (its issue #469), or steps that do not ask for
    # their own memory (each then holds the whole allocation's), run the chain past its -t
    serial = dict(caption, inner_args=caption["inner_args"].replace("--jobs unlimited", "--jobs 1"))
    whole_memory = dict(caption, steps=[dict(s, srun=re.sub(r" --mem=\S+", "", s["srun"])) for s in caption["steps"]])
    waiting = dict(caption, steps_in_background=False)  # the jobstep's own run_job waits for each step
    for variant in (serial, whole_memory, waiting):
        run = inner_run(variant)
        assert run["minutes"] > t and run["widest"] == 1, run
    screens = [runs[id(r)]["widest"] for r in records if r["group"] and "screen" in r["rules"]]
    assert sorted(screens) == [2, 8]  # a bundle's shards at once (10 shards: 8 + 2)


def test_caption_group_is_one_schedulable_job_with_a_card_per_step(submits):
    records, limits = submits
    groups = [r for r in records if r["group"] and set(r["rules"]) & CAPTION_RULES]
    # group jobs of 2 shards' chains (shards.bundle.caption) and their bundle rule, every step of
    # the chain in them -- exactly 2, at 10 shards too (group-components re-merged them after the
    # index checkpoint: rules/bundles.smk)
    assert len(groups) == SHARDS // 2 and all(set(g["rules"]) == CAPTION_RULES | {"caption_bundle"} for g in groups)
    for g in groups:
        shards = len(g["levels"][0])  # one caption_tags per shard
        assert shards == 2 and [len(level) for level in g["levels"]] == [shards] * 4 + [2 * shards] + [shards] * 2 + [1]
        assert g["partition"] == "gpu"  # the group asked one partition for all its members
        # GPUs: a level sums its parallel steps (instances and aesthetics run side by side: 2 per
        # shard), the group takes the largest level: 2 GPUs and 2 x 8 CPUs per shard
        assert gpus_of(g["sbatch"]) == 2 * shards and flag(g["sbatch"], "--cpus-per-task") == str(16 * shards)
    g = groups[-1]
    # the chain's summed runtime (8 steps in series) stays within the GPU partition's limit
    assert int(flag(g["sbatch"], "-t")) <= limits["gpu"]["max_runtime"]
    # each GPU member runs as its own job step with its own GPU: no two steps share a card
    gpu_steps = [s for s in g["steps"] if s["gpu"]]
    assert {s["rule"] for s in gpu_steps} == CAPTION_RULES - {"caption_records"}  # all run a model
    assert all("--gpus=1" in s["srun"] for s in gpu_steps)
    assert all("--gpus" not in s["srun"] for s in g["steps"] if not s["gpu"])


def test_bundled_stages_have_the_configured_sizes(submits):
    """10 shards: screen and purify in bundles of 8 (8 + 2), verify in bundles of 4 (4 + 4 + 2),
    each a group job of its shards' jobs and one bundle job (config.yaml shards.bundle)."""
    records, _ = submits
    for rule, size in (("screen", 8), ("purify_classical", 8), ("verify", 4)):
        groups = [r for r in records if r["group"] and rule in r["rules"]]
        sizes = sorted((len([x for level in g["levels"] for x in level if x == rule]) for g in groups), reverse=True)
        expected = [size] * (SHARDS // size) + ([SHARDS % size] if SHARDS % size else [])
        assert sizes == expected, (rule, sizes)
        assert all(g["levels"][-1] == [f"{rule.split('_')[0]}_bundle"] for g in groups)


def test_two_node_train_starts_a_process_per_node(submits):
    records, _ = submits
    train = [r for r in records if r["name"] == "train" and r["wildcards"]["run"] == "scheme3_l2p"]  # 2 nodes (overlay)
    assert len(train) == 3  # 4K, 8K, 10K
    for r in train:
        sbatch = r["sbatch"]
        assert "--nodes=2" in sbatch and "--ntasks=2" in sbatch and "--gres=gpu:4" in sbatch, sbatch
        assert "--ntasks-per-gpu" not in sbatch and "--cpus-per-task=32" in sbatch  # 4 GPUs x 8 CPUs per task
        # the plugin's MPI path: no `srun -n1` wrapper around the job (it would shrink it to 1 task)
        assert r["steps"][0]["srun"] is None
    from pixverve.train.config import launch_command

    spec = {
        "device": "cuda",
        "mixed_precision": "bf16",
        "gradient_accumulation": 1,
        "resources": {"nodes": 2, "gpus_per_node": 4},
        "distributed": {"strategy": "ddp", "port": 29500},
    }
    cmd = launch_command(spec, [])
    assert cmd[:5] == ["srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]


def test_profiles_split_site_and_workflow():
    """profiles/default replaces a --profile key it also sets (per key): the two share none."""
    workflow = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    site_text = (ROOT / "profiles/slurm/config.yaml").read_text()
    site = yaml.safe_load(site_text)
    assert not set(workflow) & set(site), set(workflow) & set(site)
    # threads, memory and runtime are the rules' own (a site's set-resources changes one of them)
    assert set(workflow) == {"groups", "retries"}
    # bundles are connected groups (rules/bundles.smk): group-components re-merges (snakemake#1628)
    assert "group-components" not in workflow
    assert site["executor"] == "slurm" and site["default-resources"]["slurm_account"]
    assert "slurm_partition" not in site["default-resources"]  # chosen per job from partitions.yaml
    assert re.search(r"slurm_account: .*# EDIT", site_text)
    assert "# EDIT" in (ROOT / "profiles/slurm/partitions.yaml").read_text()


def test_make_slurm_profile_installs_where_profile_slurm_looks(tmp_path):
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    res = subprocess.run(["make", "-s", "slurm-profile"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    installed = tmp_path / "xdg/snakemake/slurm"
    assert (installed / "config.yaml").read_text() == (ROOT / "profiles/slurm/config.yaml").read_text()
    assert (installed / "partitions.yaml").exists()
    (installed / "config.yaml").write_text("executor: slurm  # my edits\n")
    res = subprocess.run(["make", "-s", "slurm-profile"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "kept" in res.stdout and "my edits" in (installed / "config.yaml").read_text()  # never overwritten
    # Snakemake's own lookup of the bare name `slurm` finds it there
    code = "from snakemake.cli import get_profile_dir; print(get_profile_dir('slurm')[0])"
    found = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert found.stdout.strip() == str(installed), found.stderr


def test_atlas_builds_shard_by_shard_in_cpu_jobs(submits):
    """The atlas of a run: one CPU job per shard (and one for the images the index rejected), then
    its index -- never one job over the whole run."""
    records, limits = submits
    shards = [r for r in records if r["name"] == "atlas_shard"]
    assert sorted(r["wildcards"]["atlas_shard"] for r in shards) == [f"s{i:05d}" for i in range(SHARDS)] + ["unsharded"]
    site = [r for r in records if r["name"] == "atlas_site"]
    assert len(site) == 1
    for r in shards + site:
        assert r["partition"] == "cpu" and gpus_of(r["sbatch"]) == 0, r["sbatch"]
