"""Rule verify_instances: stage 4's instance-level artefact check on stage 5's instance crops."""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.models.vlm_local import served_judge  # noqa: E402
from pixverve.verify.instances import judge_instances_shard  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "verify_instances")
config = dict(sm.config, verify=sm.params.verify, caption=sm.params.caption, vlm=dict(sm.params.vlm))
with contextlib.ExitStack() as stack:
    judge = served_judge(config, stack, sm.log.server, log=log.info)
    images, crops = judge_instances_shard(
        read_table(sm.input.masks),
        config,
        sm.input.views,
        read_table(sm.input.upscaled),
        judge,
        sm.input.prompt,
        log=log.info,
    )
write_table(images, sm.output.images)
write_table(crops, sm.output.crops, sort_by=["image_id", "instance"])
