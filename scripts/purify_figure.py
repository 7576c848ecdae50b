"""Rule purify_figure: the paper's Fig. 4 from the purification decisions."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
import pandas as pd  # noqa: E402

from pixverve.core.figures import fig4_purification  # noqa: E402
from pixverve.core.paths import resolve_inside  # noqa: E402
from pixverve.core.tables import read_table  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "purify_figure")
roots = {name: Path(path).resolve() for name, path in sm.params.sources.items()}
fig4_purification(
    read_table(sm.input.decisions),
    pd.read_csv(sm.input.cutoffs),
    lambda root, rel: resolve_inside(roots[root], rel),
    sm.params.io["max_megapixels"],
    sm.output.png,
    sm.output.pdf,
)
