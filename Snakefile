# PixVerve: native 100 MP text-to-image data curation, training and benchmark.
# Targets only; the rules live in rules/*.smk and the science in the pixverve package.
#   snakemake --cores 2 --configfile configs/demo.yaml   # the bundled demo, CPU, minutes
#   snakemake --profile slurm                   # the paper's run on a cluster
import os


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
