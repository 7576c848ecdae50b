"""The demo DAG through Snakemake: it runs, resumes, does no work twice and is deterministic."""

from __future__ import annotations

import re
import shutil
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


def test_stage5_records_and_table1_add_up(run_a):
    import jsonschema

    from pixverve.caption.dataset import load_schema, read_jsonl

    checks = pd.concat(pd.read_parquet(p) for p in sorted((run_a / "results/verify/instances").glob("s*.parquet")))
    decisions = pd.read_parquet(run_a / "results/verify/verified.parquet")
    assert sorted(checks["image_id"]) == sorted(decisions.loc[decisions["passed"], "image_id"])
    records = read_jsonl(sorted((run_a / "results/caption/records").glob("s*.jsonl")))
    # every image that survived stage 4 has a record; every record validates and says it is smoke
    assert sorted(r["image_id"] for r in records) == sorted(checks.loc[checks["passed"], "image_id"])
    schema = load_schema()
    for r in records:
        jsonschema.validate(r, schema)
        assert r["smoke"] and {"tags", "boxes", "masks", "captions"} <= set(r["smoke_steps"])
    assert sum(len(r["instances"]) for r in records) > 0 and all(r["long_caption"] for r in records)
    # Table 1 against the stage tables themselves
    flow = pd.read_csv(run_a / "paper_figures/table1_data_flow.csv").set_index("step")
    index = pd.read_parquet(run_a / "results/index/index.parquet")
    dedup = pd.read_parquet(run_a / "results/dedup/decisions.parquet")
    purify = pd.read_parquet(run_a / "results/purify/decisions.parquet")
    upscale = pd.concat(pd.read_parquet(p) for p in sorted((run_a / "results/upscale").glob("s*.parquet")))
    assert flow.loc["index", "entering"] == len(index) and flow.loc["index", "kept"] == int(index["passed"].sum())
    assert (
        flow.loc["dedup", "kept"]
        == int(dedup["passed"].sum())
        == flow.loc["candidates (all five)", "entering"]
        == len(purify)
    )
    assert flow.loc["candidates (all five)", "kept"] == int(purify["passed"].sum()) == len(upscale)
    assert flow.loc["filter: entropy", "dropped"] == int((~purify["entropy_ok"]).sum())
    assert flow.loc["regions", "kept"] == int(decisions["passed"].sum()) == flow.loc["instances", "entering"]
    assert flow.loc["annotation record", "kept"] == len(records)
    assert (flow["entering"] - flow["dropped"] == flow["kept"]).all()
    meta = pd.read_parquet(run_a / "results/dataset/metadata.parquet")
    bench = (run_a / "results/dataset/benchmark.jsonl").read_text().splitlines()
    train = (run_a / "results/dataset/captions.jsonl").read_text().splitlines()
    assert len(meta) == len(records) and len(bench) == 2 and len(bench) + len(train) == len(records)
    assert "SMOKE" in (run_a / "paper_figures/table2_datasets.md").read_text()
    for name in ("caption_lengths.png", "instance_counts.png"):
        assert (run_a / "paper_figures" / name).stat().st_size > 5_000


def test_training_checkpoints_samples_and_bench_rows(run_a):
    """#8 acceptance: one (smoke) checkpoint per scheme, an image from each, the benchmark rows."""
    import json

    meta = pd.read_parquet(run_a / "results/dataset/metadata.parquet")
    # every scheme (LoRA is left out of tests/e2e/config.yaml: tests/test_train.py trains it)
    runs = {"scheme1_full": [128], "scheme2_window": [128], "scheme3_l2p": [64, 128]}
    assert not (run_a / "results/train/scheme1_lora").exists()
    for run, resolutions in runs.items():
        for res in resolutions:
            folder = run_a / "results/train" / run / str(res)
            info = json.loads((folder / "final/model.json").read_text())
            assert info["smoke"] is True and info["steps"] == 20 and info["resolution"] == res
            log = pd.read_csv(folder / "train_log.csv")
            assert list(log["step"]) == [5, 10, 15, 20] and (log["ranks_stepped"] == 1).all()
            assert log["eval_loss"].notna().all()
            sample = json.loads((folder / "sample.json").read_text())
            assert sample["smoke"] is True and (folder / "sample.png").stat().st_size > 1000
            text = (run_a / "logs/train" / run / f"{res}.log").read_text()
            assert f"{int((meta['split'] == 'train').sum())} training images" in text  # the held-out split is not
    l2p_log = (run_a / "logs/train/scheme3_l2p/128.log").read_text()
    assert "L2P initialised from results/train/scheme3_l2p/64/final" in l2p_log  # progressive
    table = pd.read_csv(run_a / "paper_figures/bench_table.csv")
    assert set(table["method"]) == {"ours-scheme1", "ours-scheme3"}  # bench.enabled in tests/e2e/config.yaml
    assert not (run_a / "results/bench/tiny-sd").exists()
    sets = json.loads((run_a / "results/bench/ours-scheme1/sets.json").read_text())
    assert sets["fid_patch_order"] == "yx" and sets["fid_patch_size"] == 512  # the published draw order, on record


def test_second_run_does_nothing(run_a):
    res = snakemake(run_a, "-n")
    assert "Nothing to be done" in res.stdout + res.stderr


