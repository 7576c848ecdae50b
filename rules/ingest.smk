# Stage 1: demo pool, index + shards, resolution screening, deduplication, summary.


rule demo_pool:
    output:
        images=directory("resources/demo_pool/images"),
        manifest="resources/demo_pool/sources.csv",
    log:
        "logs/demo_pool.log",
    conda:
        "../envs/cv.yaml"
    params:
        target_megapixels=config["target_megapixels"],
        # the demo's decompression bomb claims 1.5x the configured pixel cap
        bomb_megapixels=1.5 * config["io"]["max_megapixels"],
    script:
        "../scripts/demo_pool.py"


checkpoint index:
    input:
        index_inputs,
    output:
        table="results/index/index.parquet",
        shards=directory("results/index/shards"),
    log:
        "logs/index.log",
    benchmark:
        "results/benchmarks/index.tsv"
    conda:
        "../envs/cv.yaml"
    threads: 16  # hashing is I/O bound: threads read files in parallel
    resources:
        mem_mb=16000,
        runtime=720,
    params:
        sources=config["sources"],
        generated=generated_manifests(config),
        io=config["io"],
        shards=config["shards"],
        hash_cache="results/cache/sha256.tsv",
    script:
        "../scripts/index.py"


rule screen:
    input:
        "results/index/shards/{shard}.parquet",
    output:
        "results/screen/{shard}.parquet",
    log:
        "logs/screen/{shard}.log",
    benchmark:
        "results/benchmarks/screen/{shard}.tsv"
    conda:
        "../envs/cv.yaml"
    threads: 4
    resources:
        mem_mb=8000,  # a 1000 MP cap image is 3 GB as RGB uint8
        runtime=120,
    params:
        target_megapixels=config["target_megapixels"],
        screening=config["screening"],
        sr_tiers=config["sr_tiers"],
        io=config["io"],
    script:
        "../scripts/screen.py"


rule dedup:
    input:
        screen=all_shards("results/screen/{shard}.parquet"),
        bundles=all_bundles("screen"),
    output:
        "results/dedup/decisions.parquet",
    log:
        "logs/dedup.log",
    benchmark:
        "results/benchmarks/dedup.tsv"
    conda:
        "../envs/cv.yaml"
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        dedup=config["dedup"],
    script:
        "../scripts/dedup.py"


rule ingest_summary:
    input:
        index="results/index/index.parquet",
        screen=all_shards("results/screen/{shard}.parquet"),
        dedup="results/dedup/decisions.parquet",
    output:
        table=report(
            "results/summary/ingest.csv",
            caption="../report/ingest_table.rst",
            category="Stage 1: collection",
            labels={"table": "images per stage"},
        ),
        figure=report(
            "results/summary/ingest.png",
            caption="../report/ingest.rst",
            category="Stage 1: collection",
            labels={"figure": "screening and deduplication"},
        ),
    log:
        "logs/ingest_summary.log",
    conda:
        "../envs/figures.yaml"
    params:
        target_megapixels=config["target_megapixels"],
        screening=config["screening"],
    script:
        "../scripts/ingest_summary.py"


rule ingest:
    input:
        rules.dedup.output,
        rules.ingest_summary.output,
