"""The replacement of Snakemake's group self-dependency check (pixverve/snakemake_fixes.py) gives
Snakemake's own verdict: a group whose path leaves it and comes back is refused, one that does
not is accepted.  (Its speed is measured by benchmarks/dag_scale.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOY = """
{patch}
rule all:
    input: expand("c/{{s}}", s=range(3))
rule a:
    output: "a/{{s}}"
    group: "g"
    shell: "touch {{output}}"
rule b:
    input: "a/{{s}}"
    output: "b/{{s}}"
    shell: "touch {{output}}"
rule c:
    input: "a/{{s}}", {c_input}
    output: "c/{{s}}"
    group: "g"
    shell: "touch {{output}}"
"""
PATCH = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom pixverve import snakemake_fixes\nassert snakemake_fixes.apply_group_check()\n"


@pytest.mark.parametrize("patched", [False, True], ids=["snakemake's check", "ours"])
@pytest.mark.parametrize("leaves_and_returns", [True, False])
def test_same_verdict_as_snakemakes_own_check(tmp_path, patched, leaves_and_returns):
    # a and c grouped and connected (c reads a): with c also reading b, which reads a, the group
    # leaves (b) and comes back (c) -- refused; without b -- accepted.  (No group-components:
    # which components a merge would join depends on set order, so the verdict would too.)
    c_input = '"b/{s}"' if leaves_and_returns else ""
    (tmp_path / "Snakefile").write_text(TOY.format(patch=PATCH if patched else "", c_input=c_input))
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = res.stdout + res.stderr
    if leaves_and_returns:
        assert res.returncode != 0, out[-2000:]
        if patched:  # our message names the job outside the group
            assert "Group g depends on itself" in out and "through rule b outside it" in out, out[-2000:]
        else:  # Snakemake's validate_group says it in its own words
            assert "Error in group g" in out and "depend on rule(s) a from inside the group" in out, out[-2000:]
    else:
        assert res.returncode == 0, out[-2000:]


def test_slurm_group_fix_widens_only_the_inner_jobs_and_warns_on_other_plugin_versions(monkeypatch):
    """The group-job fix rewrites exactly the plugin's `--jobs 1`, gives a step its own memory
    (never with --mem-per-cpu, which SLURM divides itself), and says when it does not apply."""
    import importlib.metadata
    from types import SimpleNamespace

    from pixverve import snakemake_fixes as fixes

    assert fixes.side_by_side_args("--executor slurm-jobstep --jobs 1") == "--executor slurm-jobstep --jobs unlimited"
    assert fixes.side_by_side_args("--jobs 1 --x") == "--jobs unlimited --x"
    assert fixes.side_by_side_args("--jobs 10") == "--jobs 10"  # a plugin that already runs members in parallel

    class Resources(dict):
        __getattr__ = dict.get

    assert fixes.step_memory(SimpleNamespace(resources=Resources(mem_mb=48000))) == "--mem=48000M"
    assert fixes.step_memory(SimpleNamespace(resources=Resources(mem_mb=48000, mem_mb_per_cpu=4000))) == ""
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "2.9.0" if name == "snakemake-executor-plugin-slurm" else real(name)
    )
    warning = fixes.apply_slurm_group_jobs()
    assert warning and "snakemake-executor-plugin-slurm 2.9.0" in warning and "one after another" in warning
