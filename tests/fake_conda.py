"""A stand-in ``conda`` for tests (conda is not obtainable here): it answers what Snakemake 9.27
asks (snakemake/deployment/conda.py: ``--version``, ``info --json``, ``config --get
channel_priority --json``, ``env create --file F --prefix P``, ``clean``) and appends one JSON line per env
it is asked to create to ``$FAKE_CONDA_LOG``: the env file's content, the prefix and the
``CONDA_OVERRIDE_CUDA`` it saw.  The env it "creates" holds a ``bin/python`` that records its
arguments (a post-deploy script's ``python -m pip install``) and succeeds.

Installed by :func:`install` as ``<dir>/conda`` with an ``activate`` script beside it (Snakemake
runs post-deploy scripts as ``source <conda_prefix>/bin/activate ENV; sh SCRIPT``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1].strip("\"'")


def main(args: list[str]) -> int:
    base = Path(sys.argv[0]).resolve().parent.parent
    if args == ["--version"]:
        print("conda 25.1.1")
    elif args[:2] == ["info", "--json"]:
        print(json.dumps({"conda_prefix": str(base), "platform": "linux-64", "conda_version": "25.1.1"}))
    elif args[:2] == ["config", "--get"]:
        print(json.dumps({"get": {"channel_priority": "strict"}, "rc_path": None}))
    elif args[:2] == ["env", "create"]:
        env_file, prefix = Path(_value(args, "--file")), Path(_value(args, "--prefix"))
        (prefix / "bin").mkdir(parents=True)
        python = prefix / "bin" / "python"
        python.write_text(f'#!/bin/sh\necho "$@" >> "{prefix}/python-calls"\n')
        python.chmod(0o755)
        record = {
            "prefix": str(prefix),
            "file": str(env_file),
            "content": env_file.read_text(),
            "CONDA_OVERRIDE_CUDA": os.environ.get("CONDA_OVERRIDE_CUDA"),
        }
        with open(os.environ["FAKE_CONDA_LOG"], "a") as log:
            log.write(json.dumps(record) + "\n")
    elif args[0] == "clean":  # conda-cleanup-pkgs (profiles/default)
        pass
    else:
        print(f"fake conda: unexpected arguments {args}", file=sys.stderr)
        return 2
    return 0


def install(folder: Path) -> Path:
    """Write ``folder/bin/conda`` (this module, run by the current Python) and ``folder/bin/activate``;
    returns the bin folder to put first on PATH."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    conda = bin_dir / "conda"
    conda.write_text(
        f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = {str(conda)!r}\n"
        f"sys.exit(runpy.run_path({str(Path(__file__).resolve())!r})['main'](sys.argv[1:]))\n"
    )
    conda.chmod(0o755)
    (bin_dir / "activate").write_text('PATH="$1/bin:$PATH"; export PATH\n')
    return bin_dir


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
