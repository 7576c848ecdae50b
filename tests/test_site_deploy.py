"""Issue #28 (site steering and deployment): a site profile changes one resource of one rule
without editing the repository; the default training job fits the shipped GPU partition; a
cluster run that lost the workflow profile (module, another folder) stops at its start; a git
module is refused with what to do; shipped programs are named from the workflow folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
SITE_STEERING = {
    "set-resources": {"upscale": {"slurm_partition": "gpu80", "constraint": "a100_80gb"}, "dedup": {"mem_mb": 32000}},
    "set-threads": {"purify_aesthetics": 12},
}


def flag(sbatch: str, name: str) -> str | None:
    m = re.search(rf"(?:^| ){re.escape(name)}[= ]?(\S+)", sbatch)
    return m.group(1) if m else None


@pytest.fixture(scope="module")
def steered(tmp_path_factory):
    """The sbatch lines of the paper config (2 shards, one training run at the default resources)
    under the shipped site profile with its EDIT lines set and a per-rule block added."""
    from conftest import copy_workflow
    from dag_scale import synthetic_index

    from pixverve.ingest.index import write_shards

    work = copy_workflow(tmp_path_factory.mktemp("steer") / "w")
    shutil.copytree(ROOT / "profiles/default", work / "profiles/default")
    site = work / "site"
    site.mkdir()
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile.pop("software-deployment-method")
    profile.pop("conda-frontend")
    profile.pop("conda-prefix", None)
    profile["default-resources"]["slurm_account"] = "acct"
    (site / "config.yaml").write_text(yaml.safe_dump({**profile, **SITE_STEERING}))
    shutil.copy(ROOT / "profiles/slurm/partitions.yaml", site / "partitions.yaml")
    for folder in ("data/raw/pexels", "data/raw/unsplash"):
        (work / folder).mkdir(parents=True)
        (work / folder / "stand_in.jpg").touch()
        past = time.time() - 3600  # older than the index: the index is up to date
        os.utime(work / folder / "stand_in.jpg", (past, past))
        os.utime(work / folder, (past, past))
    (work / "resources/weights").mkdir(parents=True)
    (work / "resources/weights/sac+logos+ava1-l14-linearMSE.pth").touch()
    write_shards(synthetic_index(8, 4), work / "results/index/index.parquet", work / "results/index/shards")
    # one paper run, its resources as config.yaml ships them (the benchmark's models are not needed
    # for these targets)
    (work / "overlay.yaml").write_text(
        yaml.safe_dump({"train": {"enabled": ["scheme1_full"]}, "bench": {"fgclip2": {"backend": "none"}}})
    )
    out = work / "submits.json"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/slurm_submit.py"),
            str(out),
            str(site / "partitions.yaml"),
            "--",
            "upscale_all",
            "train_all",
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
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "workflow specific profile profiles/default" in res.stderr
    limits = yaml.safe_load((site / "partitions.yaml").read_text())["partitions"]
    return json.loads(out.read_text()), limits


def test_a_site_profile_steers_one_resource_of_one_rule(steered):
    records, _ = steered
    up = [r for r in records if r["name"] == "upscale"]
    assert len(up) == 2
    for r in up:
        sbatch = r["sbatch"]
        # the site's partition and constraint reach sbatch ...
        assert r["partition"] == "gpu80" and " -p gpu80" in sbatch and " -C a100_80gb" in sbatch, sbatch
        # ... and the rule keeps its own memory, runtime, CPUs and GPU (rules/upscale.smk)
        assert flag(sbatch, "--mem") == "64000" and flag(sbatch, "-t") == "1440", sbatch
        assert "--cpus-per-task=8" in sbatch and "--gpus=1" in sbatch
    dedup = next(r for r in records if r["name"] == "dedup")
    assert flag(dedup["sbatch"], "--mem") == "32000" and flag(dedup["sbatch"], "-t") == "60"  # memory only
    assert dedup["partition"] == "cpu" and " -C " not in dedup["sbatch"]
    aes = [r for r in records if r["name"] == "purify_aesthetics"]
    assert aes and all("--cpus-per-task=12" in r["sbatch"] and flag(r["sbatch"], "--mem") == "32000" for r in aes)
    # a rule the site does not name: everything its own, partition from partitions.yaml
    classical = [r for r in records if "purify_classical" in r["rules"]]
    assert classical and all(r["partition"] == "cpu" and " -C " not in r["sbatch"] for r in classical)


def test_the_default_training_job_fits_the_shipped_gpu_partition(steered):
    records, limits = steered
    train = [r for r in records if r["name"] == "train"]
    assert train
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())["train"]["resources"]
    gpu = limits["gpu"]
    for r in train:
        sbatch = r["sbatch"]
        assert r["partition"] == "gpu", sbatch  # not the CPU partition (8 x 64,000 MB did not fit)
        assert f"--gres=gpu:{shipped['gpus_per_node']}" in sbatch and shipped["gpus_per_node"] == gpu["max_gpu"] == 8
        assert int(flag(sbatch, "--mem")) == 8 * shipped["mem_mb_per_gpu"] <= gpu["max_mem_mb"]
        assert int(flag(sbatch, "--cpus-per-task")) <= gpu["max_threads"]
        assert int(flag(sbatch, "-t")) <= gpu["max_runtime"]


def test_rules_size_themselves_and_the_workflow_profile_holds_groups_and_retries():
    workflow = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert set(workflow) == {"groups", "retries"}  # set-threads/-resources stay the site profile's to use
    site_text = (ROOT / "profiles/slurm/config.yaml").read_text()
    site = yaml.safe_load(site_text)
    assert not {"set-threads", "set-resources", "groups", "retries"} & set(site)  # only a commented example
    assert "# set-resources:" in site_text and "slurm_partition: gpu80" in site_text
    assert site["slurm-delete-logfiles-older-than"] == 0  # failure logs kept for the whole run
    assert "slurm-no-account" not in site  # a no-op in plugin 2.8.0
    rules = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    for rule in ("index", "screen", "upscale", "verify_regions", "caption_text", "bench_generate", "train_sample"):
        body = re.search(rf"^(?:rule|checkpoint) {rule}:\n((?:[ \t].*\n|\n)*)", rules, re.MULTILINE).group(1)
        assert re.search(r"^    threads: \d+", body, re.MULTILINE) and re.search(r"mem_mb=\d+,", body), rule
        assert re.search(r"runtime=\d+,", body), rule


# --- running away from the checkout --------------------------------------------------------------


def _snakemake(args, cwd, env=None):
    # SLURM's commands replaced by ones that fail at once: should a check fail to stop the run, no
    # sbatch reaches any cluster (the plugin also asks scontrol at import, which would wait ~10 s)
    bin_dir = Path(cwd) / ".no-slurm-bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("sbatch", "scontrol", "sacct", "sacctmgr", "squeue", "sinfo", "sshare", "srun", "scancel"):
        (bin_dir / name).write_text("#!/bin/sh\necho 'no SLURM in this test' >&2\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _module_folder(tmp_path) -> Path:
    folder = tmp_path / "deploy"
    (folder / "workflow").mkdir(parents=True)
    (folder / "workflow/Snakefile").write_text(
        f'configfile: "{ROOT / "config.yaml"}"\nconfigfile: "{ROOT / "configs/demo.yaml"}"\n\n\n'
        f'module pixverve:\n    snakefile:\n        "{ROOT / "Snakefile"}"\n    config:\n        config\n\n\n'
        "use rule * from pixverve\n"
    )
    return folder


CLUSTER = ["--executor", "slurm", "--jobs", "1", "--default-resources", "slurm_account=acct"]


def test_a_cluster_run_as_a_module_without_the_workflow_profile_stops(tmp_path):
    folder = _module_folder(tmp_path)
    res = _snakemake(CLUSTER, folder)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and f"--workflow-profile {ROOT / 'profiles/default'}" in out, out[-3000:]
    assert "submitted" not in out and not (folder / "logs/slurm").exists()
    # with it, the groups are there (a dry run plans them) and nothing stops
    dry = _snakemake([*CLUSTER, "-n", "--workflow-profile", str(ROOT / "profiles/default")], folder)
    found = f"workflow specific profile {ROOT / 'profiles/default'}"
    assert dry.returncode == 0 and found in dry.stderr, dry.stderr[-3000:]
    # a local run of the module is not stopped (tests/test_deploy.py runs one to the end)
    local = _snakemake(["-n", "--cores", "1"], folder)
    assert local.returncode == 0, local.stderr[-3000:]


def test_directory_runs_find_the_workflow_profile_and_a_cluster_run_without_it_stops(tmp_path):
    work = tmp_path / "run"
    base = ["-s", str(ROOT / "Snakefile"), "--directory", str(work), "--configfile", str(ROOT / "configs/demo.yaml")]
    dry = _snakemake([*base, "-n", "--cores", "1"], tmp_path)
    assert dry.returncode == 0 and f"workflow specific profile {ROOT / 'profiles/default'}" in dry.stderr
    stopped = _snakemake([*base, *CLUSTER, "--workflow-profile", "none"], tmp_path)
    assert stopped.returncode != 0 and "--workflow-profile" in stopped.stdout + stopped.stderr
    allowed = _snakemake(
        [*base, *CLUSTER, "--workflow-profile", "none", "-n"], tmp_path, env={"PIXVERVE_ALLOW_NO_GROUPS": "1"}
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]


def test_the_start_check_stops_only_a_cluster_run_of_the_main_process(tmp_path, monkeypatch):
    from snakemake.exceptions import WorkflowError
    from snakemake_interface_executor_plugins.settings import ExecMode

    from pixverve.deploy_checks import require_workflow_profile

    monkeypatch.delenv("PIXVERVE_ALLOW_NO_GROUPS", raising=False)
    calls = []

    def run(groups, local, mode=ExecMode.DEFAULT):
        wf = SimpleNamespace(
            execute=lambda *a, **k: calls.append(k),
            exec_mode=mode,
            group_settings=SimpleNamespace(overwrite_groups=groups),
        )
        require_workflow_profile(wf, ROOT)
        require_workflow_profile(wf, ROOT)  # installed once
        plugin = SimpleNamespace(common_settings=SimpleNamespace(local_exec=local))
        wf.execute(executor_plugin=plugin, scheduler_plugin=None)
        return len(calls)

    shipped = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())["groups"]
    assert run(dict(shipped), local=False) == 1  # the workflow profile read: runs
    assert run({}, local=True) == 2  # a local run: never stopped
    assert run({}, local=False, mode=ExecMode.REMOTE) == 3  # the Snakemake inside a job reads no profile
    with pytest.raises(WorkflowError, match="--workflow-profile"):
        run({}, local=False)
    monkeypatch.setenv("PIXVERVE_ALLOW_NO_GROUPS", "1")
    assert run({}, local=False) == 4


def test_a_git_module_is_refused_with_what_to_do(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "Snakefile", repo / "Snakefile")
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    for cmd in (["init", "-q"], ["add", "Snakefile"], ["commit", "-qm", "pixverve"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True)
    folder = tmp_path / "deploy"
    (folder / "workflow").mkdir(parents=True)
    (folder / "workflow/Snakefile").write_text(
        f'module pixverve:\n    snakefile:\n        gitfile(repo_path="{repo}", path="Snakefile", ref="HEAD")\n'
        "    config:\n        config\n\n\nuse rule * from pixverve\n"
    )
    res = _snakemake(["-n", "--cores", "1"], folder)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "a git source: not supported" in out and "Clone it" in out, out[-3000:]
    assert "TypeError" not in out  # was: os.path.join on the git source at Snakefile:9


def test_shipped_programs_are_named_from_the_workflow_folder(tmp_path, monkeypatch):
    from pixverve.upscale.sr import WORKFLOW_ARG, BatchRunner
    from pixverve.workflow import check_config, load_config

    monkeypatch.chdir(tmp_path)  # a working directory without pixverve/ (--directory, a module)
    template = f"{shlex.quote(sys.executable)} -c pass {{workflow}}/pixverve/upscale/odtsr_run.py {{jobs}}"
    runner = BatchRunner(template, {}, tmp_path / "out")
    runner.close()
    assert WORKFLOW_ARG == shlex.quote(str(ROOT)) and f"{WORKFLOW_ARG}/pixverve/upscale/odtsr_run.py" in runner.cmd
    assert (ROOT / "pixverve/upscale/odtsr_run.py").is_file()
    config = load_config(ROOT / "config.yaml", ROOT / "configs/demo.yaml")
    relative = "conda run --no-capture-output -n odtsr python pixverve/upscale/odtsr_run.py {jobs}"
    config["upscale"].update(backend="command", command={"template": None, "batch_template": relative})
    with pytest.raises(ValueError, match=r"write \{workflow\}/pixverve/upscale/odtsr_run.py"):
        check_config(config)
    config["upscale"]["command"]["batch_template"] = config["upscale"]["command"]["batch_template"].replace(
        " pixverve/", " {workflow}/pixverve/"
    )
    check_config(config)
    shipped = (ROOT / "config.yaml").read_text() + (ROOT / "README.md").read_text()
    assert " python pixverve/upscale/odtsr_run.py" not in shipped
    assert "{workflow}/pixverve/upscale/odtsr_run.py" in shipped
