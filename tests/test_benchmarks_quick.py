"""Every benchmark offers --quick (CI runs them all through benchmarks/run_quick.sh after the suite;
here only the cheap part: each one declares the flag, so a new benchmark cannot skip it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_benchmark_declares_quick(path):
    calls = [
        n
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Call)
        and getattr(n.func, "attr", "") == "add_argument"
        and n.args
        and isinstance(n.args[0], ast.Constant)
    ]
    assert "--quick" in [c.args[0].value for c in calls], (
        f"{path.name} has no --quick mode (benchmarks/run_quick.sh runs it)"
    )


def test_ci_runs_the_quick_benchmarks():
    ci = (Path(__file__).resolve().parent.parent / ".ci/run").read_text()
    assert "benchmarks/run_quick.sh" in ci
