"""The terms acknowledgement a collector needs before its first request (stdlib only: the config
check in pixverve.workflow runs it at DAG time in every rule's env, and pixverve.collect.sources at run time).

The rule, kept simple so the error can say it in one sentence: the value is a statement of at
least ``MIN_WORDS`` words, one of them naming a permission (``PERMISSION_WORDS``: permission,
licence, agreement, contract, consent, approval, ...), with no negation or placeholder word
(``REFUSED_WORDS``: no, not, none, n/a, tbd, todo, edit_me, ...) and no unfilled ``<...>``."""

from __future__ import annotations

import re

MIN_WORDS = 3
# Words that acknowledge nothing (a whole value of only these, e.g. "yes", is refused anyway by
# the word count and the permission word; kept for callers that import it).
BARE_YES = {"yes", "y", "true", "ok", "okay", "agree", "agreed", "i agree", "accept", "accepted", "ack", "1"}
# A negation or a placeholder anywhere in the statement: "I do not have permission", "none", "TBD".
REFUSED_WORDS = {
    "no",
    "not",
    "none",
    "nope",
    "never",
    "without",
    "lack",
    "lacking",
    "missing",
    "unknown",
    "nothing",
    "don't",
    "dont",
    "doesn't",
    "doesnt",
    "haven't",
    "havent",
    "hasn't",
    "hasnt",
    "didn't",
    "didnt",
    "isn't",
    "isnt",
    "can't",
    "cant",
    "cannot",
    "won't",
    "wont",
    "n/a",
    "na",
    "nil",
    "null",
    "tbd",
    "tba",
    "todo",
    "fixme",
    "xxx",
    "edit_me",
    "editme",
    "edit-me",
    "placeholder",
    "example",
    "pending",
}
# One of these (or a word starting with one) must name the permission held.
PERMISSION_WORDS = (
    "permission",
    "permitted",
    "licence",
    "license",
    "licensed",
    "agreement",
    "contract",
    "consent",
    "approval",
    "approved",
    "authoris",
    "authoriz",
    "granted",
    "waiver",
)
TERMS = {
    "pexels": "Pexels' API terms forbid collecting its photos or metadata with the API to build datasets or to "
    "train, fine-tune or evaluate ML/AI models unless Pexels has given you explicit permission",
    "unsplash": "Unsplash's licence and API guidelines restrict using its photos for machine learning / AI and "
    "automated, non-authentic use of the API; Unsplash directs such uses to its data programme "
    "(https://unsplash.com/data)",
}


class CollectorConfigError(ValueError):
    """Bad or missing collector settings (the message names the config key / variable)."""


def _problem(text: str) -> str | None:
    """Why ``text`` names no permission, or None when it does."""
    if "<" in text or ">" in text:
        return "still has a <...> placeholder"
    words = [w for w in (t.strip(".,;:!?()[]{}\"'`") for t in text.lower().split()) if re.search(r"\w", w)]
    refused = [w for w in words if w in REFUSED_WORDS]
    if refused:
        return f"contains {refused[0]!r} (a negation or placeholder)"
    if len(words) < MIN_WORDS:
        return f"has {len(words)} word{'s' * (len(words) != 1)}, fewer than {MIN_WORDS}"
    if not any(w.startswith(PERMISSION_WORDS) for w in words):
        return "names no permission (no word such as permission, licence, agreement, contract, consent, approval)"
    return None


def terms_acknowledgement(cfg: dict, source: str) -> str:
    """The user's statement of the permission they hold; refuses to go on without one."""
    value = cfg.get("terms_acknowledgement")
    if value is None:
        problem = "is not set"
    elif not isinstance(value, str):
        problem = f"is {value!r}, which is not text"
    else:
        why = _problem(value.strip())
        problem = f"is {value!r}, which {why}" if why else None
    if problem:
        raise CollectorConfigError(
            f"config key collect.{source}.terms_acknowledgement {problem}. {TERMS[source]}. Set it to a statement "
            f"of the permission you hold: at least {MIN_WORDS} words, one naming it (permission, licence, "
            f"agreement, contract, consent, approval), no negation or placeholder (no, not, none, n/a, tbd, todo, "
            f'<...>), e.g. "written permission from {source.capitalize()}, 2026-05-01, ticket 1234"; it is '
            f"recorded in results/collect/{source}.parquet. See docs/stages/collect.md, 'Pexels and Unsplash'."
        )
    return value.strip()
