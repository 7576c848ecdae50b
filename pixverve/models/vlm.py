"""The one VLM/LLM client every model-judged step uses (artefact judges, tagging, captions, MSFI/ICS).

OpenAI-compatible chat completions (the ``openai`` package), as vLLM serves them:
* images go in as base64 ``data:`` URLs (JPEG, downscaled by the caller to what the model needs);
* many requests in flight, bounded by an asyncio semaphore (``max_in_flight``);
* retries with exponential back-off on timeouts, broken connections, 429 (``Retry-After`` obeyed)
  and 5xx; other 4xx fail at once (a wrong model name does not get better by retrying);
* the reply's JSON is taken from ``<json>...</json>`` tags, a fenced code block, or the whole
  text, and validated against the task's JSON schema; ``response_format`` is sent when the config
  says the server supports it;
* every attempt's raw reply is kept in the result for audit; a reply that stays unparseable,
  invalid, empty or refusal-like after the retries is a result with that ``status``, and
  ``pixverve.core.health`` decides what it means downstream -- never silently a pass;
* fail-safe (issue 27): the first request of a client is its probe (sent alone, checked before
  any other goes out: a misconfigured server stops the job at once with what to change);
  failures on ``stop_after_consecutive_failures`` images in a row stop the job naming the
  server, model and first error; every ok reply is kept in the job's reply cache
  (``pixverve.models.replies``), keyed by the request's fingerprint, so a rerun asks the server
  only for what failed.
The API key is read from the environment variable named in config.  It is passed to the client
and nowhere else: it is not logged, not put in results, not in error messages.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pixverve.core import health
from pixverve.models import replies

JSON_TAG = re.compile(r"<json>\s*(.*?)\s*</json>", re.S | re.I)
JSON_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S | re.I)


class VLMConfigError(ValueError):
    """The client cannot be set up (no endpoint, no key); the message says which config key."""


@dataclass
class VLMSettings:
    base_url: str
    model: str
    api_key_env: str | None = None
    max_in_flight: int = 32
    timeout_s: float = 120.0
    retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    temperature: float = 0.1
    max_tokens: int = 1024
    # response_format: False (none) | True or "json_schema" (the task's JSON schema, vLLM's guided
    # decoding) | "json_object" (any JSON object, what the published bench sends on MSFI calls)
    response_format: bool | str = False
    # Sent verbatim as extra fields of the request body: vLLM's sampling/rendering options such as
    # skip_special_tokens, top_k, repetition_penalty, chat_template_kwargs (per step, from config).
    extra_body: dict = field(default_factory=dict)
    invalid_policy: str = "drop"  # what a stage does with an unparseable/invalid reply: keep | drop
    # rejecting answers for this many images in a row (the first ones included) stop the job: a
    # broken server costs seconds, not a shard of timeouts (0: never)
    stop_after_consecutive_failures: int = 8
    probe: bool = True  # the first request goes alone and its answer is checked before the rest

    @classmethod
    def from_config(cls, cfg: dict) -> VLMSettings:
        if not cfg.get("base_url"):
            raise VLMConfigError("config key vlm.base_url: no endpoint configured (e.g. http://host:8000/v1)")
        known = {f for f in cls.__dataclass_fields__}
        settings = cls(**{k: v for k, v in cfg.items() if k in known})
        if settings.response_format not in (False, True, "json_schema", "json_object"):
            raise VLMConfigError(
                f"config key vlm.response_format: {settings.response_format!r} is not one of false, true, json_schema, json_object"
            )
        if not isinstance(settings.extra_body, dict):
            raise VLMConfigError("config key vlm.extra_body: must be a mapping of request-body fields")
        reserved = {"model", "messages", "temperature", "max_tokens", "response_format", "logprobs", "top_logprobs"}
        if reserved & set(settings.extra_body):
            raise VLMConfigError(
                f"config key vlm.extra_body: {sorted(reserved & set(settings.extra_body))} have their own vlm keys"
            )
        return settings

    def response_format_field(self, schema=None, top_logprobs: int | None = None) -> dict | None:
        """The ``response_format`` a request sends, or None: never with ``top_logprobs``, and a
        JSON schema only for a task that has one (a TEXT task or no schema sends none)."""
        if top_logprobs or not self.response_format:
            return None
        if self.response_format == "json_object":
            return {"type": "json_object"}
        if isinstance(schema, dict):
            return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
        return None

    def request_options(self, top_logprobs: int | None = None, schema=None) -> dict:
        """What the request body carries besides model and messages (recorded with each reply);
        ``response_format`` only when one is sent (its type, not the schema)."""
        options = {
            "temperature": 0.0 if top_logprobs else self.temperature,
            "max_tokens": 1 if top_logprobs else self.max_tokens,
        }
        if top_logprobs:
            options.update(logprobs=True, top_logprobs=top_logprobs)
        sent = self.response_format_field(schema, top_logprobs)
        if sent is not None:
            options["response_format"] = sent["type"]
        options.update(self.extra_body)
        return options

    def api_key(self) -> str:
        if not self.api_key_env:
            return "EMPTY"  # vLLM without --api-key accepts any
        key = os.environ.get(self.api_key_env)
        if not key:
            raise VLMConfigError(f"config key vlm.api_key_env: environment variable {self.api_key_env} is not set")
        return key


@dataclass
class VLMResult:
    task: str
    request_id: str
    status: str  # ok | unparseable | invalid | failed
    parsed: dict | None
    raw_replies: list[str] = field(default_factory=list)
    attempts: int = 0
    error: str = ""
    seconds: float = 0.0
    request_options: str = ""  # JSON of VLMSettings.request_options() as sent (no key, no messages)
    cached: bool = False  # an ok answer from the reply cache of an earlier run of this job

    def as_row(self) -> dict:
        row = asdict(self)
        row["parsed"] = json.dumps(self.parsed, sort_keys=True) if self.parsed is not None else ""
        row["raw_replies"] = json.dumps(self.raw_replies)
        return row


def image_data_url(rgb: np.ndarray, quality: int = 95) -> str:
    """An RGB uint8 array as a JPEG data URL."""
    import simplejpeg

    data = simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB")
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def user_message(text: str, images: list[np.ndarray] | None = None, quality: int = 95) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image_data_url(im, quality)}} for im in images or []]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def extract_json(text: str):
    """JSON from <json> tags, else a fenced block, else the whole reply; raises ValueError."""
    for pattern in (JSON_TAG, JSON_FENCE):
        m = pattern.search(text)
        if m:
            return json.loads(m.group(1))
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("no JSON in the reply")
    return json.loads(text[start:])


TEXT = "text"  # the "schema" of a free-text task (a caption): the reply itself, stripped, is the result
THINK = re.compile(r"<think>.*?</think>", re.S)
THINK_END = "</think>"


def strip_think(text: str) -> str:
    """The answer without a thinking model's reasoning: a whole ``<think>...</think>`` block, or
    everything up to a lone closing ``</think>`` (Qwen3/3.5 templates open the block in the prompt,
    so without a reasoning parser the reply carries only the closing tag)."""
    text = THINK.sub("", text)
    if THINK_END in text:
        text = text.rpartition(THINK_END)[2]
    return text


# How a chat model declines (checked at the start of a free-text answer only: a caption that
# mentions "sorry" later is still a caption).
REFUSAL = re.compile(
    r"^\W*(?:i['’]?m sorry|i am sorry|sorry\b|i apologi[sz]e|i (?:can ?not|can['’]?t|am unable|['’]?m unable|am not able|"
    r"won['’]?t be able)|as an ai\b|unfortunately,? i\b|i['’]?m not able)",
    re.I,
)


def refusal_like(text: str) -> bool:
    """Whether a free-text answer is the model declining the task rather than doing it."""
    return bool(REFUSAL.match(text))


def parse_reply(text: str, schema: dict | str | None) -> tuple[str, object, str]:
    """(status, parsed, error) for one raw reply: ok | empty | unparseable | invalid (parsed but
    off-schema) | refusal (a free-text task the model declined).

    A thinking model's reasoning (``strip_think``) is removed first.  With ``schema=TEXT`` the
    reply is prose: ok when non-empty and not a refusal."""
    import jsonschema

    text = strip_think(text)
    if not text.strip():
        return "empty", None, "empty reply"
    if schema == TEXT:
        prose = text.strip()
        if refusal_like(prose):
            return "refusal", None, f"refusal-like reply: {prose[:200]!r}"
        return "ok", prose, ""
    try:
        parsed = extract_json(text)
    except ValueError as exc:
        return "unparseable", None, f"reply is not JSON: {exc}"
    if schema is not None:
        try:
            jsonschema.validate(parsed, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            return "invalid", parsed, f"schema: {where + ': ' if where else ''}{exc.message}"
    return "ok", parsed, ""


def decode_data_url(url: str) -> np.ndarray:
    """The RGB array inside an image data URL (what a local backend gets from a chat message)."""
    import io

    from PIL import Image

    header, _, payload = url.partition(",")
    if not header.startswith("data:image/") or ";base64" not in header:
        raise ValueError("only base64 image data URLs are supported by local backends")
    with Image.open(io.BytesIO(base64.b64decode(payload))) as im:
        return np.array(im.convert("RGB"))  # writable: torch wants to own what it wraps


class VLMClient:
    def __init__(self, settings: VLMSettings):
        self.settings = settings
        settings.api_key()  # a missing key fails here, not at the first request
        # The HTTP client and the bound on requests in flight belong to one event loop: made on
        # first use inside it, dropped by close(), so run_many can be called again and again.
        self._client = None
        self._semaphore: asyncio.Semaphore | None = None
        path = replies.current_cache()
        self.cache = replies.ReplyCache(path) if path else None
        self.cache_hits = 0
        self.probe_check = None  # a step's own check of its probe answer: result -> problem text or ""
        self._probed = False
        self._streak = health.FailureStreak(
            settings.stop_after_consecutive_failures, settings.invalid_policy, self._outage_message
        )

    @property
    def model_name(self) -> str:
        return self.settings.model

    def _http(self):
        if self._client is None:
            from openai import AsyncOpenAI

            s = self.settings
            self._client = AsyncOpenAI(base_url=s.base_url, api_key=s.api_key(), timeout=s.timeout_s, max_retries=0)
        return self._client

    def check_server(self, config_key: str = "vlm") -> None:
        """Fail now, with the URL and what to do, if the endpoint is unreachable or lacks the
        model -- otherwise every request would fail after its retries, image by image."""
        import urllib.error
        import urllib.request

        url = self.settings.base_url.rstrip("/") + "/models"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.settings.api_key()}"})
        try:
            with urllib.request.urlopen(request, timeout=min(self.settings.timeout_s, 30)) as reply:  # noqa: S310
                models = [m.get("id") for m in json.load(reply).get("data", [])]
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise VLMConfigError(
                f"config key {config_key}.base_url: the model server at {url} does not answer ({reason}); "
                "start it (or set vlm.serve.enabled) before this job runs"
            ) from None
        if models and self.settings.model not in models:
            raise VLMConfigError(
                f"config key {config_key}.model: {self.settings.model!r} is not served at {url} (it serves {models})"
            )

    async def _once(self, messages: list[dict], schema: dict | None, top_logprobs: int | None = None) -> str:
        import openai

        s = self.settings
        kwargs = {}
        if top_logprobs:  # one token, its top alternatives: the reply is their log-probabilities
            kwargs.update(logprobs=True, top_logprobs=top_logprobs)
        response_format = s.response_format_field(schema, top_logprobs)
        if response_format is not None:
            kwargs["response_format"] = response_format
        if s.extra_body:
            kwargs["extra_body"] = dict(s.extra_body)
        try:
            reply = await self._http().chat.completions.create(
                model=s.model,
                messages=messages,
                temperature=0.0 if top_logprobs else s.temperature,
                max_tokens=1 if top_logprobs else s.max_tokens,
                **kwargs,
            )
        except openai.APIStatusError as exc:
            if _retryable_status(exc.status_code):
                raise _Retryable(exc.status_code, _retry_after(exc)) from exc
            raise
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise _Retryable(None, None, type(exc).__name__) from None
        if top_logprobs:
            content = (reply.choices[0].logprobs and reply.choices[0].logprobs.content) or []
            alternatives = content[0].top_logprobs if content else []
            if not alternatives:  # an empty dict would read as "no answer token", a score of nothing
                raise _NoLogprobs(
                    f"the server returned no top_logprobs (asked for {top_logprobs}); vLLM needs --max-logprobs >= {top_logprobs}"
                )
            return json.dumps({alt.token: alt.logprob for alt in alternatives})
        return reply.choices[0].message.content or ""

    async def ask(
        self,
        task: str,
        request_id: str,
        messages: list[dict],
        schema: dict | None = None,
        top_logprobs: int | None = None,
    ) -> VLMResult:
        """One request with retries; the result keeps every raw reply.

        With ``top_logprobs`` the server generates one token and the result's ``parsed`` is
        ``{token: logprob}`` of its top alternatives (vLLM needs ``--max-logprobs`` >= that).
        """
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.settings.max_in_flight)
        result = VLMResult(task, request_id, "failed", None)
        result.request_options = json.dumps(self.settings.request_options(top_logprobs, schema), sort_keys=True)
        key = replies.fingerprint(self.settings.model, messages, result.request_options, schema)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.cache_hits += 1
            return VLMResult(
                task,
                request_id,
                "ok",
                hit["parsed"],
                hit["raw_replies"],
                hit["attempts"],
                "",
                0.0,
                result.request_options,
                cached=True,
            )
        t0 = time.perf_counter()
        rng = random.Random(request_id)  # jitter, reproducible per request
        async with self._semaphore:
            for attempt in range(self.settings.retries + 1):
                result.attempts = attempt + 1
                try:
                    text = await self._once(messages, schema, top_logprobs)
                except _NoLogprobs as exc:
                    result.status, result.error = "no_logprobs", str(exc)
                    break
                except _Retryable as exc:
                    result.error = exc.describe()
                    if attempt < self.settings.retries:
                        await asyncio.sleep(self._delay(attempt, exc.retry_after, rng))
                    continue
                except Exception as exc:  # a 4xx or a client bug: no point retrying
                    result.status, result.error = "failed", f"{type(exc).__name__}: {_scrub(str(exc), self)}"
                    break
                result.raw_replies.append(text)
                result.status, result.parsed, result.error = parse_reply(text, schema)
                if result.status == "ok":
                    break
        result.seconds = round(time.perf_counter() - t0, 3)
        if result.status == "ok" and self.cache is not None:
            self.cache.put(key, result)
        self._watch(result)
        return result

    def _watch(self, result: VLMResult) -> None:
        """The running health gate (``FailureStreak``) over images, not requests: request ids are
        "<image>:<part>" (a patch, a view, an instance), so one image's 10 patches or 11 MSFI crops
        refused (a content filter, one bad file) is that image's failure, not an outage."""
        self._streak.see(result.request_id.split(":", 1)[0], result.status, result)

    def _outage_message(self, limit: int, _image, first: VLMResult) -> str:
        return (
            f"model server {self.settings.base_url} (model {self.settings.model!r}): every request of {limit} images in a "
            f"row failed; first ({first.task}): {first.status}: {first.error[:400]}. Fix the server (see docs/troubleshooting.md, "
            "'Model server'), then rerun: finished answers are kept in the reply cache"
        )

    def _delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(retry_after, self.settings.max_backoff_s)
        base = min(self.settings.backoff_s * 2**attempt, self.settings.max_backoff_s)
        return base * (0.5 + rng.random() / 2)

    async def ask_many(self, requests: list[tuple], progress=None) -> list[VLMResult]:
        """Run (task, request_id, messages, schema[, top_logprobs]) requests concurrently; results in input order.

        The client's very first request is its probe: sent alone and checked (``probe_problem``)
        before the others go out.  A health-gate stop cancels the requests still in flight."""
        from pixverve.core.health import StepFailed

        requests = list(requests)
        results: list[VLMResult | None] = [None] * len(requests)

        async def one(i, req):
            results[i] = await self.ask(*req)
            if progress is not None:
                progress(1)

        start = 0
        # The probe is the first request the server really answers: answers from the reply cache
        # (a rerun) say nothing about the server as it is now.
        while self.settings.probe and not self._probed and start < len(requests):
            await one(start, requests[start])
            start += 1
            if results[start - 1].cached:
                continue
            self._probed = True
            problem = self.probe_problem(results[start - 1])
            if problem:
                raise StepFailed(
                    f"probe of model server {self.settings.base_url} (model {self.settings.model!r}, "
                    f"task {results[start - 1].task}): {problem}"
                )
        try:
            async with asyncio.TaskGroup() as group:
                for i in range(start, len(requests)):
                    group.create_task(one(i, requests[i]))
        except* StepFailed as stop:
            raise stop.exceptions[0] from None
        return results

    def probe_problem(self, result: VLMResult) -> str:
        """What is wrong with the probe's answer, with what to change, or "" when it is usable."""
        return answer_problem(result, self.settings.invalid_policy, self.probe_check, probe_hint(result, self.settings))

    def run_many(self, requests, progress=None) -> list[VLMResult]:
        return asyncio.run(self._run_and_close(requests, progress))

    async def _run_and_close(self, requests, progress):
        try:
            return await self.ask_many(requests, progress)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client, self._semaphore = None, None


