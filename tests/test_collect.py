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

from pixverve.collect.sources import CollectorConfigError, QuotaExhausted, collect, write_manifest  # noqa: E402
from pixverve.core.config import load_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-SECRET-4242"
# ids -> real file size.  Page layout: "13" is listed on pages 1 and 2 (listings shift).
PHOTOS = {
    "11": (400, 300),
    "12": (420, 320),
    "13": (380, 300),
    "14": (100, 80),
    "15": (300, 400),
    "16": (440, 330),
    "17": (400, 310),
}
PAGES = [["11", "12", "13"], ["13", "14", "15"], ["16", "17"]]


ACK = "test permission: local stand-in server, fake photos only"


class FakeClock:
    """UNIX time that moves only when the collector sleeps: hours of pacing in no real time."""

    def __init__(self):
        self.now = time.time()
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)


def _config(tmp_path: Path, base: str, source: str) -> dict:
    config = load_yaml(ROOT / "config.yaml")
    config["target_megapixels"] = 0.25  # criterion (i): > 0.0625 MP, short side >= 150 px
    config["sources"]["roots"] = [
        {"name": source, "path": str(tmp_path / source), "source": source, "licence": "", "scan": True}
    ]
    api_base = f"{base}/pexels/v1" if source == "pexels" else f"{base}/unsplash"
    config["collect"][source].update(
        api_base=api_base, root=source, queries=["mountains"], max_pages=10, terms_acknowledgement=ACK
    )
    config["collect"]["http"].update(backoff_s=0.01, max_backoff_s=0.05, max_rate_wait_s=2)
    return config


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    monkeypatch.setenv("PEXELS_API_KEY", KEY)
    monkeypatch.setenv("UNSPLASH_ACCESS_KEY", KEY)


def _run(tmp_path, server, source="pexels", logs=None, clock=None, config=None):
    config = config or _config(tmp_path, server.base, source)
    lines = logs if logs is not None else []
    kw = {"clock": clock.time, "sleep": clock.sleep} if clock else {}
    table, manifest = collect(source, config, tmp_path, log=lines.append, **kw)
    return table, manifest


def _paced_config(tmp_path, server, source):
    config = _config(tmp_path, server.base, source)
    config["collect"]["http"]["max_rate_wait_s"] = 3600  # the default
    return config


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
        # identity: the server would send gzip otherwise, and the byte check would count decoded bytes
        assert all(server.encoding_seen[p] == {"identity"} for p in PHOTOS if p != "14")
    assert sorted(table["photo_id"]) == sorted(PHOTOS) and table["photo_id"].is_unique
    assert set(table["terms_acknowledgement"]) == {ACK}
    small = table.set_index("photo_id").loc["14"]
    assert not small["passed"] and small["reason"] == "below_min_pixels" and small["relpath"] == ""
    kept = table[table["passed"]]
    assert len(kept) == 6 and all((tmp_path / source / r).is_file() for r in kept["relpath"])
    assert set(kept["licence"]) == {"Pexels License" if source == "pexels" else "Unsplash License"}
    assert kept.set_index("photo_id").loc["11", "attribution"] == f"Photo by Author 11 on {source.capitalize()}"
    assert len(manifest) == 6 and {m["author"] for m in manifest} >= {"Author 11"}
    assert not list((tmp_path / source).glob(".*.download*"))  # no temp files left


def test_429_retry_after_and_500_then_success(tmp_path):
    clock = FakeClock()
    with FakePhotoAPI(PHOTOS, PAGES, KEY, clock=clock.time) as server:
        server.rate_limit_once.add("/pexels/v1/search")
        server.fail_once.add("/img/12.jpg")
        logs: list[str] = []
        table, _ = _run(tmp_path, server, logs=logs, clock=clock)
        assert server.counts["/img/12.jpg"] == 2 and server.counts["/pexels/v1/search"] == 1 + 3
    assert 1.0 in clock.slept  # Retry-After: 1 was obeyed
    assert table.set_index("photo_id").loc["12", "passed"]
    assert any("429" in line and "Retry-After 1.0 s" in line for line in logs)


