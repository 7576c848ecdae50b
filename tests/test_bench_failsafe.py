"""Issue 27 for PixVerve-Bench: a failed scorer or judge call is recorded with its status and
reason, counted per method and metric, marked in the table, never read as a score; too many
failures stop the job naming the server and model.  The judge runs against tests/fake_openai.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("openai")

from fake_openai import FakeOpenAI, vllm_error  # noqa: E402

from pixverve.bench import evaluate as bench  # noqa: E402
from pixverve.bench.inputs import BenchItem  # noqa: E402
from pixverve.core.health import StepFailed  # noqa: E402
from pixverve.models.vlm import VLMClient, VLMSettings, decode_data_url  # noqa: E402

MSFI_GLOBAL = {"SC-global": 5, "PI": 4, "LC": 3, "CH": 2}
MSFI_LOCAL = {"NGE": 5, "GA": 4, "TF": 5, "MGC": 5, "SC-local": 3}
ICS = {"IEV": 9, "AAA": 8, "SRA": 6}
PAPER_JUDGE = {
    "temperature": 0.1,
    "max_tokens": 8192,
    "response_format": "json_object",
    "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
}
REFUSAL = "This image was rejected by the content filter"
PROSE = "I looked at the image carefully and I think it is a lovely picture overall."


def _text(body) -> str:
    return next(c["text"] for c in body["messages"][-1]["content"] if c["type"] == "text")


def _bright(body) -> bool:
    """Whether the request carries one of the "bad" images (bright; the good ones are dark)."""
    url = next(c["image_url"]["url"] for c in body["messages"][-1]["content"] if c["type"] == "image_url")
    return float(decode_data_url(url).mean()) > 128


def _scores(body) -> str:
    """The judge's JSON reply to an MSFI global, MSFI local or ICS request (our prompts)."""
    text = _text(body)
    if "whole of an AI-generated image" in text:
        return json.dumps(MSFI_GLOBAL)
    if "one region of an AI-generated" in text:
        return json.dumps(MSFI_LOCAL)
    return json.dumps(ICS)


class RefusingServer(FakeOpenAI):
    """Answers HTTP 400 with a message to every request that carries a bright image."""

    def _answer(self, handler, body):
        if _bright(body):
            return handler._send(400, vllm_error(REFUSAL, "BadRequestError", 400))
        return super()._answer(handler, body)


class BrokenServer(FakeOpenAI):
    """Answers every chat request HTTP 400 (e.g. an option the server refuses)."""

    def _answer(self, handler, body):
        return handler._send(400, vllm_error("unsupported option", "BadRequestError", 400))


def _items(tmp_path, bright: list[bool]) -> list[BenchItem]:
    """One small noise image per entry: bright ones are the images the fake judge mistreats."""
    items = []
    for k, is_bright in enumerate(bright):
        rng = np.random.default_rng(k)
        low = 200 if is_bright else 0
        path = tmp_path / f"g{k}.png"
        Image.fromarray(rng.integers(low, low + 56, (600, 900, 3), dtype=np.uint8)).save(
            path
        )  # room for one 512 px patch
        items.append(BenchItem(f"g{k}", path, path, "s", "a cat on a sofa"))
    return items


def _client(server, **settings) -> VLMClient:
    # stop_after_consecutive_failures 0: one refused image is 11 MSFI failures in a row, which the
    # client's own run gate (default 8) would stop on; here the bench's own counting is tested
    options = {"retries": 0, "backoff_s": 0.01, "stop_after_consecutive_failures": 0, **PAPER_JUDGE, **settings}
    client = VLMClient(VLMSettings(base_url=server.base_url, model="fake-vlm", **options))
    client.smoke = False
    return client


@pytest.fixture
def judge_setup(repo_root, demo_config, monkeypatch):
    from pixverve.bench.prompts import load_judge_prompts

    monkeypatch.chdir(repo_root)  # our prompt files are relative to the repository
    spec = json.loads(json.dumps(demo_config["bench"]["judge"]))
    return spec, load_judge_prompts(spec)


def _row(judged, sets_images: int):
    per_image = pd.DataFrame({"aesthetics": [5.0] * sets_images, "glcm": [1.0] * sets_images})
    return bench.method_row("m", "4K", per_image, judged, {"images": sets_images, "clip": 30.0}, {})


