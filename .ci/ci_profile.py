"""Write the CI overlay of profiles/slurm: the real profile with only the cluster-specific lines
changed (the ones marked EDIT), conda dropped (no channels here), and resources fitted to the
one-node CI cluster.  Usage: python .ci/ci_profile.py SRC_PROFILE_DIR DEST_PROFILE_DIR PARTITION
"""

import sys
from pathlib import Path

import yaml

src, dest, partition = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
profile = yaml.safe_load((src / "config.yaml").read_text())
profile.pop("software-deployment-method", None)  # conda cannot reach its channels in CI
profile.pop("conda-frontend", None)
profile["default-resources"].update(slurm_partition=partition, mem_mb=1000, runtime=30)
profile["default-resources"].pop("slurm_account", None)  # the plugin finds root's account
for rule, res in profile.get("set-resources", {}).items():
    if "slurm_partition" in res:
        res["slurm_partition"] = partition  # the one CI partition (GPU partitions included)
    if "mem_mb" in res:
        res["mem_mb"] = min(int(res["mem_mb"]), 2000)  # the CI node has 24 GB
    res.pop("gpu_model", None)  # the CI node has no GPU; the demo's models run on the CPU
profile["set-threads"] = {rule: min(int(n), 2) for rule, n in profile.get("set-threads", {}).items()}
# Group jobs sum the resources of the jobs they run in parallel; these global limits make
# Snakemake lay a group out to fit one 2-CPU node (jobs run in series inside the allocation).
profile["cores"] = 2
profile["resources"] = {"mem_mb": 8000}
profile["slurm-init-seconds-before-status-checks"] = 4
profile["keep-going"] = False
dest.mkdir(parents=True, exist_ok=True)
(dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