def test_deterministic_across_runs(run_a, tmp_path):
    """A second run through stage 3 gives the same tables, byte for byte.  (CI's SLURM demo
    compares every table and checkpoint of two whole runs, local and SLURM: .ci/slurm-demo.sh.)"""
    run_b = copy_workflow(tmp_path / "run_b")
    snakemake(run_b, "--rerun-incomplete", "ingest", "purify", "upscale_all")
    a, b = tables(run_a), tables(run_b)
    stages = (
        "results/index/",
        "results/screen/",
        "results/dedup/",
        "results/purify/",
        "results/upscale/",
        "results/summary/ingest",
    )
    a = {k: v for k, v in a.items() if k.startswith(stages)}
    assert a.keys() == b.keys() and len(a) > 10
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
    for needle in (
        "== upscale",
        "== verify",
        "verify/patches/",
        "verify/regions/",
        "verify/verified.parquet",
        "lpips",
        "picked",
        "raw_replies",
        "judge_smoke",
        "prompt_sha",
    ):
        assert needle in out, needle
    assert out.count("verify/patches/") == 10  # one block per judged patch, with x/y/w/h
    assert re.search(r"^   x\s+\d+$", out, re.M) and re.search(r"^   w\s+\d+$", out, re.M)


def _lose(run, *paths):
    for path in paths:
        (run / path).unlink()


def _planned_jobs(run, *targets) -> dict[str, int]:
    res = snakemake(run, "-n", *targets, "--quiet", "rules")  # a flag before the targets ends --configfile's list
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", res.stdout, re.M) if k != "total"}


def test_killed_training_job_resumes_from_its_checkpoint(run_a):
    """A train job killed after its step-10 checkpoint (its outputs never written, the step-20
    checkpoint not finished): the rerun starts at step 10 and ends with the same weights."""
    folder = run_a / "results/train/scheme2_window/128"
    before = (folder / "final/transformer.safetensors").read_bytes()
    shutil.rmtree(folder / "final")
    for name in ("train_log.csv", "loss.png", "resolved_config.yaml"):
        (folder / name).unlink()
    (folder / "checkpoints/step-000020/done").unlink()  # killed while saving step 20
    snakemake(run_a, "--rerun-incomplete", "results/train/scheme2_window/128/final")
    log = (run_a / "logs/train/scheme2_window/128.log").read_text()
    assert "resumed from step-000010 at step 10" in log
    assert list(pd.read_csv(folder / "train_log.csv")["step"]) == [5, 10, 15, 20]
    assert (folder / "final/transformer.safetensors").read_bytes() == before


def test_resume_redoes_only_the_lost_shard(run_a):
    """Last in this file: it leaves run_a's later stages out of date (each scenario reruns only as
    far as its own stage, so the suite does not redo the whole demo four times)."""
    # a stage 5 job killed (instance descriptions of one shard): that shard's later steps and the
    # export rerun, nothing else
    shard = sorted((run_a / "results/caption/instances").glob("s*.parquet"))[1].stem
    _lose(
        run_a,
        f"results/caption/instances/{shard}.parquet",
        f"results/caption/captions/{shard}.parquet",
        f"results/caption/records/{shard}.jsonl",
        "results/dataset/metadata.parquet",
    )
    assert _planned_jobs(run_a, "caption_all") == {
        "caption_instances": 1,
        "caption_text": 1,
        "caption_records": 1,
        "caption_bundle": 1,
        "dataset_export": 1,
        "dataset_samples": 1,
        "caption_all": 1,
    }
    snakemake(run_a, "--rerun-incomplete", "caption_all")
    # a judge job killed (so the stage 4 gather and stage 5 never ran): that shard's judgments and
    # the gather rerun, nothing before them
    regions = sorted((run_a / "results/verify/regions").glob("s*.parquet"))[0]
    stage5 = [p.relative_to(run_a) for p in (run_a / "results/caption").rglob("*") if p.is_file()]
    stage5 += [p.relative_to(run_a) for p in (run_a / "results/dataset").rglob("*") if p.is_file()]
    stage5 += [p.relative_to(run_a) for p in (run_a / "results/verify/instances").glob("*.parquet")]
    _lose(run_a, regions.relative_to(run_a), "results/verify/verified.parquet", "results/summary/verify.csv", *stage5)
    jobs = _planned_jobs(run_a)
    assert jobs["verify_regions"] == 1 and jobs["verify_decide"] == 1 and jobs["caption_tags"] >= 3
    assert not {"verify", "upscale", "purify_classical", "screen"} & set(jobs)
    snakemake(run_a, "--rerun-incomplete", "verify_all")
    # a run killed while screening shard s00001: that shard and everything after it are missing
    lost = run_a / "results/screen/s00001.parquet"
    before = lost.read_bytes()
    downstream = [p.relative_to(run_a) for p in (run_a / "results").rglob("*") if p.is_file() and "purify" in str(p)]
    downstream += [Path("results/dedup/decisions.parquet"), Path("results/summary/ingest.csv")]
    _lose(run_a, lost.relative_to(run_a), *downstream)
    jobs = _planned_jobs(run_a)
    assert jobs["screen"] == 1 and "index" not in jobs and "demo_pool" not in jobs
    snakemake(run_a, "--rerun-incomplete", "purify")
    assert lost.read_bytes() == before
    # a purification job killed later: only that shard's scores and the gather steps rerun
    _lose(run_a, "results/purify/classical/s00002.parquet", "results/purify/decisions.parquet")
    jobs = _planned_jobs(run_a, "purify")
    assert jobs.get("purify_classical") == 1 and jobs.get("purify_decide") == 1
    assert "screen" not in jobs and "dedup" not in jobs
    snakemake(run_a, "--rerun-incomplete", "ingest", "purify")
