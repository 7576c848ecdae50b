"""Rule synth_prompts: the LLM writes prompts per category; near duplicates are removed."""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.collect.synthetic import write_prompts  # noqa: E402
from pixverve.core.tables import write_table  # noqa: E402
from pixverve.models.vlm_local import served_judge  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "synth_prompts")
config = dict(sm.config, vlm=dict(sm.config["vlm"]))
with contextlib.ExitStack() as stack:
    judge = served_judge(config, stack, sm.log.server, log=log.info)
    prompts, requests = write_prompts(config, judge, sm.input.template, log=log.info)
write_table(prompts, sm.output.prompts)
write_table(requests, sm.output.requests)
