"""Fit the installed `slurm` profile and the workflow profile to the one-node CI cluster.

Usage: python .ci/ci_profile.py SITE_PROFILE_DIR WORKFLOW_PROFILE_SRC WORKFLOW_PROFILE_DEST

SITE_PROFILE_DIR is what `make slurm-profile` installed (profiles/slurm as shipped): only its
site lines change (the account, the partitions file) plus what a 2-CPU node without conda needs
(conda off: no channels here; threads capped; global limits that make Snakemake lay a group out
to fit the node; each rule's memory capped to the node with the site's own per-rule
`set-resources`, as a site would steer a rule).  The workflow profile (profiles/default: groups,
retries) is copied as shipped; threads, memory and runtime per rule stay the rules' own
(rules/*.smk, next to WORKFLOW_PROFILE_SRC's profiles/ folder).
"""

import re
import shutil
import sys
from pathlib import Path

import yaml

site, wf_src, wf_dest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
profile = yaml.safe_load((site / "config.yaml").read_text())
profile.pop("software-deployment-method", None)  # conda cannot reach its channels in CI
profile.pop("conda-frontend", None)
profile.pop("conda-prefix", None)  # the site's shared env folder: Snakemake would create it even without conda
profile["default-resources"]["slurm_account"] = "ci"  # the account slurm-cluster.sh creates
profile["default-resources"]["mem_mb"] = 1000
profile["slurm-init-seconds-before-status-checks"] = 4
profile["keep-going"] = False
# Group jobs sum the resources of the jobs they run in parallel; these global limits make
# Snakemake lay a group out to fit one 2-CPU node with 2 (declared) GPUs.
profile["cores"] = 2
profile["max-threads"] = 1  # as the local run: two 1-thread jobs side by side, the same floats
profile["resources"] = {"mem_mb": 8000, "gpu": 2}
# the CI node has 24 GB: every rule that asks for more than 2000 MB gets 2000 (its other
# resources stay the rule's); train's memory comes from .ci/gpu-asks.yaml (per GPU)
capped = profile.setdefault("set-resources", {})
for smk in sorted((wf_src.resolve().parent.parent / "rules").glob("*.smk")):
    for rule, body in re.findall(r"^(?:rule|checkpoint) (\w+):\n((?:[ \t].*\n|\n)*)", smk.read_text(), re.MULTILINE):
        mem = re.search(r"^\s+mem_mb=(\d+),", body, re.MULTILINE)
        if mem and int(mem.group(1)) > 2000:
            capped.setdefault(rule, {})["mem_mb"] = 2000
assert len(capped) >= 20, f"rules with their own memory not found: {sorted(capped)}"
(site / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
# the CI cluster's partitions (slurm-cluster.sh): the same names and roles as the shipped file
partitions = yaml.safe_load((site / "partitions.yaml").read_text())["partitions"]
assert set(partitions) == {"cpu", "gpu"}, partitions
# no time limit there (MaxTime=INFINITE): a group laid out in series on 2 CPUs sums its runtimes
partitions["cpu"].update(max_threads=2, max_mem_mb=8000, max_runtime=100000)
partitions["gpu"].update(max_threads=2, max_mem_mb=8000, max_gpu=2, max_runtime=100000)
(site / "partitions.yaml").write_text(yaml.safe_dump({"partitions": partitions}, sort_keys=False))

wf_dest.mkdir(parents=True, exist_ok=True)
shutil.copy2(wf_src / "config.yaml", wf_dest / "config.yaml")  # as shipped: groups and retries
