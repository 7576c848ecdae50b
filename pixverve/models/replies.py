"""The reply cache of a job: every ok model answer by the fingerprint of its request.

Standard library only: ``pixverve.workflow.start_script`` sets the cache of every job, whatever
its env.  The VLM client (``pixverve.models.vlm``) reads and fills it: a rerun of a job asks the
server only for the requests that have no ok answer yet.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_JOB_CACHE: str | None = None  # the reply cache of the running job (use_reply_cache)


def use_reply_cache(path: str | Path | None) -> None:
    """Every VLM client made after this keeps its ok answers in ``path`` (one JSON line each) and
    answers a request it has answered before from there: a rerun asks only for what failed."""
    global _JOB_CACHE
    _JOB_CACHE = str(path) if path else None


def current_cache() -> str | None:
    return _JOB_CACHE


def fingerprint(model: str, messages: list[dict], request_options: str, schema) -> str:
    """The identity of a request: model, messages (images included) and every option sent."""
    body = json.dumps(
        {"model": model, "messages": messages, "options": request_options, "schema": schema}, sort_keys=True
    )
    return hashlib.sha256(body.encode()).hexdigest()


class ReplyCache:
    """Ok answers by request fingerprint, appended as they arrive (a crash loses none)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash: that answer is asked again

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, result) -> None:
        """Keep an ok ``VLMResult``: its parsed value, raw replies and attempts."""
        entry = {
            "key": key,
            "task": result.task,
            "parsed": result.parsed,
            "raw_replies": result.raw_replies,
            "attempts": result.attempts,
        }
        self.entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
