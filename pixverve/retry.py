"""``python -m pixverve retry``: after a model server is fixed, redo exactly the images it failed.

1. Every per-shard table of a model step (``STEP_TABLES``) is read; a shard whose table has an
   image with a failed status (``pixverve.core.health.rejects``) is to be retried, and those
   images are counted per step.
2. Those tables (and their sibling outputs) are moved aside (``*.before-retry``), so Snakemake
   sees the jobs as not done.  A job that stopped at its health gate wrote no table: Snakemake
   reruns it anyway.
3. Snakemake runs (the arguments after ``--`` are passed on).  Each retried job answers the
   requests that were ok before from its reply cache (``results/cache/replies/``): only the
   failed ones reach the server.  Stages after it rerun on the recovered images by Snakemake's
   own rules (a newer input).
4. The report: per step, images retried and recovered, read from the new tables.

``vlm.invalid_policy`` and the results folder are read from the snakemake command line after
``--`` the way Snakemake reads them: the workflow's own config.yaml, then each ``--configfile``,
then ``--config`` values; ``--directory`` moves ``results/``.  ``--invalid-policy`` and
``--results`` override them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pixverve.core.health import rejects

WORKFLOW_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


@dataclass(frozen=True)
class StepTable:
    step: str
    pattern: str  # the job's table, a glob under results/
    status_columns: tuple[str, ...]
    # the job's other outputs: (part of the table's path, what it becomes), moved with it
    siblings: tuple[tuple[str, str], ...] = ()
    policy: str | None = None  # a fixed vlm.invalid_policy (the bench never keeps an off-format answer)
    id_column: str = "image_id"  # the bench's tables name their images by "name" (the benchmark's file stem)
    reason_prefix: str = "sr_"  # a "reason" column: the model's own failure codes start so (not an unreadable source)


STEP_TABLES = [
    StepTable(
        "synth_prompts",
        "collect/synthetic_requests.parquet",
        ("status",),
        (("synthetic_requests.parquet", "synthetic_prompts.parquet"),),
        "drop",  # a batch without valid prompts gave none
        "request_id",
    ),
    StepTable(
        "synth_render",
        "collect/synthetic.parquet",
        ("reason",),
        (("synthetic.parquet", "synthetic_manifest.csv"),),
        id_column="prompt_id",
        reason_prefix="render_",
    ),
    StepTable("upscale", "upscale/*.parquet", ("reason",)),  # SR: a failed row's reason is an sr_* code
    StepTable("purify_aesthetics", "purify/aesthetics/*.parquet", ("laion_status", "artimuse_status")),
    StepTable(
        "verify_regions", "verify/regions/*.parquet", ("judge_status",), (("verify/regions/", "verify/patches/"),)
    ),
    StepTable("caption_tags", "caption/tags/*.parquet", ("tags_status", "prune_status")),
    StepTable("caption_boxes", "caption/boxes/*.parquet", ("status",)),
    StepTable("caption_masks", "caption/masks/*.parquet", ("status",)),
    StepTable(
        "verify_instances",
        "verify/instances/*.parquet",
        ("judge_status",),
        (("verify/instances/", "verify/instance_crops/"),),
    ),
    StepTable("caption_instances", "caption/instances/*.parquet", ("status",)),
    StepTable("caption_aesthetics", "caption/aesthetics/*.parquet", ("judge_status",)),
    StepTable("caption_text", "caption/captions/*.parquet", ("long_status", "short_status")),
    StepTable(
        "bench_scores",
        "bench/*/scores.parquet",
        ("aesthetics_status", "clip_status"),
        (("scores.parquet", "sets.json"),),
        "drop",
        "name",
    ),
    StepTable("bench_fgclip2", "bench/*/fgclip2.parquet", ("fgclip2_status",), policy="drop", id_column="name"),
    StepTable("bench_judge", "bench/*/judged.parquet", ("msfi_status", "ics_status"), policy="drop", id_column="name"),
]
BEFORE = ".before-retry"


def failed_images(table, step: StepTable, policy: str) -> set[str]:
    """The image ids of a step table that a failed status keeps out.  A status carried from an
    earlier step (``tags_...``) is that step's to retry, not this one's."""
    out = set()
    for column in step.status_columns:
        if column not in table:
            continue
        for iid, status in zip(table[step.id_column], table[column].fillna("missing"), strict=True):
            if column == "reason":  # SR, renders: only the model's own failures, not an unreadable source
                if str(status).startswith(step.reason_prefix):
                    out.add(iid)
            elif not str(status).startswith("tags_") and rejects(status, policy):
                out.add(iid)
    return out


def scan(results: Path, policy: str) -> dict[str, dict[Path, set[str]]]:
    """{step: {shard table: failed image ids}} for every shard table with a failure."""
    from pixverve.core.tables import read_table

    found: dict[str, dict[Path, set[str]]] = {}
    for step in STEP_TABLES:
        for path in sorted(results.glob(step.pattern)):
            bad = failed_images(read_table(path), step, step.policy or policy)
            if bad:
                found.setdefault(step.step, {})[path] = bad
    return found


def move_aside(results: Path, found: dict) -> list[Path]:
    """Move the failed shards' outputs aside (kept for the report and for a look by hand)."""
    moved = []
    steps = {s.step: s for s in STEP_TABLES}
    for name, tables in found.items():
        for path in tables:
            relative = path.relative_to(results).as_posix()
            for old, new in (("", ""), *steps[name].siblings):
                src = results / relative.replace(old, new, 1) if old else path
                if src.exists():
                    dst = src.with_name(src.name + BEFORE)
                    if dst.exists():
                        dst.unlink()
                    shutil.move(src, dst)
                    moved.append(dst)
    return moved


