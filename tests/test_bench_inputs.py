"""Benchmark JSONL and pairing by basename: a missing pair is an error that lists it."""

from __future__ import annotations

import json

import pytest

from pixverve.bench.inputs import PairingError, compression_ratio, pair_method, read_benchmark


def _bench(tmp_path, names, generated):
    (tmp_path / "real").mkdir()
    (tmp_path / "gen").mkdir()
    rows = [{"file_name": f"{n}.jpg", "short_caption": f"s {n}", "long_caption": f"l {n}"} for n in names]
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for n in names:
        (tmp_path / "real" / f"{n}.jpg").write_bytes(b"x" * 10)
    for g in generated:
        (tmp_path / "gen" / g).write_bytes(b"y" * 5)
    return read_benchmark(tmp_path / "bench.jsonl")


def test_pairs_by_basename_whatever_the_extension(tmp_path):
    rows = _bench(tmp_path, ["a", "b"], ["a.png", "b.jpg", "notes.txt"])
    items = pair_method(rows, tmp_path / "real", tmp_path / "gen")
    assert [(i.name, i.generated.name, i.short_caption) for i in items] == [
        ("a", "a.png", "s a"),
        ("b", "b.jpg", "s b"),
    ]


def test_missing_and_extra_pairs_are_listed(tmp_path):
    rows = _bench(tmp_path, ["a", "b", "c"], ["a.jpg", "zz.jpg"])
    with pytest.raises(
        PairingError,
        match=r"2 benchmark image\(s\) have no generated image.*\['b', 'c'\].*match no benchmark row: \['zz'\]",
    ):
        pair_method(rows, tmp_path / "real", tmp_path / "gen")


def test_bad_jsonl_and_compression_ratio(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"file_name": "a.jpg", "short_caption": "x"}) + "\n")
    with pytest.raises(PairingError, match="long_caption"):
        read_benchmark(tmp_path / "b.jsonl")
    f = tmp_path / "x.jpg"
    f.write_bytes(b"z" * 300)
    assert compression_ratio([f, f], 10) == pytest.approx(10 * 10 * 3 * 2 / 600)
