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


# Every benchmark's default mode either runs in CI at minimal size or is built here.  For these,
# --quick is the default mode at smaller sizes: its block only sets size arguments, so run_quick.sh
# runs the default code path.  train_step's tiny-model mode runs at its default 256 px in
# run_quick.sh (a size-specific gap once broke it); its --real-shapes models are built below on the
# meta device.  published_parity's comparison needs the authors' checkout (not reachable from CI).
SIZE_ONLY_QUICK = {
    "atlas": {"side", "threads", "repeat"},
    "dag_scale": {"images", "per_shard"},
    "glcm": {"megapixels"},
    "near_duplicates": {"n", "brute_n", "k"},
    "purify_100mp": {"megapixels", "patch"},
    "verify_100mp": {"megapixels"},
    "sr_tiling": {"megapixels", "big_side"},
    "vlm_client": {"latency", "levels"},
    "window_attention": {"grids", "window", "text", "repeats"},
}


def quick_blocks(path: Path) -> list[ast.If]:
    return [
        n
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.If) and ast.unparse(n.test) == "args.quick" and not n.orelse
    ]


def assigned_args(block: ast.If) -> set[str] | None:
    """The args.<name> a --quick block sets, or None when it does anything else."""
    names = set()
    for stmt in block.body:
        if not isinstance(stmt, ast.Assign):
            return None
        for target in stmt.targets:
            elts = target.elts if isinstance(target, ast.Tuple) else [target]
            for t in elts:
                if not (isinstance(t, ast.Attribute) and ast.unparse(t.value) == "args"):
                    return None
                names.add(t.attr)
    return names


def test_every_benchmark_has_a_default_mode_check():
    names = {p.stem for p in BENCHMARKS}
    assert names == set(SIZE_ONLY_QUICK) | {"train_step", "published_parity"}, (
        "a new benchmark: add it to SIZE_ONLY_QUICK (its --quick only shrinks sizes) or give its default mode a check"
    )


@pytest.mark.parametrize("name", sorted(SIZE_ONLY_QUICK))
def test_quick_is_the_default_mode_at_smaller_sizes(name):
    blocks = quick_blocks(Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py")
    assert len(blocks) == 1, f"{name}: expected one `if args.quick:` block"
    assert assigned_args(blocks[0]) == SIZE_ONLY_QUICK[name]


def test_assigned_args_sees_other_statements():
    tree = ast.parse("if args.quick:\n    args.n = 1\n    run_other_path()\n")
    assert assigned_args(tree.body[0]) is None
    assert assigned_args(ast.parse("if args.quick:\n    args.a, args.b = 1, 2\n").body[0]) == {"a", "b"}


def test_ci_runs_train_step_default_mode():
    quick = (Path(__file__).resolve().parent.parent / "benchmarks/run_quick.sh").read_text()
    assert "benchmarks/train_step.py --steps 2" in quick  # tiny models at the default 256 px


def load_train_step():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_step_bench", Path(__file__).resolve().parent.parent / "benchmarks/train_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["4k", "8k", "10k"])
def test_real_shapes_build_at_every_preset(preset):
    """--real-shapes at the published sizes, built on the meta device (nothing allocated)."""
    import argparse

    torch = pytest.importorskip("torch")
    bench = load_train_step()
    res = bench.REAL_RES[preset]
    sizes = {}
    for scheme in bench.REAL_SCHEMES:
        args = argparse.Namespace(quick=False, preset=preset, scheme=scheme, seq_chunk=4096)
        with torch.device("meta"):
            built = bench.build_real(args, torch.device("meta"), torch.bfloat16)
        model = built["model"]
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        sizes[scheme] = (total, trainable)
        assert built["resolution"] == res
        if scheme == "scheme3_l2p":
            patch = {"4k": 64, "8k": 128, "10k": 160}[preset]
            assert built["tokens"] == (res // patch) ** 2 == 4096  # the 64 x 64 token grid at every preset
            assert tuple(built["target"].shape) == (1, 3, res, res)
        else:
            assert built["tokens"] == (res // 16) ** 2
            assert tuple(built["target"].shape) == (1, (res // 16) ** 2, 128)
    full, _ = sizes["scheme1_full"]
    assert 3.5e9 < full < 4.5e9  # FLUX.2 [klein] base 4B
    assert sizes["scheme1_full"][1] == full and sizes["scheme2_window"] == sizes["scheme1_full"]
    lora_total, lora_trainable = sizes["scheme1_lora"]
    assert lora_trainable < 0.1 * full and lora_total == full + lora_trainable  # adapters only train
    l2p_total, l2p_trainable = sizes["scheme3_l2p"]
    assert 5.5e9 < l2p_total < 7.5e9 and 0 < l2p_trainable < l2p_total  # Z-Image 6B + U-Net, layers 5-24 frozen
