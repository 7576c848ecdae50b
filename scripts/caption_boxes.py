"""Rule caption_boxes: boxes for the kept tags, in full-resolution pixels (stage 5, step 2)."""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.caption.models import build_detector  # noqa: E402
from pixverve.caption.steps import boxes_shard  # noqa: E402
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.models.vlm_local import served_step_judge  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "caption_boxes")
config = dict(sm.config, caption=sm.params.caption, vlm=dict(sm.params.vlm))
spec = config["caption"]["boxes"]
with contextlib.ExitStack() as stack:
    detector = build_detector(spec)
    if detector is None:
        rex = served_step_judge(config, spec["rex_omni"].get("vlm"), stack, sm.log.server, log=log.info)
    else:
        Path(sm.log.server).write_text("no VLM used: the detector runs in this job\n")
        rex = None
    table = boxes_shard(
        read_table(sm.input.tags), config, sm.input.views, read_table(sm.input.upscaled), detector, rex, log=log.info
    )
write_table(table, sm.output[0])
