"""Issue 27: a model step that failed is never a pass.

Every fault of the fault-injecting server (tests/fake_openai.py) is driven through the client's
gates, the reply cache, the per-step health gate, purify's decision and the retry command.  Each
test asserts one of: the job stops and names the server, the image is rejected with its reason,
or it is retried -- never a pass.  The stage-5 chain and the records are in tests/test_caption.py,
ArtiMuse in tests/test_aesthetics.py, the bench judge in tests/test_bench.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("openai")

from fake_openai import FakeOpenAI  # noqa: E402

from pixverve.core import health  # noqa: E402
from pixverve.core.tables import read_table, write_table  # noqa: E402
from pixverve.models import replies, vlm  # noqa: E402
from pixverve.models.vlm import TEXT, VLMClient, VLMSettings, user_message  # noqa: E402

SCHEMA = {"type": "object", "properties": {"flagged": {"type": "boolean"}}, "required": ["flagged"]}


def _client(server, **kw) -> VLMClient:
    settings = VLMSettings(base_url=server.base_url, model="fake-vlm", retries=1, backoff_s=0.01, timeout_s=0.5, **kw)
    return VLMClient(settings)


def _requests(n: int, schema=SCHEMA) -> list[tuple]:
    return [("judge", f"img{i}", [user_message(f"patch {i}: is it broken?")], schema) for i in range(n)]


@pytest.mark.parametrize(
    "fault, status",
    [("refuse", "failed"), ("5xx", "failed"), ("timeout", "failed"), ("prose", "unparseable"), ("empty", "empty")],
)
def test_a_broken_server_stops_the_job_at_its_probe_naming_it(fault, status):
    with FakeOpenAI(fault=fault) as server:
        server.fault_sleep_s = 1.5  # longer than the client's 0.5 s timeout
        with pytest.raises(health.StepFailed) as stop:
            _client(server).run_many(_requests(20))
        sent = server.requests
    message = str(stop.value)
    assert (
        f"probe of model server {server.base_url}" in message and "'fake-vlm'" in message and f"): {status}" in message
    )
    assert sent <= 2  # the probe and its one retry: no other image was sent


def test_the_probe_names_what_to_change_for_a_refused_request_chat_template():
    with FakeOpenAI(trust_request_chat_template=False) as server:
        client = VLMClient(
            VLMSettings(base_url=server.base_url, model="fake-vlm", retries=0, extra_body={"chat_template": "{{ x }}"})
        )
        with pytest.raises(health.StepFailed, match=r"400.*--trust-request-chat-template.*--chat-template FILE"):
            client.run_many(_requests(3))
        assert server.requests == 1


def test_a_free_text_refusal_is_not_a_caption():
    with FakeOpenAI(fault="prose") as server:
        res = _client(server, probe=False, stop_after_consecutive_failures=0).run_many(_requests(1, TEXT))[0]
    assert res.status == "refusal" and res.parsed is None and "sorry" in res.error
    assert (
        vlm.parse_reply("A cat sleeps on a sofa; sorry state of the cushions.", TEXT)[0] == "ok"
    )  # "sorry" later is prose


def test_an_outage_after_the_probe_stops_after_consecutive_failures():
    with FakeOpenAI() as server:
        client = _client(server, stop_after_consecutive_failures=3, max_in_flight=1)
        assert [r.status for r in client.run_many(_requests(2))] == [
            "ok",
            "ok",
        ]  # the probe passed (request ids img0, img1)
        server.fault = "refuse"
        with pytest.raises(
            health.StepFailed, match=r"every request of 3 images in a row failed; first \(judge\): failed: .*400"
        ):
            client.run_many(_requests(40))
        assert server.requests < 10  # stopped, the other 37 never sent


def test_one_image_refused_on_all_its_parts_is_its_failure_not_an_outage():
    """A content filter refusing one image's 11 crops: that image fails, the job goes on."""
    with FakeOpenAI(fault="refuse", fault_when=lambda body: "image 3 " in json.dumps(body)) as server:
        client = _client(server, stop_after_consecutive_failures=3, max_in_flight=1)
        requests = [
            ("msfi_local", f"img{i}:{part}", [user_message(f"image {i} part {part}")], SCHEMA)
            for i in range(6)
            for part in range(11)
        ]
        results = client.run_many(requests)
    failed = {r.request_id.split(":")[0] for r in results if r.status != "ok"}
    assert failed == {"img3"} and sum(r.status == "failed" for r in results) == 11


