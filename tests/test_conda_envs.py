"""`make envs` (rules/envs.smk): every conda env of the workflow made before a run, with the CUDA
override and into the site profile's shared conda-prefix, in the folders the run then uses.

Conda is not obtainable here: tests/fake_conda.py stands in for it and records what Snakemake asks
it to create.  The env folder's name is Snakemake's md5 of the prefix, the post-deploy script and
the env file (snakemake/deployment/conda.py, Env._get_hash); the tests check it both by that
formula and by a full run's DAG (the index checkpoint resolved) asking for nothing more."""

from __future__ import annotations

import hashlib
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
sys.path.insert(0, str(ROOT / "tests"))


def rule_envs() -> set[Path]:
    """Every env file a `conda:` directive of rules/*.smk names (each branch of a conditional one)."""
    found = set()
    for smk in (ROOT / "rules").glob("*.smk"):
        for block in re.findall(r"^    conda:\s*\n((?:        .*\n)+)", smk.read_text(), re.MULTILINE):
            for path in re.findall(r"\"([^\"{}]+\.yaml)\"", block):
                found.add((smk.parent / path).resolve())
    return found


def make_recipe(target: str) -> list[str]:
    """The snakemake arguments of a Makefile target's recipe, after $(ENVS_ARGS)."""
    recipe = re.search(rf"^{target}:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    return recipe.split("$(ENVS_ARGS)", 1)[1].split()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The workflow copied, the shipped site profile with its conda-prefix moved to a temp folder,
    a fake conda first on PATH, and a config the paper checks accept."""
    from conftest import copy_workflow
    from fake_conda import install

    base = tmp_path_factory.mktemp("envs")
    work = copy_workflow(base / "w")
    shutil.copytree(ROOT / "profiles/default", work / "profiles/default")
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["software-deployment-method"] == "conda" and profile["conda-prefix"].startswith("~/")
    profile["conda-prefix"] = str(base / "site-envs")
    profile["default-resources"]["slurm_account"] = "acct"
    (base / "site").mkdir()
    (base / "site/config.yaml").write_text(yaml.safe_dump(profile))
    shutil.copy(ROOT / "profiles/slurm/partitions.yaml", base / "site/partitions.yaml")
    (work / "overlay.yaml").write_text(yaml.safe_dump({"bench": {"fgclip2": {"model": "/nowhere/fg-clip2-base"}}}))
    env = {k: v for k, v in os.environ.items() if k != "CONDA_OVERRIDE_CUDA"}
    env["PATH"] = f"{install(base / 'fakeconda')}:{env['PATH']}"
    return {"base": base, "work": work, "prefix": base / "site-envs", "env": env}


def run(site, *args, log: Path, env_extra=None, cwd=None) -> list[dict]:
    env = {**site["env"], "FAKE_CONDA_LOG": str(log), **(env_extra or {})}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            str(site["base"] / "site"),
            "--configfile",
            "config.yaml",
            "overlay.yaml",
            *args,
        ],
        cwd=cwd or site["work"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def created(site):
    """What `make envs` asks conda for, in the shipped site profile's way."""
    return run(site, *make_recipe("envs"), log=site["base"] / "created.jsonl")


def env_hash(prefix: Path, env_file: Path) -> str:
    """Snakemake 9.27's Env._get_hash(include_location=True) for a file-based env without container."""
    md5 = hashlib.md5(usedforsecurity=False)
    md5.update(os.path.realpath(prefix).encode())
    deploy = env_file.with_suffix(".post-deploy.sh")
    if deploy.exists():
        md5.update(deploy.read_bytes())
    md5.update(env_file.read_bytes())
    return md5.hexdigest()


def test_every_env_of_every_rule_is_created_with_the_cuda_override_into_the_shared_prefix(site, created):
    wanted = rule_envs()
    assert {p.name for p in wanted} >= {
        "cv.yaml",
        "sr.yaml",
        "train.yaml",
        "generate.yaml",
        "bench.yaml",
        "ramplus.yaml",
        "fgclip2.yaml",
        "vllm.yaml",
    }
    assert wanted <= set((ROOT / "envs").glob("*.yaml"))
    by_content = {r["content"]: r for r in created}
    assert len(by_content) == len(created), "an env was created twice"
    for env_file in sorted(ROOT.joinpath("envs").glob("*.yaml")):  # every env file: those of the rules and no other
        record = by_content.get(env_file.read_text())
        assert record is not None, f"{env_file.name} was not created"
        assert record["CONDA_OVERRIDE_CUDA"] == "13.0", env_file.name
        prefix = Path(record["prefix"])
        assert prefix.parent == site["prefix"], "not in the profile's conda-prefix"
        # a new env's folder: the full hash and "_" (Env.address; the 8-character form is an old one)
        assert prefix.name == env_hash(site["prefix"], env_file) + "_", env_file.name
        assert prefix.with_suffix(".env_setup_done").exists()
    assert len(created) == len(list((ROOT / "envs").glob("*.yaml")))


def test_post_deploy_scripts_ran_in_their_envs(site, created):
    name_of = {p.read_text(): p.stem for p in (ROOT / "envs").glob("*.yaml")}  # conda reads a copy, <prefix>.yaml
    for record in created:
        calls = Path(record["prefix"], "python-calls")
        if (ROOT / "envs" / f"{name_of[record['content']]}.post-deploy.sh").exists():
            assert "-m pip install --no-input --no-deps" in calls.read_text()
        else:
            assert not calls.exists()


def test_a_run_in_another_directory_past_the_checkpoint_creates_nothing_more(site, created, tmp_path):
    """The paper config in another working directory, its index already written (so the DAG holds
    every stage's jobs, those after the checkpoint too), the same profile: every env it needs exists."""
    from dag_scale import synthetic_index

    from pixverve.ingest.index import write_shards

    run_dir = tmp_path / "run"
    for folder in ("data/raw/pexels", "data/raw/unsplash"):
        (run_dir / folder).mkdir(parents=True)
        (run_dir / folder / "stand_in.jpg").touch()
        past = time.time() - 3600
        os.utime(run_dir / folder / "stand_in.jpg", (past, past))
        os.utime(run_dir / folder, (past, past))
    (run_dir / "resources/weights").mkdir(parents=True)
    (run_dir / "resources/weights/sac+logos+ava1-l14-linearMSE.pth").touch()
    write_shards(synthetic_index(8, 4), run_dir / "results/index/index.parquet", run_dir / "results/index/shards")
    overlay = {
        "bench": {"fgclip2": {"model": "/nowhere/fg-clip2-base"}, "judge": {"prompts": "ours"}},
        "vlm": {"serve": {"enabled": True}},
        "caption": {"tags": {"backend": "ram_plus"}},
        "train": {"enabled": ["scheme3_l2p"]},
    }
    (run_dir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    shutil.copy(site["work"] / "config.yaml", run_dir / "config.yaml")
    log = tmp_path / "run.jsonl"
    dry = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--rerun-triggers",
            "mtime",
            "-s",
            str(site["work"] / "Snakefile"),
            "--directory",
            str(run_dir),
            "--configfile",
            str(site["work"] / "config.yaml"),
            str(run_dir / "overlay.yaml"),
            "--quiet",
            "rules",
        ],
        env=site["env"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    for rule in ("upscale", "verify_regions", "caption_tags", "caption_text", "train", "vllm_path"):
        assert re.search(rf"^{rule}\s", dry.stdout, re.MULTILINE), f"{rule} not in the DAG:\n{dry.stdout}"
    again = run(
        site,
        "--conda-create-envs-only",
        "--rerun-triggers",
        "mtime",
        "--directory",
        str(run_dir),
        "-s",
        str(site["work"] / "Snakefile"),
        log=log,
        cwd=run_dir,
    )
    name_of = {p.read_text(): p.name for p in (ROOT / "envs").glob("*.yaml")}
    assert again == [], [name_of.get(r["content"]) for r in again]


def test_the_users_own_override_wins(site, tmp_path):
    log = tmp_path / "mine.jsonl"
    [record] = run(
        site,
        "--conda-create-envs-only",
        "--conda-prefix",
        str(tmp_path / "envs"),
        "results/envs/figures.txt",
        log=log,
        env_extra={"CONDA_OVERRIDE_CUDA": "12.9"},
    )
    assert record["CONDA_OVERRIDE_CUDA"] == "12.9"


def test_a_job_starting_vllm_runs_the_envs_vllm(tmp_path, monkeypatch):
    """A bare `vllm` in vlm.serve.command is the one rule vllm_path recorded (envs/vllm.yaml);
    vllm_env: false or another command is run as written; a missing record stops with its name."""
    from pixverve.models.vllm_server import VLLM_PATH_FILE, ServerFailed, serve_command, uses_vllm_env

    assert re.search(
        rf"^rule vllm_path:\n    output:\n        \"{re.escape(VLLM_PATH_FILE)}\",",
        (ROOT / "rules/envs.smk").read_text(),
        re.MULTILINE,
    )
    monkeypatch.chdir(tmp_path)
    serve = {"enabled": True, "command": "vllm serve", "args": ["--trust-request-chat-template"]}
    with pytest.raises(ServerFailed, match="vllm.path"):
        serve_command(serve, "m", 8000)
    Path(VLLM_PATH_FILE).parent.mkdir(parents=True)
    Path(VLLM_PATH_FILE).write_text("/site/envs/abc_/bin/vllm\n")
    assert serve_command(serve, "m", 8000) == [
        "/site/envs/abc_/bin/vllm",
        "serve",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
        "--trust-request-chat-template",
    ]
    assert serve_command({**serve, "vllm_env": False}, "m", 1)[0] == "vllm"
    assert serve_command({**serve, "command": "/opt/vllm/bin/vllm serve"}, "m", 1)[0] == "/opt/vllm/bin/vllm"
    assert uses_vllm_env({"vlm": {"serve": serve}})
    assert not uses_vllm_env({"vlm": {"serve": {**serve, "enabled": False}}})
    assert not uses_vllm_env({"vlm": {"serve": {**serve, "vllm_env": False}}})
    assert uses_vllm_env({"vlm": {"serve": {"enabled": False}}, "caption": {"text": {"vlm": {"serve": serve}}}})


def test_the_vllm_env_is_its_own_and_every_job_that_may_start_vllm_waits_for_it():
    spec = yaml.safe_load((ROOT / "envs/vllm.yaml").read_text())
    [pip] = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    assert pip == ["vllm==0.34.0"]  # pins its own torch (==2.14.0): never inside another env
    text = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    served = set(re.findall(r"^rule (\w+):(?:\n(?!rule ).*)*?\n        server=", text, re.MULTILINE))
    assert {
        "verify_regions",
        "verify_instances",
        "caption_tags",
        "caption_text",
        "bench_judge",
        "synth_prompts",
    } <= served
    for rule in served:
        block = re.search(rf"^rule {rule}:\n((?:(?!rule ).*\n)*)", text, re.MULTILINE).group(1)
        assert "vllm=vllm_executable_input," in block, rule


@pytest.mark.parametrize(
    "args, ok",
    [
        ([], True),
        (["--tensor-parallel-size", "1"], True),
        (["--tensor-parallel-size=2"], False),
        (["-tp", "4"], False),
        (["--max-model-len", "32768"], True),
    ],
)
def test_a_served_model_fits_the_one_gpu_of_its_job(args, ok):
    from pixverve.workflow import check_serve_gpus

    if ok:
        check_serve_gpus({"enabled": True, "args": args})
    else:
        with pytest.raises(ValueError, match="standing server"):
            check_serve_gpus({"enabled": True, "args": args})
    check_serve_gpus({"enabled": False, "args": ["-tp", "8"]})  # a standing server's own business


def test_the_pinned_deepspeed_from_pypi_installs_without_nvcc_and_imports_with_the_tested_torch(tmp_path):
    """envs/train.yaml's DeepSpeed: PyPI's source package, built here (no nvcc) with no ops compiled;
    every requirement of it is in the env's conda section; it imports with the venv's torch, and
    what scheme III runs (ZeRO 1-2 and 3 with a torch optimizer, through accelerate) loads no op.
    Needs PyPI (pip, a 2 MB source package): skipped without it.  Not tested here: a ZeRO step on GPUs."""
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from test_envs import PIP_DIST, PYTORCH_BRINGS, conda_specs, pip_section

    train = ROOT / "envs/train.yaml"
    [pin] = [d for d in pip_section(train) if d.startswith("deepspeed==")]
    target = tmp_path / "site"
    extra = ["hjson", "msgpack", "py-cpuinfo", "nvidia-ml-py"]  # not in the venv; conda gives them in the env
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-input",
                "--no-deps",
                "--target",
                str(target),
                pin,
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            env={**os.environ, "DS_BUILD_OPS": "0", "CUDA_HOME": "/nonexistent"},
        )
    except subprocess.TimeoutExpired:
        pytest.skip("PyPI too slow")
    if res.returncode != 0:
        if re.search(r"No matching distribution|connection|resolve|network|timed out", res.stderr, re.IGNORECASE):
            pytest.skip(f"PyPI not reachable: {res.stderr[-300:]}")
        raise AssertionError(res.stderr[-3000:])
    [meta] = target.glob("deepspeed-*.dist-info/METADATA")
    provided = {canonicalize_name(PIP_DIST.get(n, n)) for n in conda_specs(train)} | PYTORCH_BRINGS | {"torch"}
    for line in meta.read_text().splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1])
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                assert canonicalize_name(req.name) in provided, f"train.yaml: pip would fetch {req.name} for DeepSpeed"
    probe = (
        "import deepspeed, torch, accelerate.utils\n"
        "from deepspeed.git_version_info import installed_ops\n"
        "import deepspeed.runtime.zero.stage_1_and_2, deepspeed.runtime.zero.stage3\n"
        "import json; print(json.dumps([deepspeed.__version__, torch.__version__,"
        " sorted(k for k, v in installed_ops.items() if v), accelerate.utils.is_deepspeed_available()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ds, torch_version, ops, seen = json.loads(out.stdout.strip().splitlines()[-1])  # DeepSpeed logs to stdout too
    assert ds == pin.split("==")[1] and torch_version.split("+")[0] == version("torch").split("+")[0]
    assert ops == [] and seen
