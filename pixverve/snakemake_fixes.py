"""A fix for Snakemake 9's group check at paper scale, applied by rules/common.smk.

``DAG._check_groups`` (Snakemake 9.27) refuses a group that depends on itself (a path that leaves
the group and comes back).  It walks the whole upstream DAG once per *member* of a group, and
visits each group once per member again (it loops over the job -> group mapping): for this
workflow, whose per-shard jobs all sit downstream of pool-wide steps (dedup, purify_decide,
verify_decide), that is quadratic in the shard count -- the paper config's dry run took 108 s at
200 shards instead of 15 s without groups, and over 10 minutes at 600 (benchmarks/dag_scale.py).

The replacement checks the same thing once per group: from every outside job a member depends
on, walk upstream through outside jobs; reaching a member again means the group depends on
itself.  Same verdict, each upstream job visited once per group.  It is installed only on the
Snakemake versions it was written against (the method must exist and have the same role); a
newer Snakemake keeps its own check.
"""

from __future__ import annotations

TESTED_SNAKEMAKE = ("9.27.",)


def check_groups_once_per_group(dag) -> None:
    """Raise WorkflowError when a group of ``dag`` depends on itself through outside jobs."""
    from snakemake.exceptions import WorkflowError

    for group in set(dag._group.values()):
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
                        f"Group {group.groupid} depends on itself: job of rule {member.rule.name} in the "
                        f"group needs rule {outside.rule.name} outside it, which needs rule "
                        f"{dep.rule.name} in the group again. Remove {dep.rule.name} from the group "
                        f"or add {outside.rule.name} to it.",
                        rule=dep.rule,
                    )
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, member))


def apply() -> bool:
    """Install the check on the tested Snakemake versions; return whether it was installed."""
    import snakemake
    from snakemake.dag import DAG

    version = getattr(snakemake, "__version__", "")
    if not version.startswith(TESTED_SNAKEMAKE) or not hasattr(DAG, "_check_groups"):
        return False
    DAG._check_groups = check_groups_once_per_group
    return True
