"""Every image dropped early: the stages after it write empty tables with a clear log line, and the
benchmark stops with an error naming the method and the count (not torchmetrics' message)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest


def test_stage2_on_an_empty_shard_writes_empty_tables(demo_config, tmp_path):
    from pixverve.purify import decide, score_classical_shard
    from pixverve.tables import read_table, write_table

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
    from pixverve.bench_inputs import require_fid_pairs

    with pytest.raises(ValueError, match=rf"bench method 'ours': {n} benchmark image pair\(s\).*at least 2"):
        require_fid_pairs([object()] * n, "ours", "results/dataset/benchmark.jsonl")
    require_fid_pairs([object()] * 2, "ours", "results/dataset/benchmark.jsonl")