def test_refused_images_are_failed_with_the_http_status_and_message_and_counted(tmp_path, judge_setup):
    spec, prompts = judge_setup
    items = _items(tmp_path, [False, True, False])  # the first is the client's probe: answered
    with RefusingServer(responder=_scores) as server:
        judged = bench.judge_method(
            items, _client(server), prompts, spec, 1000.0, log=lambda *_: None, max_failed_fraction=0.5
        )
    refused, ok = judged.iloc[1], judged.iloc[[0, 2]]
    for metric in ("msfi", "ics"):
        assert refused[f"{metric}_status"] == "failed" and math.isnan(refused[metric])
        assert "400" in refused[f"{metric}_error"] and REFUSAL in refused[f"{metric}_error"]
        assert (ok[f"{metric}_status"] == "ok").all() and ok[metric].notna().all()
    assert refused["n_patches"] >= 1 and json.loads(refused["local_statuses"]) == ["failed"] * refused["n_patches"]
    row = _row(judged, 3)
    assert (row["msfi_n"], row["msfi_failed"], row["ics_n"], row["ics_failed"]) == (2, 1, 2, 1)
    assert row["msfi"] == pytest.approx(ok["msfi"].mean()) and row["ics"] == pytest.approx(ok["ics"].mean())
    assert set(row["partial_columns"].split(",")) == {"msfi", "ics"}
    bench.write_bench_tables(pd.DataFrame([row]), tmp_path / "t", "title")
    md, tex = (tmp_path / "t.md").read_text(), (tmp_path / "t.tex").read_text()
    # one row: every full value is the best (bold); a partial one carries the dagger and is never bold
    assert (
        f"| {row['msfi']:.3f}{bench.FAILED_MARK} |" in md
        and "MSFI 2 of 3 (1 failed)" in md
        and "ICS 2 of 3 (1 failed)" in md
    )
    assert f"**{row['aesthetics']:.3f}**" in md  # a metric scored on every image carries no dagger
    assert rf" {row['msfi']:.3f}$^\dagger$" in tex and r"$^\dagger$ computed on fewer images" in tex
    csv = pd.read_csv(tmp_path / "t.csv")
    assert (csv.loc[0, "msfi_n"], csv.loc[0, "msfi_failed"]) == (2, 1)
    assert "msfi" not in csv.loc[0, "best_in"].split(",") and "ics" not in csv.loc[0, "best_in"].split(",")


@pytest.mark.parametrize("invalid_policy", ["drop", "keep"])
def test_a_prose_reply_is_unparseable_counted_and_never_a_score(tmp_path, judge_setup, invalid_policy):
    spec, prompts = judge_setup

    def responder(body):
        return PROSE if _bright(body) else _scores(body)

    items = _items(tmp_path, [False, True])
    with FakeOpenAI(responder=responder) as server:
        # vlm.invalid_policy keep (the demo's) lets off-format answers through other steps: never into a bench score
        client = _client(server, invalid_policy=invalid_policy)
        judged = bench.judge_method(items, client, prompts, spec, 1000.0, log=lambda *_: None, max_failed_fraction=0.5)
        with pytest.raises(StepFailed, match=r"bench_judge msfi: 1 of 2 images failed.*unparseable"):
            bench.judge_method(
                items,
                _client(server, invalid_policy=invalid_policy),
                prompts,
                spec,
                1000.0,
                log=lambda *_: None,
                max_failed_fraction=0.0,
            )
    prose = judged.iloc[1]
    assert (prose["msfi_status"], prose["ics_status"]) == ("unparseable", "unparseable")
    assert "not JSON" in prose["msfi_error"] and "not JSON" in prose["ics_error"]
    assert math.isnan(prose["msfi"]) and math.isnan(prose["ics"]) and not prose["msfi_included"]
    assert PROSE in prose["replies"]  # the raw reply is kept for audit
    row = _row(judged, 2)
    assert (row["msfi_n"], row["msfi_failed"], row["ics_n"], row["ics_failed"]) == (1, 1, 1, 1)
    assert row["msfi"] == pytest.approx(judged["msfi"].iloc[0])


