"""Rule verify_regions: VLM judgments of the chosen patches of each SR output (stage 4, check 3)."""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.models.vlm_local import served_judge  # noqa: E402
from pixverve.verify.regions import judge_regions_shard  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "verify_regions")
config = dict(sm.config, verify=sm.params.verify, vlm=dict(sm.params.vlm))
with contextlib.ExitStack() as stack:
    judge = served_judge(config, stack, sm.log.server, log=log.info)
    images, patches = judge_regions_shard(
        read_table(sm.input.verified), read_table(sm.input.upscaled), config, judge, sm.input.prompt, log=log.info
    )
write_table(images, sm.output.images)
write_table(patches, sm.output.patches)