def test_the_stand_in_server_compresses_images_unless_asked_not_to():
    import requests

    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        resp = requests.get(f"{server.base}/img/11.jpg", stream=True)  # requests asks for gzip by default
        raw = resp.raw.read(decode_content=False)
        assert resp.headers["Content-Encoding"] == "gzip" and int(resp.headers["Content-Length"]) == len(raw)
        assert len(b"".join(requests.get(f"{server.base}/img/11.jpg").iter_content(65536))) != len(raw)


def test_the_stand_in_server_answers_limits_as_the_real_ones_do():
    import requests

    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.hourly_limit.update(pexels=1, unsplash=1)
        pexels, unsplash = f"{server.base}/pexels/v1/search", f"{server.base}/unsplash/search/photos"
        ok = requests.get(pexels, params={"query": "x"}, headers={"Authorization": KEY})
        assert float(ok.headers["X-Ratelimit-Reset"]) > time.time() + 86400  # a UNIX time, weeks away
        over = requests.get(pexels, params={"query": "x"}, headers={"Authorization": KEY})
        assert over.status_code == 429 and not any(
            h.lower().startswith(("x-ratelimit", "retry-after")) for h in over.headers
        )
        ok = requests.get(unsplash, params={"query": "x"}, headers={"Authorization": f"Client-ID {KEY}"})
        assert ok.headers["X-Ratelimit-Remaining"] == "0" and "X-Ratelimit-Reset" not in ok.headers
        over = requests.get(unsplash, params={"query": "x"}, headers={"Authorization": f"Client-ID {KEY}"})
        assert (over.status_code, over.text) == (403, "Rate Limit Exceeded")


