"""Rule caption_masks: masks from the boxes, mask NMS and the area threshold (stage 5, step 3)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.caption.models import build_segmenter  # noqa: E402
from pixverve.caption.steps import masks_shard  # noqa: E402
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "caption_masks")
config = dict(sm.config, caption=sm.params.caption)
segmenter = build_segmenter(config["caption"]["masks"])
write_table(masks_shard(read_table(sm.input.boxes), config, sm.input.views, segmenter, log=log.info), sm.output[0])
