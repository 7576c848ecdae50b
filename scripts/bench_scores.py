"""Rule bench_scores: FID, FID_patch, compression ratio, CLIPScore (per method, as published) and
LAION aesthetics, CLIPScore, GLCM (per image) of one benchmark method (FG-CLIP2: rule bench_fgclip2)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)
from pixverve.bench import evaluate as bench  # noqa: E402
from pixverve.bench.fid import fid_for_pairs  # noqa: E402
from pixverve.bench.inputs import compression_ratio, pair_method, read_benchmark, require_fid_pairs  # noqa: E402
from pixverve.core.tables import write_table  # noqa: E402
from pixverve.models.aesthetics import build_predictor  # noqa: E402
from pixverve.models.devices import resolve_device  # noqa: E402
from pixverve.workflow import start_script  # noqa: E402

sm = snakemake  # noqa: F821
log = start_script(sm, "bench_scores")
spec, cap, method = sm.params.bench, float(sm.params.max_megapixels), sm.wildcards.method
items = pair_method(read_benchmark(sm.input.benchmark), sm.params.real_dir, sm.params.images)
require_fid_pairs(items, sm.wildcards.method, sm.input.benchmark)
device = resolve_device(spec["fid"]["device"])
fid, fp = spec["fid"], spec["fid_patch"]
sets = {
    "method": method,
    "images": len(items),
    "fid": fid_for_pairs(
        items, sm.input.fid_weights, int(fid["size"]), fid["resample"], device, int(fid["batch"]), cap, method=method
    ),
    "fid_patch": bench.fid_patch(
        items,
        sm.input.fid_weights,
        int(fp["size"]),
        int(fp["crop"]),
        int(fp["per_pair"]),
        int(fp["seed"]),
        device,
        cap,
        order=fp["order"],
        method=method,
    ),
    "compression": compression_ratio([i.generated for i in items], int(fid["size"])),
    "fid_size": int(fid["size"]),
    "fid_resample": fid["resample"],
    "fid_patch_size": int(fp["size"]),
    "fid_patch_order": fp["order"],  # recorded so a table says which draw order made it
}
log.info(f"FID {sets['fid']:.3f}, FID_patch {sets['fid_patch']:.3f} over {len(items)} pairs")
laion = dict(sm.params.laion)
aesthetic = build_predictor("laion", laion) if laion.get("backend", "none") != "none" else None
clip = bench.ClipScorer(spec["clip"]) if spec["clip"]["backend"] != "none" else None
per_image = bench.score_method(items, aesthetic, clip, cap, log=log.info, threads=sm.threads)  # benchmark order
clip_batch = int(spec["clip"].get("batch", 4))
# published batches over the images CLIP scored; the failed ones are counted, never read as a score
sets["clip"] = bench.clip_of_method(per_image, clip_batch) if clip is not None else float("nan")
sets["clip_batch"] = clip_batch
sets["clip_images"], sets["clip_failed"] = bench.metric_counts(per_image, "clip")
per_image["aesthetics_smoke"] = bool(getattr(getattr(aesthetic, "info", None), "smoke", False))
per_image["clip_smoke"] = bool(clip.smoke) if clip is not None else False
per_image["clip_model"] = clip.model_name if clip is not None else ""
sets["smoke"] = {
    "aesthetics": bool(per_image["aesthetics_smoke"].any()) if len(per_image) else False,
    "clip": bool(per_image["clip_smoke"].any()) if len(per_image) else False,
}
# the health gate: a scorer that failed on too many images stops the job instead of writing a partial mean
bench.check_bench_health(
    f"bench_scores ({method})",
    per_image,
    ("aesthetics", "clip"),
    float(spec.get("max_failed_fraction", bench.DEFAULT_MAX_FAILED_FRACTION)),
    {
        "aesthetics": str(getattr(getattr(aesthetic, "info", None), "weights", "")),
        "clip": clip.model_name if clip is not None else "",
    },
)
write_table(per_image, sm.output.per_image, sort_by=["name"])
Path(sm.output.sets).write_text(json.dumps(sets, indent=1, sort_keys=True) + "\n")
