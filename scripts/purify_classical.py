"""Rule purify_classical: exposure, sharpness, flatness and entropy for one shard."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.ingest.dedup import kept_in_shard  # noqa: E402
from pixverve.purify.classical import score_classical_shard  # noqa: E402
from pixverve.workflow import note_empty, start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "purify_classical")
rows = kept_in_shard(read_table(sm.input.shard), read_table(sm.input.dedup))
note_empty(log, len(rows), f"stage 2 (purify_classical {sm.wildcards.shard})")
config = dict(sm.config, target_megapixels=sm.params.target_megapixels, purify=sm.params.purify, io=sm.params.io)
result = score_classical_shard(rows, config, ".", threads=sm.threads)
write_table(result, sm.output[0])
log.info(
    "%d image(s) scored, %d pass the absolute filters", len(result), int(result["passed"].sum()) if len(result) else 0
)
