# The conda envs (envs/*.yaml) as jobs of their own, so that all of them can be made before a run
# (docs/cluster.md, "Software: per-rule conda envs"):
#   make envs    # = snakemake --sdm conda --conda-create-envs-only conda_envs (+ your --profile)
# Snakemake names an env's folder by the md5 of the conda prefix, the env file's content and its
# post-deploy script (snakemake/deployment/conda.py, Env._get_hash), never by the rule or the
# path naming the file: these jobs get the very folders the stage rules later use, also those after
# the index checkpoint, which a plain --conda-create-envs-only cannot see on a fresh checkout.
CONDA_ENVS = sorted(p.stem for p in (WORKFLOW_DIR / "envs").glob("*.yaml"))


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
