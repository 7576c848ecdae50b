"""A start-up check for running the workflow away from its checkout (installed by rules/common.smk).

The groups that bundle short per-shard jobs into SLURM jobs live in the workflow profile,
``profiles/default/config.yaml``.  Snakemake 9.27 finds that profile by itself only next to the
*main* Snakefile or in the working directory (``snakemake/cli.py`` ``parse_args``): used as a
module, or run from a folder where neither holds it, a cluster run silently loses the groups
(every shard its own SLURM job) and the retry.  Snakemake knows its executor and groups only when
it executes (``WorkflowApi.execute_workflow`` sets ``workflow.group_settings`` and passes the
executor to ``Workflow.execute``; while the Snakefile is parsed both are still defaults), so the
check wraps this workflow's ``execute``: a cluster run in the main process whose groups hold none
of the workflow profile's stops before any job, naming ``--workflow-profile``.  Local runs ignore
groups and are never stopped; the Snakemake inside a cluster job reads no profile and is not
checked either.
"""

from __future__ import annotations

import os
from pathlib import Path

ALLOW_ENV = "PIXVERVE_ALLOW_NO_GROUPS"


def workflow_profile_groups(workflow_dir: Path) -> dict[str, str]:
    """rule -> group of the shipped workflow profile (empty where there is none)."""
    import yaml

    path = Path(workflow_dir) / "profiles" / "default" / "config.yaml"
    if not path.is_file():
        return {}
    return dict((yaml.safe_load(path.read_text()) or {}).get("groups") or {})


def missing_groups_message(groups: dict, shipped: dict, workflow_dir: Path) -> str | None:
    """Why a cluster run must not start with ``groups``, or None when it may."""
    if not shipped or any(rule in groups for rule in shipped) or os.environ.get(ALLOW_ENV) == "1":
        return None
    profile = Path(workflow_dir) / "profiles" / "default"
    names = ", ".join(sorted(set(shipped.values())))
    return (
        f"pixverve: this cluster run has none of the workflow profile's groups ({names}; {profile}): Snakemake "
        "reads a workflow profile by itself only from profiles/default next to the main Snakefile or in the "
        "working directory, so a run as a module or from another folder misses it, and every shard would be "
        f"its own SLURM job, without the retry. Add --workflow-profile {profile} to the command (beside your "
        f"--profile), or set {ALLOW_ENV}=1 to run ungrouped on purpose."
    )


def require_workflow_profile(workflow, workflow_dir: Path) -> None:
    """Make ``workflow.execute`` stop a cluster run that lacks the workflow profile's groups."""
    original = workflow.execute
    if getattr(original, "pixverve_check", False):
        return  # already installed (the workflow's rules included twice)

    def execute(*args, **kwargs):
        from snakemake.exceptions import WorkflowError
        from snakemake_interface_executor_plugins.settings import ExecMode

        plugin = kwargs.get("executor_plugin", args[0] if args else None)
        cluster = plugin is not None and not plugin.common_settings.local_exec
        if cluster and workflow.exec_mode == ExecMode.DEFAULT:
            groups = dict(getattr(workflow.group_settings, "overwrite_groups", None) or {})
            message = missing_groups_message(groups, workflow_profile_groups(workflow_dir), workflow_dir)
            if message:
                raise WorkflowError(message)
        return original(*args, **kwargs)

    execute.pixverve_check = True
    workflow.execute = execute
