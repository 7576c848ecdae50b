"""Fail-safe model steps: one vocabulary of per-image step statuses and the job's health gate.

Every model-backed step writes a status per image: ``ok``, a "nothing to do" status (the step is
switched off, or an earlier step legitimately left nothing for it), or a failure code with its
reason.  Downstream code asks :func:`rejects` -- never "is there a score?" -- so that a model or
server that failed, refused or answered nonsense never becomes a score, a "top" rank, zero
instances or a caption.

The health gate stops a job whose step failed on more than ``<stage>.max_failed_fraction`` of
its images: a misconfigured server then costs one shard, not the run, and the error names the
server, the model and the first failure.  Finished replies stay in the reply cache
(``pixverve.models.vlm``), so the rerun after the fix asks only for what failed.
"""

from __future__ import annotations

import math

OK = "ok"
# The step had nothing to do for this image, and that is not a failure: switched off, or the
# previous step succeeded with an empty answer (no tags means no boxes to look for), or the image
# left for another reason before the model was asked (``skipped``: an unreadable file).
NOTHING_TO_DO = frozenset({"off", "no_tags", "no_instances", "skipped"})
# A reply that came back but is not in the asked format: vlm.invalid_policy decides (drop | keep).
FORMAT_FAILURES = frozenset({"unparseable", "invalid"})


MODEL_FAILED = "model_failed"  # reason code of an image a required model step failed on


def required_steps(stage_config: dict, steps: list[str], stage: str) -> set[str]:
    """``<stage>.required_steps``: ``all`` (the paper: every check must have run) or a list."""
    value = stage_config.get("required_steps", "all")
    if value == "all":
        return set(steps)
    unknown = sorted(set(value) - set(steps))
    if unknown:
        raise ValueError(f"config key {stage}.required_steps: {unknown} are not among its steps {steps}")
    return set(value)


def step_ok(status) -> bool:
    """True for ``ok`` and the "nothing to do" statuses; anything else is a failure."""
    return status == OK or status in NOTHING_TO_DO


def rejects(status, invalid_policy: str = "drop") -> bool:
    """Whether a step status keeps its image out: every failure does, except an answer that is
    merely off-format when the user chose ``vlm.invalid_policy: keep``."""
    if step_ok(status):
        return False
    status = str(status)  # carried statuses are prefixed by the step they came from: tags_unparseable
    return not (invalid_policy == "keep" and any(status == f or status.endswith("_" + f) for f in FORMAT_FAILURES))


DEFAULT_MAX_FAILED_FRACTION = 0.05  # <stage>.max_failed_fraction when a config does not set it


class StepFailed(Exception):
    """A job stops: its model step failed on too many images (or its first requests all failed).
    Not a RuntimeError on purpose: the per-image capture of model errors (``MODEL_ERRORS``) must
    not turn a job stop into one image's row."""


def check_step_health(
    step: str,
    statuses,
    errors,
    max_failed_fraction: float,
    invalid_policy: str = "drop",
    who: str = "",
    config_key: str = "",
) -> int:
    """Raise :class:`StepFailed` when more than ``max_failed_fraction`` of a step's images failed
    (and more than one, unless the fraction is 0: one bad image in a small shard is its row).

    ``statuses``/``errors``: one per image; ``who``: the server and model (or the local model) for
    the message; ``config_key``: where the fraction is set.  Returns the number of failures."""
    statuses, errors = list(statuses), list(errors)
    failed = [i for i, s in enumerate(statuses) if rejects(s, invalid_policy)]
    allowed = math.floor(float(max_failed_fraction) * len(statuses) + 1e-9)
    if max_failed_fraction > 0:  # one bad image never stops a small shard (0: none tolerated)
        allowed = max(1, allowed)
    if len(failed) > allowed:
        first = failed[0]
        raise StepFailed(
            f"{step}: {len(failed)} of {len(statuses)} images failed (more than {config_key or 'max_failed_fraction'}="
            f"{max_failed_fraction:g}){' at ' + who if who else ''}; first: {statuses[first]}: {str(errors[first])[:400]}. "
            "Fix the model or server, then rerun (`python -m pixverve retry`): finished images are kept."
        )
    return len(failed)


class FailureStreak:
    """The running health gate: ``limit`` units (images, prompt batches, renders) in a row whose
    every attempt failed stop the job (an outage, a wrong server or model, a broken env), instead
    of failing each of the next 500 images the same way.  A unit with one usable answer ends the
    streak; ``limit`` 0 switches the gate off.  ``describe(limit, first_unit, first_result)`` gives
    the message: the backend and what to do."""

    def __init__(self, limit: int, invalid_policy: str, describe):
        self.limit = int(limit or 0)
        self.invalid_policy = invalid_policy
        self.describe = describe
        self._failing: dict = {}  # unit -> its first failed result, since the last usable answer

    def see(self, unit, status, result=None) -> None:
        if not rejects(status, self.invalid_policy):
            self._failing = {}
            return
        self._failing.setdefault(unit, result)
        if self.limit and len(self._failing) >= self.limit:
            first_unit, first = next(iter(self._failing.items()))
            raise StepFailed(self.describe(self.limit, first_unit, first))


def gate_table(table, step: str, status_col: str, error_col: str, config: dict, stage: str, who: str = "") -> int:
    """:func:`check_step_health` over one column of a step's table, with the stage's
    ``max_failed_fraction`` and ``vlm.invalid_policy`` from ``config``."""
    if not len(table) or status_col not in table:
        return 0
    fraction = float(config.get(stage, {}).get("max_failed_fraction", DEFAULT_MAX_FAILED_FRACTION))
    policy = config.get("vlm", {}).get("invalid_policy", "drop")
    errors = table[error_col] if error_col in table else [""] * len(table)
    return check_step_health(step, table[status_col], errors, fraction, policy, who, f"{stage}.max_failed_fraction")
