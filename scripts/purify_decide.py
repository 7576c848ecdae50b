"""Rule purify_decide: the pool-level top-fraction cuts and the candidate list."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
import pandas as pd  # noqa: E402

from pixverve.core.tables import read_tables, write_table  # noqa: E402
from pixverve.purify.classical import decide, score_classical_shard  # noqa: E402
from pixverve.workflow import note_empty, start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "purify_decide")
classical = read_tables(list(sm.input.classical))
if not list(sm.input.classical):  # no shard at all (no readable image): stage 2's columns, no rows
    config = dict(
        target_megapixels=sm.params.target_megapixels, purify=sm.params.purify, io=sm.params.io, sources={"roots": []}
    )
    classical = score_classical_shard(pd.DataFrame(columns=["image_id", "root", "relpath", "shard"]), config, ".")
note_empty(log, len(classical), "stage 2 (purify_decide)")
aesthetics = read_tables(list(sm.input.aesthetics)) if "aesthetics" in sm.input.keys() else None
decisions, cutoffs = decide(classical, aesthetics, {"purify": sm.params.purify})
write_table(decisions, sm.output.decisions)
write_table(decisions.loc[decisions["passed"], ["image_id", "root", "relpath", "shard"]], sm.output.candidates)
cutoffs.to_csv(sm.output.cutoffs, index=False)
log.info("cut-offs:\n%s", cutoffs.to_string(index=False))
log.info("%d candidate(s) of %d", int(decisions["passed"].sum()), len(decisions))
