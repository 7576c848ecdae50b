# Stage 5: stage-wise captioning over shards of the images that passed stage 4's checks 1-3.
# tags -> boxes -> masks -> (stage 4 check 4: verify_instances) -> instance descriptions,
# aesthetic analysis -> long/short captions -> annotation records -> dataset export + tables.
# On a cluster one shard's whole chain runs as one group job (caption_shards, profiles/default);
# a group job's runtime is the sum over its chain (8 steps): the runtimes below sum to 1890 min
# (31.5 h), within the 48 h GPU partition limit of profiles/slurm/partitions.yaml
# (tests/test_slurm_submit.py checks it).


rule caption_tags:
    input:
        verified="results/verify/verified.parquet",
        prompt=config["caption"]["tags"]["prompt"],
        prune_prompt=config["caption"]["tags"]["prune"]["prompt"],
        vocabulary=config["caption"]["tags"]["clip"]["vocabulary"],
        vllm=vllm_executable_input,  # the env's vLLM when this job starts it (vlm.serve)
    output:
        table="results/caption/tags/{shard}.parquet",
        views=directory("results/caption/views/{shard}"),
    log:
        main="logs/caption_tags/{shard}.log",
        server="logs/caption_tags/{shard}.vllm.log",
    benchmark:
        "results/benchmarks/caption_tags/{shard}.tsv"
    conda:
        "../envs/caption.yaml"
        if config["caption"]["tags"]["backend"] != "ram_plus"
        else "../envs/ramplus.yaml"
    threads: 8
    resources:
        gpu=lambda wc: int(caption_uses_gpu("tags")),
        mem_mb=48000,
        runtime=240,
    params:
        caption=config["caption"],
        vlm=config["vlm"],
    script:
        "../scripts/caption_tags.py"


rule caption_boxes:
    input:
        tags="results/caption/tags/{shard}.parquet",
        views="results/caption/views/{shard}",
        upscaled="results/upscale/{shard}.parquet",
        prompt=config["caption"]["boxes"]["rex_omni"]["prompt"],
        vllm=vllm_executable_input,  # the env's vLLM when this job starts it (vlm.serve)
    output:
        "results/caption/boxes/{shard}.parquet",
    log:
        main="logs/caption_boxes/{shard}.log",
        server="logs/caption_boxes/{shard}.vllm.log",
    benchmark:
        "results/benchmarks/caption_boxes/{shard}.tsv"
    conda:
        "../envs/caption.yaml"
    threads: 8
    resources:
        gpu=lambda wc: int(caption_uses_gpu("boxes")),
        mem_mb=32000,
        runtime=120,
    params:
        caption=config["caption"],
        vlm=config["vlm"],
    script:
        "../scripts/caption_boxes.py"


rule caption_masks:
    input:
        boxes="results/caption/boxes/{shard}.parquet",
        views="results/caption/views/{shard}",
    output:
        "results/caption/masks/{shard}.parquet",
    log:
        "logs/caption_masks/{shard}.log",
    benchmark:
        "results/benchmarks/caption_masks/{shard}.tsv"
    conda:
        "../envs/caption.yaml"
    threads: 8
    resources:
        gpu=lambda wc: int(caption_uses_gpu("masks")),
        mem_mb=32000,
        runtime=120,
    params:
        caption=config["caption"],
    script:
        "../scripts/caption_masks.py"


rule caption_instances:
    input:
        masks="results/caption/masks/{shard}.parquet",
        checks="results/verify/instances/{shard}.parquet",
        views="results/caption/views/{shard}",
        upscaled="results/upscale/{shard}.parquet",
        prompt=config["caption"]["instances"]["prompt"],
        vllm=vllm_executable_input,  # the env's vLLM when this job starts it (vlm.serve)
    output:
        "results/caption/instances/{shard}.parquet",
    log:
        main="logs/caption_instances/{shard}.log",
        server="logs/caption_instances/{shard}.vllm.log",
    benchmark:
        "results/benchmarks/caption_instances/{shard}.tsv"
    conda:
        "../envs/caption.yaml"
    threads: 8
    resources:
        gpu=lambda wc: int(caption_uses_gpu("instances")),
        mem_mb=48000,
        runtime=600,  # ~43 instances per image, two images per request
    params:
        caption=config["caption"],
        vlm=config["vlm"],
    script:
        "../scripts/caption_instances.py"


rule caption_aesthetics:
    input:
        checks="results/verify/instances/{shard}.parquet",
        views="results/caption/views/{shard}",
        prompt=config["caption"]["aesthetics"]["prompt"],
        vllm=vllm_executable_input,  # the env's vLLM when this job starts it (vlm.serve)
    output:
        "results/caption/aesthetics/{shard}.parquet",
    log:
        main="logs/caption_aesthetics/{shard}.log",
        server="logs/caption_aesthetics/{shard}.vllm.log",
    benchmark:
        "results/benchmarks/caption_aesthetics/{shard}.tsv"
    conda:
        "../envs/caption.yaml"
    threads: 8
    resources:
        gpu=lambda wc: int(caption_uses_gpu("aesthetics")),
        mem_mb=48000,
        runtime=180,
    params:
        caption=config["caption"],
        vlm=config["vlm"],
    script:
        "../scripts/caption_aesthetics.py"


