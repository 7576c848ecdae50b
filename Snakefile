# PixVerve: native 100 MP text-to-image data curation, training and benchmark.
# Targets only; the rules live in rules/*.smk and the science in the pixverve package.
#   snakemake --cores 2 --configfile configs/demo.yaml   # the bundled demo, CPU, minutes
#   snakemake --profile slurm                   # the paper's run on a cluster
import os

# Threads, memory (mem_mb) and runtime (minutes) of every job are in its rule (rules/*.smk); a
# site changes any of them per rule in its own profile (set-threads / set-resources), and adds
# partition, constraint or GPU model there (profiles/slurm/config.yaml).  profiles/default holds
# the groups and retries (docs/cluster.md).

# A git module (snakefile: github(...) / gitlab(...) / gitfile(...)) is not supported: the
# workflow imports its pixverve package and runs its scripts from a folder on disk.
if not isinstance(workflow.current_basedir, os.PathLike):
    raise WorkflowError(
        f"pixverve is used as a module from {workflow.current_basedir}, a git source: not "
        "supported (the pixverve package, scripts and envs must be files on disk). Clone it "
        "and point the module at the clone: snakefile: <clone>/Snakefile, and on a cluster "
        "add --workflow-profile <clone>/profiles/default (docs/cluster.md, 'Running outside the checkout')."
    )


# the workflow's own defaults (also under --directory or as a module); overlays: --configfile
configfile: os.path.join(workflow.current_basedir, "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/envs.smk"
include: "rules/collect.smk"
include: "rules/ingest.smk"
include: "rules/purify.smk"
include: "rules/upscale.smk"
include: "rules/verify.smk"
include: "rules/caption.smk"
include: "rules/train.smk"
include: "rules/bench.smk"
include: "rules/atlas.smk"
include: "rules/bundles.smk"


localrules:
    all,
    ingest,
    purify,
    upscale_all,
    verify_all,
    verify_decide,
    caption_all,
    bench_all,
    train_all,
    demo_pool,
    collect,
    import_dataset,


rule all:
    default_target: True
    input:
        rules.ingest.input,
        rules.purify.input,
        rules.upscale_all.input,
        rules.verify_all.input,
        rules.caption_all.input,
        rules.train_all.input,
        rules.bench_all.input,