def recovered(results: Path, found: dict, policy: str) -> dict[str, tuple[int, int]]:
    """{step: (retried, recovered)}: recovered = retried images whose new row is ok."""
    from pixverve.core.tables import read_table

    steps = {s.step: s for s in STEP_TABLES}
    report = {}
    for name, tables in found.items():
        retried = sum(len(ids) for ids in tables.values())
        fixed = 0
        for path, ids in tables.items():
            if path.exists():
                table = read_table(path)
                still = failed_images(table, steps[name], steps[name].policy or policy)
                fixed += len([i for i in ids if i in set(table[steps[name].id_column]) and i not in still])
        report[name] = (retried, fixed)
    return report


def run_settings(snakemake_args: list[str]) -> tuple[str, str, Path | None]:
    """(invalid_policy, where it came from, --directory) of the snakemake command line ``retry``
    will run: the workflow's config.yaml, each ``--configfile`` over it (relative to the current
    folder, as Snakemake reads them), then the ``--config`` values (YAML, as Snakemake parses them)."""
    import yaml
    from snakemake.utils import update_config  # Snakemake's own overlay: nested keys one by one

    from pixverve.core.config import load_yaml

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--configfile", "--configfiles", nargs="+", action="extend", default=[])
    parser.add_argument("--config", "-C", nargs="+", action="extend", default=[])
    parser.add_argument("--directory", "-d")
    known, _ = parser.parse_known_args([a for a in snakemake_args if a != "--"])
    config = load_yaml(WORKFLOW_CONFIG) if WORKFLOW_CONFIG.exists() else {}
    source = WORKFLOW_CONFIG.name
    for path in known.configfile:
        overlay = load_yaml(path)
        if "invalid_policy" in (overlay.get("vlm") or {}):
            source = path
        update_config(config, overlay)
    for item in known.config:
        key, _, value = item.partition("=")
        parsed = yaml.load(value, Loader=yaml.BaseLoader) if value else None  # noqa: S506 (BaseLoader builds only str/list/dict)
        if key == "vlm" and isinstance(parsed, dict) and "invalid_policy" in parsed:
            source = f"--config {item}"
        update_config(config, {key: parsed})
    policy = (config.get("vlm") or {}).get("invalid_policy", "drop")
    if policy not in ("drop", "keep"):
        raise SystemExit(f"retry: vlm.invalid_policy is {policy!r} in {source}; it must be drop or keep")
    return policy, source, Path(known.directory) if known.directory else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixverve retry", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", help="the workflow's results folder (default: results/ of the run's --directory or here)"
    )
    parser.add_argument(
        "--invalid-policy",
        choices=["drop", "keep"],
        help="vlm.invalid_policy of the run (default: read from the configs of the command after --)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only report what would be retried")
    parser.add_argument(
        "snakemake_args",
        nargs=argparse.REMAINDER,
        help="after --: the snakemake command line (default: snakemake --cores all)",
    )
    args = parser.parse_args(argv)
    policy, source, directory = run_settings(args.snakemake_args)
    if args.invalid_policy:
        policy, source = args.invalid_policy, "--invalid-policy"
    results = Path(args.results) if args.results else (directory or Path()) / "results"
    print(f"vlm.invalid_policy: {policy} (from {source}); results: {results}")
    found = scan(results, policy)
    for name, tables in found.items():
        print(f"{name}: {sum(len(v) for v in tables.values())} failed images in {len(tables)} shards")
    if not found:
        print("no failed images in the step tables; running snakemake for any job that stopped")
    if args.dry_run:
        return 0
    move_aside(results, found)
    command = [a for a in args.snakemake_args if a != "--"] or ["snakemake", "--cores", "all"]
    code = subprocess.call(command)  # noqa: S603 (the user's own command line)
    report = recovered(results, found, policy)
    print(
        json.dumps(
            {"retried": {k: v[0] for k, v in report.items()}, "recovered": {k: v[1] for k, v in report.items()}},
            indent=1,
        )
    )
    for name, (retried, fixed) in report.items():
        print(f"{name}: retried {retried}, recovered {fixed}, still failed {retried - fixed}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
