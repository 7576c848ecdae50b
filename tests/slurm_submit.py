"""Record the sbatch command lines the SLURM executor plugin would build for this workflow's jobs,
without a cluster: a dry run whose pseudo-executor hands every job (group jobs included) to the
plugin's own submit-string builder and partition selection, and the job-step launch line its
jobstep executor would run inside the allocation.

Usage: python tests/slurm_submit.py OUT.json PARTITIONS.yaml -- <snakemake arguments incl. -n>
(give a large --cores: a remote executor does not cap threads at the submit host's cores)
"""

from __future__ import annotations

import json
import re
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
    ids = {m.jobid for m in members}
    return {
        "name": job.name,
        "group": job.is_group(),
        "rules": sorted({m.rule.name for m in members}),
        "wildcards": {} if job.is_group() else dict(job.wildcards),
        "partition": partition,
        "sbatch": call,
        "resources": {k: v for k, v in res.items() if isinstance(v, (int, str))},
        "threads": job.threads,
        "levels": [sorted(j.rule.name for j in level) for level in job.toposorted] if job.is_group() else [],
        "steps": [
            {
                "rule": m.rule.name,
                "shard": m.wildcards.get("shard"),
                "jobid": m.jobid,
                "srun": step(m),
                "gpu": m.resources.get("gpu") or 0,
                "threads": m.threads,
                "runtime": m.resources.get("runtime"),
                "needs": sorted(d.jobid for d in m.dag.dependencies[m] if d.jobid in ids),
            }
            for m in members
        ],
        # how the job's inner Snakemake runs its members: the plugin's own arguments for it, and
        # whether the jobstep starts a member's step without waiting for the previous one to end
        "inner_args": inner_args(),
        "steps_in_background": steps_in_background(),
    }


def inner_args() -> str:
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm import Executor

    plugin = SimpleNamespace(workflow=SimpleNamespace(executor_settings=SimpleNamespace(pass_command_as_script=False)))
    return Executor.additional_general_args(plugin)


def steps_in_background() -> bool:
    """The jobstep's run_job waits for its srun step (plugin 0.6.1); pixverve/snakemake_fixes.py
    runs it in a thread."""
    from snakemake_executor_plugin_slurm_jobstep import Executor

    return bool(getattr(Executor.run_job, "pixverve_fix", False))


def _option(line: str, name: str) -> str | None:
    m = re.search(rf"(?:^| ){re.escape(name)}[= ](\S+)", line)
    return m.group(1) if m else None


def inner_run(record: dict) -> dict:
    """Model a job's allocation as the plugin runs it: its inner Snakemake starts up to `--jobs` ready
    members, each an `srun` step that SLURM starts only when the allocation has the step's CPUs,
    memory and GPUs free (a step without --mem takes the whole allocation's memory).  Returns the
    makespan in minutes and the largest number of members that ran at once."""
    sbatch = record["sbatch"]
    jobs = _option(record["inner_args"], "--jobs")
    limit = float("inf") if jobs == "unlimited" else int(jobs)
    if not record["steps_in_background"]:
        limit = 1  # run_job returns when its step has ended: one member at a time
    gpus = re.search(r"--gpus=(?:\w+:)?(\d+)|--gres=gpu:(?:\w+:)?(\d+)", sbatch)
    free = {
        "cpu": int(_option(sbatch, "--cpus-per-task")),
        "mem": int(_option(sbatch, "--mem")),
        "gpu": int(next(g for g in gpus.groups() if g)) if gpus else 0,
    }
    steps = []
    for s in record["steps"]:
        mem = _option(s["srun"], "--mem")
        steps.append(
            {
                "id": s["jobid"],
                "needs": s["needs"],
                "runtime": int(s["runtime"]),
                "cpu": int(_option(s["srun"], "--cpus-per-task") or 1),
                "mem": int(mem.rstrip("M")) if mem else free["mem"],
                "gpu": int(_option(s["srun"], "--gpus") or 0),
            }
        )
    for s in steps:
        if any(s[k] > free[k] for k in free):
            raise ValueError(f"step {s} does not fit its allocation {free}")
    now, done, running, pending, widest = 0, {}, [], steps, 0
    while pending or running:
        for s in list(pending):
            ready = all(done.get(n, float("inf")) <= now for n in s["needs"])
            if len(running) < limit and ready and all(s[k] <= free[k] for k in free):
                pending.remove(s)
                running.append((now + s["runtime"], s))
                for k in free:
                    free[k] -= s[k]
        widest = max(widest, len(running))
        now = min(end for end, _ in running)
        for end, s in [r for r in running if r[0] == now]:
            running.remove((end, s))
            done[s["id"]] = now
            for k in free:
                free[k] += s[k]
    return {"minutes": now, "widest": widest}


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
