"""Rule screen: the paper's resolution criteria, a full decode check and the pHash, per shard."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.ingest.screening import screen_shard  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "screen")
config = dict(sm.config)
config.update(
    target_megapixels=sm.params.target_megapixels,
    screening=sm.params.screening,
    sr_tiers=sm.params.sr_tiers,
    io=sm.params.io,
)
result = screen_shard(read_table(sm.input[0]), config, ".", threads=sm.threads)
write_table(result, sm.output[0])
log.info("%d image(s), %d passed", len(result), int(result["passed"].sum()))
for reason, n in result.loc[~result["passed"], "reason"].value_counts().sort_index().items():
    log.info("rejected at screen: %s x%d", reason, n)
