"""Checkpoint index: identify and read the header of every source image; write shards."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.ingest.index import build_index, write_shards  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "index")
sources = dict(sm.params.sources, manifests=sm.params.sources.get("manifests", []) + sm.params.generated)
config = {"sources": sources, "io": sm.params.io, "shards": sm.params.shards}
df = build_index(config, ".", threads=sm.threads, cache_path=sm.params.hash_cache, log=log.info)
names = write_shards(df, sm.output.table, sm.output.shards)
failed = df[~df["passed"].astype(bool)]
log.info("%d file(s), %d readable, %d shard(s)", len(df), len(df) - len(failed), len(names))
for reason, n in failed["reason"].value_counts().sort_index().items():
    log.info("rejected at index: %s x%d", reason, n)
