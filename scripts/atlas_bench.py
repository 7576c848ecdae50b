"""Rule atlas_bench: the bench page's data and pyramids (pixverve/atlas/bench.py)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
import pandas as pd  # noqa: E402

from pixverve.atlas.bench import bench_data  # noqa: E402
from pixverve.atlas.pyramid import set_threads  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "atlas_bench")
set_threads(sm.threads)
rows = [json.loads(line) for line in Path(sm.input.benchmark).read_text(encoding="utf-8").splitlines() if line.strip()]
methods = sm.params.method_dirs
judged = {m: p for m, p in zip(methods, sm.input.judged, strict=True)}
Path(sm.output.tiles).mkdir(parents=True, exist_ok=True)
data = bench_data(
    rows,
    sm.params.real_dir,
    methods,
    judged,
    pd.read_csv(sm.input.table).to_dict("records"),
    Path(sm.output.tiles).parents[1],
    sm.params.max_megapixels,
    sm.params.tile_size,
)
Path(sm.output.data).write_text(json.dumps(data, ensure_ascii=True), encoding="utf-8")
log.info(f"{len(rows)} benchmark images x {len(methods)} methods")
