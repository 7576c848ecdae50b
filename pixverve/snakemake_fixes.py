"""A fix for Snakemake 9's group checks at paper scale, applied by rules/common.smk.

``DAG.validate_group`` and ``DAG._check_groups`` (Snakemake 9.27) both refuse a group that
depends on itself (a path that leaves the group and comes back), the first before group
components are merged, the second after.  Each walks the whole upstream DAG once per *member*
of a group (once per outside dependency of each member, for the first), and the second visits
each group once per member again (it loops over the job -> group mapping): for this
workflow, whose per-shard jobs all sit downstream of pool-wide steps (dedup, purify_decide,
verify_decide), that is quadratic in the shard count -- the paper config's dry run took 108 s at
200 shards instead of 15 s without groups, and over 10 minutes at 600 (benchmarks/dag_scale.py).

The replacement checks the same thing once per group: from every outside job a member depends
on, walk upstream through outside jobs; reaching a member again means the group depends on
itself.  Same verdict, each upstream job visited once per group.  It is installed only on the
Snakemake versions it was written against (the method must exist and have the same role); a
newer Snakemake keeps its own check.

Two more fixes concern SLURM group jobs (snakemake-executor-plugin-slurm 2.8, its jobstep 0.6).
Snakemake sizes a group job as its members run level by level, side by side within a level (a
level's threads, memory and GPUs summed, runtimes summed over levels).  The plugin, though,
starts the group's inner Snakemake with ``--jobs 1`` (its issue #469), so the members ran one
after another in an allocation sized for them side by side: idle GPUs, and a ``-t`` shorter than
the members' runtimes added up.  ``--jobs unlimited`` lets the inner Snakemake start every ready
member at once, each as its own ``srun`` job step; SLURM then starts a step only when the
allocation has its CPUs, memory and GPUs free, so members never oversubscribe it and every GPU
step gets its own card.  For that each step asks for its own memory (``--mem``): a step that
names none is given the whole allocation's, and the next step waits for it to end
(measured on SLURM 22.05, NOTES.md "Cluster").  And the jobstep's ``run_job`` waits for
its step to end before it returns, so the inner Snakemake could start the next member only then:
it runs in a thread of its own.
"""

from __future__ import annotations

TESTED_SNAKEMAKE = ("9.27.",)
NOT_APPLIED = (
    "pixverve: the group-check fix (pixverve/snakemake_fixes.py) is written for Snakemake 9.27.x and was not "
    "applied to this Snakemake: its own check runs, fine for small runs, but a paper-scale DAG (hundreds of "
    "shards) may take many minutes to plan. Use Snakemake 9.27 (requirements.txt) for such runs."
)


def check_groups_once_per_group(dag) -> None:
    """Raise WorkflowError when a group of ``dag`` depends on itself through outside jobs."""
    for group in set(dag._group.values()):
        check_group(dag, group)


def check_group(dag, group) -> None:
    """Raise WorkflowError when ``group`` depends on itself through jobs outside it."""
    from snakemake.exceptions import WorkflowError

    members = set(group.jobs)
    stack = []
    for job in members:
        stack.extend((dep, job) for dep in dag._dependencies[job] if dep not in members)
    seen = {dep for dep, _ in stack}
    while stack:
        outside, member = stack.pop()
        for dep in dag._dependencies[outside]:
            if dep in members:
                raise WorkflowError(
                    f"Group {group.groupid} depends on itself: a job of rule {member.rule.name} in the "
                    f"group depends, through rule {outside.rule.name} outside it, on rule "
                    f"{dep.rule.name} in the group. Remove {dep.rule.name} from the group or add "
                    f"{outside.rule.name} to it.",
                    rule=dep.rule,
                )
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, member))


