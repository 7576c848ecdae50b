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


def apply() -> bool:
    """Install the check on the tested Snakemake versions; return whether it was installed."""
    import snakemake
    from snakemake.dag import DAG

    version = getattr(snakemake, "__version__", "")
    if not version.startswith(TESTED_SNAKEMAKE) or not all(hasattr(DAG, m) for m in ("_check_groups", "validate_group")):
        return False
    DAG._check_groups = check_groups_once_per_group
    DAG.validate_group = check_group
    return True
