"""Rule caption_tags: analysis copies, tags and the LLM-pruned tag list of one shard (stage 5, step 1)."""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.caption.models import build_tagger  # noqa: E402
from pixverve.caption.steps import tag_shard  # noqa: E402
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.models.vlm_local import served_step_judge  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "caption_tags")
config = dict(sm.config, caption=sm.params.caption, vlm=dict(sm.params.vlm))
spec = config["caption"]["tags"]
Path(sm.output.views).mkdir(parents=True, exist_ok=True)
with contextlib.ExitStack() as stack:
    tagger = build_tagger(spec)
    vlm_tagger = (
        served_step_judge(config, spec.get("vlm"), stack, sm.log.server, log=log.info) if tagger is None else None
    )
    pruner = None
    if spec["prune"]["enabled"]:
        server_log = sm.log.server + ".prune" if vlm_tagger is not None else sm.log.server
        pruner = served_step_judge(config, spec["prune"].get("vlm"), stack, server_log, log=log.info)
    table = tag_shard(
        read_table(sm.input.verified),
        sm.wildcards.shard,
        config,
        sm.output.views,
        tagger,
        vlm_tagger,
        pruner,
        log=log.info,
    )
write_table(table, sm.output.table)
