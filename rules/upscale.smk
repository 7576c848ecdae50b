# Stage 3: tiered, tiled super-resolution to the target size.


rule sr_weights:
    output:
        "resources/weights/RealESRGAN_x4plus.safetensors",
    log:
        "logs/sr_weights.log",
    conda:
        "../envs/sr.yaml"
    script:
        "../scripts/sr_weights.py"


rule upscale:
    input:
        candidates="results/purify/candidates.parquet",
        screen="results/screen/{shard}.parquet",
        weights=sr_weights_input,
    output:
        table="results/upscale/{shard}.parquet",
        timings="results/upscale/timings/{shard}.tsv",
    log:
        "logs/upscale/{shard}.log",
    benchmark:
        "results/benchmarks/upscale/{shard}.tsv"
    conda:
        "../envs/sr.yaml"
    threads: 8
    resources:  # Real-ESRGAN / ODTSR on one GPU; ODTSR needs an 80 GB card (~58 GB of weights)
        gpu=lambda wc: int(
            config["upscale"]["backend"] != "lanczos"
            and config["upscale"].get("device") != "cpu"
        ),
        mem_mb=64000,  # a 25 MP source and one band of its 400 MP output
        runtime=1440,
    params:
        upscale=config["upscale"],
        io=config["io"],
        images="results/upscale/images",
    script:
        "../scripts/upscale.py"


rule upscale_all:
    input:
        all_shards("results/upscale/{shard}.parquet"),
