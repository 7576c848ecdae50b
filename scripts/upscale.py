"""Rule upscale: SR of one shard's candidates to their tiers, as tiled BigTIFFs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.upscale.sr import upscale_shard  # noqa: E402
from pixverve.workflow import note_empty, start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "upscale")
screen = read_table(sm.input.screen)
candidates = read_table(sm.input.candidates)
rows = screen.merge(candidates[["image_id", "root", "relpath"]], on=["image_id", "root", "relpath"])
note_empty(log, len(rows), f"stage 3 (upscale {sm.wildcards.shard})")
config = dict(sm.config, upscale=sm.params.upscale, io=sm.params.io)
table, timings = upscale_shard(rows, config, Path(sm.params.images), ".", threads=sm.threads, log=log.info)
write_table(table, sm.output.table)
timings.to_csv(sm.output.timings, sep="\t", index=False)
