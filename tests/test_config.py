"""The config: the paper's values by default, validated, wrong keys named before any job runs."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from pixverve.core.config import load_yaml
from pixverve.workflow import check_config


def test_paper_values_are_the_defaults(repo_root):
    cfg = load_yaml(repo_root / "config.yaml")
    assert cfg["target_megapixels"] == 100
    i, ii = cfg["screening"]["criteria"]
    assert (i["min_megapixels"], i["min_inclusive"], i["max_megapixels"], i["min_side_px"]) == (25, False, None, 3000)
    assert (ii["min_megapixels"], ii["min_inclusive"], ii["max_megapixels"], ii["min_side_px"]) == (10, True, 25, 1500)
    tiers = {t["name"]: (t["min_megapixels"], t["scale"]) for t in cfg["sr_tiers"]}
    assert tiers == {"native": (100, 1), "x2": (25, 2), "x4": (10, 4)}


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["dedup"].update(phash_max_hamming=-1), "phash_max_hamming"),
        (lambda c: c["shards"].update(images_per_shard="many"), "images_per_shard"),
        (lambda c: c["screening"].update(citeria=[]), "citeria"),
        (lambda c: c.update(target_megapixels=0), "target_megapixels"),
        (lambda c: c["io"].update(alpha_background=[255, 255]), "alpha_background"),
        (lambda c: c["bench"]["fid_patch"].update(order="x-first"), "order"),
    ],
)
def test_schema_errors_name_the_key(repo_root, mutate, key):
    cfg = copy.deepcopy(load_yaml(repo_root / "config.yaml"))
    mutate(cfg)
    with pytest.raises(WorkflowError) as exc:
        validate(cfg, str(repo_root / "schemas" / "config.schema.yaml"))
    assert key in str(exc.value)


def test_semantic_checks_name_the_key(repo_root):
    cfg = copy.deepcopy(load_yaml(repo_root / "config.yaml"))
    cfg["sources"]["manifests"] = [{"path": "x.csv", "root": "nowhere"}]
    with pytest.raises(ValueError, match=r"sources.manifests\[0\].root"):
        check_config(cfg)
    cfg = copy.deepcopy(load_yaml(repo_root / "config.yaml"))
    cfg["sr_tiers"][2]["scale"] = 1
    with pytest.raises(ValueError, match="sr_tiers"):
        check_config(cfg)


def test_snakemake_refuses_a_bad_value_before_any_job(repo_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dedup:\n  phash_max_hamming: 99\n")
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/demo.yaml", str(bad)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert "phash_max_hamming" in res.stdout + res.stderr
    assert "Job stats" not in res.stdout + res.stderr  # no DAG was built


def test_bench_enabled_must_name_configured_methods(repo_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("bench:\n  enabled: [ours-scheme1, nope]\n")
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/demo.yaml", str(bad)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and "bench.enabled: ['nope'] not among bench.methods" in res.stdout + res.stderr


def test_a_missing_artimuse_checkout_fails_the_config_check_naming_the_key(repo_root, tmp_path):
    from artimuse_stand_in import make_checkout

    from pixverve.workflow import load_config

    base = load_yaml(repo_root / "config.yaml")
    check_config(
        base
    )  # as shipped: the purify predictor's checkout is an EDIT placeholder (null), the rubric needs none
    cfg = copy.deepcopy(base)
    cfg["caption"]["aesthetics"]["backend"] = "artimuse"  # upstream still null
    with pytest.raises(ValueError, match=r"config key caption\.aesthetics\.artimuse\.upstream: not set"):
        check_config(cfg)
    cfg = copy.deepcopy(base)
    cfg["purify"]["aesthetics"]["predictors"]["artimuse"]["upstream"] = str(tmp_path / "not-artimuse")
    with pytest.raises(
        ValueError, match=r"config key purify\.aesthetics\.predictors\.artimuse\.upstream: .* not found"
    ):
        check_config(cfg)
    checkout = str(make_checkout(tmp_path / "ArtiMuse"))
    cfg["purify"]["aesthetics"]["predictors"]["artimuse"]["upstream"] = checkout
    cfg["caption"]["aesthetics"].update(backend="artimuse", artimuse={"upstream": checkout, "template": "internvl2_5"})
    check_config(cfg)  # a checkout: both steps pass
    cfg["caption"]["aesthetics"]["artimuse"]["template"] = "internvl9"
    with pytest.raises(ValueError, match=r"caption\.aesthetics\.artimuse\.upstream: conversation template 'internvl9'"):
        check_config(cfg)
    # the demo and the e2e configs use no ArtiMuse checkout and still pass (load_config runs check_config)
    load_config(
        repo_root / "config.yaml", repo_root / "configs" / "demo.yaml", repo_root / "tests" / "e2e" / "config.yaml"
    )
