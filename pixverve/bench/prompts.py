"""The MSFI / ICS judge prompts: ours (prompts/bench_*.md) or the published ones.

The published prompts define MSFI and ICS, but they are not ours to copy: with
``bench.judge.prompts: published`` they are built by the published code itself, imported from a
checkout the user names (``bench.judge.published_eval``: its ``eval/`` folder or the repository
root), through its ``util/build_prompts.py`` functions ``build_global_eval_prompt()``,
``build_local_eval_prompt(relative_coords)`` and ``build_ICS_eval_prompt(long_caption)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

PUBLISHED_REPO = "https://github.com/HaojunChen663/PixVerve-95K"
PROMPT_MODES = ("ours", "published")


class PromptsUnavailable(RuntimeError):
    pass


def published_prompts_file(folder) -> Path:
    """``util/build_prompts.py`` of a published checkout (the eval folder or the repository root)."""
    if not folder:
        raise PromptsUnavailable(
            "config key bench.judge.published_eval: bench.judge.prompts is 'published' but no checkout of the "
            f"published evaluation code is named; run `git clone {PUBLISHED_REPO}` and set "
            "bench.judge.published_eval to its eval folder (or set bench.judge.prompts: ours)"
        )
    root = Path(folder)
    for candidate in (root / "util" / "build_prompts.py", root / "eval" / "util" / "build_prompts.py"):
        if candidate.is_file():
            return candidate
    raise PromptsUnavailable(
        f"config key bench.judge.published_eval: {root} holds no util/build_prompts.py (nor eval/util/build_prompts.py); "
        f"run `git clone {PUBLISHED_REPO}` and point the key at PixVerve-95K/eval"
    )


def judge_prompt_files(judge_spec: dict) -> list[str]:
    """The files the prompts come from (the rule's inputs); raises the clear error when missing."""
    mode = judge_spec.get("prompts", "ours")
    if mode not in PROMPT_MODES:
        raise PromptsUnavailable(f"config key bench.judge.prompts: {mode!r} is not one of {PROMPT_MODES}")
    if mode == "published":
        return [str(published_prompts_file(judge_spec.get("published_eval")))]
    return [judge_spec[f"{k}_prompt"] for k in ("msfi_global", "msfi_local", "ics")]


class JudgePrompts:
    """The three prompt builders and a sha256[:12] of their source (recorded with every row)."""

    def __init__(self, build_global, build_local, build_ics, source_sha: dict[str, str], mode: str):
        self.build_global, self.build_local, self.build_ics = build_global, build_local, build_ics
        self.source_sha, self.mode = source_sha, mode

    def msfi_global(self) -> str:
        return self.build_global()

    def msfi_local(self, relative_coords: list[float]) -> str:
        return self.build_local(relative_coords)

    def ics(self, long_caption: str) -> str:
        return self.build_ics(long_caption)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_judge_prompts(judge_spec: dict) -> JudgePrompts:
    files = judge_prompt_files(judge_spec)
    if judge_spec.get("prompts", "ours") == "published":
        path = Path(files[0])
        spec = importlib.util.spec_from_file_location("pixverve_published_build_prompts", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        missing = [
            n
            for n in ("build_global_eval_prompt", "build_local_eval_prompt", "build_ICS_eval_prompt")
            if not hasattr(module, n)
        ]
        if missing:
            raise PromptsUnavailable(f"config key bench.judge.published_eval: {path} lacks {missing}")
        sha = _sha(path.read_text(encoding="utf-8"))
        return JudgePrompts(
            module.build_global_eval_prompt,
            module.build_local_eval_prompt,
            module.build_ICS_eval_prompt,
            {"msfi_global": sha, "msfi_local": sha, "ics": sha},
            "published",
        )
    texts = [Path(f).read_text(encoding="utf-8").strip() for f in files]
    g, loc, i = texts
    return JudgePrompts(
        lambda: g,
        lambda rel: loc.replace("{coordinates}", str(list(rel))),
        lambda caption: i.replace("{caption}", caption),
        {k: _sha(t) for k, t in zip(("msfi_global", "msfi_local", "ics"), texts, strict=True)},
        "ours",
    )
