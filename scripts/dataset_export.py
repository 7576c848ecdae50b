"""Rule dataset_export: metadata parquet, caption JSONLs (train + held-out benchmark), Tables 1-2,
pixel buckets, source mix and the caption-length / instance-count plots."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
import pandas as pd  # noqa: E402

from pixverve.caption import dataset  # noqa: E402
from pixverve.core.tables import read_table, read_tables  # noqa: E402
from pixverve.workflow import note_empty, start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "dataset_export")
spec = sm.params.export
records = dataset.read_jsonl(sm.input.records)
note_empty(log, len(records), "stage 5 (dataset_export)")
meta, train, bench = dataset.export_dataset(records, int(spec["benchmark_size"]), int(spec["seed"]))
Path(sm.output.metadata).parent.mkdir(parents=True, exist_ok=True)
meta.to_parquet(sm.output.metadata, index=False, compression="zstd")
for rows, path in ((train, sm.output.train), (bench, sm.output.benchmark)):
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
smoke = any(r["smoke"] for r in records)
mark = " [SMOKE: tiny models, not a result]" if smoke else ""
purify, upscaled, checks, rejected = (
    read_table(sm.input.purify),
    read_tables(sm.input.upscaled),
    read_tables(sm.input.checks),
    read_tables(sm.input.rejected),
)
ingest = pd.read_csv(sm.input.ingest)
flow = dataset.data_flow(ingest, purify, upscaled, pd.read_csv(sm.input.verify_counts), checks, records, rejected)
dataset.check_data_flow(flow)
figures = Path(sm.output.flow).parent
dataset.write_formats(flow, figures / "table1_data_flow", "Table 1: images entering and kept at each step" + mark)
rejections = dataset.rejections_by_reason(
    [
        ("2 purification", purify),
        ("3 super-resolution", upscaled),
        ("4 verification", read_table(sm.input.verified)),
        ("4 instances", checks),
        ("5 captioning", rejected),
    ],
    ingest,
)
dataset.write_formats(
    rejections, figures / "rejections_by_reason", "Rejections of the whole run by stage and reason" + mark
)
dataset.plot_funnel(flow, rejections, smoke, sm.output.funnel)
dataset.write_formats(
    dataset.dataset_comparison(meta, smoke), figures / "table2_datasets", "Table 2: UHR datasets compared" + mark
)
edges = [e * float(sm.params.target_megapixels) / 100 for e in spec["pixel_buckets_mp"]]
dataset.write_formats(
    dataset.pixel_buckets(meta, edges), figures / "pixel_buckets", "Images per pixel-count bucket" + mark
)
dataset.write_formats(dataset.source_mix(meta), figures / "source_mix", "Images per source and licence" + mark)
dataset.plot_distributions(meta, smoke, sm.output.caption_plot, sm.output.instance_plot)
log.info(f"{len(records)} records: {len(train)} train, {len(bench)} benchmark; smoke={smoke}")
