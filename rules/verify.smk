# Stage 4: final filtering of the SR output (seam continuity, post-SR consistency so far).


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
        "../envs/cv.yaml"
    threads: 1
    params:
        verify=config["verify"],
        io=config["io"],
    script:
        "../scripts/verify.py"


rule verify_all:
    input:
        all_shards("results/verify/{shard}.parquet"),
