"""Dataset importers, and how the source rules feed the index (DAG wiring, fail-fast keys)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pixverve.collect.imports import import_dataset
from pixverve.core.config import load_yaml

ROOT = Path(__file__).resolve().parent.parent


def _dataset(tmp_path: Path, metadata_name: str, rows: list[dict]) -> Path:
    folder = tmp_path / "ds"
    (folder / "imgs").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "b.jpg"]):
        Image.fromarray(np.full((60, 80, 3), 40 * i, np.uint8)).save(folder / "imgs" / name)
    path = folder / metadata_name
    if metadata_name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        keys = list(rows[0])
        path.write_text(",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows))
    return folder


def _config(folder: Path) -> dict:
    config = load_yaml(ROOT / "config.yaml")
    config["sources"]["roots"] = [
        {"name": "ds", "path": str(folder), "source": "ds", "licence": "root licence", "scan": False}
    ]
    return config


def test_ultrahr_preset_reads_the_diffsynth_layout_and_checks_every_file(tmp_path):
    """UltraHR-100K as the PixVerve authors' L2P training reads it: ``metadata.csv`` (image, prompt)
    beside ``images/``, paths relative to ``images/``."""
    folder = tmp_path / "ds"
    (folder / "images" / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "sub/b.jpg"]):
        Image.fromarray(np.full((60, 80, 3), 40 * i, np.uint8)).save(folder / "images" / name)
    rows = [
        ("a.jpg", "a dark square"),
        ("sub/b.jpg", "a grey square, with a comma"),
        ("missing.jpg", "gone"),
        ("a.jpg", "again"),
        ("../../../etc/passwd", "escape"),
    ]
    with open(folder / "metadata.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "prompt"), *rows])
    table, manifest = import_dataset(
        "ultrahr_100k", {"preset": "ultrahr_100k", "root": "ds"}, _config(folder), tmp_path, log=lambda *_: None
    )
    by_path = table.set_index("relpath", drop=False)
    assert list(table["reason"]) == ["", "", "missing_file", "listed_twice", "outside_roots"]
    assert by_path.loc["images/sub/b.jpg"]["caption"] == "a grey square, with a comma"
    assert set(table["licence"]) == {"UltraHR-100K licence: see the dataset card"}
    assert [m["path"] for m in manifest] == ["images/a.jpg", "images/sub/b.jpg"]
    assert {m["source"] for m in manifest} == {"ultrahr_100k"}
    # a copy laid out differently: the keys say where the paths start and which columns to read
    (folder / "flat.jsonl").write_text(json.dumps({"file_name": "images/a.jpg", "caption": "x"}) + "\n")
    spec = {"preset": "ultrahr_100k", "root": "ds", "metadata": str(folder / "flat.jsonl"), "images_dir": ""}
    with pytest.raises(
        ValueError, match=r"path -> 'image'.*caption -> 'prompt'.* the file has \['caption', 'file_name'\]"
    ):
        import_dataset("u", spec, _config(folder), tmp_path, log=lambda *_: None)
    spec["columns"] = {"path": "file_name", "caption": "caption"}
    table, _ = import_dataset("u", spec, _config(folder), tmp_path, log=lambda *_: None)
    assert list(table["relpath"]) == ["images/a.jpg"] and list(table["passed"]) == [True]


def test_aesthetic_preset_reads_file_name_and_text_from_metadata_jsonl(tmp_path):
    """Aesthetic-Train-V2 as the Diffusion-4K authors' training script reads it."""
    folder = _dataset(
        tmp_path,
        "metadata.jsonl",
        [{"file_name": "imgs/a.jpg", "text": "a dark square"}, {"file_name": "imgs/b.jpg", "text": "a grey square"}],
    )
    table, manifest = import_dataset(
        "a", {"preset": "aesthetic_train_v2", "root": "ds"}, _config(folder), tmp_path, log=lambda *_: None
    )
    assert list(table["caption"]) == ["a dark square", "a grey square"] and all(table["passed"])
    assert [m["path"] for m in manifest] == ["imgs/a.jpg", "imgs/b.jpg"]