class _NoLogprobs(Exception):
    """A logprob request answered without log-probabilities (not retried: the server is set up so)."""


def answer_problem(result: VLMResult, invalid_policy: str, probe_check=None, hint: str = "") -> str:
    """The probe's verdict on a client's first answer (endpoint or local): a failure the policy
    rejects, with ``hint`` (what to change), or the step's own ``probe_check(result) -> str``
    (ArtiMuse's answer tokens, Rex-Omni's special tokens); "" when the answer is usable."""
    if health.rejects(result.status, invalid_policy):
        return f"{result.status}: {result.error[:400]}{hint}"
    return probe_check(result) if probe_check is not None else ""


def probe_hint(result: VLMResult, settings: VLMSettings) -> str:
    """What to change on the server or in config, for the probe failures we know."""
    error = result.error.lower()
    # vLLM 0.34.0 (sampling_params.py) refuses more top_logprobs than its --max-logprobs (default 20) with a 400
    if "greater than max allowed" in error or "sample logprobs" in error:
        return " -- start vLLM with --max-logprobs at least top_logprobs"
    # vLLM >= 0.11: "Chat template is passed with request, but --trust-request-chat-template is not set"
    if "chat template" in error or "trust-request-chat-template" in error:
        return (
            " -- the request carries a chat template (the ArtiMuse setting chat_template: upstream); vLLM >= 0.11 "
            "refuses that unless started with --trust-request-chat-template. Start it so, or start it with "
            "--chat-template FILE (`python -m pixverve artimuse-template --upstream CHECKOUT`) and set chat_template: server"
        )
    if result.status == "no_logprobs":
        return " -- start vLLM with --max-logprobs at least top_logprobs"
    if "404" in error or "does not exist" in error:
        return (
            f" -- is {settings.model!r} the served model name? (GET {settings.base_url.rstrip('/')}/models lists them)"
        )
    if result.status in ("unparseable", "invalid"):
        return (
            " -- the model did not answer in the asked JSON: is this the model the step expects? response_format helps"
        )
    if result.status == "refusal":
        return " -- the model declined the task: check the model and the prompt"
    return ""


