"""The demo DAG through Snakemake: it runs, resumes, does no work twice and is deterministic."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import copy_workflow, snakemake

pytestmark = pytest.mark.e2e


def tables(workdir: Path) -> dict[str, bytes]:
    files = sorted((workdir / "results").rglob("*.parquet")) + [workdir / "results/summary/ingest.csv"]
    return {str(p.relative_to(workdir)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def run_a(demo_run):
    return demo_run


def test_outputs_and_funnel(run_a):
    funnel = pd.read_csv(run_a / "results/summary/ingest.csv").set_index("stage")
    index = pd.read_parquet(run_a / "results/index/index.parquet")
    dedup = pd.read_parquet(run_a / "results/dedup/decisions.parquet")
    screen = pd.concat(pd.read_parquet(p) for p in sorted((run_a / "results/screen").glob("s*.parquet")))
    assert funnel.loc["index", "entered"] == len(index)
    assert funnel.loc["screen", "entered"] == int(index["passed"].sum()) == len(screen)
    assert funnel.loc["dedup", "entered"] == int(screen["passed"].sum()) == len(dedup)
    assert funnel.loc["dedup", "passed"] == int(dedup["passed"].sum())
    assert len(list((run_a / "results/screen").glob("s*.parquet"))) >= 3  # several shard jobs ran
    assert (run_a / "results/summary/ingest.png").stat().st_size > 10_000
    upscale = pd.concat(pd.read_parquet(p) for p in sorted((run_a / "results/upscale").glob("s*.parquet")))
    verify = pd.concat(pd.read_parquet(p) for p in sorted((run_a / "results/verify").glob("s*.parquet")))
    candidates = pd.read_parquet(run_a / "results/purify/candidates.parquet")
    assert len(upscale) == len(candidates) and upscale["passed"].all()
    assert sorted(verify["image_id"]) == sorted(upscale["image_id"]) and verify["passed"].all()
    assert (run_a / "logs/index.log").read_text().count("rejected at index") == 3
    # stage 4: every SR output has seam/consistency numbers, its judged patches and an outcome
    assert verify["lpips"].notna().all() and verify["lpips_smoke"].all()  # random backbone in the demo
    decisions = pd.read_parquet(run_a / "results/verify/verified.parquet")
    regions = pd.concat(pd.read_parquet(p) for p in sorted((run_a / "results/verify/regions").glob("s*.parquet")))
    patches = pd.concat(pd.read_parquet(p) for p in sorted((run_a / "results/verify/patches").glob("s*.parquet")))
    assert sorted(decisions["image_id"]) == sorted(upscale["image_id"]) and decisions["judge_smoke"].all()
    assert sorted(regions["image_id"]) == sorted(verify.loc[verify["passed"], "image_id"]) and regions["smoke"].all()
    per_image = patches.groupby("image_id").size()
    assert (per_image == regions.set_index("image_id")["n_patches"].clip(upper=10).loc[per_image.index]).all()
    assert patches["smoke"].all() and (patches["picked"] == "random").groupby(patches["image_id"]).sum().max() <= 4
    counts = pd.read_csv(run_a / "results/summary/verify.csv").set_index("check")
    assert counts.loc["sr_output", "entering"] == len(upscale)
    assert counts.loc["regions", "kept"] == int(decisions["passed"].sum())
    assert (counts["entering"] - counts["dropped"] == counts["kept"]).all()


def test_second_run_does_nothing(run_a):
    res = snakemake(run_a, "-n")
    assert "Nothing to be done" in res.stdout + res.stderr


def _lose(run, *paths):
    for path in paths:
        (run / path).unlink()


def _planned_jobs(run) -> dict[str, int]:
    res = snakemake(run, "-n", "--quiet", "rules")
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", res.stdout, re.M) if k != "total"}


def test_resume_redoes_only_the_lost_shard(run_a):
    # a run killed while screening shard s00001: that shard and everything after it are missing
    lost = run_a / "results/screen/s00001.parquet"
    before = lost.read_bytes()
    downstream = [p.relative_to(run_a) for p in (run_a / "results").rglob("*") if p.is_file() and "purify" in str(p)]
    downstream += [Path("results/dedup/decisions.parquet"), Path("results/summary/ingest.csv")]
    _lose(run_a, lost.relative_to(run_a), *downstream)
    jobs = _planned_jobs(run_a)
    assert jobs["screen"] == 1 and "index" not in jobs and "demo_pool" not in jobs
    snakemake(run_a)
    assert lost.read_bytes() == before
    # a purification job killed later: only that shard's scores and the gather steps rerun
    _lose(run_a, "results/purify/classical/s00002.parquet", "results/purify/decisions.parquet")
    jobs = _planned_jobs(run_a)
    assert jobs.get("purify_classical") == 1 and jobs.get("purify_decide") == 1
    assert "screen" not in jobs and "dedup" not in jobs
    snakemake(run_a)
    # a judge job killed (so the stage 4 gather never ran): that shard's judgments and the gather
    # rerun, nothing before them
    regions = sorted((run_a / "results/verify/regions").glob("s*.parquet"))[0]
    _lose(run_a, regions.relative_to(run_a), "results/verify/verified.parquet", "results/summary/verify.csv")
    assert _planned_jobs(run_a) == {"verify_regions": 1, "verify_decide": 1, "all": 1}
    snakemake(run_a)


def test_deterministic_across_runs(run_a, tmp_path):
    run_b = copy_workflow(tmp_path / "run_b")
    snakemake(run_b)
    a, b = tables(run_a), tables(run_b)
    assert a.keys() == b.keys() and len(a) > 5
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"tables differ between identical runs: {different}"


def _audit(run, key: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pixverve", "audit", key, "--results", str(run / "results")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def test_audit_cli_shows_every_stage(run_a):
    res = _audit(run_a, "rocket_reencoded.jpg")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for stage in ("== index", "== screen", "== dedup"):
        assert stage in out
    assert "REJECTED: near_duplicate" in out and "phash" in out and "criteria_used" in out
    dedup = pd.read_parquet(run_a / "results/dedup/decisions.parquet").set_index("relpath")
    iid = dedup.loc["rocket_reencoded.jpg", "image_id"]
    by_id = _audit(run_a, iid[:8])
    assert by_id.stdout == out
    missing = _audit(run_a, "nope")
    assert missing.returncode == 2 and "no image" in missing.stderr


def test_audit_shows_patch_coordinates_replies_and_decisions(run_a):
    res = _audit(run_a, "rocket_x2.jpg")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for needle in ("== upscale", "== verify", "verify/patches/", "verify/regions/", "verify/verified.parquet",
                   "lpips", "picked", "raw_replies", "judge_smoke", "prompt_sha"):
        assert needle in out, needle
    assert out.count("verify/patches/") == 10  # one block per judged patch, with x/y/w/h
    assert re.search(r"^   x\s+\d+$", out, re.M) and re.search(r"^   w\s+\d+$", out, re.M)
