"""Shared fixtures: the repository root, the demo config, and the demo pool run through stage 1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def demo_config():
    from pixverve.workflow import load_config

    return load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml")


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory, demo_config):
    """A work folder holding the demo pool, laid out as the demo config expects."""
    from pixverve.ingest import demo_pool

    work = tmp_path_factory.mktemp("demo")
    pool = work / "resources" / "demo_pool"
    demo_pool.build(
        pool / "images",
        pool / "sources.csv",
        target_megapixels=demo_config["target_megapixels"],
        bomb_megapixels=1.5 * demo_config["io"]["max_megapixels"],
    )
    return work


@pytest.fixture(scope="session")
def stage1(demo_workdir, demo_config):
    """index -> screen (every shard) -> dedup on the demo pool, through the library."""
    import pandas as pd

    from pixverve.ingest.dedup import deduplicate
    from pixverve.ingest.index import build_index
    from pixverve.ingest.screening import screen_shard
    from pixverve.purify.classical import decide, score_classical_shard

    index = build_index(demo_config, demo_workdir, threads=2, log=lambda *_: None)
    readable = index[index["passed"]]
    screen = pd.concat(
        [screen_shard(g, demo_config, demo_workdir) for _, g in readable.groupby("shard")], ignore_index=True
    )
    dedup = deduplicate(screen[screen["passed"]], demo_config["dedup"]["phash_max_hamming"])
    kept = dedup[dedup["passed"]]
    classical = pd.concat(
        [score_classical_shard(g, demo_config, demo_workdir) for _, g in kept.groupby("shard")], ignore_index=True
    )
    purify, cutoffs = decide(classical, None, demo_config)
    return {"index": index, "screen": screen, "dedup": dedup, "purify": purify, "cutoffs": cutoffs}


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow's source (not results) so a test can run Snakemake in isolation."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (
        "Snakefile",
        "config.yaml",
        "rules",
        "scripts",
        "pixverve",
        "schemas",
        "envs",
        "configs",
        "report",
        "prompts",
    ):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    shutil.copytree(ROOT / "tests" / "e2e", dest / "tests" / "e2e")
    vendor = ROOT / "resources" / "vendor"  # what the set-up vendored (OpenSeadragon for the atlas)
    if vendor.is_dir():
        shutil.copytree(vendor, dest / "resources" / "vendor")
    return dest


E2E_CONFIGS = ["--configfile", "configs/demo.yaml", "tests/e2e/config.yaml"]


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run Snakemake on the tests' end-to-end config in ``workdir``; fail with its output."""
    res = subprocess.run(
        # one thread per job, two side by side: the demo's jobs are mostly Python start-up (the
        # Makefile's demo does the same; thread counts change floats, so every run here uses 1)
        [sys.executable, "-m", "snakemake", "--cores", "2", "--max-threads", "1", *E2E_CONFIGS, *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One end-to-end run of the demo DAG in a copy of the workflow (shared by the e2e tests)."""
    work = copy_workflow(tmp_path_factory.mktemp("demo_run"))
    snakemake(work, "--", "all", "atlas")  # as `make demo`: the run and its atlas ("--" ends --configfile)
    return work
