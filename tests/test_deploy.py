"""The workflow outside its checkout: the paper config on a stand-in root, `--directory`, and use
as a Snakemake `module` (shipped files from the workflow folder, results in the working directory)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIGS = [
    str(ROOT / "configs/demo.yaml"),
    str(ROOT / "tests/e2e/config.yaml"),
    str(ROOT / "tests/e2e/deploy.yaml"),
]


def _run(args, cwd, check=True):
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--max-threads", "1", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _jobs(res) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", res.stdout, re.M) if k != "total"}


def _edit_lines_overlay(tmp_path, work) -> Path:
    """The paper config's EDIT lines that name files, filled with stand-ins: nothing else changes."""
    (tmp_path / "eval/util").mkdir(parents=True)
    (tmp_path / "eval/util/build_prompts.py").touch()  # a checkout of the published eval code
    weights = work / "resources/weights/sac+logos+ava1-l14-linearMSE.pth"  # the LAION MLP, downloaded by the user
    weights.parent.mkdir(parents=True)
    weights.touch()
    overlay = tmp_path / "edits.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "bench": {
                    "fgclip2": {"model": str(tmp_path / "fg-clip2-base")},
                    "judge": {"published_eval": str(tmp_path / "eval")},
                }
            }
        )
    )
    return overlay


def _roots_overlay(tmp_path, folders) -> Path:
    lines = ["sources:", "  roots:"]
    for name, folder in folders.items():
        lines.append(f"    - {{name: {name}, path: {folder}, source: {name}, licence: test}}")
    overlay = tmp_path / "roots.yaml"
    overlay.write_text("\n".join(lines) + "\n")
    return overlay


def test_paper_config_dry_runs_on_a_stand_in_root_and_names_a_missing_one(tmp_path):
    """config.yaml as shipped (only the roots moved to a small folder) builds its DAG; a missing
    or empty root is an error naming the sources.roots entry, not a MissingInputException."""
    folders = {}
    for name in ("pexels", "unsplash"):
        folders[name] = tmp_path / "pool" / name
        folders[name].mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 60, 3), 40 * i, np.uint8)).save(folders[name] / f"{i}.jpg")
    work = tmp_path / "work"
    edits = _edit_lines_overlay(tmp_path, work)
    base = [
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(work),
        "-n",
        "--quiet",
        "rules",
        "--configfile",
        str(edits),
    ]
    res = _run([*base, str(_roots_overlay(tmp_path, folders))], ROOT)
    jobs = _jobs(res)
    assert jobs["index"] == 1 and "all" in jobs
    # the whole paper: every scheme trained at the paper's resolutions (I full and LoRA, II at 4K and 8K,
    # III at 4K, 8K, 10K), and the benchmark of their checkpoints beside the two base models sampled
    # directly at 4096^2 (the training-free baselines)
    assert jobs["train"] == 2 + 2 + 2 + 3 and jobs["train_sample"] == jobs["train"]
    assert jobs["bench_generate"] == jobs["bench_scores"] == jobs["bench_judge"] == 6 and jobs["bench_table"] == 1
    for f in folders["unsplash"].iterdir():
        f.unlink()
    (folders["unsplash"] / "notes.txt").write_text("not an image")
    empty = _run([*base, str(_roots_overlay(tmp_path, folders))], ROOT, check=False)
    assert empty.returncode != 0 and "sources.roots[1] (name 'unsplash')" in empty.stdout + empty.stderr
    assert "holds no file with an extension" in empty.stdout + empty.stderr
    missing = _run([*base[:-2], "--configfile", str(edits)], ROOT, check=False)  # data/raw/...
    out = missing.stdout + missing.stderr
    assert missing.returncode != 0 and "MissingInputException" not in out
    assert "sources.roots[0] (name 'pexels')" in out and "does not exist" in out and "configs/demo.yaml" in out


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """The demo through stage 2's decisions with --directory outside the checkout (results there)."""
    work = tmp_path_factory.mktemp("outside")
    _run(
        ["-s", str(ROOT / "Snakefile"), "--directory", str(work), "--configfile", *DEMO_CONFIGS, "--", "purify"],
        tmp_path_factory.mktemp("elsewhere"),
    )
    return work


