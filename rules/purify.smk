# Stage 2: preliminary purification -- per-shard scores, the pool-level cuts, Fig. 4.


rule purify_classical:
    input:
        shard="results/index/shards/{shard}.parquet",
        dedup="results/dedup/decisions.parquet",
    output:
        "results/purify/classical/{shard}.parquet",
    log:
        "logs/purify/classical/{shard}.log",
    benchmark:
        "results/benchmarks/purify/classical/{shard}.tsv"
    conda:
        "../envs/cv.yaml"
    threads: 4
    resources:
        mem_mb=8000,  # one 100 MP grey image + bands per thread
        runtime=120,
    params:
        target_megapixels=config["target_megapixels"],
        purify=config["purify"],
        io=config["io"],
    script:
        "../scripts/purify_classical.py"


rule purify_aesthetics:
    input:
        shard="results/index/shards/{shard}.parquet",
        dedup="results/dedup/decisions.parquet",
        weights=aesthetic_weights_input,
    output:
        "results/purify/aesthetics/{shard}.parquet",
    log:
        "logs/purify/aesthetics/{shard}.log",
    benchmark:
        "results/benchmarks/purify/aesthetics/{shard}.tsv"
    conda:
        "../envs/aesthetics.yaml"
    threads: 8
    resources:  # CLIP ViT-L/14 + MLP; a GPU only with a real backend
        gpu=lambda wc: int(uses_gpu(config["purify"]["aesthetics"]["predictors"])),
        mem_mb=32000,
        runtime=240,
    params:
        purify=config["purify"],
        io=config["io"],
    script:
        "../scripts/purify_aesthetics.py"


rule purify_decide:
    input:
        classical=all_shards("results/purify/classical/{shard}.parquet"),
        aesthetics=all_shards("results/purify/aesthetics/{shard}.parquet"),
        bundles=all_bundles("purify"),
    output:
        decisions="results/purify/decisions.parquet",
        candidates="results/purify/candidates.parquet",
        cutoffs=report(
            "results/purify/cutoffs.csv",
            caption="../report/purify_cutoffs.rst",
            category="Stage 2: purification",
            labels={"table": "pool cut-offs"},
        ),
    log:
        "logs/purify/decide.log",
    conda:
        "../envs/cv.yaml"
    params:
        target_megapixels=config["target_megapixels"],
        purify=config["purify"],
        io=config["io"],
    script:
        "../scripts/purify_decide.py"


rule purify_figure:
    input:
        decisions="results/purify/decisions.parquet",
        cutoffs="results/purify/cutoffs.csv",
    output:
        png=report(
            "paper_figures/fig4_purification.png",
            caption="../report/purify_figure.rst",
            category="Stage 2: purification",
            labels={"figure": "Fig. 4: filters"},
        ),
        pdf="paper_figures/fig4_purification.pdf",
    log:
        "logs/purify/figure.log",
    conda:
        "../envs/figures.yaml"
    params:
        target_megapixels=config["target_megapixels"],
        sources={r["name"]: r["path"] for r in config["sources"]["roots"]},
        io=config["io"],
    script:
        "../scripts/purify_figure.py"


rule purify:
    input:
        rules.purify_decide.output,
        rules.purify_figure.output,
