"""A local server on 127.0.0.1 that speaks the OpenAI chat-completions protocol, for tests and
benchmarks.  The last text part of the user message picks the behaviour: ``scenario:NAME[:ARGS]``.

  ok            <json>{"flagged": false, "reason": "fine"}</json>
  fence         the same JSON in a ```json fence
  garbage       a reply with no JSON
  schema        JSON of the wrong shape ({"flagged": "maybe"})
  fail:N:CODE   the first N calls with this exact text answer HTTP CODE (429 with Retry-After)
  slow:S        sleep S seconds before answering
A ``responder(body) -> str | None`` may answer instead (e.g. judge the image it was sent).
A ``fault`` (attribute, may be changed while the server runs: "the server is fixed") breaks every
chat request the way a broken vLLM does, or only those for which ``fault_when(body)`` is true:
  refuse        HTTP 400 with vLLM's error body (what it answers to a bad request)
  5xx           HTTP 500
  timeout       sleeps ``fault_sleep_s`` (longer than the client's timeout) before answering
  prose         200, an apology and no JSON
  empty         200, empty content
  no_logprobs   200, a logprob request answered without log-probabilities
  strip         200, special tokens stripped even when the request asks to keep them
``trust_request_chat_template=False`` refuses a request carrying ``chat_template`` with HTTP 400,
as vLLM >= 0.11 does unless started with --trust-request-chat-template.  A request for more
``top_logprobs`` than ``max_logprobs`` (20, vLLM's default without --max-logprobs) is a 400 with
vLLM 0.34.0's message.  Errors come in vLLM 0.34.0's shape: ``{"error": {message, type, param, code}}``.
Every reply waits ``latency`` seconds first.  The server records the Authorization headers it saw,
every request body (``bodies``) and the largest number of requests it was answering at once.
Special tokens (``<|...|>``, Qwen-style) are removed from a text answer unless the request sets
``skip_special_tokens: false``: vLLM's chat endpoint decodes with skip_special_tokens true by
default, so a Rex-Omni answer reaches a client that does not ask otherwise without its markers.
Fields vLLM's chat request model types strictly (``VLLM_FIELD_TYPES``) are checked the way its
pydantic model reads them: a wrong type is a 400, as from vLLM; unknown fields are ignored, as
vLLM ignores them (with a warning in its log).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler

from local_server import LocalServer

OK_JSON = {"flagged": False, "reason": "fine"}

# A few of vLLM's ChatCompletionRequest fields and the types its pydantic model accepts.
VLLM_FIELD_TYPES = {
    "temperature": (int, float),
    "max_tokens": int,
    "top_k": int,
    "top_p": (int, float),
    "repetition_penalty": (int, float),
    "skip_special_tokens": bool,
    "chat_template_kwargs": dict,
    "chat_template": str,
    "response_format": dict,
}
RESPONSE_FORMAT_TYPES = {"text", "json_object", "json_schema"}
SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def vllm_request_error(body: dict) -> str | None:
    """The message vLLM would answer 400 with for this chat request body, or None."""
    for name, kind in VLLM_FIELD_TYPES.items():
        if name in body and body[name] is not None:
            value = body[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                return f"{name}: wrong type {type(value).__name__}"
    fmt = body.get("response_format")
    if fmt is not None and fmt.get("type") not in RESPONSE_FORMAT_TYPES:
        return f"response_format.type: {fmt.get('type')!r} is not one of {sorted(RESPONSE_FORMAT_TYPES)}"
    if fmt is not None and fmt.get("type") == "json_schema" and "json_schema" not in fmt:
        return "response_format: json_schema is required when type is json_schema"
    return None


def vllm_error(message: str, kind: str, code: int) -> dict:
    """vLLM 0.34.0's error body (ErrorResponse: one ``error`` object)."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeOpenAI(LocalServer):
    def __init__(
        self,
        latency: float = 0.0,
        retry_after: float = 0.2,
        responder=None,
        port: int = 0,
        models=("fake-vlm",),
        fault: str | None = None,
        fault_when=None,
        trust_request_chat_template: bool = True,
        max_logprobs: int = 20,
    ):
        self.latency, self.retry_after, self.responder, self.models = latency, retry_after, responder, list(models)
        self.fault, self.fault_when, self.fault_sleep_s = fault, fault_when, 2.0
        self.trust_request_chat_template = trust_request_chat_template
        self.max_logprobs = max_logprobs
        self.auth_headers: list[str] = []
        self.bodies: list[dict] = []
        self.calls: dict[str, int] = {}
        self.active = 0
        self.max_active = 0
        self.requests = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms Nagle stall

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.auth_headers.append(self.headers.get("authorization", ""))
                    server.bodies.append(body)
                    server.active += 1
                    server.requests += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    server._answer(self, body)
                finally:
                    with server._lock:
                        server.active -= 1

            def _send(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._serve(Handler, port)

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def _answer(self, handler, body):
        error = vllm_request_error(body)
        if error is None and body.get("chat_template") is not None and not self.trust_request_chat_template:
            error = "Chat template is passed with request, but --trust-request-chat-template is not set. Refused request with untrusted chat template."
        if error is None and body.get("logprobs") and int(body.get("top_logprobs") or 0) > self.max_logprobs:
            error = (
                f"Requested sample logprobs of {body['top_logprobs']}, which is greater than max allowed: "
                f"{self.max_logprobs}"
            )
        if error:
            return handler._send(400, vllm_error(error, "BadRequestError", 400))
        fault = self.fault if self.fault and (self.fault_when is None or self.fault_when(body)) else None
        if fault == "refuse":
            return handler._send(400, vllm_error("scripted refusal: bad request", "BadRequestError", 400))
        if fault == "5xx":
            return handler._send(500, vllm_error("scripted server error", "InternalServerError", 500))
        if fault == "timeout":
            time.sleep(self.fault_sleep_s)
        text = ""
        for msg in body.get("messages", []):
            content = msg.get("content")
            if isinstance(content, str):
                text = content
            else:
                text = next((c["text"] for c in content if c.get("type") == "text"), text)
        scenario = text.split("scenario:", 1)[1] if "scenario:" in text else "ok"
        name, _, args = scenario.partition(":")
        time.sleep(self.latency)
        with self._lock:
            self.calls[text] = self.calls.get(text, 0) + 1
            n_call = self.calls[text]
        if name == "fail":
            times, code = args.split(":")[:2]
            if n_call <= int(times):
                headers = {"retry-after": str(self.retry_after)} if code == "429" else None
                return handler._send(int(code), {"error": {"message": f"scripted {code}"}}, headers)
            name = "ok"
        if name == "slow":
            time.sleep(float(args))
            name = "ok"
        answer = self.responder(body) if self.responder is not None else None
        if fault in ("prose", "empty"):
            answer = "I am sorry, I can't evaluate this image right now." if fault == "prose" else ""
        if fault == "no_logprobs" and isinstance(answer, dict):
            answer = {k: v for k, v in answer.items() if k != "logprobs"}
        if isinstance(answer, dict):  # a whole choice (e.g. with logprobs)
            return handler._send(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "fake-vlm"),
                    "choices": [{"index": 0, "finish_reason": "length", **answer}],
                },
            )
        content = (
            answer
            if answer is not None
            else {
                "ok": f"<json>{json.dumps(OK_JSON)}</json>",
                "fence": f"Here you go:\n```json\n{json.dumps(OK_JSON)}\n```",
                "garbage": "I looked at the image and it seems fine to me.",
                "schema": json.dumps({"flagged": "maybe"}),
            }.get(name, f"<json>{json.dumps(OK_JSON)}</json>")
        )
        if body.get("skip_special_tokens", True) is not False or fault == "strip":
            content = SPECIAL_TOKEN.sub("", content)
        handler._send(
            200,
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "fake-vlm"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )


if __name__ == "__main__":
    # Stands in for `vllm serve MODEL --host H --port P ...` in the tests of pixverve.models.vllm_server.
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("serve")
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--startup-delay", type=float, default=0.0)
    args, _ = parser.parse_known_args()
    time.sleep(args.startup_delay)
    print(f"serving {args.model} on {args.host}:{args.port}", flush=True)
    server = FakeOpenAI(port=args.port, models=[args.model])
    server.httpd.serve_forever()
