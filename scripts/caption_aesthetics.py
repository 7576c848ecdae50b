"""Rule caption_aesthetics: the paper's six aesthetic dimensions per image (stage 5, step 5)."""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.caption.steps import aesthetic_analysis_shard, aesthetics_vlm_overrides  # noqa: E402
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.models.vlm_local import served_step_judge  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "caption_aesthetics")
config = dict(sm.config, caption=sm.params.caption, vlm=dict(sm.params.vlm))
with contextlib.ExitStack() as stack:
    judge = served_step_judge(config, aesthetics_vlm_overrides(config), stack, sm.log.server, log=log.info)
    table = aesthetic_analysis_shard(read_table(sm.input.checks), config, sm.input.views, judge, log=log.info)
write_table(table, sm.output[0])
