"""Rule bench_judge: MSFI (global + 10 local calls) and ICS (long caption) per image, by the
MLLM judge through the project's VLM client; every raw reply kept."""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.bench.evaluate import DEFAULT_MAX_FAILED_FRACTION, judge_method  # noqa: E402
from pixverve.bench.inputs import pair_method, read_benchmark  # noqa: E402
from pixverve.bench.prompts import load_judge_prompts  # noqa: E402
from pixverve.core.tables import write_table  # noqa: E402
from pixverve.models.vlm_local import served_step_judge  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "bench_judge")
spec = sm.params.bench
judge_spec = spec["judge"]
config = dict(sm.config, vlm=dict(sm.params.vlm))
items = pair_method(read_benchmark(sm.input.benchmark), sm.params.real_dir, sm.params.images)
prompts = load_judge_prompts(judge_spec)
log.info(f"judge prompts: {prompts.mode}")
with contextlib.ExitStack() as stack:
    judge = served_step_judge(config, judge_spec.get("vlm"), stack, sm.log.server, log=log.info)
    # stops (StepFailed, naming the server and model) when more than bench.max_failed_fraction of the images failed
    table = judge_method(
        items,
        judge,
        prompts,
        judge_spec,
        float(sm.params.max_megapixels),
        log=log.info,
        max_failed_fraction=float(spec.get("max_failed_fraction", DEFAULT_MAX_FAILED_FRACTION)),
    )
for key, sha in prompts.source_sha.items():
    table[f"{key}_prompt_sha"] = sha
write_table(table, sm.output[0], sort_by=["name"])