def test_refuses_to_start_without_a_terms_acknowledgement(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        for source in ("pexels", "unsplash"):
            config = _config(tmp_path, server.base, source)
            for value in (
                None,
                "",
                "yes",
                "  True ",
                "no",
                "none",
                "n/a",
                "-",
                "sure",
                "I do not have permission",
                "TBD",
                "edit_me",
                "yes I agree to the terms",
                "written permission from <source>, <date>",
                "permission: none yet",
                "licence without a contract",
            ):
                config["collect"][source]["terms_acknowledgement"] = value
                with pytest.raises(CollectorConfigError, match=f"collect.{source}.terms_acknowledgement") as err:
                    collect(source, config, tmp_path, log=lambda *_: None)
                assert ("Pexels" if source == "pexels" else "unsplash.com/data") in str(err.value)
                # says what to write
                assert f'"written permission from {source.capitalize()}, 2026-05-01, ticket 1234"' in str(err.value)
                assert "at least 3 words" in str(err.value)
        assert server.counts == {}  # not one request went out
        assert not (tmp_path / "pexels").exists()


def test_terms_acknowledgement_rule_says_why_and_accepts_real_statements():
    from pixverve.collect.terms import terms_acknowledgement

    def why(value):
        with pytest.raises(CollectorConfigError) as err:
            terms_acknowledgement({"terms_acknowledgement": value}, "pexels")
        return str(err.value)

    assert "contains 'not'" in why("I do not have permission")
    assert "contains 'n/a'" in why("n/a")
    assert "fewer than 3" in why("sure") and "fewer than 3" in why("-")
    assert "names no permission" in why("yes I agree to the terms")
    assert "<...> placeholder" in why("written permission from Pexels, <date>, <reference>")
    for ok in (
        ACK,
        "written permission from Pexels (test)",  # the value tests/test_imports.py sets
        "written permission from Pexels, 2026-05-01, ticket 1234",
        "Unsplash+ data licence, contract 77",
        "  approved by Pexels support by email, 2026-05-01 ",
    ):
        assert terms_acknowledgement({"terms_acknowledgement": ok}, "pexels") == ok.strip()


def test_pacing_keeps_pexels_under_its_hourly_limit(tmp_path):
    clock = FakeClock()
    with FakePhotoAPI(PHOTOS, PAGES, KEY, clock=clock.time) as server:
        server.hourly_limit["pexels"] = 3
        config = _paced_config(tmp_path, server, "pexels")
        config["collect"]["pexels"]["hourly_limit"] = 3
        logs: list[str] = []
        table, manifest = _run(tmp_path, server, logs=logs, clock=clock, config=config)
        assert server.counts["/pexels/v1/search"] == 3 and server.counts["/pexels/v1/curated"] == 3
        assert server.refused == {}  # 6 listing calls, 3 an hour: never over the limit
    assert len(manifest) == 6
    assert any("hourly_limit = 3" in line for line in logs)


def test_unsplash_pacing_counts_download_location_calls(tmp_path):
    clock = FakeClock()
    with FakePhotoAPI(PHOTOS, PAGES, KEY, clock=clock.time) as server:
        server.hourly_limit["unsplash"] = 5
        config = _paced_config(tmp_path, server, "unsplash")
        config["collect"]["unsplash"]["hourly_limit"] = 5
        table, manifest = _run(tmp_path, server, "unsplash", clock=clock, config=config)
        tracks = sum(n for path, n in server.counts.items() if path.startswith("/unsplash/track/"))
        assert tracks == 6 and server.refused == {}  # 3 search + 4 list pages + 6 tracks at 5 an hour
    assert len(manifest) == 6


def test_unsplash_403_rate_limit_exceeded_waits_like_a_429(tmp_path):
    clock = FakeClock()
    with FakePhotoAPI(PHOTOS, PAGES, KEY, clock=clock.time) as server:
        server.hourly_limit["unsplash"] = 5
        server.served["unsplash"] = [clock.now - 60] * 5  # another user of the key spent this hour's calls
        config = _paced_config(tmp_path, server, "unsplash")
        logs: list[str] = []
        table, manifest = _run(tmp_path, server, "unsplash", logs=logs, clock=clock, config=config)
        assert server.refused == {"/unsplash/search/photos": 1}  # 403 "Rate Limit Exceeded" once, then waited
    assert len(manifest) == 6 and table["passed"].sum() == 6
    assert any("HTTP 403 (rate limit)" in line for line in logs)
    assert max(clock.slept) <= 3600


def test_a_real_403_stops_with_a_clear_error(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.forbidden = True
        with pytest.raises(RuntimeError, match="HTTP 403 .*check the API key"):
            _run(tmp_path, server, "unsplash")
        assert server.counts["/unsplash/search/photos"] == 1  # not retried


def test_pexels_429_without_headers_waits_for_the_hour(tmp_path):
    clock = FakeClock()
    with FakePhotoAPI(PHOTOS, PAGES, KEY, clock=clock.time) as server:
        server.hourly_limit["pexels"] = 2
        config = _paced_config(tmp_path, server, "pexels")
        config["collect"]["pexels"]["hourly_limit"] = None  # the 429 (no Retry-After, no rate headers) paces it
        logs: list[str] = []
        _, manifest = _run(tmp_path, server, logs=logs, clock=clock, config=config)
        assert server.refused.get("/pexels/v1/search", 0) + server.refused.get("/pexels/v1/curated", 0) >= 1
    assert len(manifest) == 6
    assert any("HTTP 429 (rate limit)" in line and "hourly window" in line for line in logs)


def test_pexels_429_after_plenty_was_left_waits_the_hour_once_then_stops_with_the_monthly_reset(tmp_path):
    import datetime as dt

    clock = FakeClock()
    with FakePhotoAPI(PHOTOS, PAGES, KEY, clock=clock.time) as server:
        server.monthly_limit = 5000
        server.month_reset = clock.now + 10 * 86400
        server.month_spent_elsewhere_after = 1  # page 1 says 4,999 left; then another user of the key spends them
        day = dt.datetime.fromtimestamp(server.month_reset, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        # 1. the hour does not fit max_rate_wait_s (2 s): stops at once, naming the hour and the last reset seen
        with pytest.raises(QuotaExhausted, match="hourly limit") as err:
            _run(tmp_path, server, clock=clock)
        assert f"Pexels last said it resets at {day}" in str(err.value)
        assert clock.slept == [] and server.refused == {"/pexels/v1/search": 1}
        # 2. the hour fits: waited once; the same 429 after it stops at once with the monthly reset, not "1.0 h"
        config = _paced_config(tmp_path, server, "pexels")
        with pytest.raises(QuotaExhausted, match="again after waiting for the hourly window") as err:
            _run(tmp_path, server, clock=clock, config=config)
        assert f"the monthly quota may be used up; Pexels last said it resets at {day}" in str(err.value)
        assert "h from now" not in str(err.value)
        assert server.refused == {"/pexels/v1/search": 2} and 3600 <= sum(clock.slept) < 3700
        # 3. a rerun before that reset stops at once: no request, no hour wasted
        counts, slept = dict(server.counts), list(clock.slept)
        with pytest.raises(QuotaExhausted, match=f"resets at {day}"):
            _run(tmp_path, server, clock=clock, config=config)
        assert server.counts == counts and clock.slept == slept
        # 4. after the reset the run carries on from the journal
        clock.now = server.month_reset + 60
        server.month_spent_elsewhere_after = None
        _, manifest = _run(tmp_path, server, clock=clock, config=config)
        assert server.refused == {"/pexels/v1/search": 2}
    assert len(manifest) == 6


def test_monthly_quota_beyond_max_wait_stops_at_once_with_the_reset_date(tmp_path):
    import datetime as dt

    clock = FakeClock()
    with FakePhotoAPI(PHOTOS, PAGES, KEY, clock=clock.time) as server:
        server.monthly_limit = 2
        server.month_reset = clock.now + 10 * 86400
        config = _paced_config(tmp_path, server, "pexels")
        with pytest.raises(QuotaExhausted, match="X-Ratelimit-Reset") as err:
            _run(tmp_path, server, clock=clock, config=config)
        day = dt.datetime.fromtimestamp(server.month_reset, dt.UTC).strftime("%Y-%m-%d")
        assert day in str(err.value) and "max_rate_wait_s" in str(err.value)
        assert server.counts["/pexels/v1/search"] == 2 and server.refused == {}  # stopped before asking again
        assert clock.slept == [] or max(clock.slept) < 1  # and did not wait for it
        # the call log outlives the run: a rerun before the reset stops without a request
        with pytest.raises(QuotaExhausted):
            _run(tmp_path, server, clock=clock, config=config)
        assert server.counts["/pexels/v1/search"] == 2
        journal = [
            json.loads(line) for line in (tmp_path / "pexels" / ".collect-pexels.jsonl").read_text().splitlines()
        ]
        assert [r["page"] for r in journal if r.get("kind") == "page"] == [1, 2]  # the work done is kept


def test_a_quota_that_frees_within_max_wait_is_waited_for(tmp_path):
    clock = FakeClock()
    with FakePhotoAPI(PHOTOS, PAGES, KEY, clock=clock.time) as server:
        server.monthly_limit = 2
        server.month_reset = clock.now + 600
        config = _paced_config(tmp_path, server, "pexels")
        _, manifest = _run(tmp_path, server, clock=clock, config=config)
        assert server.refused == {}
    assert len(manifest) == 6 and clock.now >= server.month_reset


def test_flagged_query_is_skipped_with_a_row_and_the_run_goes_on(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.flagged.add("forbidden words")
        config = _config(tmp_path, server.base, "pexels")
        config["collect"]["pexels"]["queries"] = ["forbidden words", "mountains"]
        table, manifest = _run(tmp_path, server, config=config)
        assert server.refused == {"/pexels/v1/search": 1}
        again, _ = _run(tmp_path, server, config=config)
        assert server.refused == {"/pexels/v1/search": 1}  # not asked again on a rerun
    flagged = table[table["reason"] == "query_flagged"]
    assert (
        len(flagged) == 1
        and flagged.iloc[0]["query"] == "forbidden words"
        and "410" in flagged.iloc[0]["reason_detail"]
    )
    assert len(manifest) == 6 and len(again) == len(table)


def test_unsplash_410_on_search_skips_that_query_with_a_row(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.flagged.add("forbidden words")
        config = _config(tmp_path, server.base, "unsplash")
        config["collect"]["unsplash"].update(queries=["forbidden words", "mountains"], list_pages=0)
        table, manifest = _run(tmp_path, server, "unsplash", config=config)
        assert server.refused == {"/unsplash/search/photos": 1} and server.counts["/unsplash/search/photos"] == 1 + 3
        _run(tmp_path, server, "unsplash", config=config)
        assert server.refused == {"/unsplash/search/photos": 1}  # not asked again on a rerun
    flagged = table[table["reason"] == "query_flagged"]
    assert len(flagged) == 1 and flagged.iloc[0]["query"] == "forbidden words"
    assert "HTTP 410" in flagged.iloc[0]["reason_detail"] and not flagged.iloc[0]["passed"]
    assert len(manifest) == 6


def test_unsplash_410_on_download_location_is_a_gone_row_and_the_run_goes_on(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.gone_tracks.add("12")
        table, manifest = _run(tmp_path, server, "unsplash")
        assert server.refused == {"/unsplash/track/12": 1} and server.counts["/unsplash/track/12"] == 1  # not retried
        assert server.downloads("12") == 0  # the photo itself is not fetched
        again, _ = _run(tmp_path, server, "unsplash")
        assert server.counts["/unsplash/track/12"] == 1  # a rerun does not ask again
    row = table.set_index("photo_id").loc["12"]
    assert not row["passed"] and row["reason"] == "gone" and row["relpath"] == ""
    assert "download_location" in row["reason_detail"] and "HTTP 410" in row["reason_detail"]
    assert {m["path"] for m in manifest} == {"11.jpg", "13.jpg", "15.jpg", "16.jpg", "17.jpg"}
    assert len(again) == len(table)


def test_resume_starts_after_the_finished_pages(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        config = _config(tmp_path, server.base, "pexels")
        config["collect"]["pexels"].update(max_pages=2, curated_pages=0)
        _run(tmp_path, server, config=config)
        assert server.counts["/pexels/v1/search"] == 2
        config["collect"]["pexels"]["max_pages"] = 10
        logs: list[str] = []
        _, manifest = _run(tmp_path, server, config=config, logs=logs)
        assert server.counts["/pexels/v1/search"] == 3  # only page 3 was asked for
        assert any("resuming at page 3" in line for line in logs)
        _run(tmp_path, server, config=config)
        assert server.counts["/pexels/v1/search"] == 3  # finished: no listing at all
        config["collect"]["pexels"]["size"] = "large"  # another listing: walked from page 1
        _run(tmp_path, server, config=config)
        assert server.counts["/pexels/v1/search"] == 6 and server.sizes_asked == [None] * 3 + ["large"] * 3
    assert len(manifest) == 6


def test_truncated_download_and_wrong_size_are_rejected_with_reasons(tmp_path):
    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        server.truncate.add("15")
        server.lie_size.add("16")
        server.missing.add("17")
        table, manifest = _run(tmp_path, server)
        assert server.downloads("15") == 1 + 5  # retried (retries: 5), still short
    rows = table.set_index("photo_id")
    assert rows.loc["17", "reason"] == "http_404" and not rows.loc["17", "passed"]  # a row, the run went on
    assert rows.loc["15", "reason"] == "truncated" and "bytes" in rows.loc["15", "reason_detail"]
    assert rows.loc["16", "reason"] == "size_mismatch" and "448x330" in rows.loc["16", "reason_detail"]
    assert not (tmp_path / "pexels" / "15.jpg").exists() and not (tmp_path / "pexels" / "16.jpg").exists()
    assert {m["path"] for m in manifest} == {"11.jpg", "12.jpg", "13.jpg"}


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
            "import json, sys; from pixverve.collect.sources import collect; "
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
        rows = [json.loads(line) for line in journal.read_text().splitlines()]
        done_before = {r["photo_id"] for r in rows if r.get("kind") != "page"}
        pages_before = [r["page"] for r in rows if r.get("kind") == "page"]
        assert 2 <= len(done_before) < len(PHOTOS)  # killed in the middle
        server.slow_image_s = 0.0
        listed_before = server.counts["/pexels/v1/search"]
        table, manifest = collect("pexels", config, tmp_path, log=lambda *_: None)
        for pid in done_before - {"14"}:
            assert server.downloads(pid) == 1, pid  # finished files are not fetched again
        # finished pages are not listed again
        assert server.counts["/pexels/v1/search"] - listed_before == len(PAGES) - len(pages_before)
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
    from pixverve.ingest.index import discover

    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        config = _config(tmp_path, server.base, "pexels")
        _, manifest = collect("pexels", config, tmp_path, log=lambda *_: None)
    write_manifest(manifest, tmp_path / "m.csv")
    config["sources"]["manifests"] = [{"path": str(tmp_path / "m.csv"), "root": "pexels"}]
    found = {c.relpath: c for c in discover(config, tmp_path, log=lambda *_: None)}
    assert sorted(found) == ["11.jpg", "12.jpg", "13.jpg", "15.jpg", "16.jpg", "17.jpg"]  # no journal, no temp files
    c = found["11.jpg"]
    assert (c.source, c.licence, c.author, c.url) == (
        "pexels",
        "Pexels License",
        "Author 11",
        "https://www.pexels.com/photo/11/",
    )
    assert pd.notna(c.abspath)


def test_audit_shows_an_images_collection_record(tmp_path):
    from pixverve.audit import audit

    with FakePhotoAPI(PHOTOS, PAGES, KEY) as server:
        table, _ = _run(tmp_path, server)
    results = tmp_path / "results"
    (results / "collect").mkdir(parents=True)
    (results / "index").mkdir()
    table.to_parquet(results / "collect" / "pexels.parquet")
    index = pd.DataFrame(
        [
            {
                "image_id": "ab" * 8,
                "root": "pexels",
                "relpath": "12.jpg",
                "source": "pexels",
                "licence": "Pexels License",
                "shard": "s00000",
                "passed": True,
            }
        ]
    )
    index.to_parquet(results / "index" / "index.parquet")
    import io

    out = io.StringIO()
    audit(results, "12.jpg", out=out)
    text = out.getvalue()
    assert "== collect  [collect/pexels.parquet]  PASSED  pexels/12.jpg" in text and "Author 12" in text
    assert "Author 11" not in text  # only this image's row


def test_monthly_limit_counts_calls_across_runs_until_the_api_says_what_is_left(tmp_path):
    clock = FakeClock()
    with FakePhotoAPI(PHOTOS, PAGES, KEY, clock=clock.time) as server:
        config = _paced_config(tmp_path, server, "pexels")
        config["collect"]["pexels"].update(monthly_limit=4, curated_pages=0, max_pages=2)
        log = tmp_path / "pexels" / ".collect-pexels.calls.jsonl"
        log.parent.mkdir()
        # four calls in an earlier run, whose rate headers were never seen
        log.write_text("".join(json.dumps({"t": clock.now - 86400 + i}) + "\n" for i in range(4)))
        with pytest.raises(QuotaExhausted, match="monthly_limit = 4"):
            _run(tmp_path, server, clock=clock, config=config)
        assert server.counts == {}
        config["collect"]["pexels"]["monthly_limit"] = 6
        _run(tmp_path, server, clock=clock, config=config)  # room for two: pages 1 and 2
        assert server.counts["/pexels/v1/search"] == 2
        # 6 of 6 counted by us, but the API has since said 19,998 are left until its reset: that governs
        config["collect"]["pexels"]["max_pages"] = 10
        _, manifest = _run(tmp_path, server, clock=clock, config=config)
        assert server.counts["/pexels/v1/search"] == 3 and len(manifest) == 6
