"""The package shows the paper: one subpackage per rules file, and imports that run one way.

``core/`` and ``models/`` are shared and import no stage; a stage imports ``core``, ``models``, its
own modules and, where the paper's order needs it, an earlier stage's public names (the benchmark
samples our trained checkpoints); no module reaches into another's private names.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "pixverve"
SHARED = {"core", "models"}
STAGES = {p.stem for p in (ROOT / "rules").glob("*.smk")} - {
    "common",
    "bundles",
    "envs",
}  # workflow plumbing, no science
# the workflow-level modules above every stage: the config check, the audit CLI, Snakemake patches,
# the start-up check of a run away from the checkout
TOP = {"__init__", "__main__", "workflow", "audit", "retry", "snakemake_fixes", "deploy_checks"}
# stage -> earlier stages whose public names it may use, and why
# bench generates images with our trained checkpoints (train.infer); the atlas scores each judged
# MSFI patch with the bench's own weights (bench.scores)
STAGE_USES = {"bench": {"train"}, "atlas": {"bench"}}


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def pixverve_imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every pixverve import, relative ones resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            if module.split(".")[0] == "pixverve":
                found.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "pixverve"]
    return found


def area(module: str) -> str:
    """'core', 'models', a stage name, or 'top' for the workflow-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] not in TOP) else "top"


def test_one_package_per_rules_file_and_nothing_loose():
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert packages == STAGES | SHARED, (
        f"rules files without a package, or packages without one: {packages ^ (STAGES | SHARED)}"
    )
    loose = {p.stem for p in PKG.glob("*.py")}
    assert loose == TOP, f"modules outside the stage/shared packages: {loose - TOP}"


def allowed(mine: str, theirs: str) -> bool:
    if mine == "top" or theirs in (mine, "core"):
        return True  # the workflow level uses anything; everyone uses core
    if theirs == "models":
        return mine != "core"
    return theirs in STAGE_USES.get(mine, set())


def test_imports_run_one_way():
    wrong = []
    for module, path in modules().items():
        for target, _, line in pixverve_imports(path):
            mine, theirs = area(module), area(target)
            if not allowed(mine, theirs):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_module_uses_another_modules_private_names():
    """Across pixverve, the rule scripts and the benchmarks (the tests may reach in)."""
    wrong = []
    callers = modules() | {
        f"{p.parent.name}.{p.stem}": p for d in ("scripts", "benchmarks") for p in (ROOT / d).glob("*.py")
    }
    for module, path in callers.items():
        aliases = {}
        tree = ast.parse(path.read_text())
        for target, names, line in pixverve_imports(path):
            if target == module:
                continue
            wrong += [
                f"{path.relative_to(ROOT)}:{line}: {target}.{n}"
                for n in names
                if n.startswith("_") and not n.startswith("__")
            ]
        for node in ast.walk(tree):  # `from pixverve.train import models as tm` ... `tm._private`
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pixverve"):
                aliases.update(
                    {
                        a.asname or a.name: f"{node.module}.{a.name}"
                        for a in node.names
                        if f"{node.module}.{a.name}" in modules()
                    }
                )
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name.startswith("pixverve")})
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_the_imports():
    """The two checks above find what they look for (a check that sees nothing passes anything)."""
    found = {target for target, _, _ in pixverve_imports(PKG / "caption" / "steps.py")}
    assert {"pixverve.core.views", "pixverve.models.vlm"} <= found
    assert area("pixverve.caption.steps") == "caption" and area("pixverve.workflow") == "top"
    assert area("pixverve.models.vlm") == "models" and area("pixverve.core") == "core"
    assert not allowed("core", "models") and not allowed("models", "caption") and not allowed("verify", "caption")
    assert not allowed("caption", "top") and allowed("bench", "train") and not allowed("train", "bench")


def test_every_models_missing_error_is_one_class():
    """A user catches one ModelUnavailable for any configured model that cannot be loaded."""
    from pixverve.bench.fid import FIDWeightsUnavailable
    from pixverve.bench.generate import GeneratorUnavailable
    from pixverve.collect.synthetic import T2IUnavailable
    from pixverve.models.loading import ModelUnavailable
    from pixverve.models.vlm_local import VLMUnavailable
    from pixverve.upscale.sr import SRUnavailable
    from pixverve.verify.fidelity import LPIPSUnavailable

    for cls in (
        FIDWeightsUnavailable,
        GeneratorUnavailable,
        T2IUnavailable,
        VLMUnavailable,
        SRUnavailable,
        LPIPSUnavailable,
    ):
        assert issubclass(cls, ModelUnavailable) and issubclass(cls, RuntimeError), cls


def test_no_import_cycles():
    """No module reaches itself through pixverve imports, lazy (in-function) ones included."""
    mods = modules()
    graph = {}
    for module, path in mods.items():
        targets = set()
        for target, names, _ in pixverve_imports(path):
            # `from pixverve.x import y` names module pixverve.x.y when that is a module
            for name in names or [""]:
                full = f"{target}.{name}" if name and f"{target}.{name}" in mods else target
                if full in mods and full != module:
                    targets.add(full)
        graph[module] = targets
    cycles = []

    def visit(node, stack, state):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif not state.get(nxt):
                visit(nxt, stack, state)
        stack.pop()
        state[node] = 2

    state = {}
    for node in sorted(graph):
        if not state.get(node):
            visit(node, [], state)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