TESTED_SLURM_PLUGINS = {
    "snakemake-executor-plugin-slurm": ("2.8.",),
    "snakemake-executor-plugin-slurm-jobstep": ("0.6.",),
}
SLURM_NOT_APPLIED = (
    "pixverve: the SLURM group-job fix (pixverve/snakemake_fixes.py) is written for "
    "snakemake-executor-plugin-slurm 2.8.x with its jobstep 0.6.x and was not applied to {versions}: on a SLURM "
    "run the members of a group job (profiles/default `groups`) may run one after another in an allocation sized "
    "for them side by side. Install the versions of requirements.txt for cluster runs."
)
GROUP_INNER_JOBS = "unlimited"  # the allocation bounds the inner run: SLURM queues steps that do not fit


def apply_group_check() -> bool:
    """Install the once-per-group check on the tested Snakemake versions; return whether it was installed."""
    import snakemake
    from snakemake.dag import DAG

    version = getattr(snakemake, "__version__", "")
    if not version.startswith(TESTED_SNAKEMAKE) or not all(
        hasattr(DAG, m) for m in ("_check_groups", "validate_group")
    ):
        return False
    DAG._check_groups = check_groups_once_per_group
    DAG.validate_group = check_group
    return True


def side_by_side_args(general_args: str) -> str:
    """The plugin's arguments for a job's inner Snakemake with ``--jobs 1`` widened to the allocation."""
    import re

    return re.sub(r"(^| )--jobs 1(?= |$)", rf"\g<1>--jobs {GROUP_INNER_JOBS}", general_args)


def step_memory(job) -> str:
    """``--mem`` for one member's job step: its own memory, so steps share the allocation's."""
    if job.resources.get("mem_mb_per_cpu"):
        return ""  # SLURM divides --mem-per-cpu by the step's CPUs itself
    mem_mb = job.resources.get("mem_mb")
    return f"--mem={int(mem_mb)}M" if isinstance(mem_mb, (int, float)) and mem_mb > 0 else ""


def apply_slurm_group_jobs() -> str | None:
    """Let a SLURM group job's members run side by side; None when applied (or no plugin), else a warning."""
    from importlib import metadata

    try:
        versions = {name: metadata.version(name) for name in TESTED_SLURM_PLUGINS}
    except metadata.PackageNotFoundError:
        return None  # no SLURM plugin installed: nothing to fix
    if not all(versions[name].startswith(tested) for name, tested in TESTED_SLURM_PLUGINS.items()):
        return SLURM_NOT_APPLIED.format(versions=", ".join(f"{n} {v}" for n, v in versions.items()))
    import threading

    import snakemake_executor_plugin_slurm as slurm
    import snakemake_executor_plugin_slurm_jobstep as jobstep

    if getattr(slurm.Executor.additional_general_args, "pixverve_fix", False):
        return None  # already installed (a workflow parsed twice in one process)
    general_args = slurm.Executor.additional_general_args
    node_setting = jobstep.get_node_setting
    run_job = jobstep.Executor.run_job

    def additional_general_args(self):
        return side_by_side_args(general_args(self))

    def node_and_memory_setting(job):
        return " ".join(s for s in (node_setting(job), step_memory(job)) if s)

    def run_job_in_background(self, job):
        # the jobstep's run_job waits for its srun step to end: in a thread, the next member's
        # step starts while this one runs (the scheduler takes reports from threads, as it does
        # from the local executor's pool)
        def run():
            try:
                run_job(self, job)
            except Exception as exc:  # noqa: BLE001 -- reported to the scheduler as the job's failure
                from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo

                self.logger.error(f"job step of {job}: {exc}")
                self.report_job_error(SubmittedJobInfo(job))

        threading.Thread(target=run, name=f"pixverve-jobstep-{job.jobid}", daemon=True).start()

    additional_general_args.pixverve_fix = True
    run_job_in_background.pixverve_fix = True
    slurm.Executor.additional_general_args = additional_general_args
    jobstep.get_node_setting = node_and_memory_setting  # run_job looks it up at call time
    jobstep.Executor.run_job = run_job_in_background
    return None


def apply() -> list[str]:
    """Install every fix that fits the installed versions; return a warning for each that did not."""
    warnings = [] if apply_group_check() else [NOT_APPLIED]
    slurm_warning = apply_slurm_group_jobs()
    return warnings + ([slurm_warning] if slurm_warning else [])
