# Stage 4: final filtering of the SR output, in the paper's order: seam continuity and post-SR
# consistency (rule verify), region-level artefacts judged by a VLM (rule verify_regions), then
# the per-image outcome (verify_decide).  The instance-level check needs stage 5's instance
# crops and is added with captioning; until then it is absent, not faked.


rule verify:
    input:
        upscaled="results/upscale/{shard}.parquet",
    output:
        "results/verify/{shard}.parquet",
    log:
        "logs/verify/{shard}.log",
    benchmark:
        "results/benchmarks/verify/{shard}.tsv"
    conda:
        "../envs/verify.yaml"
    threads: 2
    resources:
        gpu=lambda wc: int(config["verify"]["consistency"]["lpips"]["device"] != "cpu"),
        mem_mb=6000,  # the SR output is read in bands; a 400 MP source (scale 1) and its area copy are 2 x 1.2 GB
        runtime=120,
    params:
        verify=config["verify"],
        io=config["io"],
    script:
        "../scripts/verify.py"


rule verify_regions:
    input:
        verified="results/verify/{shard}.parquet",
        upscaled="results/upscale/{shard}.parquet",
        prompt=config["verify"]["regions"]["prompt"],
        vllm=vllm_executable_input,  # the env's vLLM when this job starts it (vlm.serve)
    output:
        images="results/verify/regions/{shard}.parquet",
        patches="results/verify/patches/{shard}.parquet",
    log:
        main="logs/verify_regions/{shard}.log",
        server="logs/verify_regions/{shard}.vllm.log",
    benchmark:
        "results/benchmarks/verify_regions/{shard}.tsv"
    conda:
        "../envs/verify.yaml"
    threads: 8
    resources:  # the VLM judge: a GPU only with vlm.serve (vLLM in the job) or transformers
        gpu=lambda wc: int(judge_uses_gpu()),
        mem_mb=64000,  # vLLM's host memory for a 30B-A3B model (the SR output is read one patch row at a time)
        runtime=480,  # vLLM start-up (model load) + 10 patches per image
    params:
        verify=config["verify"],
        vlm=config["vlm"],
    script:
        "../scripts/verify_regions.py"


rule verify_decide:
    input:
        verify=all_shards("results/verify/{shard}.parquet"),
        regions=all_shards("results/verify/regions/{shard}.parquet"),
        upscaled=all_shards("results/upscale/{shard}.parquet"),
        bundles=all_bundles("verify"),
    output:
        decisions="results/verify/verified.parquet",
        counts=report(
            "results/summary/verify.csv",
            caption="../report/verify.rst",
            category="Stage 4: verification",
        ),
    log:
        "logs/verify_decide.log",
    conda:
        "../envs/verify.yaml"
    script:
        "../scripts/verify_decide.py"


rule verify_all:
    input:
        rules.verify_decide.output,


rule verify_instances:
    input:
        masks="results/caption/masks/{shard}.parquet",
        views="results/caption/views/{shard}",
        upscaled="results/upscale/{shard}.parquet",
        prompt=config["verify"]["instances"]["prompt"],
        vllm=vllm_executable_input,  # the env's vLLM when this job starts it (vlm.serve)
    output:
        images="results/verify/instances/{shard}.parquet",
        crops="results/verify/instance_crops/{shard}.parquet",
    log:
        main="logs/verify_instances/{shard}.log",
        server="logs/verify_instances/{shard}.vllm.log",
    benchmark:
        "results/benchmarks/verify_instances/{shard}.tsv"
    conda:
        "../envs/verify.yaml"
    threads: 8
    resources:
        gpu=lambda wc: int(judge_uses_gpu()),
        mem_mb=48000,
        runtime=240,
    params:
        verify=config["verify"],
        caption=config["caption"],
        vlm=config["vlm"],
    script:
        "../scripts/verify_instances.py"
