# Stage 1 sources: API collectors and dataset importers that fill source roots and hand the
# index a manifest each (source, licence, origin URL, author per image).  They need the internet
# (collectors) or a local dataset copy (importers) and little CPU: localrules, run where the
# internet is (a login node).


rule collect:
    output:
        table="results/collect/{source}.parquet",
        manifest="results/collect/{source}_manifest.csv",
    log:
        "logs/collect/{source}.log",
    wildcard_constraints:
        source="pexels|unsplash",
    conda:
        "../envs/collect.yaml"
    script:
        "../scripts/collect.py"


rule import_dataset:
    input:
        metadata=import_metadata,
    output:
        table="results/collect/import_{dataset}.parquet",
        manifest="results/collect/import_{dataset}_manifest.csv",
    log:
        "logs/collect/import_{dataset}.log",
    wildcard_constraints:
        dataset=r"[A-Za-z0-9_]+",
    conda:
        "../envs/collect.yaml"
    script:
        "../scripts/import_dataset.py"


rule synth_prompts:
    input:
        template=config["synthetic"]["prompt_template"],
        vllm=vllm_executable_input,  # the env's vLLM when this job starts it (vlm.serve)
    output:
        prompts="results/collect/synthetic_prompts.parquet",
        requests="results/collect/synthetic_requests.parquet",
    log:
        main="logs/collect/synth_prompts.log",
        server="logs/collect/synth_prompts.vllm.log",
    conda:
        "../envs/generate.yaml"
    threads: 8
    resources:
        gpu=lambda wc: int(judge_uses_gpu()),
        mem_mb=64000,
        runtime=240,
    script:
        "../scripts/synth_prompts.py"


rule synth_render:
    input:
        prompts="results/collect/synthetic_prompts.parquet",
    output:
        table="results/collect/synthetic.parquet",
        manifest="results/collect/synthetic_manifest.csv",
    log:
        "logs/collect/synth_render.log",
    benchmark:
        "results/benchmarks/synth_render.tsv"
    conda:
        "../envs/generate.yaml"
    threads: 8
    resources:  # a ~4K text-to-image model (FLUX.2 klein 4B / Qwen-Image) on one GPU
        gpu=lambda wc: int(
            config["synthetic"]["backend"] == "diffusers"
            and config["synthetic"]["diffusers"].get("device", "auto") != "cpu"
        ),
        mem_mb=64000,
        runtime=2880,
    script:
        "../scripts/synth_render.py"
