"""Rule caption_records: one schema-valid annotation record per image of the shard (JSONL)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.caption.dataset import build_records, write_jsonl  # noqa: E402
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "caption_records")
inputs = {
    "tags": sm.input.tags,
    "boxes": sm.input.boxes,
    "masks": sm.input.masks,
    "instance_checks": sm.input.checks,
    "descriptions": sm.input.instances,
    "aesthetics": sm.input.aesthetics,
    "captions": sm.input.captions,
    "index": sm.input.index,
    "purify": sm.input.purify,
    "verify": sm.input.verify,
    "upscale": sm.input.upscaled,
}
records, rejected = build_records(
    {k: read_table(v) for k, v in inputs.items()}, sm.params.required, sm.params.invalid_policy
)
write_jsonl(records, sm.output.records)
write_table(rejected, sm.output.rejected)
log.info(
    f"{len(records)} annotation records written ({sum(r['smoke'] for r in records)} smoke), {len(rejected)} images "
    "rejected because a required stage-5 step failed on them"
)
