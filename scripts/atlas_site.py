"""Rule atlas_site: the atlas's pages, galleries, search and per-image data from every shard's
entries (rule atlas_shard), the bench page's data and Table 1 (pixverve/atlas/site.py)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
import pandas as pd  # noqa: E402

from pixverve.atlas import records, site  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "atlas_site")
inputs = dict(sm.input.items())


def lines():
    for path in sm.input.entries:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)


# first pass: the small per-image summaries (the funnel); second pass: the entries, streamed
summaries, smoke = [], False
for rec in lines():
    summaries.append(rec["thumb"])
    smoke = smoke or bool(rec["entry"]["smoke"])
funnel = records.funnel(summaries)
table1 = pd.read_csv(inputs["table1"]).to_dict("records") if "table1" in inputs else None
mismatch = records.funnel_mismatch(funnel, table1) if table1 else []
for line in mismatch:
    log.warning(f"the atlas's funnel differs from Table 1: {line}")
run = {
    "title": "PixVerve atlas" + (" [SMOKE: tiny models, not a result]" if smoke else ""),
    "smoke": smoke,
    "stages": [row["stage"] for row in funnel],
    "funnel": funnel,
    "table1": table1,
}
bench = json.loads(Path(inputs["bench"]).read_text(encoding="utf-8")) if "bench" in inputs else None
written = site.write_site(
    Path(sm.output.index).parent,
    run,
    (rec["entry"] for rec in lines()),
    bench,
    vendor_dir=Path(inputs["viewer"]).parent,
)
log.info(
    f"{len(summaries)} images in {len(written['galleries'])} galleries; funnel: "
    + ", ".join(f"{r['stage']} {r['entering']}->{r['kept']}" for r in funnel)
)