def test_generic_csv_with_a_column_mapping_and_a_clear_error_for_a_wrong_one(tmp_path):
    folder = _dataset(
        tmp_path,
        "meta.csv",
        [
            {"file": "imgs/a.jpg", "text": "first", "lic": "CC-BY-4.0", "by": "Ann"},
            {"file": "imgs/b.jpg", "text": "second", "lic": "", "by": "Bob"},
        ],
    )
    spec = {
        "preset": "generic",
        "root": "ds",
        "metadata": str(folder / "meta.csv"),
        "columns": {"path": "file", "caption": "text", "licence": "lic", "author": "by"},
    }
    table, manifest = import_dataset("mine", spec, _config(folder), tmp_path, log=lambda *_: None)
    assert list(table["caption"]) == ["first", "second"] and table["passed"].all()
    assert [m["licence"] for m in manifest] == ["CC-BY-4.0", "root licence"]  # empty cell: the root's licence
    bad = dict(spec, columns={"path": "filename"})
    with pytest.raises(
        ValueError, match=r"'filename'.*the file has \['by', 'file', 'lic', 'text'\].*imports.mine.columns"
    ):
        import_dataset("mine", bad, _config(folder), tmp_path)


def _workflow_with(tmp_path: Path, overlay: dict) -> subprocess.CompletedProcess:
    from conftest import copy_workflow

    if not (tmp_path / "Snakefile").exists():
        copy_workflow(tmp_path)
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "--configfile",
            "configs/demo.yaml",
            "overlay.yaml",
            "--quiet",
            "rules",
            "--",
            "results/index/index.parquet",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


def test_enabled_collectors_and_imports_feed_the_index(tmp_path):
    (tmp_path / "data/raw/pexels").mkdir(parents=True)
    (tmp_path / "data/ds").mkdir(parents=True)
    (tmp_path / "data/ds/metadata.jsonl").write_text("")
    overlay = {
        "sources": {
            "roots": [
                {"name": "pexels", "path": "data/raw/pexels", "source": "pexels", "licence": "Pexels License"},
                {"name": "ds", "path": "data/ds", "source": "ds", "licence": "x", "scan": False},
                {
                    "name": "synthetic",
                    "path": "data/synthetic",
                    "source": "synthetic",
                    "licence": "generated",
                    "scan": False,
                },
            ],
            "manifests": [],
            "demo_pool": False,
        },
        "collect": {
            "enabled": ["pexels"],
            "pexels": {"terms_acknowledgement": "written permission from Pexels (test)"},
        },
        "imports": {"aesthetic_train_v2": {"preset": "aesthetic_train_v2", "root": "ds"}},
        "synthetic": {"enabled": True, "backend": "tiny"},
    }
    res = _workflow_with(tmp_path, overlay)
    assert res.returncode == 0, res.stderr + res.stdout
    jobs = dict(
        line.split()
        for line in res.stdout.splitlines()
        if line.strip() and line.split()[-1].isdigit() and len(line.split()) == 2
    )
    assert jobs.get("collect") == "1" and jobs.get("import_dataset") == "1" and jobs.get("index") == "1"
    assert jobs.get("synth_prompts") == "1" and jobs.get("synth_render") == "1"
    # no acknowledgement of the source's terms: the DAG stops before any job, naming the key
    overlay["collect"]["pexels"] = {"terms_acknowledgement": None}
    res = _workflow_with(tmp_path, overlay)
    assert res.returncode != 0 and "collect.pexels.terms_acknowledgement is not set" in res.stderr + res.stdout
    overlay["collect"]["pexels"] = {
        "terms_acknowledgement": "written permission from Pexels (test)",
        "root": "nowhere",
        "api_base": "https://api.pexels.com/v1",
        "api_key_env": "K",
        "per_page": 80,
        "max_pages": 1,
    }
    res = _workflow_with(tmp_path, overlay)
    assert (
        res.returncode != 0 and "collect.pexels.root: 'nowhere' is not one of sources.roots" in res.stderr + res.stdout
    )