def test_a_judge_that_fails_on_everything_stops_the_job_naming_the_server(tmp_path, judge_setup):
    spec, prompts = judge_setup
    items = _items(tmp_path, [False, False, False])
    with BrokenServer() as server:
        # the client's own probe and run gate off: this is the bench's gate (bench.max_failed_fraction)
        client = _client(server, probe=False)
        with pytest.raises(StepFailed) as stop:
            bench.judge_method(items, client, prompts, spec, 1000.0, log=lambda *_: None)
        sent = server.requests
    patches = len(bench.judge_requests(items[0], np.asarray(Image.open(items[0].generated)), prompts, spec)[2])
    message = str(stop.value)
    assert server.base_url in message and "'fake-vlm'" in message and "bench.max_failed_fraction=0.05" in message
    assert "400" in message and "unsupported option" in message
    # one bad image is tolerated (its row); stopped after the second image's MSFI (global + local) and ICS calls, not the method's
    assert sent == 2 * (1 + patches + 1)


class FlakyModel:
    """A scorer that raises on one caption and returns NaN on another."""

    smoke, model_name = False, "flaky test model"

    def score(self, rgb, text):
        if "boom" in text:
            raise RuntimeError("CUDA out of memory")
        return float("nan") if "nan" in text else 20.0 + rgb.mean() / 255


def test_scorer_failures_are_recorded_counted_and_gated(tmp_path):
    items = _items(tmp_path, [False, False, False, False])
    items = [
        BenchItem(i.name, i.real, i.generated, short, short)
        for i, short in zip(items, ["a", "boom", "nan", "b"], strict=True)
    ]
    per_image = bench.score_method(items, None, FlakyModel(), 1000.0, log=lambda *_: None)
    assert list(per_image["clip_status"]) == ["ok", "model_error", "not_finite", "ok"]
    assert "CUDA out of memory" in per_image["clip_error"][1] and (per_image["aesthetics_status"] == "off").all()
    ok = per_image["clip_raw"][[0, 3]]
    assert bench.clip_of_method(per_image) == pytest.approx(ok.mean())  # the failed ones left out, not NaN
    assert bench.metric_counts(per_image, "clip") == (2, 2) and bench.metric_counts(per_image, "aesthetics") == (0, 0)
    with pytest.raises(
        StepFailed, match=r"bench_scores \(m\) clip: 2 of 4 images failed .* at flaky test model; first: model_error"
    ):
        bench.check_bench_health(
            "bench_scores (m)", per_image, ("aesthetics", "clip"), 0.05, {"clip": "flaky test model"}
        )
    bench.check_bench_health("bench_scores (m)", per_image, ("aesthetics", "clip"), 0.5, {})  # 2 of 4 allowed
    fg = bench.fgclip2_method(items, FlakyModel(), 1000.0, log=lambda *_: None)
    assert list(fg["fgclip2_status"]) == ["ok", "model_error", "not_finite", "ok"]
    row = bench.method_row("m", "4K", per_image, pd.DataFrame(), {"images": 4, "clip": 21.0}, {}, fgclip2=fg)
    assert (row["clip_n"], row["clip_failed"], row["fgclip2_n"], row["fgclip2_failed"]) == (2, 2, 2, 2)
    assert row["fgclip2"] == pytest.approx(fg["fgclip2"][[0, 3]].mean())
    assert set(row["partial_columns"].split(",")) == {"clip", "fgclip2"}  # aesthetics is off: no value, no mark
    off = bench.fgclip2_off(items)
    assert (off["fgclip2_status"] == "off").all() and bench.metric_counts(off, "fgclip2") == (0, 0)


