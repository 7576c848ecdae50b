"""Rule bench_table: one row per method in the paper's column order, best per column marked,
as CSV, Markdown and LaTeX (per resolution when methods name one); the crops figure."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
import pandas as pd  # noqa: E402

from pixverve.bench import evaluate as bench  # noqa: E402
from pixverve.bench.inputs import read_benchmark  # noqa: E402
from pixverve.core.tables import read_table  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "bench_table")
spec = sm.params.bench
infos = {json.loads(Path(p).read_text())["method"]: json.loads(Path(p).read_text()) for p in sm.input.infos}
rows = []
for method, scores, sets, judged, fg in zip(
    sm.params.methods, sm.input.scores, sm.input.sets, sm.input.judged, sm.input.fgclip2, strict=True
):
    per_image, judged_t, set_values, fg_t = (
        read_table(scores),
        read_table(judged),
        json.loads(Path(sets).read_text()),
        read_table(fg),
    )
    info = infos.get(method, {})
    generated_smoke = bool(info.get("smoke", False))
    smoke = dict(set_values.get("smoke", {}))
    smoke["fgclip2"] = bool(fg_t["fgclip2_smoke"].any()) if len(fg_t) else False
    smoke.update(
        msfi=bool(judged_t["smoke"].any()) if len(judged_t) else False,
        ics=bool(judged_t["smoke"].any()) if len(judged_t) else False,
    )
    if generated_smoke:  # every column of a tiny generator's images is smoke
        smoke = {k: True for k, _ in bench.TABLE_COLUMNS}
    resolution = str(spec["methods"][method].get("resolution", ""))
    rows.append(bench.method_row(method, resolution, per_image, judged_t, set_values, smoke, fgclip2=fg_t))
table = pd.DataFrame(rows)
for row in rows:  # the table's dagger, said in the log too
    if row["partial_columns"]:
        log.warning(
            f"{row['method']}: {row['partial_columns']} computed on fewer images than the benchmark (failed calls left out)"
        )
out = Path(sm.output.table).with_suffix("")
benchmark_rows = read_benchmark(sm.input.benchmark)
bench.write_bench_tables(table, out, f"PixVerve-Bench ({len(benchmark_rows)} prompts)")
for resolution, group in table.groupby("resolution"):
    if resolution and table["resolution"].nunique() > 1:
        bench.write_bench_tables(group, out.with_name(f"bench_table_{resolution}"), f"PixVerve-Bench at {resolution}")
names = [Path(r["file_name"]).stem for r in benchmark_rows][: int(spec["crops"]["images"])]
bench.crops_figure(
    dict(zip(sm.params.methods, sm.params.images, strict=True)),
    Path(spec["real_dir"]),
    names,
    int(spec["crops"]["px"]),
    sm.output.crops,
    float(sm.params.max_megapixels),
    frozenset(m for m, info in infos.items() if info.get("smoke")),
)
log.info(f"table of {len(table)} methods written")
