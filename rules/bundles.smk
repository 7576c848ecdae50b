# Bundles: several shards' short jobs in one SLURM job.  A bundle rule lists the per-shard
# outputs of `shards.bundle.<stage>` consecutive shards; profiles/default puts it and those
# shard jobs in one group, so the bundle and its members form one connected group job.
#
# Why not Snakemake's `group-components`: with shards made by a checkpoint (the index),
# Snakemake 9.27 forms the components again each time it re-evaluates the DAG, merging the
# merged groups (snakemake/snakemake#1628): at 20 shards the dry run showed verify groups of 4
# and 16 shards instead of 4 x 5, one purify group of all 20, and with the screen group a dry
# run that fails ("Out of jobs ready to be started") or never ends.  A connected group needs no
# component merging, so its size is what the config says, at any shard count.
# Local runs ignore groups: there a bundle job only writes its list.  Each uses its members'
# conda env (no env of its own to create; the linter asks for one per rule).


rule screen_bundle:
    input:
        bundle_members("screen", "results/screen/{shard}.parquet"),
    output:
        "results/bundles/screen/{bundle}.txt",
    log:
        "logs/bundles/screen/{bundle}.log",
    conda:
        "../envs/cv.yaml"
    resources:
        mem_mb=500,
        runtime=1,
    shell:
        "printf '%s\\n' {input:q} > {output:q} 2> {log:q}"


rule purify_bundle:
    input:
        bundle_members("purify", "results/purify/classical/{shard}.parquet"),
    output:
        "results/bundles/purify/{bundle}.txt",
    log:
        "logs/bundles/purify/{bundle}.log",
    conda:
        "../envs/cv.yaml"
    resources:
        mem_mb=500,
        runtime=1,
    shell:
        "printf '%s\\n' {input:q} > {output:q} 2> {log:q}"


rule verify_bundle:
    input:
        bundle_members("verify", "results/verify/{shard}.parquet"),
    output:
        "results/bundles/verify/{bundle}.txt",
    log:
        "logs/bundles/verify/{bundle}.log",
    conda:
        "../envs/verify.yaml"
    resources:
        mem_mb=500,
        runtime=1,
    shell:
        "printf '%s\\n' {input:q} > {output:q} 2> {log:q}"


rule caption_bundle:
    input:
        bundle_members("caption", "results/caption/records/{shard}.jsonl"),
    output:
        "results/bundles/caption/{bundle}.txt",
    log:
        "logs/bundles/caption/{bundle}.log",
    conda:
        "../envs/caption.yaml"
    resources:
        mem_mb=500,
        runtime=1,
    shell:
        "printf '%s\\n' {input:q} > {output:q} 2> {log:q}"
