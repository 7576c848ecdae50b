# The conda envs (envs/*.yaml) as jobs of their own, so that all of them can be made before a run
# (README "Software: per-rule conda envs"):
#   make envs    # = snakemake --sdm conda --conda-create-envs-only conda_envs (+ your --profile)
# Snakemake names an env's folder by the md5 of the conda prefix, the env file's content and its
# post-deploy script (snakemake/deployment/conda.py, Env._get_hash), never by the rule or the
# path naming the file: these jobs get the very folders the stage rules later use, also those after
# the index checkpoint, which a plain --conda-create-envs-only cannot see on a fresh checkout.
import os

CONDA_ENVS = sorted(p.stem for p in (WORKFLOW_DIR / "envs").glob("*.yaml"))

# conda-forge's CUDA builds of pytorch need the virtual package __cuda, which conda detects from
# the GPU driver: on a GPU-less submit host (where Snakemake creates the envs, also mid-run after
# the checkpoint) it is declared here for every conda this process starts.  A CONDA_OVERRIDE_CUDA
# of the user's environment (even empty) wins.
CUDA_OVERRIDE = (config.get("software") or {}).get("cuda_override")
if CUDA_OVERRIDE is not None and "CONDA_OVERRIDE_CUDA" not in os.environ:
    os.environ["CONDA_OVERRIDE_CUDA"] = str(CUDA_OVERRIDE)


def vllm_executable_input(wildcards):
    """results/envs/vllm.path (the env's `vllm`, rule vllm_path) for a job that starts vLLM itself."""
    from pixverve.models.vllm_server import VLLM_PATH_FILE, uses_vllm_env

    return [VLLM_PATH_FILE] if uses_vllm_env(config) else []


localrules:
    conda_envs,
    conda_env,
    vllm_path,


rule conda_envs:
    input:
        expand("results/envs/{env}.txt", env=CONDA_ENVS),


rule conda_env:
    output:
        "results/envs/{env}.txt",
    log:
        "logs/envs/{env}.log",
    wildcard_constraints:
        env="|".join(CONDA_ENVS),
    conda:
        "../envs/{env}.yaml"
    shell:
        "python -m pip list --format=freeze > {output} 2> {log}"


rule vllm_path:
    output:
        "results/envs/vllm.path",
    log:
        "logs/envs/vllm_path.log",
    conda:
        "../envs/vllm.yaml"
    shell:
        "command -v vllm > {output} 2> {log}"
