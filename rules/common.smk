import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# The workflow's own folder (this file's parent's parent), also when the Snakefile is used as a
# `module` or run with --directory: shipped files are found here, results go to the working
# directory.  (workflow.basedir is the *main* Snakefile's folder, the user's one under `module`.)
WORKFLOW_DIR = Path(workflow.current_basedir).parent

# The pixverve package sits next to the Snakefile; scripts import it from there too.
sys.path.insert(0, str(WORKFLOW_DIR))

from pixverve import deploy_checks, snakemake_fixes  # noqa: E402
from pixverve.ingest.index import bundle_of_shards, generated_manifests  # noqa: E402
from pixverve.workflow import (  # noqa: E402
    check_config,
    check_roots,
    fgclip2_model_missing,
    resolve_shipped_files,
    roots_filled_by_rules,
    set_cuda_override,
    shipped_path,
)

# Snakemake 9.27's group check is quadratic in the shard count, and the SLURM plugin runs a
# group's members one at a time (pixverve/snakemake_fixes.py)
for warning in snakemake_fixes.apply():
    print(warning, file=sys.stderr)

# a cluster run without the workflow profile's groups (a module, another folder) stops at its
# start, naming --workflow-profile (pixverve/deploy_checks.py); local runs are not affected
deploy_checks.require_workflow_profile(workflow, WORKFLOW_DIR)

validate(config, "../schemas/config.schema.yaml")
check_config(config)
# conda-forge's CUDA builds of pytorch need the virtual package __cuda, which conda detects from
# the GPU driver: on a GPU-less submit host (where Snakemake creates the envs, also mid-run after
# the checkpoint) software.cuda_override declares it for every conda this process starts; the
# user's own CONDA_OVERRIDE_CUDA (even empty) wins (rules/envs.smk, docs/cluster.md "Software: per-rule conda envs").
set_cuda_override(config)
# config values naming shipped files (prompts/..., schemas/...): the working directory's copy
# when it has one, else the workflow folder's (docs/cluster.md, "Running outside the checkout")
resolve_shipped_files(config, WORKFLOW_DIR)


def shipped(relpath):
    """A file the workflow ships, by the same rule as the config values above."""
    return shipped_path(relpath, WORKFLOW_DIR)


wildcard_constraints:
    shard=r"s\d{5}",
    bundle=r"b\d{5}",
    run=r"[A-Za-z0-9_.-]+",
    res=r"\d+",


def index_inputs(wildcards):
    """Manifests and scanned folders of every root: the index reruns when they change."""
    # a missing or empty root: an error naming it, not a MissingInputException
    check_roots(config)
    # roots filled by a collector or the synthetic stream may not exist yet (created by that step)
    filled = roots_filled_by_rules(config)
    manifests = [m["path"] for m in config["sources"]["manifests"]]
    folders = [
        r["path"]
        for r in config["sources"]["roots"]
        if r.get("scan", True) and (r["name"] not in filled or Path(r["path"]).is_dir())
    ]
    generated = [
        m["path"] for m in generated_manifests(config)
    ]  # made by the source rules
    return manifests + folders + generated


def import_metadata(wildcards):
    """The metadata file of one configured dataset import (the rule reruns when it changes)."""
    from pixverve.collect.imports import PRESETS

    spec = config["imports"][wildcards.dataset]
    if spec.get("metadata"):
        return spec["metadata"]
    root = next(r for r in config["sources"]["roots"] if r["name"] == spec["root"])
    return f"{root['path']}/{PRESETS[spec.get('preset', 'generic')]['metadata']}"


def shard_names():
    """Shard names written by the index checkpoint (re-evaluated once it has run)."""
    shards_dir = Path(checkpoints.index.get().output.shards)
    return sorted(p.stem for p in shards_dir.glob("s*.parquet"))


def all_shards(pattern):
    def expand_shards(wildcards):
        return expand(pattern, shard=shard_names())

    return expand_shards


def shard_bundles(stage):
    """Bundle name -> its shards, for a stage bundled per SLURM job (rules/bundles.smk)."""
    return bundle_of_shards(shard_names(), config["shards"]["bundle"][stage])


def bundle_members(stage, pattern):
    """The per-shard outputs of one bundle's shards (the bundle rule's input)."""

    def members(wildcards):
        return expand(pattern, shard=shard_bundles(stage)[wildcards.bundle])

    return members


def all_bundles(stage):
    """Every bundle file of a stage: its gather rule asks for them, so the bundles are built."""

    def bundle_files(wildcards):
        return expand(
            f"results/bundles/{stage}/{{bundle}}.txt", bundle=shard_bundles(stage)
        )

    return bundle_files


