"""Rule bench_fgclip2: FG-CLIP2 score (long caption) per image of one benchmark method, in its own
env (envs/fgclip2.yaml: FG-CLIP2's own model code needs transformers 4.x)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.bench import evaluate as bench  # noqa: E402
from pixverve.bench.inputs import pair_method, read_benchmark  # noqa: E402
from pixverve.core.tables import write_table  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "bench_fgclip2")
spec = sm.params.bench
items = pair_method(read_benchmark(sm.input.benchmark), sm.params.real_dir, sm.params.images)
scorer = bench.FGClip2Scorer(spec["fgclip2"]) if spec["fgclip2"]["backend"] != "none" else None
if scorer is None:
    table = bench.fgclip2_off(items)  # every image "off": nothing to do, not a failure
else:
    table = bench.fgclip2_method(items, scorer, float(sm.params.max_megapixels), log=log.info)
    bench.check_bench_health(
        f"bench_fgclip2 ({sm.wildcards.method})",
        table,
        ("fgclip2",),
        float(spec.get("max_failed_fraction", bench.DEFAULT_MAX_FAILED_FRACTION)),
        {"fgclip2": scorer.model_name},
    )
write_table(table, sm.output[0], sort_by=["name"])