class _Retryable(Exception):
    def __init__(self, status: int | None, retry_after: float | None, kind: str = ""):
        super().__init__(kind or f"HTTP {status}")
        self.status, self.retry_after, self.kind = status, retry_after, kind

    def describe(self) -> str:
        return self.kind or f"HTTP {self.status}"


def _retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def _retry_after(exc) -> float | None:
    try:
        value = exc.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _scrub(text: str, client: VLMClient) -> str:
    """Never let the key into a message (some servers echo request headers in errors)."""
    env = client.settings.api_key_env
    key = os.environ.get(env) if env else None
    return text.replace(key, "***") if key else text


def backend_name(backend) -> str:
    """Who answered, for an error message: the server and model of an endpoint client, else the model."""
    settings = getattr(backend, "settings", None)
    if settings is not None:
        return f"model server {settings.base_url} (model {settings.model!r})"
    return f"model {getattr(backend, 'model_name', type(backend).__name__)!r}"


def step_config(config: dict, overrides: dict | None) -> dict:
    """A copy of the config whose ``vlm`` block has a step's overrides merged in (e.g. another model)."""
    out = copy.deepcopy(config)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out["vlm"].get(key), dict):
            out["vlm"][key].update(value)
        else:
            out["vlm"][key] = value
    return out


def prompt_text(path: str | Path) -> tuple[str, str]:
    """(prompt, sha256[:12]) of a template file; the hash goes into every row it produced."""
    text = Path(path).read_text(encoding="utf-8").strip()
    return text, hashlib.sha256(text.encode()).hexdigest()[:12]