def uses_gpu(predictors):
    """Whether any real (non-tiny) model backend in this block would run on a GPU."""
    return any(
        p.get("backend") not in ("tiny", "none", "endpoint")
        and p.get("device", "auto") != "cpu"
        for p in predictors.values()
    )


def sr_weights_input(wildcards):
    """The SR weights file a realesrgan backend needs (made by sr_weights when it is the default)."""
    up = config["upscale"]
    return [up["realesrgan"]["weights"]] if up["backend"] == "realesrgan" else []


def vllm_executable_input(wildcards):
    """results/envs/vllm.path (the env's `vllm`, rule vllm_path) for a job that starts vLLM itself."""
    from pixverve.models.vllm_server import VLLM_PATH_FILE, uses_vllm_env

    return [VLLM_PATH_FILE] if uses_vllm_env(config) else []


def fgclip2_model_input(wildcards):
    """No file: stops the DAG naming the config key when FG-CLIP2 has no model folder."""
    error = fgclip2_model_missing(config["bench"])
    if error:
        raise ValueError(error)
    return []


def aesthetic_weights_input(wildcards):
    """Weights files the configured aesthetic predictors need: missing ones stop the run at once."""
    laion = config["purify"]["aesthetics"]["predictors"].get("laion", {})
    return [laion["mlp_weights"]] if laion.get("backend") == "laion" else []


def judge_uses_gpu():
    """Whether the region judge runs a model in its own job (vLLM started there, or transformers)."""
    vlm = config["vlm"]
    if (vlm.get("serve") or {}).get("enabled"):
        return True
    spec = vlm.get("transformers") or {}
    return vlm.get("backend") == "transformers" and spec.get("device", "auto") != "cpu"


def caption_uses_gpu(step):
    """Whether a captioning step runs a model in its own job (a local model or vLLM started there)."""
    spec = config["caption"][step]
    model = {
        "clip": "clip",
        "ram_plus": "ram_plus",
        "grounding_dino": "grounding_dino",
        "sam2": "sam2",
    }.get(spec.get("backend"))
    on_gpu = bool(model) and (spec.get(model) or {}).get("device", "auto") != "cpu"
    uses_vlm = (
        step in ("instances", "aesthetics", "captions")
        or spec.get("backend") in ("vlm", "rex_omni")
        or (step == "tags" and spec["prune"]["enabled"])
    )
    return on_gpu or (uses_vlm and judge_uses_gpu())


def bench_methods():
    """The benchmarked methods: bench.enabled (a list) when set, else every configured one."""
    bench = config.get("bench") or {}
    methods = bench.get("methods") or {}
    enabled = bench.get("enabled")
    if enabled is None:
        return sorted(methods)
    unknown = sorted(set(enabled) - set(methods))
    if unknown:
        raise ValueError(
            f"config key bench.enabled: {unknown} not among bench.methods {sorted(methods)}"
        )
    return sorted(enabled)


def bench_image_dir(method):
    """A method's image folder: its own (external method) or the one bench_generate fills."""
    spec = config["bench"]["methods"][method]
    return spec["folder"] if spec.get("folder") else f"results/bench/generated/{method}"


def bench_images_input(wildcards=None, method=None):
    """What a method's scores depend on: the external folder, or bench_generate's manifest."""
    name = method or wildcards.method
    if config["bench"]["methods"][name].get("folder"):
        return bench_image_dir(name)
    return f"results/bench/generated/{name}.json"


def bench_judge_prompt_inputs(wildcards):
    """Our prompt files, or the published checkout's build_prompts.py (a clear error if absent)."""
    from pixverve.bench.prompts import judge_prompt_files

    return judge_prompt_files(config["bench"]["judge"])


def bench_method_uses_gpu(method):
    spec = config["bench"]["methods"][method].get("generate") or {}
    if spec.get("backend") == "checkpoint":
        return spec.get("device", "auto") != "cpu" and train_uses_gpu(
            spec["run"], spec["train_resolution"]
        )
    return spec.get("backend") == "diffusers" and spec.get("device", "auto") != "cpu"


def bench_checkpoint_dir(method):
    spec = config["bench"]["methods"][method].get("generate") or {}
    if spec.get("backend") != "checkpoint":
        return None
    return f"results/train/{spec['run']}/{spec['train_resolution']}/final"


def bench_checkpoint_input(wildcards):
    """Our checkpoint a method generates from (rule train makes it), if any."""
    folder = bench_checkpoint_dir(wildcards.method)
    return [folder] if folder else []


def bench_generate_spec(wildcards):
    spec = dict(config["bench"]["methods"][wildcards.method]["generate"])
    if spec["backend"] == "checkpoint":
        spec["checkpoint_dir"] = bench_checkpoint_dir(wildcards.method)
    return spec