def test_the_reply_cache_asks_again_exactly_the_failed_requests(tmp_path):
    """Two of six requests refused; after the fix, the rerun (a new client, as a new job) sends
    exactly those two, and answers the four others from the cache."""
    cache = tmp_path / "replies.jsonl"
    replies.use_reply_cache(cache)
    try:
        with FakeOpenAI(
            fault="refuse", fault_when=lambda body: "patch 2:" in json.dumps(body) or "patch 4:" in json.dumps(body)
        ) as server:
            first = _client(server, stop_after_consecutive_failures=0).run_many(_requests(6))
            assert [r.status for r in first] == ["ok", "ok", "failed", "ok", "failed", "ok"]
            assert "400" in first[2].error and "scripted refusal" in first[2].error
            server.fault, before = None, server.requests
            again = VLMClient(
                first_client_settings := VLMSettings(base_url=server.base_url, model="fake-vlm", retries=0)
            )
            second = again.run_many(_requests(6))
            asked = [b["messages"][0]["content"][0]["text"] for b in server.bodies[before:]]
    finally:
        replies.use_reply_cache(None)
    assert sorted(asked) == ["patch 2: is it broken?", "patch 4: is it broken?"]
    assert [r.status for r in second] == ["ok"] * 6 and [r.cached for r in second] == [
        True,
        True,
        False,
        True,
        False,
        True,
    ]
    assert again.cache_hits == 4 and first_client_settings.model == "fake-vlm"
    assert len(cache.read_text().splitlines()) == 6  # four from the first run, two recovered


def test_on_a_rerun_the_probe_is_the_first_request_not_in_the_cache(tmp_path):
    """Cached answers say nothing about the server now: a rerun whose first requests are cached
    probes with the first one it really sends, and a server still broken stops it there."""
    replies.use_reply_cache(tmp_path / "replies.jsonl")
    try:
        with FakeOpenAI(fault="refuse", fault_when=lambda body: "patch 2:" in json.dumps(body)) as server:
            _client(server, probe=False, stop_after_consecutive_failures=0).run_many(_requests(3))  # 0, 1 ok; 2 refused
            server.fault_when = None  # now refusing everything
            before = server.requests
            with pytest.raises(health.StepFailed, match=r"probe of model server .*failed: .*400"):
                _client(server).run_many(_requests(6))
            assert server.requests - before == 1  # 0 and 1 from the cache, 2 is the probe, nothing else sent
    finally:
        replies.use_reply_cache(None)


def test_a_changed_request_is_not_answered_from_the_cache(tmp_path):
    replies.use_reply_cache(tmp_path / "replies.jsonl")
    try:
        with FakeOpenAI() as server:
            _client(server).run_many(_requests(2))
            other = VLMClient(VLMSettings(base_url=server.base_url, model="fake-vlm", temperature=0.7))
            other.run_many(_requests(2))
            assert server.requests == 4 and other.cache_hits == 0  # another option is another request
    finally:
        replies.use_reply_cache(None)