def test_the_demo_tiny_judge_is_counted_failed_and_the_paper_gate_would_stop_it(
    tmp_path, repo_root, demo_config, judge_setup
):
    """The demo's tiny judge writes random tokens: every MSFI/ICS reply fails to parse.  The demo's
    bench.max_failed_fraction (1.0) lets its bench finish with them counted; config.yaml's stops it."""
    from pixverve.core.config import load_yaml
    from pixverve.core.health import rejects
    from pixverve.models.vlm_local import build_judge

    spec, prompts = judge_setup
    assert demo_config["bench"]["max_failed_fraction"] == 1.0
    assert load_yaml(repo_root / "config.yaml")["bench"]["max_failed_fraction"] == 0.05
    judge = build_judge(demo_config)
    items = _items(tmp_path, [False])
    judged = bench.judge_method(
        items,
        judge,
        prompts,
        spec,
        1000.0,
        log=lambda *_: None,
        max_failed_fraction=demo_config["bench"]["max_failed_fraction"],
    )
    assert rejects(judged.loc[0, "msfi_status"]) and rejects(judged.loc[0, "ics_status"])
    row = _row(judged, 1)
    assert judged[["msfi", "ics"]].isna().all().all() and (row["msfi_failed"], row["ics_failed"]) == (1, 1)
    bench.write_bench_tables(pd.DataFrame([row]), tmp_path / "t", "demo")
    md = (tmp_path / "t.md").read_text()  # every image failed: "--" marked, not the "--" of a metric switched off
    assert f"--{bench.FAILED_MARK}" in md and "MSFI 0 of 1 (1 failed)" in md
    (tmp_path / "two").mkdir()
    with pytest.raises(StepFailed, match="local judge tiny random Qwen2-VL"):  # two images: more than the one tolerated
        bench.judge_method(
            _items(tmp_path / "two", [False, False]),
            judge,
            prompts,
            spec,
            1000.0,
            log=lambda *_: None,
            max_failed_fraction=0.05,
        )


def test_max_failed_fraction_is_a_validated_config_key(repo_root):
    import copy

    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from pixverve.core.config import load_yaml

    schema = str(repo_root / "schemas" / "config.schema.yaml")
    cfg = load_yaml(repo_root / "config.yaml")
    assert cfg["bench"]["max_failed_fraction"] == 0.05  # documented default
    for accepted in (0.0, 0.25, 1.0):
        cfg["bench"]["max_failed_fraction"] = accepted
        validate(copy.deepcopy(cfg), schema)
    cfg["bench"]["max_failed_fraction"] = 1.5
    with pytest.raises(WorkflowError, match="max_failed_fraction"):
        validate(cfg, schema)


def test_msfi_and_ics_statuses_of_one_image_exactly():
    """The judge's per-image record: MSFI is ok only with a score, else the global call's failure
    first, an empty global object, the first failed local call, or no patch at all; ICS keeps its
    call's status, and a parsed reply without the three numbers is ``invalid``, never a score."""
    from pixverve.models.vlm import VLMResult

    def result(status="ok", parsed=None, error=""):
        return VLMResult("t", "r", status, parsed, error=error)

    good, empty = result(parsed={"a": 1}), result(parsed={})
    local_ok, local_bad = result(parsed={"x": 1}), result("refused", None, "HTTP 400: no")
    assert bench.msfi_status(good, [local_ok], {"included": True}) == ("ok", "")
    assert bench.msfi_status(result("timeout", None, "60 s"), [local_ok], {"included": False}) == (
        "timeout",
        "global call: 60 s",
    )
    assert bench.msfi_status(empty, [local_ok], {"included": False}) == (
        "empty",
        "global call: the reply is an empty JSON object",
    )
    assert bench.msfi_status(good, [local_bad, result("invalid", None, "schema")], {"included": False}) == (
        "refused",
        "all 2 local calls failed; first: HTTP 400: no",
    )
    assert bench.msfi_status(good, [], {"included": False}) == ("no_patches", "no MSFI patch fits the image")
    scores = {"IEV": 10, "AAA": 5, "SRA": 10}
    assert bench.ics_result(result(parsed=scores)) == (pytest.approx(7.0), "ok", "")
    value, status, error = bench.ics_result(result("unparseable", None, "prose"))
    assert math.isnan(value) and (status, error) == ("unparseable", "prose")
    value, status, error = bench.ics_result(result(parsed={"IEV": 10, "AAA": 5}))
    assert math.isnan(value) and status == "invalid"
    assert error == "ICS needs IEV, AAA, SRA in the reply, got {'IEV': 10, 'AAA': 5}"
    value, status, error = bench.ics_result(result(parsed={"IEV": "ten", "AAA": 5, "SRA": 1}))
    assert math.isnan(value) and status == "invalid" and error.startswith("ICS needs numbers for IEV, AAA, SRA: ")