def bench_targets():
    """The benchmark's outputs when methods are configured (else the benchmark is skipped)."""
    if not bench_methods():
        return []
    return ["paper_figures/bench_table.csv", "paper_figures/bench_crops.png"]


def bench_generated_infos():
    """The generation records (model, smoke) of the methods the workflow generates itself."""
    return [
        f"results/bench/generated/{m}.json"
        for m in bench_methods()
        if not config["bench"]["methods"][m].get("folder")
    ]


# --- training (rules/train.smk) ---


def train_spec(run, res):
    from pixverve.train.config import resolve_run

    return resolve_run(config, run, int(res))


def train_resources(run, res):
    return train_spec(run, res)["resources"]


def train_uses_gpu(run, res):
    spec = train_spec(run, res)
    return spec["device"] != "cpu" and spec["resources"]["gpus_per_node"] > 0


def train_gres(run, res):
    """GPUs per node (the SLURM plugin's `gpu` is a job total; training wants them per node)."""
    r = train_resources(run, res)
    return f"gpu:{r['gpus_per_node']}" if train_uses_gpu(run, res) else ""


def train_threads(run, res):
    r = train_resources(run, res)
    return (
        max(1, r["gpus_per_node"]) * r["cpus_per_gpu"]
        if train_uses_gpu(run, res)
        else 2
    )


def train_mem_mb(run, res):
    r = train_resources(run, res)
    return (
        max(1, r["gpus_per_node"]) * r["mem_mb_per_gpu"]
        if train_uses_gpu(run, res)
        else 8000
    )


def train_init_input(wildcards):
    """A progressive run's previous resolution's final weights (none for the first)."""
    from pixverve.train.config import previous_resolution

    prev = previous_resolution(config, wildcards.run, int(wildcards.res))
    return [] if prev is None else [f"results/train/{wildcards.run}/{prev}/final"]


def train_targets():
    from pixverve.train.config import enabled_runs

    return [
        f"results/train/{run}/{res}/{name}"
        for run, res in enabled_runs(config)
        for name in ("final", "sample.png")
    ]


# ----------------------------------------------------------------------------- the atlas

# Per stage, what the atlas of one shard waits for (config atlas.stages); {shard}: its shard.
ATLAS_STAGE_INPUTS = {
    "screen": ["results/screen/{shard}.parquet"],
    "dedup": ["results/dedup/decisions.parquet"],
    "purify": ["results/purify/decisions.parquet"],
    "upscale": ["results/upscale/{shard}.parquet"],
    "verify": ["results/verify/verified.parquet"],
    "caption": [
        "results/verify/instances/{shard}.parquet",
        "results/caption/records/{shard}.jsonl",
    ],
}


def atlas_stages():
    stages = config["atlas"]["stages"]
    return list(ATLAS_STAGE_INPUTS) + ["bench"] if stages == "all" else list(stages)


def atlas_shard_inputs(wildcards):
    """The index, and for a shard the outputs of every stage in atlas.stages."""
    files = ["results/index/index.parquet"]
    # the images the index rejected (no shard) have no later stage
    if wildcards.atlas_shard == "unsharded":
        return files
    for stage in atlas_stages():
        files += [
            f.format(shard=wildcards.atlas_shard)
            for f in ATLAS_STAGE_INPUTS.get(stage, [])
        ]
    return files


def atlas_wants_bench():
    return "bench" in atlas_stages() and bool(bench_methods())


def atlas_bench_inputs(wildcards):
    methods = bench_methods()
    return {
        "benchmark": config["bench"]["benchmark"],
        "table": "paper_figures/bench_table.csv",
        "judged": expand("results/bench/{method}/judged.parquet", method=methods),
        "generated": [bench_images_input(method=m) for m in methods],
    }


def atlas_site_inputs(wildcards):
    """Every shard's entries (the index's shards and the unsharded rejects), the bench page's data,
    Table 1 when stage 5 is in atlas.stages, and the vendored OpenSeadragon (make's set-up).
    """
    viewer = WORKFLOW_DIR / "resources/vendor/openseadragon/openseadragon.min.js"
    if not viewer.exists():
        raise ValueError(
            f"the atlas needs OpenSeadragon, which the set-up vendors from npm: {viewer} is missing; "
            f"run `make vendor` in {WORKFLOW_DIR} (needs npm)"
        )
    inputs = {
        "entries": expand(
            "results/atlas/shards/{s}.jsonl", s=["unsharded", *shard_names()]
        ),
        "viewer": str(viewer),
    }
    if "caption" in atlas_stages():
        inputs["table1"] = "paper_figures/table1_data_flow.csv"
    if atlas_wants_bench():
        inputs["bench"] = "results/atlas/shards/bench.json"
    return inputs
