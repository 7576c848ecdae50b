"""Rule bench_generate: a configured method's images for every benchmark row (resumable)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.bench.generate import generate_method  # noqa: E402
from pixverve.bench.inputs import read_benchmark  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "bench_generate")
rows = read_benchmark(sm.input.benchmark)
info = generate_method(
    rows, dict(sm.params.spec), sm.params.images, sm.params.real_dir, float(sm.params.max_megapixels), log=log.info
)
Path(sm.output.info).write_text(
    json.dumps({"method": sm.wildcards.method, "images": len(rows), **info}, indent=1, sort_keys=True) + "\n"
)