def test_the_step_gate_counts_failures_under_the_policy():
    statuses, errors = ["ok"] * 18 + ["failed", "unparseable"], [""] * 18 + ["HTTP 400 bad", "no JSON"]
    assert health.check_step_health("s", statuses, errors, 0.1) == 2  # 2 of 20 is not more than 10 %
    with pytest.raises(
        health.StepFailed, match=r"s: 2 of 20 images failed .*at model server X; first: failed: HTTP 400 bad"
    ):
        health.check_step_health("s", statuses, errors, 0.05, who="model server X")
    assert (
        health.check_step_health("s", statuses, errors, 0.05, invalid_policy="keep") == 1
    )  # keep excuses the off-format one
    assert (
        health.check_step_health("s", ["ok", "failed"], ["", "x"], 0.05) == 1
    )  # one bad image in a small shard: its row
    with pytest.raises(health.StepFailed):
        health.check_step_health("s", ["ok", "failed"], ["", "x"], 0.0)  # 0: none tolerated
    with pytest.raises(health.StepFailed):
        health.check_step_health("s", ["failed", "failed", "ok"], ["x", "x", ""], 0.05)
    assert health.rejects("tags_unparseable", "drop") and not health.rejects("tags_unparseable", "keep")
    assert all(
        health.rejects(s, "keep")
        for s in ("failed", "empty", "refusal", "no_logprobs", "special_tokens_stripped", "missing")
    )
    assert not any(health.rejects(s) for s in ("ok", "off", "no_tags", "no_instances", "skipped"))


def _classical(ids):
    rows = [
        {
            "image_id": i,
            "root": "r",
            "relpath": f"{i}.jpg",
            "shard": "s0",
            "passed": True,
            "reason": "",
            "reason_detail": "",
            "entropy_bits": 7.0,
            "exposure_ok": True,
            "sharpness_ok": True,
            "flatness_ok": True,
        }
        for i in ids
    ]
    return pd.DataFrame(rows)


def test_purify_rejects_an_image_whose_required_predictor_failed_and_ranks_only_the_scored(demo_config):
    """The issue's case: every ArtiMuse request refused but three images passed on an ArtiMuse
    'top 60 %' alone.  Now a failed image is model_failed and takes no slot."""
    from pixverve.purify.classical import decide

    ids = [f"{i:02d}" for i in range(5)]
    aest = pd.DataFrame(
        {
            "image_id": ids,
            "laion_score": [5.0, 4.0, 3.0, 2.0, 1.0],
            "laion_status": ["ok"] * 5,
            "laion_error": [""] * 5,
            "artimuse_score": [np.nan, 60.0, np.nan, 40.0, 50.0],
            "artimuse_status": ["failed", "ok", "failed", "ok", "ok"],
            "artimuse_error": ["BadRequestError: Error code: 400 - untrusted chat template", "", "", "", ""],
        }
    )
    config = {"purify": {"entropy": {"keep_top_fraction": 1.0}, "aesthetics": {"keep_top_fraction": 0.6}}}
    df, cuts = decide(_classical(ids), aest, config)
    df = df.set_index("image_id")
    assert list(df.loc[["00", "02"], "reason"]) == ["model_failed"] * 2 and not df.loc[["00", "02"], "passed"].any()
    assert "artimuse: failed: BadRequestError: Error code: 400" in df.loc["00", "reason_detail"]
    assert not df.loc[["00", "02"], "artimuse_score_top"].any()  # NaN is never top
    assert list(df["artimuse_score_top"]) == [False, True, False, False, True]  # ceil(0.6 * 3 scored) = 2
    art = cuts.set_index("score").loc["artimuse_score"]
    assert art["pool_size"] == 3 and art["kept"] == 2 and art["failed"] == 2
    assert df.loc["01", "passed"] and df.loc["04", "passed"]
    only_laion = decide(_classical(ids), aest, config | {"purify": config["purify"] | {"required_steps": ["laion"]}})[0]
    assert not (only_laion["reason"] == "model_failed").any()  # a documented opt-out, not the default


# ----------------------------------------------------------------------------- retry


def _step_table(path: Path, statuses: dict[str, str]) -> None:
    write_table(
        pd.DataFrame(
            {
                "image_id": list(statuses),
                "passed": True,
                "reason": "",
                "reason_detail": "",
                "judge_status": list(statuses.values()),
                "judge_error": ["" if s == "ok" else "HTTP 400" for s in statuses.values()],
            }
        ),
        path,
    )


