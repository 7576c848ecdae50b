"""Pexels / Unsplash collectors against a local server that serves the documented shapes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_photo_api import FakePhotoAPI  # noqa: E402

from pixverve.collect import CollectorConfigError, collect, write_manifest  # noqa: E402
from pixverve.config import load_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-SECRET-4242"
# ids -> real file size.  Page layout: "13" is listed on pages 1 and 2 (listings shift).
PHOTOS = {"11": (400, 300), "12": (420, 320), "13": (380, 300), "14": (100, 80), "15": (300, 400), "16": (440, 330), "17": (400, 310)}
PAGES = [["11", "12", "13"], ["13", "14", "15"], ["16", "17"]]


def _config(tmp_path: Path, base: str, source: str) -> dict:
    config = load_yaml(ROOT / "config.yaml")
    config["target_megapixels"] = 0.25  # criterion (i): > 0.0625 MP, short side >= 150 px
    config["sources"]["roots"] = [{"name": source, "path": str(tmp_path / source), "source": source, "licence": "", "scan": True}]
    api_base = f"{base}/pexels/v1" if source == "pexels" else f"{base}/unsplash"
    config["collect"][source].update(api_base=api_base, root=source, queries=["mountains"], max_pages=10)
    config["collect"]["http"].update(backoff_s=0.01, max_backoff_s=0.05, max_rate_wait_s=2)
    return config


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    monkeypatch.setenv("PEXELS_API_KEY", KEY)
    monkeypatch.setenv("UNSPLASH_ACCESS_KEY", KEY)


def _run(tmp_path, server, source="pexels", logs=None):
    config = _config(tmp_path, server.base, source)
    lines = logs if logs is not None else []
    table, manifest = collect(source, config, tmp_path, log=lines.append)
    return table, manifest


@pytest.mark.parametrize("source", ["pexels", "unsplash"])
def test_collects_every_page_screens_before_downloading_and_records_attribution(tmp_path, source):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        table, manifest = _run(tmp_path, server, source)
        search = "/pexels/v1/search" if source == "pexels" else "/unsplash/search/photos"
        assert server.counts[search] == 3  # paginated to the end, not beyond
        assert server.downloads("14") == 0  # 100x80: screened out from the API's numbers
        assert all(server.downloads(p) == 1 for p in PHOTOS if p != "14")  # "13" on two pages: once
        if source == "unsplash":
            assert all(server.counts.get(f"/unsplash/track/{p}") == 1 for p in PHOTOS if p != "14")
        # the key went to the API host only, never to the image CDN
        assert server.auth_seen[search] == {KEY if source == "pexels" else f"Client-ID {KEY}"}
        assert all(server.auth_seen[f"/img/{p}.jpg"] == {""} for p in PHOTOS if p != "14")
    assert sorted(table["photo_id"]) == sorted(PHOTOS) and table["photo_id"].is_unique
    small = table.set_index("photo_id").loc["14"]
    assert not small["passed"] and small["reason"] == "below_min_pixels" and small["relpath"] == ""
    kept = table[table["passed"]]
    assert len(kept) == 6 and all((tmp_path / source / r).is_file() for r in kept["relpath"])
    assert set(kept["licence"]) == {"Pexels License" if source == "pexels" else "Unsplash License"}
    assert kept.set_index("photo_id").loc["11", "attribution"] == f"Photo by Author 11 on {source.capitalize()}"
    assert len(manifest) == 6 and {m["author"] for m in manifest} >= {"Author 11"}
    assert not list((tmp_path / source).glob(".*.download*"))  # no temp files left


def test_429_retry_after_and_500_then_success(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.rate_limit_once.add("/pexels/v1/search")
        server.fail_once.add("/img/12.jpg")
        t0 = time.monotonic()
        logs: list[str] = []
        table, _ = _run(tmp_path, server, logs=logs)
        assert time.monotonic() - t0 >= 1.0  # Retry-After: 1 was obeyed
        assert server.counts["/img/12.jpg"] == 2
    assert table.set_index("photo_id").loc["12", "passed"]
    assert any("429" in line and "waiting 1.0 s" in line for line in logs)


def test_rate_limit_headers_make_it_wait_for_the_reset(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.remaining_sequence = [0]  # the first listing uses up the quota; reset in ~1 s
        logs: list[str] = []
        _run(tmp_path, server, logs=logs)
    assert any("rate limit used up" in line for line in logs)


def test_truncated_download_and_wrong_size_are_rejected_with_reasons(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.truncate.add("15")
        server.lie_size.add("16")
        table, manifest = _run(tmp_path, server)
        assert server.downloads("15") == 1 + 5  # retried (retries: 5), still short
    rows = table.set_index("photo_id")
    assert rows.loc["15", "reason"] == "truncated" and "bytes" in rows.loc["15", "reason_detail"]
    assert rows.loc["16", "reason"] == "size_mismatch" and "448x330" in rows.loc["16", "reason_detail"]
    assert not (tmp_path / "pexels" / "15.jpg").exists() and not (tmp_path / "pexels" / "16.jpg").exists()
    assert {m["path"] for m in manifest} == {"11.jpg", "12.jpg", "13.jpg", "17.jpg"}


def test_missing_key_fails_fast_with_the_variable_name(tmp_path, monkeypatch):
    monkeypatch.delenv("PEXELS_API_KEY")
    config = _config(tmp_path, "http://127.0.0.1:9", "pexels")
    with pytest.raises(CollectorConfigError, match="PEXELS_API_KEY is not set"):
        collect("pexels", config, tmp_path)


def test_killed_run_resumes_without_redownloading_or_duplicating(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.slow_image_s = 0.4
        config = _config(tmp_path, server.base, "pexels")
        (tmp_path / "config.json").write_text(json.dumps(config))
        code = (
            "import json, sys; from pixverve.collect import collect; "
            f"collect('pexels', json.load(open({str(tmp_path / 'config.json')!r})), {str(tmp_path)!r})"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), stderr=subprocess.DEVNULL)
        journal = tmp_path / "pexels" / ".collect-pexels.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and len(journal.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = {json.loads(line)["photo_id"] for line in journal.read_text().splitlines()}
        assert 2 <= len(done_before) < len(PHOTOS)  # killed in the middle
        server.slow_image_s = 0.0
        table, manifest = collect("pexels", config, tmp_path, log=lambda *_: None)
        for pid in done_before - {"14"}:
            assert server.downloads(pid) == 1, pid  # finished files are not fetched again
    assert sorted(table["photo_id"]) == sorted(PHOTOS) and table["photo_id"].is_unique
    assert len(manifest) == 6
    assert not list((tmp_path / "pexels").glob(".*.download*"))


def test_the_key_is_in_no_file_or_log(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.fail_once.add("/pexels/v1/search")
        logs: list[str] = []
        table, manifest = _run(tmp_path, server, logs=logs)
    table.to_parquet(tmp_path / "table.parquet")
    write_manifest(manifest, tmp_path / "manifest.csv")
    (tmp_path / "log.txt").write_text("\n".join(logs))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in "".join(map(str, table.astype(str).values.ravel()))


def test_collected_files_go_through_the_index_with_their_metadata(tmp_path):
    from pixverve.index import discover

    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        config = _config(tmp_path, server.base, "pexels")
        _, manifest = collect("pexels", config, tmp_path, log=lambda *_: None)
    write_manifest(manifest, tmp_path / "m.csv")
    config["sources"]["manifests"] = [{"path": str(tmp_path / "m.csv"), "root": "pexels"}]
    found = {c.relpath: c for c in discover(config, tmp_path, log=lambda *_: None)}
    assert sorted(found) == ["11.jpg", "12.jpg", "13.jpg", "15.jpg", "16.jpg", "17.jpg"]  # no journal, no temp files
    c = found["11.jpg"]
    assert (c.source, c.licence, c.author, c.url) == ("pexels", "Pexels License", "Author 11", "https://www.pexels.com/photo/11/")
    assert pd.notna(c.abspath)


def test_audit_shows_an_images_collection_record(tmp_path):
    from pixverve.audit import audit

    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        table, _ = _run(tmp_path, server)
    results = tmp_path / "results"
    (results / "collect").mkdir(parents=True)
    (results / "index").mkdir()
    table.to_parquet(results / "collect" / "pexels.parquet")
    index = pd.DataFrame([{"image_id": "ab" * 8, "root": "pexels", "relpath": "12.jpg", "source": "pexels",
                           "licence": "Pexels License", "shard": "s00000", "passed": True}])
    index.to_parquet(results / "index" / "index.parquet")
    import io

    out = io.StringIO()
    audit(results, "12.jpg", out=out)
    text = out.getvalue()
    assert "== collect  [collect/pexels.parquet]  PASSED  pexels/12.jpg" in text and "Author 12" in text
    assert "Author 11" not in text  # only this image's row
