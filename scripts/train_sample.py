"""Rule train_sample: one image from a trained checkpoint (the run's sampling settings)."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.models.devices import resolve_device  # noqa: E402
from pixverve.models.loading import torch_dtype  # noqa: E402
from pixverve.train.infer import generate, load_checkpoint, sample_shift_record  # noqa: E402
from pixverve.train.report import save_sample  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "train_sample")
spec = sm.params.spec
device = resolve_device(spec["device"])
width, height = sm.params.size or (spec["resolution"], spec["resolution"])
started = time.perf_counter()
sample = spec["sample"]
info, loaded = load_checkpoint(
    sm.input.final,
    device=device,
    dtype=torch_dtype(sample.get("dtype"), "train.runs.<run>.sample.dtype"),
    sequential=bool(sample.get("sequential_loading", True)),
)
# the run's current sample keys pick the shift (sample.shift: trained = where the checkpoint was trained)
rgb = generate(
    info,
    loaded,
    sm.params.prompt,
    int(width),
    int(height),
    int(sample["steps"]),
    float(sample["guidance"]),
    int(sample["seed"]),
    device=device,
    shift=sample,
)
save_sample(rgb, sm.output.image, smoke=info["smoke"])
record = {
    "run": sm.wildcards.run,
    "resolution": int(sm.wildcards.res),
    "prompt": sm.params.prompt,
    "width": int(width),
    "height": int(height),
    **sample,
    "smoke": info["smoke"],
    "device": device,
    **sample_shift_record(info, int(width), int(height), int(sample["steps"]), sample),
    "seconds": round(time.perf_counter() - started, 1),
}
Path(sm.output.info).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
log.info("sample: %s", record)
