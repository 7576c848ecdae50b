# Training: the paper's three schemes, one job per (run, resolution).  Each job launches its
# own processes (accelerate over the job's GPUs and nodes) and resumes from its newest
# checkpoint under results/train/<run>/<resolution>/checkpoints/, which is not a declared
# output: Snakemake would delete it with an incomplete job.


rule train:
    input:
        metadata=config["train"]["data"]["metadata"],
        init=train_init_input,
    output:
        final=directory("results/train/{run}/{res}/final"),
        log_csv="results/train/{run}/{res}/train_log.csv",
        resolved="results/train/{run}/{res}/resolved_config.yaml",
        plot=report(
            "results/train/{run}/{res}/loss.png",
            caption="../report/train.rst",
            category="Training",
            subcategory="{run}",
            labels={"run": "{run}", "resolution": "{res}", "figure": "loss"},
        ),
    log:
        "logs/train/{run}/{res}.log",
    benchmark:
        "results/benchmarks/train/{run}/{res}.tsv"
    conda:
        "../envs/train.yaml"
    threads: lambda wc: train_threads(wc.run, wc.res)
    resources:
        nodes=lambda wc: train_resources(wc.run, wc.res)["nodes"],
        # one task per node, launched by the job itself (the plugin's MPI path: no `srun -n1`
        # wrapper, which would shrink the step to one node and one task)
        tasks=lambda wc: train_resources(wc.run, wc.res)["nodes"],
        mpi=lambda wc: "srun" if train_resources(wc.run, wc.res)["nodes"] > 1 else 0,
        tasks_per_gpu=0,  # else the plugin turns `tasks` into --ntasks-per-gpu
        gres=lambda wc: train_gres(wc.run, wc.res),
        mem_mb=lambda wc: train_mem_mb(wc.run, wc.res),
        runtime=lambda wc: train_resources(wc.run, wc.res)["runtime"],
    params:
        spec=lambda wc: train_spec(wc.run, wc.res),
    script:
        "../scripts/train.py"


rule train_sample:
    input:
        final="results/train/{run}/{res}/final",
    output:
        image=report(
            "results/train/{run}/{res}/sample.png",
            caption="../report/train.rst",
            category="Training",
            subcategory="{run}",
            labels={"run": "{run}", "resolution": "{res}", "figure": "sample"},
        ),
        info="results/train/{run}/{res}/sample.json",
    log:
        "logs/train_sample/{run}/{res}.log",
    benchmark:
        "results/benchmarks/train_sample/{run}/{res}.tsv"
    conda:
        "../envs/train.yaml"
    threads: 8
    resources:  # one image from a checkpoint (4K-10K, tiled VAE decode) on one GPU
        gres=lambda wc: "gpu:1" if train_uses_gpu(wc.run, wc.res) else "",
        mem_mb=64000,
        runtime=240,
    params:
        spec=lambda wc: train_spec(wc.run, wc.res),
        prompt=config["train"]["sample_prompt"],
        size=config["train"].get("sample_size"),
    script:
        "../scripts/train_sample.py"


rule train_all:
    input:
        train_targets(),
