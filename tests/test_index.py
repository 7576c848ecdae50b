"""Index: roots, manifests, path containment, content ids, the hash cache, shards."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from pixverve.ingest import index as ix


def _config(root, manifests=(), scan=True, per_shard=2):
    return {
        "sources": {
            "roots": [{"name": "r", "path": str(root), "source": "test", "licence": "CC0", "scan": scan}],
            "manifests": list(manifests),
            "extensions": [".jpg", ".png"],
        },
        "io": {"max_megapixels": 5, "alpha_background": [255, 255, 255]},
        "shards": {"images_per_shard": per_shard},
    }


def _img(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(path)


def test_scan_ids_shards_and_ignored_extensions(tmp_path):
    root = tmp_path / "pool"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        _img(root / "sub" / f"{i}.png", i)
    (root / "readme.txt").write_text("ignored")
    logs = []
    df = ix.build_index(_config(root), tmp_path, threads=2, log=logs.append)
    assert len(df) == 5 and df["passed"].all()
    assert any(".txt" in line for line in logs)  # ignored files are reported, not silently dropped
    assert df["image_id"].str.len().eq(16).all()
    assert df["image_id"].tolist() == sorted(df["image_id"])
    assert df["shard"].value_counts().sort_index().tolist() == [2, 2, 1]
    assert set(df["relpath"]) == {f"sub/{i}.png" for i in range(5)}
    assert (df[["width", "height"]].to_numpy() == [30, 20]).all()


def test_manifest_paths_must_stay_inside_root(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    _img(root / "ok.png", 1)
    _img(tmp_path / "secret.png", 2)
    os.symlink(tmp_path / "secret.png", root / "link.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,source,licence,url,author\n"
        "ok.png,pexels,Pexels License,https://x/1,Ann\n"
        "../secret.png,x,,,\n"
        "link.png,x,,,\n"
        "/etc/passwd,x,,,\n"
        "gone.png,x,,,\n"
    )
    df = ix.build_index(
        _config(root, [{"path": str(manifest), "root": "r"}], scan=False), tmp_path, log=lambda *_: None
    )
    by = df.set_index("relpath")
    assert by.loc["ok.png", "passed"] and by.loc["ok.png", "author"] == "Ann" and by.loc["ok.png", "source"] == "pexels"
    assert by.loc["../secret.png", "reason"] == "outside_roots"
    assert by.loc["link.png", "reason"] == "outside_roots"  # a symlink out of the root is refused too
    assert by.loc["/etc/passwd", "reason"] == "outside_roots"
    assert by.loc["gone.png", "reason"] == "missing_file"
    assert (df.loc[~df["passed"], "shard"] == "").all()


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="source root 'r'"):
        ix.build_index(_config(tmp_path / "nope"), tmp_path, log=lambda *_: None)


def test_byte_identical_files_share_an_id(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    _img(root / "a.png", 7)
    (root / "b.png").write_bytes((root / "a.png").read_bytes())
    df = ix.build_index(_config(root), tmp_path, log=lambda *_: None)
    assert df["image_id"].nunique() == 1 and len(df) == 2


def test_hash_cache_resumes_without_rereading(tmp_path, monkeypatch):
    root = tmp_path / "pool"
    root.mkdir()
    for i in range(4):
        _img(root / f"{i}.png", i)
    cache = tmp_path / "cache.tsv"
    first = ix.build_index(_config(root), tmp_path, cache_path=cache, log=lambda *_: None)
    # simulate a job killed while writing: a torn last line must be ignored
    with open(cache, "a") as fh:
        fh.write("/some/path\t12\t34\tabc")
    calls = []
    real = ix.file_sha256
    monkeypatch.setattr(ix, "file_sha256", lambda p: calls.append(p) or real(p))
    _img(root / "new.png", 99)
    second = ix.build_index(_config(root), tmp_path, cache_path=cache, log=lambda *_: None)
    assert [p.name for p in calls] == ["new.png"]  # only the new file was hashed
    assert set(first["image_id"]) < set(second["image_id"])


def test_write_shards(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    for i in range(3):
        _img(root / f"{i}.png", i)
    (root / "bad.png").write_bytes(b"")
    df = ix.build_index(_config(root), tmp_path, log=lambda *_: None)
    names = ix.write_shards(df, tmp_path / "index.parquet", tmp_path / "shards")
    assert names == ["s00000", "s00001"]
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "shards" / "s00000.parquet")) == 2
    assert len(pd.read_parquet(tmp_path / "index.parquet")) == 4


def test_paths_the_scan_cannot_resolve_or_read_are_rows(tmp_path, monkeypatch):
    """A symlink loop crashed the whole index (RuntimeError: Symlink loop); every odd path is a row."""
    root = tmp_path / "pool"
    (root / "locked").mkdir(parents=True)
    _img(root / "ok.png", 1)
    _img(root / "locked" / "hidden.png", 2)
    _img(root / "noread.png", 3)
    os.symlink(root / "b.png", root / "a.png")  # a.png -> b.png -> a.png
    os.symlink(root / "a.png", root / "b.png")
    os.symlink(root / "gone.png", root / "dangling.png")
    # no permission: chmod does not stop root (the CI user), so the denials are injected
    real_scandir, real_sha = os.scandir, ix.file_sha256

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    def sha(path):
        if path.name == "noread.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real_sha(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(ix, "file_sha256", sha)
    df = ix.build_index(_config(root), tmp_path, log=lambda *_: None)
    by = df.set_index("relpath")
    assert by.loc["ok.png", "passed"]
    assert by.loc["a.png", "reason"] == "unresolvable" and by.loc["b.png", "reason"] == "unresolvable"
    assert "loop" in by.loc["a.png", "reason_detail"].lower()
    assert by.loc["dangling.png", "reason"] == "unreadable"
    assert (
        by.loc["noread.png", "reason"] == "unreadable" and "Permission denied" in by.loc["noread.png", "reason_detail"]
    )
    assert by.loc["locked", "reason"] == "unreadable" and "not listable" in by.loc["locked", "reason_detail"]
    assert (df.loc[~df["passed"], "shard"] == "").all()
    # the same loop listed in a manifest
    manifest = tmp_path / "loop.csv"
    manifest.write_text("path,source,licence,url,author\na.png,x,,,\nok.png,x,,,\n")
    listed = ix.build_index(
        _config(root, [{"path": str(manifest), "root": "r"}], scan=False), tmp_path, log=lambda *_: None
    )
    assert listed.set_index("relpath").loc["a.png", "reason"] == "unresolvable" and listed["passed"].sum() == 1


def test_bundles_cut_sorted_shards_into_fixed_sizes():
    names = [f"s{i:05d}" for i in range(10)]
    bundles = ix.bundle_of_shards(list(reversed(names)), 4)  # the order given does not matter
    assert bundles == {"b00000": names[:4], "b00001": names[4:8], "b00002": names[8:]}
    assert ix.bundle_of_shards(names, 8) == {"b00000": names[:8], "b00001": names[8:]}
    assert ix.bundle_of_shards([], 8) == {}
    with pytest.raises(ValueError, match=">= 1"):
        ix.bundle_of_shards(names, 0)
