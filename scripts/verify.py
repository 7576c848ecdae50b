"""Rule verify: seam continuity and post-SR consistency for one shard's SR outputs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.verify.fidelity import verify_shard  # noqa: E402
from pixverve.workflow import note_empty, start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "verify")
config = dict(sm.config, verify=sm.params.verify, io=sm.params.io)
upscaled = read_table(sm.input.upscaled)
note_empty(log, len(upscaled), f"stage 4 (verify {sm.wildcards.shard})")
table = verify_shard(upscaled, config, ".", log=log.info)
write_table(table, sm.output[0])
