"""The terms acknowledgement a collector needs before its first request (stdlib only: the config
check in pixverve.workflow runs it at DAG time in every rule's env, and pixverve.collect at run time)."""

from __future__ import annotations

# Words that acknowledge nothing: the key must say which permission is held.
BARE_YES = {"yes", "y", "true", "ok", "okay", "agree", "agreed", "i agree", "accept", "accepted", "ack", "1"}
TERMS = {
    "pexels": "Pexels' API terms forbid collecting its photos or metadata with the API to build datasets or to "
              "train, fine-tune or evaluate ML/AI models unless Pexels has given you explicit permission",
    "unsplash": "Unsplash's licence and API guidelines restrict using its photos for machine learning / AI and "
                "automated, non-authentic use of the API; Unsplash directs such uses to its data programme "
                "(https://unsplash.com/data)",
}


class CollectorConfigError(ValueError):
    """Bad or missing collector settings (the message names the config key / variable)."""


def terms_acknowledgement(cfg: dict, source: str) -> str:
    """The user's statement of the permission they hold; refuses to go on without one."""
    value = cfg.get("terms_acknowledgement")
    text = value.strip() if isinstance(value, str) else ""
    if not text or text.lower().rstrip(".!") in BARE_YES:
        got = "is not set" if value is None else f"is {value!r}, which names no permission"
        raise CollectorConfigError(
            f"config key collect.{source}.terms_acknowledgement {got}. {TERMS[source]}. Set it to the permission "
            f"you hold (e.g. \"written permission from {source.capitalize()}, <date>, <reference>\"); it is recorded "
            f"in results/collect/{source}.parquet. See README, 'Stage 1 sources'."
        )
    return text
