"""Rule purify_aesthetics: the configured aesthetic predictors' scores for one shard."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.ingest.dedup import kept_in_shard  # noqa: E402
from pixverve.purify.aesthetics import score_aesthetics_shard  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "purify_aesthetics")
rows = kept_in_shard(read_table(sm.input.shard), read_table(sm.input.dedup))
config = dict(sm.config, purify=sm.params.purify, io=sm.params.io)
result = score_aesthetics_shard(rows, config, ".", threads=sm.threads)
write_table(result, sm.output[0])
log.info("%d image(s) scored by %s", len(result), ", ".join(c for c in result.columns if c.endswith("_score")))
