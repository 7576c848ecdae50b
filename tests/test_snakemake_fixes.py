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
    input: {c_input}
    output: "c/{{s}}"
    group: "g"
    shell: "touch {{output}}"
"""
PATCH = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom pixverve import snakemake_fixes\nassert snakemake_fixes.apply()\n"


@pytest.mark.parametrize("patched", [False, True], ids=["snakemake's check", "ours"])
@pytest.mark.parametrize("leaves_and_returns", [True, False])
def test_same_verdict_as_snakemakes_own_check(tmp_path, patched, leaves_and_returns):
    # a -> b -> c with a and c grouped: the group leaves (b) and comes back (c) -- refused;
    # c reading a directly: no path out and back in -- accepted
    c_input = '"b/{s}"' if leaves_and_returns else '"a/{s}"'
    (tmp_path / "Snakefile").write_text(TOY.format(patch=PATCH if patched else "", c_input=c_input))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--group-components", "g=3"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    if leaves_and_returns:
        assert res.returncode != 0 and "Group g depends on itself" in out, out[-2000:]
        if patched:
            assert "through rule b outside it" in out  # our message names the job outside the group
    else:
        assert res.returncode == 0, out[-2000:]
