"""Rule purify_decide: the pool-level top-fraction cuts and the candidate list."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.purify import decide  # noqa: E402
from pixverve.tables import read_tables, write_table  # noqa: E402
from pixverve.workflow import note_empty, start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "purify_decide")
classical = read_tables(list(sm.input.classical))
note_empty(log, len(classical), "stage 2 (purify_decide)")
aesthetics = read_tables(list(sm.input.aesthetics)) if "aesthetics" in sm.input.keys() else None
decisions, cutoffs = decide(classical, aesthetics, {"purify": sm.params.purify})
write_table(decisions, sm.output.decisions)
write_table(decisions.loc[decisions["passed"], ["image_id", "root", "relpath", "shard"]], sm.output.candidates)
cutoffs.to_csv(sm.output.cutoffs, index=False)
log.info("cut-offs:\n%s", cutoffs.to_string(index=False))
log.info("%d candidate(s) of %d", int(decisions["passed"].sum()), len(decisions))
