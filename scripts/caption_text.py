"""Rule caption_text: the long caption from the image and all metadata, then the short one (step 6)."""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.caption.steps import captions_shard  # noqa: E402
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.models.vlm_local import served_step_judge  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "caption_text")
config = dict(sm.config, caption=sm.params.caption, vlm=dict(sm.params.vlm))
with contextlib.ExitStack() as stack:
    judge = served_step_judge(config, config["caption"]["captions"].get("vlm"), stack, sm.log.server, log=log.info)
    table = captions_shard(
        read_table(sm.input.checks),
        read_table(sm.input.tags),
        read_table(sm.input.instances),
        read_table(sm.input.aesthetics),
        read_table(sm.input.index),
        config,
        sm.input.views,
        judge,
        log=log.info,
    )
write_table(table, sm.output[0])
