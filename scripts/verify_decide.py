"""Rule verify_decide: the stage 4 outcome per image (first failed check, in the paper's order)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.tables import read_tables, write_table  # noqa: E402
from pixverve.verify.fidelity import decide_stage4  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "verify_decide")
decisions, counts = decide_stage4(
    read_tables(sm.input.verify), read_tables(sm.input.regions), read_tables(sm.input.upscaled)
)
write_table(decisions, sm.output.decisions)
counts.to_csv(sm.output.counts, index=False)
log.info("stage 4: %d of %d SR outputs kept", int(decisions["passed"].sum()), len(decisions))