def test_the_judge_gate_counts_ics_failures_too_and_names_the_judge():
    """The gate after each image: failures of either metric count (ICS as much as MSFI), the images
    not judged yet count as ok, and the error names the judge."""
    ok = {"msfi_status": "ok", "msfi_error": "", "ics_status": "ok", "ics_error": ""}
    ics_failed = dict(ok, ics_status="refused", ics_error="HTTP 400")
    bench.judge_gate([ok] * 3 + [ics_failed], 40, 0.05, "judge J")  # 1 failure of 40: allowed (>= 1)
    with pytest.raises(StepFailed, match=r"ics.* 3 of 40 images failed .* at judge J; first: refused: HTTP 400"):
        bench.judge_gate([ok, ics_failed, ics_failed, ics_failed], 40, 0.05, "judge J")
    msfi_failed = dict(ok, msfi_status="timeout", msfi_error="60 s")
    with pytest.raises(StepFailed, match=r"msfi.* at judge J; first: timeout: 60 s"):
        bench.judge_gate([msfi_failed] * 3, 40, 0.05, "judge J")


def test_judge_requests_of_one_image_exactly():
    """1 global + 10 local MSFI calls and 1 ICS call per image, each one user turn (prompt, then the
    images as JPEG at quality 98 unless set); request ids name the image and the patch; the random
    patches are drawn from the first 16 hex digits of sha256(image name), so a rerun asks the same
    (the reply cache's keys); the patch rows are the boxes as x, y, w, h."""
    import base64
    import hashlib

    from pixverve.bench.scores import ics_view, msfi_layout

    class Prompts:
        msfi_global = staticmethod(lambda: "G")
        msfi_local = staticmethod(lambda relative: f"L {relative}")
        ics = staticmethod(lambda caption: f"I {caption}")

    item = BenchItem(name="0007", real=None, generated=None, short_caption="fox", long_caption="a red fox")
    rgb = np.random.default_rng(3).integers(0, 255, (3072, 4096, 3), dtype=np.uint8)  # 8 x 6 patches of 512
    spec = {
        "msfi": {"n_sobel": 6, "n_random": 4, "analysis_long_edge": 4096, "global_long_edge": 768},
        "ics": {"long_edge": 640},
    }
    msfi_calls, ics_call, rows = bench.judge_requests(item, rgb, Prompts, spec)
    img = Image.fromarray(rgb)
    seed = int(hashlib.sha256(b"0007").hexdigest()[:16], 16)
    global_view, patches = msfi_layout(img, seed, 6, 4, 4096, 768)
    assert len(msfi_calls) == 11 and len(rows) == 10 == len(patches)

    def sent(call):  # (task, id, prompt, decoded images' sizes, the urls)
        task, rid, messages, schema = call
        (message,) = messages
        assert message["role"] == "user" and schema is None
        text, *images = message["content"]
        urls = [i["image_url"]["url"] for i in images]
        return task, rid, text["text"], urls

    assert sent(msfi_calls[0]) == ("msfi_global", "0007:global", "G", [bench.jpeg_data_url(global_view, 98)])
    for call, patch, row in zip(msfi_calls[1:], patches, rows):
        left, top, right, bottom = patch["box"]
        crop = img.crop(patch["box"])
        assert sent(call) == (
            "msfi_local",
            f"0007:{left},{top}",
            f"L {patch['relative']}",
            [bench.jpeg_data_url(crop, 98), bench.jpeg_data_url(global_view, 98)],
        )
        assert row == {
            "x": left,
            "y": top,
            "w": right - left,
            "h": bottom - top,
            "relative": patch["relative"],
            "picked": patch["picked"],
        }
    assert sent(ics_call) == ("ics", "0007:ics", "I a red fox", [bench.jpeg_data_url(ics_view(img, 640), 98)])
    assert base64.b64decode(sent(ics_call)[3][0].split(",", 1)[1])[:2] == b"\xff\xd8"  # a JPEG
    lower, _, _ = bench.judge_requests(item, rgb, Prompts, spec | {"jpeg_quality": 60})
    assert sent(lower[0])[3] == [bench.jpeg_data_url(global_view, 60)]
    # the data URL itself: PIL's JPEG encoder at quality 98 unless told, base64
    import io

    buf = io.BytesIO()
    global_view.save(buf, format="JPEG", quality=98)
    assert sent(msfi_calls[0])[3] == ["data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()]
    assert bench.jpeg_data_url(global_view) == sent(msfi_calls[0])[3][0]
