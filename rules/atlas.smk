# The atlas (pixverve/atlas/): a static site to audit the run in the browser -- the funnel of
# Table 1 reason by reason, a page per image with a deep-zoom viewer and every stage's decision
# drawn on it, and the bench page.  Built shard by shard (CPU jobs), then its index:
#   snakemake atlas            # -> results/atlas/index.html (open it as a file)
# `atlas.stages` (config) lists the stages it waits for: an atlas of stages 1-2 alone is useful.


wildcard_constraints:
    atlas_shard="unsharded|s[0-9]+",


localrules:
    atlas,


rule atlas_shard:
    input:
        atlas_shard_inputs,
    output:
        entries="results/atlas/shards/{atlas_shard}.jsonl",
        tiles=directory("results/atlas/tiles/{atlas_shard}"),
    log:
        "logs/atlas_shard/{atlas_shard}.log",
    benchmark:
        "results/benchmarks/atlas_shard/{atlas_shard}.tsv"
    conda:
        "../envs/atlas.yaml"
    threads: 2
    resources:
        mem_mb=4000,  # libvips streams: about one decoded RGB copy of a 100 MP image at most
        runtime=240,
    params:
        shard=lambda wc: "" if wc.atlas_shard == "unsharded" else wc.atlas_shard,
        config=config,
    script:
        "../scripts/atlas_shard.py"


rule atlas_bench:
    input:
        unpack(atlas_bench_inputs),
    output:
        data="results/atlas/shards/bench.json",
        tiles=directory("results/atlas/tiles/bench"),
    log:
        "logs/atlas_bench.log",
    benchmark:
        "results/benchmarks/atlas_bench.tsv"
    conda:
        "../envs/atlas.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        method_dirs=lambda wc: {m: bench_image_dir(m) for m in bench_methods()},
        real_dir=config["bench"]["real_dir"],
        max_megapixels=config["io"]["max_megapixels"],
        tile_size=config["atlas"]["tile_size"],
    script:
        "../scripts/atlas_bench.py"


rule atlas_site:
    input:
        unpack(atlas_site_inputs),
    output:
        index="results/atlas/index.html",
        pages=["results/atlas/image.html", "results/atlas/bench.html"],
        data=directory("results/atlas/data"),
        assets=directory("results/atlas/assets"),
    log:
        "logs/atlas_site.log",
    conda:
        "../envs/atlas.yaml"
    threads: 1
    resources:
        mem_mb=8000,  # the galleries' small rows of every image (95K: ~100 MB)
        runtime=120,
    script:
        "../scripts/atlas_site.py"


rule atlas:
    input:
        "results/atlas/index.html",