def test_retry_moves_aside_only_the_failed_shards_and_reports_what_it_recovered(tmp_path):
    results = tmp_path / "results"
    _step_table(results / "caption/aesthetics/s00000.parquet", {"a": "ok", "b": "ok"})
    _step_table(results / "caption/aesthetics/s00001.parquet", {"c": "ok", "d": "failed", "e": "refusal"})
    _step_table(results / "verify/regions/s00000.parquet", {"a": "ok", "f": "judge_unparseable"})
    (results / "verify/patches").mkdir(parents=True)
    (results / "verify/patches/s00000.parquet").write_bytes(b"x")
    # the stand-in for snakemake: it remakes the missing tables; the server is fixed for d, not for e
    fixer = tmp_path / "fix.py"
    fixer.write_text(
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
        "from test_failsafe import _step_table\n"
        "r = Path(sys.argv[2])\n"
        "_step_table(r / 'caption/aesthetics/s00001.parquet', {'c': 'ok', 'd': 'ok', 'e': 'refusal'})\n"
        "_step_table(r / 'verify/regions/s00000.parquet', {'a': 'ok', 'f': 'ok'})\n"
    )
    untouched = (results / "caption/aesthetics/s00000.parquet").stat().st_mtime_ns
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixverve",
            "retry",
            "--results",
            str(results),
            "--",
            sys.executable,
            str(fixer),
            str(Path(__file__).parent),
            str(results),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        check=True,
    ).stdout
    assert (
        "caption_aesthetics: 2 failed images in 1 shards" in out
        and "verify_regions: 1 failed images in 1 shards" in out
    )
    assert (
        "caption_aesthetics: retried 2, recovered 1, still failed 1" in out
        and "verify_regions: retried 1, recovered 1" in out
    )
    assert (results / "caption/aesthetics/s00000.parquet").stat().st_mtime_ns == untouched  # an ok shard is not redone
    assert (results / "caption/aesthetics/s00001.parquet.before-retry").exists()
    assert (results / "verify/patches/s00000.parquet.before-retry").exists()  # the job's other output goes with it
    assert set(read_table(results / "caption/aesthetics/s00001.parquet.before-retry")["judge_status"]) == {
        "ok",
        "failed",
        "refusal",
    }


