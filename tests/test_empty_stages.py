"""Every image dropped early: the stages after it write empty tables with a clear log line, and the
benchmark stops with an error naming the method and the count (not torchmetrics' message)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest


def test_stage2_on_an_empty_shard_writes_empty_tables(demo_config, tmp_path):
    from pixverve.core.tables import read_table, write_table
    from pixverve.purify.classical import decide, score_classical_shard

    empty = pd.DataFrame(columns=["image_id", "root", "relpath", "shard"])
    classical = score_classical_shard(empty, demo_config, tmp_path)
    assert len(classical) == 0 and {"entropy_bits", "exposure_ok", "reason", "passed"} <= set(classical.columns)
    write_table(classical, tmp_path / "c.parquet")  # through parquet, as the rule hands it on
    decisions, cutoffs = decide(read_table(tmp_path / "c.parquet"), None, demo_config)
    assert len(decisions) == 0 and {"passed", "reason", "failed_filters"} <= set(decisions.columns)
    assert list(cutoffs["filter"]) == ["entropy"]


def test_note_empty_logs_one_clear_line(caplog):
    from pixverve.workflow import note_empty

    log = logging.getLogger("pixverve.test")
    with caplog.at_level(logging.INFO):
        note_empty(log, 3, "stage 2 (purify_decide)")
        note_empty(log, 0, "stage 2 (purify_decide)")
    assert [r.getMessage() for r in caplog.records] == [
        "stage 2 (purify_decide): no image entered (every image was dropped by an earlier stage, or the pool is "
        "empty); writing empty tables"
    ]


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_benchmark_images_for_fid_name_the_method_and_count(n):
    from pixverve.bench.inputs import require_fid_pairs

    with pytest.raises(ValueError, match=rf"bench method 'ours': {n} benchmark image pair\(s\).*at least 2"):
        require_fid_pairs([object()] * n, "ours", "results/dataset/benchmark.jsonl")
    require_fid_pairs([object()] * 2, "ours", "results/dataset/benchmark.jsonl")


def test_no_shard_at_all_gives_empty_dedup_and_training_finds_no_records():
    """No readable image anywhere (zero shards): dedup writes an empty table with its columns and
    training sees no record (its worker then stops with a clear line) instead of a KeyError."""
    import pandas as pd

    from pixverve.ingest.dedup import deduplicate
    from pixverve.train.data import records_from_metadata

    decisions = deduplicate(pd.DataFrame(), 8)
    assert len(decisions) == 0
    assert {"image_id", "root", "relpath", "shard", "passed", "reason", "dup_group"} <= set(decisions.columns)
    assert decisions["width"].dtype == "int64"
    assert records_from_metadata(pd.DataFrame()) == []


def test_a_pool_without_one_readable_image_runs_stages_1_and_2_on_nothing(tmp_path):
    """Zero shards (the only file is broken): the index and the stage 2 decision still finish, with
    empty tables, and the broken file is the index's row with its reason (before: a KeyError)."""
    import subprocess
    import sys

    import yaml
    from conftest import ROOT

    (tmp_path / "pool").mkdir()
    (tmp_path / "pool/bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "zero.yaml").write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "roots": [{"name": "pool", "path": "pool", "source": "test", "licence": "test"}],
                    "manifests": [],
                    "demo_pool": False,
                }
            }
        )
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "results/purify/candidates.parquet",
            "--cores",
            "1",
            "--configfile",
            str(ROOT / "configs/demo.yaml"),
            str(tmp_path / "zero.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(pd.read_parquet(tmp_path / "results/purify/candidates.parquet")) == 0
    assert "no image entered" in (tmp_path / "logs/purify/decide.log").read_text()
    index = pd.read_parquet(tmp_path / "results/index/index.parquet")
    assert list(index["relpath"]) == ["bad.jpg"] and list(index["reason"]) == ["not_an_image"]
