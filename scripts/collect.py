"""Rule collect: one API collector (Pexels or Unsplash) fills its source root."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.collect.sources import collect, write_manifest  # noqa: E402
from pixverve.core.tables import write_table  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "collect")
table, manifest = collect(sm.wildcards.source, sm.config, ".", log=log.info)
write_table(table, sm.output.table)
write_manifest(manifest, sm.output.manifest)
