"""Rule synth_render: the T2I backend renders every kept prompt at ~4K into the synthetic root."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.collect.sources import write_manifest  # noqa: E402
from pixverve.collect.synthetic import render_prompts  # noqa: E402
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "synth_render")
table, manifest = render_prompts(read_table(sm.input.prompts), sm.config, base_dir=".", log=log.info)
write_table(table, sm.output.table)
write_manifest(manifest, sm.output.manifest)
