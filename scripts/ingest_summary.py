"""Rule ingest_summary: the stage-1 funnel as a table and a figure."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.tables import read_table, read_tables  # noqa: E402
from pixverve.ingest.summary import funnel, plot_ingest  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "ingest_summary")
index = read_table(sm.input.index)
screen = read_tables(list(sm.input.screen))
dedup = read_table(sm.input.dedup)
table = funnel([("index", index), ("screen", screen), ("dedup", dedup)])
table.to_csv(sm.output.table, index=False)
log.info("\n%s", table.to_string(index=False))
config = {"target_megapixels": sm.params.target_megapixels, "screening": sm.params.screening}
plot_ingest(index, screen, dedup, config, sm.output.figure)