def test_retry_dry_run_changes_nothing(tmp_path):
    results = tmp_path / "results"
    _step_table(results / "caption/aesthetics/s00001.parquet", {"c": "ok", "d": "failed"})
    out = subprocess.run(
        [sys.executable, "-m", "pixverve", "retry", "--results", str(results), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        check=True,
    ).stdout
    assert "caption_aesthetics: 1 failed images in 1 shards" in out
    assert (results / "caption/aesthetics/s00001.parquet").exists()


def test_retry_finds_failed_super_resolution_but_not_an_unreadable_source(tmp_path):
    from pixverve.retry import STEP_TABLES, scan

    path = tmp_path / "results/upscale/s00000.parquet"
    write_table(
        pd.DataFrame(
            {
                "image_id": ["a", "b", "c"],
                "passed": [True, False, False],
                "reason": ["", "sr_wrong_size", "not_an_image"],
                "reason_detail": ["", "4000x3000 expected, got 3000x4000", "unreadable"],
            }
        ),
        path,
    )
    assert scan(tmp_path / "results", "drop") == {"upscale": {path: {"b"}}}
    assert [t.step for t in STEP_TABLES][:3] == ["synth_prompts", "synth_render", "upscale"]  # in stage order


def test_retry_covers_the_synthetic_stream_prompts_and_renders(tmp_path):
    """A prompt batch without prompts and a failed render are retried with their job's other
    outputs (the prompts table, the manifest); an ok render and an ok batch are not."""
    from pixverve.retry import move_aside, scan

    results = tmp_path / "results"
    requests = results / "collect/synthetic_requests.parquet"
    write_table(pd.DataFrame({"request_id": ["forest#1", "forest#2"], "status": ["ok", "unparseable"]}), requests)
    renders = results / "collect/synthetic.parquet"
    write_table(
        pd.DataFrame({"prompt_id": ["p1", "p2"], "passed": [True, False], "reason": ["", "render_failed"]}), renders
    )
    for name in ("synthetic_prompts.parquet", "synthetic_manifest.csv"):
        (results / "collect" / name).write_text("x")
    found = scan(results, "keep")  # a batch without prompts gave none, whatever the policy
    assert found == {"synth_prompts": {requests: {"forest#2"}}, "synth_render": {renders: {"p2"}}}
    assert sorted(p.name for p in move_aside(results, found)) == [
        "synthetic.parquet.before-retry",
        "synthetic_manifest.csv.before-retry",
        "synthetic_prompts.parquet.before-retry",
        "synthetic_requests.parquet.before-retry",
    ]


def test_a_failed_judgment_leaves_at_the_region_check_and_is_counted_there():
    from pixverve.verify.fidelity import decide_stage4
    from pixverve.verify.regions import judged_outcome

    base = {"n_flagged": 0, "max_flagged": 1, "n_unjudged": 3}
    hard = judged_outcome(dict(base), 10, "region_artifacts", "patches", "keep", [("failed", "HTTP 400: refused")] * 3)
    soft = judged_outcome(dict(base), 10, "region_artifacts", "patches", "keep", [("unparseable", "no JSON")] * 3)
    assert (hard["passed"], hard["reason"], hard["judge_status"], hard["n_failed"]) == (
        False,
        "judge_failed",
        "failed",
        3,
    )
    assert soft["passed"] and soft["judge_status"] == "unparseable"  # keep excuses an off-format answer only
    ids = {"root": "r", "relpath": "x", "shard": "s0", "scale": 4}
    verify = pd.DataFrame(
        [{"image_id": i, **ids, "passed": True, "reason": "", "reason_detail": ""} for i in ("a", "b")]
    )
    regions = pd.DataFrame([{"image_id": "a", **hard, "smoke": False}, {"image_id": "b", **soft, "smoke": False}])
    decisions, counts = decide_stage4(verify, regions, pd.DataFrame(columns=["image_id", "output_path"]))
    assert list(decisions["passed"]) == [False, True] and decisions["failed_check"].iloc[0] == "regions"
    assert counts.set_index("check").loc["regions", "dropped"] == 1


def test_retry_covers_the_bench_judge_and_its_sibling_outputs(tmp_path):
    from pixverve.retry import move_aside, scan

    results = tmp_path / "results"
    judged = results / "bench/ours/judged.parquet"
    write_table(
        pd.DataFrame({"name": ["a", "b"], "msfi_status": ["ok", "unparseable"], "ics_status": ["ok", "ok"]}), judged
    )
    scores = results / "bench/ours/scores.parquet"
    write_table(
        pd.DataFrame({"name": ["a", "b"], "aesthetics_status": ["ok", "ok"], "clip_status": ["model_error", "ok"]}),
        scores,
    )
    (results / "bench/ours/sets.json").write_text("{}")
    found = scan(results, "keep")  # the bench never keeps an off-format answer, whatever the run's policy
    assert found == {"bench_scores": {scores: {"a"}}, "bench_judge": {judged: {"b"}}}
    moved = move_aside(results, found)
    assert sorted(p.name for p in moved) == [
        "judged.parquet.before-retry",
        "scores.parquet.before-retry",
        "sets.json.before-retry",
    ]


def test_gate_table_reads_the_stage_fraction_the_policy_and_the_errors():
    """gate_table: one step's table against ``<stage>.max_failed_fraction`` (0.05 when unset) and
    ``vlm.invalid_policy``; a table without the status column (the step was off) is not gated;
    required_steps names the unknown steps of a list."""
    import pandas as pd

    from pixverve.core.health import StepFailed, gate_table, required_steps

    table = pd.DataFrame(
        {"status": ["ok"] * 17 + ["unparseable", "refused", "no_instances"], "error": [""] * 17 + ["prose", "400", ""]}
    )
    config = {"caption": {"max_failed_fraction": 0.1}, "vlm": {"invalid_policy": "drop"}}
    assert gate_table(table, "caption_boxes", "status", "error", config, "caption") == 2  # 2 of 20 <= 10 %
    assert gate_table(table, "caption_boxes", "status", "error", {"vlm": {"invalid_policy": "keep"}}, "caption") == 1
    with pytest.raises(StepFailed) as stop:  # 2 of 20 > 5 % (the default fraction)
        gate_table(table, "caption_boxes", "status", "error", {}, "caption", "model server X")
    assert str(stop.value).startswith(
        "caption_boxes: 2 of 20 images failed (more than caption.max_failed_fraction=0.05) at model server X; "
        "first: unparseable: prose."
    )
    no_errors = table.drop(columns="error")
    with pytest.raises(StepFailed, match="first: unparseable: \\. "):
        gate_table(no_errors, "caption_boxes", "status", "error", {"caption": {"max_failed_fraction": 0}}, "caption")
    assert gate_table(table, "caption_boxes", "judge_status", "error", {}, "caption") == 0  # the step was off
    assert gate_table(table.iloc[:0], "caption_boxes", "status", "error", {}, "caption") == 0
    assert required_steps({}, ["a", "b"], "purify") == {"a", "b"}
    assert required_steps({"required_steps": ["b"]}, ["a", "b"], "purify") == {"b"}
    with pytest.raises(ValueError, match=r"^config key purify.required_steps: \['c', 'd'\] are not among its steps"):
        required_steps({"required_steps": ["d", "b", "c"]}, ["a", "b"], "purify")


def test_retry_reads_the_invalid_policy_and_results_folder_of_the_command_it_runs(tmp_path, monkeypatch):
    """retry's policy is the run's: the workflow's config.yaml (drop), each --configfile over it,
    then --config; --directory moves results/; a wrong value stops with the file that set it."""
    from pixverve.retry import run_settings

    monkeypatch.chdir(tmp_path)
    assert run_settings([]) == ("drop", "config.yaml", None)
    (tmp_path / "keep.yaml").write_text("vlm:\n  invalid_policy: keep\n")
    (tmp_path / "other.yaml").write_text("vlm:\n  max_in_flight: 2\n")  # a later overlay that leaves the policy
    assert run_settings(["--", "snakemake", "--configfile", "keep.yaml", "other.yaml", "-d", "run1"]) == (
        "keep",
        "keep.yaml",
        Path("run1"),
    )
    back = ["snakemake", "--configfile", "keep.yaml", "--config", "vlm={invalid_policy: drop}", "--cores", "2"]
    assert run_settings(back)[:2] == ("drop", "--config vlm={invalid_policy: drop}")
    (tmp_path / "typo.yaml").write_text("vlm:\n  invalid_policy: kep\n")
    with pytest.raises(SystemExit, match="'kep' in typo.yaml; it must be drop or keep"):
        run_settings(["snakemake", "--configfile", "typo.yaml"])


def test_retry_uses_the_policy_of_the_configfile_after_the_double_dash(tmp_path):
    """An unparseable reply is a failure under drop and an answer under keep: the same table is
    retried or not by the configfile of the command alone."""
    results = tmp_path / "run/results"
    _step_table(results / "caption/aesthetics/s00000.parquet", {"a": "ok", "b": "unparseable"})
    (tmp_path / "keep.yaml").write_text("vlm:\n  invalid_policy: keep\n")

    def dry(*extra):
        command = [sys.executable, "-m", "pixverve", "retry", "--dry-run", "--", "snakemake", *extra]
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=True).stdout

    assert "caption_aesthetics: 1 failed images" in dry("-d", "run")
    kept = dry("-d", "run", "--configfile", "keep.yaml")
    assert "vlm.invalid_policy: keep (from keep.yaml); results: run/results" in kept
    assert "caption_aesthetics" not in kept and "no failed images in the step tables" in kept
