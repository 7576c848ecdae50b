"""Rule demo_pool: write the bundled demo photographs and derived bad cases."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.ingest import demo_pool  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

log = start_script(snakemake, "demo_pool")  # noqa: F821
rows = demo_pool.build(
    snakemake.output.images,  # noqa: F821
    snakemake.output.manifest,  # noqa: F821
    target_megapixels=snakemake.params.target_megapixels,  # noqa: F821
    bomb_megapixels=snakemake.params.bomb_megapixels,  # noqa: F821
)
log.info("wrote %d demo files", len(rows))
