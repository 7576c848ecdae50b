"""Rule caption_instances: a description and an importance score per instance (stage 5, step 4)."""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.caption.steps import describe_instances_shard  # noqa: E402
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.models.vlm_local import served_step_judge  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "caption_instances")
config = dict(sm.config, caption=sm.params.caption, vlm=dict(sm.params.vlm))
with contextlib.ExitStack() as stack:
    judge = served_step_judge(config, config["caption"]["instances"].get("vlm"), stack, sm.log.server, log=log.info)
    table = describe_instances_shard(
        read_table(sm.input.masks),
        read_table(sm.input.checks),
        config,
        sm.input.views,
        read_table(sm.input.upscaled),
        judge,
        log=log.info,
    )
write_table(table, sm.output[0], sort_by=["image_id", "instance"])
