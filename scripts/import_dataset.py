"""Rule import_dataset: a local copy of another UHR dataset becomes a manifest for the index."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.collect.imports import import_dataset  # noqa: E402
from pixverve.collect.sources import write_manifest  # noqa: E402
from pixverve.core.tables import write_table  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "import_dataset")
name = sm.wildcards.dataset
table, manifest = import_dataset(name, sm.config["imports"][name], sm.config, ".", log=log.info)
write_table(table, sm.output.table)
write_manifest(manifest, sm.output.manifest)