def test_directory_run_keeps_results_there_and_finds_every_shipped_file(outside):
    import pandas as pd

    decisions = pd.read_parquet(outside / "results/purify/decisions.parquet")
    assert len(decisions) > 5 and decisions["passed"].any()
    assert (outside / "resources/demo_pool/sources.csv").exists() and (outside / "logs/index.log").exists()
    # the whole DAG from here on: every prompt, vocabulary and schema input is found in the checkout
    res = _run(
        [
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(outside),
            "--configfile",
            *DEMO_CONFIGS,
            "-n",
            "--quiet",
            "rules",
        ],
        outside,
    )
    jobs = _jobs(res)
    assert {"verify_regions", "caption_tags", "caption_records", "bench_judge"} <= set(jobs)
    assert "purify_decide" not in jobs and "screen" not in jobs  # nothing of stages 1-2 redone


def test_killed_snakemake_leaves_a_lock_that_unlock_clears_and_the_rerun_resumes(outside):
    """README: after `kill -9` of Snakemake itself, `snakemake --unlock` then the same command."""
    import os
    import signal
    import time

    args = ["-s", str(ROOT / "Snakefile"), "--directory", str(outside), "--configfile", *DEMO_CONFIGS]
    target = outside / "results/purify/decisions.parquet"
    before = target.read_bytes()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "2",
            "--max-threads",
            "1",
            *args,
            "--forcerun",
            "purify_decide",
            "--",
            str(target.relative_to(outside)),
        ],
        cwd=outside,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    locks = outside / ".snakemake/locks"
    deadline = time.monotonic() + 120
    while not (locks.is_dir() and any(locks.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "Snakemake finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    locked = _run([*args, "--", "purify"], outside, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    _run([*args, "--unlock"], outside)
    _run([*args, "--rerun-incomplete", "--", "purify"], outside)
    assert target.read_bytes() == before


def test_module_use_from_a_separate_folder(outside):
    """A deployment folder (snakedeploy's layout): its Snakefile imports ours as a module."""
    (outside / "workflow").mkdir()
    configs = "\n".join(f'configfile: "{c}"' for c in [str(ROOT / "config.yaml"), *DEMO_CONFIGS])
    (outside / "workflow/Snakefile").write_text(
        f'{configs}\n\n\nmodule pixverve:\n    snakefile:\n        "{ROOT / "Snakefile"}"\n'
        "    config:\n        config\n\n\nuse rule * from pixverve\n"
    )
    for name in ("decisions.parquet", "candidates.parquet", "cutoffs.csv"):
        (outside / "results/purify" / name).unlink()
    ran = _run(["-s", "workflow/Snakefile", "--", "results/purify/decisions.parquet"], outside)
    assert "rule purify_decide:" in ran.stdout + ran.stderr and "rule screen:" not in ran.stdout + ran.stderr
    assert (outside / "results/purify/decisions.parquet").exists()  # the stage 2 gather ran through the module
    jobs = _jobs(_run(["-s", "workflow/Snakefile", "-n", "--quiet", "rules"], outside))
    assert {"verify_regions", "caption_tags", "caption_records", "bench_judge"} <= set(jobs)
    assert "purify_decide" not in jobs


def test_shipped_file_rule(tmp_path):
    """The documented rule: the working directory's copy wins, else the workflow folder's; other
    values (roots, weights) are left alone."""
    from pixverve.workflow import resolve_shipped_files

    work = tmp_path / "work"
    (work / "prompts").mkdir(parents=True)
    (work / "prompts/tags.md").write_text("my own prompt")
    config = {
        "caption": {"tags": {"prompt": "prompts/tags.md", "prune": {"prompt": "prompts/tag_prune.md"}}},
        "verify": {"regions": {"prompt": "prompts/region_artifact.md"}},
        "x": ["prompts/nope.md", "data/raw"],
        "upscale": {"weights": "resources/weights/a.pth"},
    }
    changed = resolve_shipped_files(config, ROOT, work)
    assert config["caption"]["tags"]["prompt"] == "prompts/tags.md"  # present in the working directory
    assert config["caption"]["tags"]["prune"]["prompt"] == str(ROOT / "prompts/tag_prune.md")
    assert config["verify"]["regions"]["prompt"] == str(ROOT / "prompts/region_artifact.md")
    assert config["x"] == ["prompts/nope.md", "data/raw"] and config["upscale"]["weights"] == "resources/weights/a.pth"
    assert sorted(changed) == ["caption.tags.prune.prompt", "verify.regions.prompt"]
