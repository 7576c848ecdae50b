"""Record the sbatch command lines the SLURM executor plugin would build for this workflow's jobs,
without a cluster: a dry run whose pseudo-executor hands every job (group jobs included) to the
plugin's own submit-string builder and partition selection, and the job-step launch line its
jobstep executor would run inside the allocation.

Usage: python tests/slurm_submit.py OUT.json PARTITIONS.yaml -- <snakemake arguments incl. -n>
(give a large --cores: a remote executor does not cap threads at the submit host's cores)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class _Log:
    def info(self, *a, **k): ...
    def debug(self, *a, **k): ...
    def warning(self, *a, **k): ...


def sbatch_line(job, partitions) -> dict:
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm import Executor
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

    res = job.resources
    # the plugin's own choice (Executor.get_partition_arg): a job's explicit slurm_partition (a site
    # profile's set-resources) wins, else the best fit from the partitions file; no sinfo fallback here
    chooser = SimpleNamespace(_partitions=partitions, logger=_Log(), _fallback_partition="")
    partition = Executor.get_partition_arg(chooser, job).replace(" -p ", "", 1) or None
    params = {
        "run_uuid": "RUN",
        "slurm_logfile": "logs/slurm/%j.log",
        "comment_str": f"rule_{job.name}",
        # the plugin's get_account_arg without its sacctmgr check: the account as the profile gives it
        "account": f"-A {res.get('slurm_account')}" if res.get("slurm_account") else "",
        "partition": f"-p {partition}" if partition else "",
        "workdir": "/work",
    }
    call = get_submit_command(job, params) + set_gres_string(job)
    sbatch_gpus = "--gpus=" in call  # the jobstep treats the job as a GPU job when SLURM_GPUS is set

    def step(j):
        if "mpi" in j.resources.keys():  # the jobstep's MPI path: the job's own command, no srun
            return None
        return " ".join(
            s for s in ("srun -n1", get_cpu_setting(j, sbatch_gpus), get_gpu_setting(j), get_node_setting(j)) if s
        )

    members = list(job.jobs) if job.is_group() else [job]
    return {
        "name": job.name,
        "group": job.is_group(),
        "rules": sorted({m.rule.name for m in members}),
        "partition": partition,
        "sbatch": call,
        "resources": {k: v for k, v in res.items() if isinstance(v, (int, str))},
        "threads": job.threads,
        "levels": [sorted(j.rule.name for j in level) for level in job.toposorted] if job.is_group() else [],
        "steps": [{"rule": m.rule.name, "shard": m.wildcards.get("shard"), "jobid": m.jobid, "srun": step(m), "gpu": m.resources.get("gpu") or 0} for m in members],
    }


def main() -> None:
    out, partitions_file = Path(sys.argv[1]), sys.argv[2]
    argv = sys.argv[sys.argv.index("--") + 1 :]
    from snakemake.cli import main as snakemake_main
    from snakemake.executors import dryrun
    from snakemake_executor_plugin_slurm.partitions import read_partition_file

    partitions = read_partition_file(Path(partitions_file)) if partitions_file != "none" else None
    records = []
    original = dryrun.Executor.run_job

    def run_job(self, job):
        records.append(sbatch_line(job, partitions))
        return original(self, job)

    dryrun.Executor.run_job = run_job
    # a group job's resources as the SLURM executor sees them: per level summed, over levels the
    # max (runtime summed); the dry-run pseudo-executor counts as local execution, which sums all
    from snakemake.resources import GroupResources

    layered = GroupResources.basic_layered.__func__

    def basic_layered(cls, *args, **kwargs):
        kwargs["run_local"] = False
        return layered(cls, *args, **kwargs)

    GroupResources.basic_layered = classmethod(basic_layered)
    try:
        snakemake_main(argv)
    except SystemExit as e:
        out.write_text(json.dumps(records, indent=1))
        sys.exit(e.code)


if __name__ == "__main__":
    main()