rule caption_text:
    input:
        checks="results/verify/instances/{shard}.parquet",
        tags="results/caption/tags/{shard}.parquet",
        instances="results/caption/instances/{shard}.parquet",
        aesthetics="results/caption/aesthetics/{shard}.parquet",
        index="results/index/index.parquet",
        views="results/caption/views/{shard}",
        long_prompt=config["caption"]["captions"]["long_prompt"],
        short_prompt=config["caption"]["captions"]["short_prompt"],
        vllm=vllm_executable_input,  # the env's vLLM when this job starts it (vlm.serve)
    output:
        "results/caption/captions/{shard}.parquet",
    log:
        main="logs/caption_text/{shard}.log",
        server="logs/caption_text/{shard}.vllm.log",
    benchmark:
        "results/benchmarks/caption_text/{shard}.tsv"
    conda:
        "../envs/caption.yaml"
    threads: 8
    resources:
        gpu=lambda wc: int(caption_uses_gpu("captions")),
        mem_mb=48000,
        runtime=360,
    params:
        caption=config["caption"],
        vlm=config["vlm"],
    script:
        "../scripts/caption_text.py"


rule caption_records:
    input:
        checks="results/verify/instances/{shard}.parquet",
        tags="results/caption/tags/{shard}.parquet",
        boxes="results/caption/boxes/{shard}.parquet",
        masks="results/caption/masks/{shard}.parquet",
        instances="results/caption/instances/{shard}.parquet",
        aesthetics="results/caption/aesthetics/{shard}.parquet",
        captions="results/caption/captions/{shard}.parquet",
        index="results/index/index.parquet",
        purify="results/purify/decisions.parquet",
        verify="results/verify/{shard}.parquet",
        upscaled="results/upscale/{shard}.parquet",
        schema=shipped("schemas/annotation.schema.json"),
    output:
        records="results/caption/records/{shard}.jsonl",
        rejected="results/caption/records/{shard}.rejected.parquet",
    log:
        "logs/caption_records/{shard}.log",
    conda:
        "../envs/caption.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        required=config["caption"].get("required_steps", "all"),
        invalid_policy=config["vlm"].get("invalid_policy", "drop"),
    script:
        "../scripts/caption_records.py"


rule dataset_export:
    input:
        records=all_shards("results/caption/records/{shard}.jsonl"),
        rejected=all_shards("results/caption/records/{shard}.rejected.parquet"),
        checks=all_shards("results/verify/instances/{shard}.parquet"),
        upscaled=all_shards("results/upscale/{shard}.parquet"),
        ingest="results/summary/ingest.csv",
        purify="results/purify/decisions.parquet",
        verified="results/verify/verified.parquet",
        verify_counts="results/summary/verify.csv",
        bundles=all_bundles("caption"),
    output:
        metadata="results/dataset/metadata.parquet",
        train="results/dataset/captions.jsonl",
        benchmark="results/dataset/benchmark.jsonl",
        flow=report(
            "paper_figures/table1_data_flow.csv",
            caption="../report/dataset.rst",
            category="Stage 5: dataset",
        ),
        tables=multiext("paper_figures/table1_data_flow", ".md", ".tex")
        + multiext("paper_figures/table2_datasets", ".csv", ".md", ".tex")
        + multiext("paper_figures/pixel_buckets", ".csv", ".md", ".tex")
        + multiext("paper_figures/source_mix", ".csv", ".md", ".tex"),
        caption_plot=report(
            "paper_figures/caption_lengths.png",
            caption="../report/dataset.rst",
            category="Stage 5: dataset",
        ),
        instance_plot=report(
            "paper_figures/instance_counts.png",
            caption="../report/dataset.rst",
            category="Stage 5: dataset",
        ),
        rejections=multiext("paper_figures/rejections_by_reason", ".csv", ".md", ".tex"),
        funnel=report(
            "paper_figures/funnel.png",
            caption="../report/dataset.rst",
            category="Stage 5: dataset",
        ),
    log:
        "logs/dataset_export.log",
    conda:
        "../envs/caption.yaml"
    params:
        export=config["caption"]["export"],
        target_megapixels=config["target_megapixels"],
    script:
        "../scripts/dataset_export.py"


rule dataset_samples:
    input:
        metadata="results/dataset/metadata.parquet",
        patches=all_shards("results/verify/patches/{shard}.parquet"),
    output:
        png=report(
            "paper_figures/fig5_samples.png",
            caption="../report/samples.rst",
            category="Stage 5: dataset",
            labels={"figure": "Fig. 5: samples"},
        ),
        pdf="paper_figures/fig5_samples.pdf",
    log:
        "logs/dataset_samples.log",
    conda:
        "../envs/figures.yaml"
    threads: 1
    resources:
        mem_mb=2000,  # tile reads + one source decode (<= 100 MP for an SR'd image: 300 MB)
        runtime=30,
    params:
        export=config["caption"]["export"],
        patch_px=config["verify"]["regions"]["patch_px"],
        target_megapixels=config["target_megapixels"],
        sources={r["name"]: r["path"] for r in config["sources"]["roots"]},
        io=config["io"],
    script:
        "../scripts/dataset_samples.py"


rule caption_all:
    input:
        rules.dataset_export.output,
        rules.dataset_samples.output,
