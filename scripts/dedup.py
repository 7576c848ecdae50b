"""Rule dedup: exact and near-duplicate removal across all shards and sources."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.tables import read_tables, write_table  # noqa: E402
from pixverve.ingest.dedup import deduplicate  # noqa: E402
from pixverve.workflow import note_empty, start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "dedup")
screened = read_tables(list(sm.input.screen))
passed = screened[screened["passed"].astype(bool)] if len(screened) else screened
note_empty(log, len(passed), "stage 1 (dedup)")
decisions = deduplicate(passed, sm.params.dedup["phash_max_hamming"])
write_table(decisions, sm.output[0])
log.info("%d screened image(s), %d kept", len(decisions), int(decisions["passed"].sum()))
for reason, n in decisions.loc[~decisions["passed"], "reason"].value_counts().sort_index().items():
    log.info("rejected at dedup: %s x%d", reason, n)
