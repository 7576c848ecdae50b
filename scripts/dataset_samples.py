"""Rule dataset_samples: the paper's Fig. 5, dataset images with a region at 100 %."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.core.config import side_scale  # noqa: E402
from pixverve.core.figures import FIG5_METADATA_COLUMNS, FIG5_PATCH_COLUMNS, fig5_samples  # noqa: E402
from pixverve.core.paths import resolve_inside  # noqa: E402
from pixverve.core.tables import read_table, read_tables  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "dataset_samples")
roots = {name: Path(path).resolve() for name, path in sm.params.sources.items()}
export = sm.params.export
drawn = fig5_samples(
    read_table(sm.input.metadata, FIG5_METADATA_COLUMNS),
    read_tables(sm.input.patches, FIG5_PATCH_COLUMNS),
    lambda root, rel: resolve_inside(roots[root], rel),
    int(export.get("samples", 4)),
    int(export["seed"]),
    sm.params.io["max_megapixels"],
    round(sm.params.patch_px * side_scale({"target_megapixels": sm.params.target_megapixels})),
    sm.output.png,
    sm.output.pdf,
    tuple(sm.params.io["alpha_background"]),
)
log.info(f"Fig. 5: {len(drawn)} image(s): {', '.join(drawn)}")
