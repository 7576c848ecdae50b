"""The VLM client against a local chat-completions server: concurrency, retries, parsing, the key."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest

pytest.importorskip("openai")

from fake_openai import FakeOpenAI  # noqa: E402

from pixverve.models.vlm import VLMClient, VLMConfigError, VLMSettings, extract_json, image_data_url, user_message  # noqa: E402

SCHEMA = {
    "type": "object",
    "required": ["flagged", "reason"],
    "properties": {"flagged": {"type": "boolean"}, "reason": {"type": "string"}},
}
KEY = "sk-test-PIXVERVE-SECRET-0123456789"


def client(server, **kw):
    kw = {
        "probe": False,
        "stop_after_consecutive_failures": 0,
    } | kw  # per-request behaviour; the gates have their own tests
    settings = VLMSettings(base_url=server.base_url, model="fake-vlm", backoff_s=0.05, timeout_s=5, **kw)
    return VLMClient(settings)


def req(i, scenario):
    return ("artifact", f"r{i}", [user_message(f"is this patch broken? scenario:{scenario}")], SCHEMA)


def test_requests_overlap_up_to_the_bound():
    with FakeOpenAI(latency=0.4) as server:
        t0 = time.perf_counter()
        results = client(server, max_in_flight=8).run_many([req(i, "ok") for i in range(16)])
        elapsed = time.perf_counter() - t0
    assert [r.status for r in results] == ["ok"] * 16
    assert server.max_active == 8  # eight at once, never more
    assert elapsed < 0.4 * 16 / 8 + 0.6  # ~2 rounds of latency, not 16


@pytest.mark.parametrize("code", [500, 503, 429])
def test_retry_after_server_errors(code):
    with FakeOpenAI(retry_after=0.2) as server:
        t0 = time.perf_counter()
        (res,) = client(server).run_many([req(0, f"fail:2:{code}")])
        elapsed = time.perf_counter() - t0
    assert res.status == "ok" and res.attempts == 3 and res.parsed == {"flagged": False, "reason": "fine"}
    assert len(res.raw_replies) == 1
    if code == 429:
        assert elapsed >= 0.4  # Retry-After obeyed twice


def test_client_errors_are_not_retried():
    with FakeOpenAI() as server:
        (res,) = client(server, retries=3).run_many([req(0, "fail:9:400")])
    assert res.status == "failed" and res.attempts == 1 and "400" in res.error


def test_timeout_is_retried_then_reported():
    with FakeOpenAI() as server:
        settings = VLMSettings(
            base_url=server.base_url, model="m", timeout_s=0.3, retries=1, backoff_s=0.01, probe=False
        )
        (res,) = VLMClient(settings).run_many([req(0, "slow:1.0")])
    assert res.status == "failed" and res.attempts == 2 and "Timeout" in res.error


def test_garbage_reply_is_recorded_not_passed():
    with FakeOpenAI() as server:
        (res,) = client(server, retries=2).run_many([req(0, "garbage")])
    assert res.status == "unparseable" and res.parsed is None
    assert len(res.raw_replies) == 3 and "seems fine" in res.raw_replies[0]  # every attempt kept


def test_schema_violation_is_invalid():
    with FakeOpenAI() as server:
        (res,) = client(server, retries=1).run_many([req(0, "schema")])
    assert res.status == "invalid" and res.parsed == {"flagged": "maybe"} and "schema" in res.error


def test_json_in_tags_fences_and_plain():
    assert extract_json('blah <json>{"a": 1}</json> blah') == {"a": 1}
    assert extract_json('```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    assert extract_json('The answer: {"a": true}') == {"a": True}
    with pytest.raises(ValueError):
        extract_json("no json here")
    with FakeOpenAI() as server:
        (res,) = client(server).run_many([req(0, "fence")])
    assert res.status == "ok"


def test_images_go_as_jpeg_data_urls():
    url = image_data_url(np.zeros((8, 8, 3), np.uint8))
    assert url.startswith("data:image/jpeg;base64,")
    msg = user_message("hi", [np.zeros((8, 8, 3), np.uint8)] * 2)
    assert [c["type"] for c in msg["content"]] == ["image_url", "image_url", "text"]


def test_key_comes_from_env_and_is_never_written(monkeypatch, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PIXVERVE_TEST_VLM_KEY", KEY)
    with FakeOpenAI() as server:
        settings = VLMSettings(
            base_url=server.base_url, model="m", api_key_env="PIXVERVE_TEST_VLM_KEY", retries=1, backoff_s=0.01
        )
        results = VLMClient(settings).run_many([req(0, "ok"), req(1, "garbage"), req(2, "fail:9:401")])
    assert server.auth_headers and all(h == f"Bearer {KEY}" for h in server.auth_headers)  # it was sent
    out = tmp_path / "results.jsonl"
    out.write_text("\n".join(json.dumps(r.as_row()) for r in results))
    assert KEY not in out.read_text()
    assert KEY not in caplog.text
    assert KEY not in repr(settings.__dict__.get("api_key_env"))


def test_missing_key_or_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PIXVERVE_NO_SUCH_KEY", raising=False)
    with pytest.raises(VLMConfigError, match="PIXVERVE_NO_SUCH_KEY"):
        VLMClient(VLMSettings(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="PIXVERVE_NO_SUCH_KEY"))
    with pytest.raises(VLMConfigError, match="vlm.base_url"):
        VLMSettings.from_config({"model": "m"})


def test_settings_from_the_paper_config(repo_root):
    from pixverve.core.config import load_yaml

    settings = VLMSettings.from_config(load_yaml(repo_root / "config.yaml")["vlm"])
    assert settings.temperature == 0.1 and settings.api_key_env is None and settings.api_key() == "EMPTY"


def test_extra_body_and_json_object_reach_the_server_and_are_recorded():
    options = {
        "skip_special_tokens": False,
        "top_k": 1,
        "repetition_penalty": 1.05,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    with FakeOpenAI() as server:
        c = client(server, response_format="json_object", extra_body=options, max_tokens=4096)
        [res] = c.run_many([req(0, "ok")])
    assert res.status == "ok"
    [body] = server.bodies
    for key, value in options.items():
        assert body[key] == value  # top-level fields of the body, where vLLM reads them
    assert body["response_format"] == {"type": "json_object"}
    assert body["max_tokens"] == 4096
    recorded = json.loads(res.request_options)
    assert recorded == {**options, "temperature": 0.1, "max_tokens": 4096, "response_format": "json_object"}


def test_schema_response_format_and_a_badly_typed_option():
    with FakeOpenAI() as server:
        [res] = client(server, response_format=True).run_many([req(0, "ok")])
        assert server.bodies[0]["response_format"]["json_schema"]["schema"] == SCHEMA
        assert "top_k" not in server.bodies[0]
        # vLLM answers 400 to a wrongly typed field; the client does not retry a 4xx
        [bad] = client(server, extra_body={"top_k": "one"}).run_many([req(1, "ok")])
    assert res.status == "ok" and json.loads(res.request_options)["response_format"] == "json_schema"
    assert bad.status == "failed" and "400" in bad.error and bad.attempts == 1


def test_response_format_is_recorded_only_when_it_is_sent():
    """A schema response_format cannot go with a free-text task: none is sent, and the recorded
    options must not claim one; logprob requests send none either."""
    from pixverve.models.vlm import TEXT

    with FakeOpenAI(responder=lambda body: "A caption.") as server:
        c = client(server, response_format=True)
        text, logprobs = c.run_many(
            [
                ("caption", "t0", [user_message("Write a caption.")], TEXT),
                ("rate", "t1", [user_message("Rate it.")], None, 5),
            ]
        )
    assert [("response_format" in b) for b in server.bodies] == [False, False]
    assert text.status == "ok" and "response_format" not in json.loads(text.request_options)
    assert json.loads(logprobs.request_options) == {
        "temperature": 0.0,
        "max_tokens": 1,
        "logprobs": True,
        "top_logprobs": 5,
    }


@pytest.mark.parametrize("bad", [{"response_format": "yes"}, {"extra_body": {"temperature": 0}}, {"extra_body": [1]}])
def test_bad_request_options_are_config_errors(bad):
    with pytest.raises(VLMConfigError, match="config key vlm"):
        VLMSettings.from_config({"base_url": "http://127.0.0.1:1/v1", "model": "m", **bad})


def _thinking_qwen(body):
    """A Qwen3.5 answer as vLLM returns it without a reasoning parser: the template opened the
    <think> block in the prompt, so the reply holds the reasoning and only the closing tag --
    unless the request turned thinking off in the template."""
    answer = '<json>{"flagged": false, "reason": "clean"}</json>'
    if (body.get("chat_template_kwargs") or {}).get("enable_thinking") is False:
        return answer
    return 'The user wants {"flagged": ...}. Let me look.\n</think>\n\n' + answer


@pytest.mark.parametrize(
    "reply",
    [
        'musing {"a": 1}</think>{"flagged": true, "reason": "x"}',
        '<think>musing {"a": 1}</think>{"flagged": true, "reason": "x"}',
    ],
)
def test_reasoning_before_a_closing_think_is_dropped(reply):
    from pixverve.models.vlm import TEXT, parse_reply

    assert parse_reply(reply, SCHEMA) == ("ok", {"flagged": True, "reason": "x"}, "")
    assert parse_reply("plan</think>\nA cat.", TEXT) == ("ok", "A cat.", "")


def test_the_paper_config_turns_qwen35_thinking_off(repo_root):
    from pixverve.core.config import load_yaml
    from pixverve.models.vlm import step_config

    config = load_yaml(repo_root / "config.yaml")
    vlm = step_config(config, config["bench"]["judge"]["vlm"])["vlm"]
    assert "Qwen3.5" in vlm["model"]
    with FakeOpenAI(responder=_thinking_qwen) as server:
        settings = VLMSettings.from_config(vlm | {"base_url": server.base_url, "backoff_s": 0.01, "retries": 0})
        [res] = VLMClient(settings).run_many([req(0, "ok")])
    assert server.bodies[0]["chat_template_kwargs"] == {"enable_thinking": False}
    assert res.status == "ok" and res.raw_replies == ['<json>{"flagged": false, "reason": "clean"}</json>']
