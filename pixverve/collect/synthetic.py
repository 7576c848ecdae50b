"""Stage 1 sources: the synthetic stream -- LLM-written prompts rendered by a T2I model at ~4K.

1. Prompts (rule ``synth_prompts``): for every category in config the LLM (through the project's
   VLM client, ``vlm.*``) is asked ``ceil(prompts_per_category / per_request)`` times for
   ``per_request`` varied prompts (template ``prompts/synthetic_prompts.md``; JSON
   ``{"prompts": [...]}``).  Every raw reply is kept.  Prompts are normalised (lower case, words
   only) and a prompt whose word-trigram Jaccard similarity to an earlier kept one is at least
   ``near_duplicate_jaccard`` is dropped as a near duplicate (exact repeats as exact duplicates).
2. Rendering (rule ``synth_render``): each kept prompt is rendered at ``width`` x ``height`` by
   the configured backend -- ``diffusers`` (any text-to-image pipeline from a local folder or a
   cached hub id, e.g. FLUX.2 klein or Qwen-Image; VAE tiling on), ``command`` (an external
   generator; the prompt is passed in a file) or ``tiny`` (a random StableDiffusionPipeline; smoke).
   The seed is ``seed + int(prompt_id[:8], 16)`` (reproducible per prompt); model, backend, seed,
   steps, guidance and prompt are recorded per image.  Finished images are skipped on a rerun
   (written under a temp name, then renamed).  The images land in the ``synthetic`` root and go
   through the same screening and deduplication as every other source.

Fail-safe: both jobs stop (naming the model) when more than ``synthetic.max_failed_fraction``
of their requests / renders failed, synth_render also after ``stop_after_consecutive_failures``
failed renders in a row; the LLM's ok replies stay in the reply cache, finished renders on disk,
so the rerun (``python -m pixverve retry``) redoes only the failed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

from pixverve.core.health import DEFAULT_MAX_FAILED_FRACTION, FailureStreak, check_step_health
from pixverve.models.loading import ModelUnavailable, torch_dtype

PROMPTS_SCHEMA = {
    "type": "object",
    "properties": {"prompts": {"type": "array", "items": {"type": "string", "minLength": 3}, "minItems": 1}},
    "required": ["prompts"],
}


class T2IUnavailable(ModelUnavailable):
    """The configured text-to-image backend cannot run; the message names the config key."""


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.strip().encode()).hexdigest()[:16]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = _words(text)
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def near_duplicates(prompts: list[str], threshold: float) -> list[tuple[str, str, float]]:
    """Per prompt, in order: (reason, duplicate-of prompt id, similarity); reason '' = kept."""
    kept: list[tuple[str, set, str]] = []  # (normalised text, shingles, id)
    seen_exact: dict[str, str] = {}
    out = []
    for prompt in prompts:
        norm = " ".join(_words(prompt))
        if norm in seen_exact:
            out.append(("exact_duplicate", seen_exact[norm], 1.0))
            continue
        sh = _shingles(prompt)
        best, best_id = 0.0, ""
        for _, other, other_id in kept:
            sim = len(sh & other) / len(sh | other) if sh | other else 1.0
            if sim > best:
                best, best_id = sim, other_id
        if best >= threshold:
            out.append(("near_duplicate", best_id, round(best, 6)))
            continue
        pid = prompt_id(prompt)
        seen_exact[norm] = pid
        kept.append((norm, sh, pid))
        out.append(("", "", round(best, 6)))
    return out


def prompt_requests(cfg: dict, template: str) -> list[tuple[str, str, list[dict], dict]]:
    from pixverve.models.vlm import user_message

    per = int(cfg["per_request"])
    requests = []
    for category in cfg["categories"]:
        for k in range(math.ceil(int(cfg["prompts_per_category"]) / per)):
            text = template.format(category=category, n=per, batch=k + 1)
            requests.append(("synthetic_prompts", f"{category}#{k + 1}", [user_message(text)], PROMPTS_SCHEMA))
    return requests


def write_prompts(config: dict, judge, template_path, log=print):
    """(prompts table, requests table with every raw reply)."""
    import pandas as pd

    cfg = config["synthetic"]
    template = Path(template_path).read_text(encoding="utf-8")
    template_sha = hashlib.sha256(template.encode()).hexdigest()[:12]
    requests = prompt_requests(cfg, template)
    results = judge.run_many(requests)
    req_rows, candidates = [], []
    for (_, request_id, _, _), res in zip(requests, results, strict=True):
        req_rows.append(
            {
                "request_id": request_id,
                "status": res.status,
                "attempts": res.attempts,
                "error": res.error,
                "raw_replies": json.dumps(res.raw_replies),
                "request_options": res.request_options,
                "template_sha": template_sha,
                "smoke": bool(judge.smoke),
            }
        )
        if res.status == "ok":
            category = request_id.rsplit("#", 1)[0]
            candidates += [(category, request_id, p.strip()) for p in res.parsed["prompts"] if p.strip()]
    decisions = near_duplicates([p for _, _, p in candidates], float(cfg["near_duplicate_jaccard"]))
    rows = []
    for (category, request_id, prompt), (reason, dup_of, sim) in zip(candidates, decisions, strict=True):
        rows.append(
            {
                "prompt_id": prompt_id(prompt),
                "category": category,
                "request_id": request_id,
                "prompt": prompt,
                "passed": reason == "",
                "reason": reason,
                "duplicate_of": dup_of,
                "max_similarity": sim,
                "smoke": bool(judge.smoke),
            }
        )
    table = pd.DataFrame(
        rows,
        columns=[
            "prompt_id",
            "category",
            "request_id",
            "prompt",
            "passed",
            "reason",
            "duplicate_of",
            "max_similarity",
            "smoke",
        ],
    )
    failed = sum(r["status"] != "ok" for r in req_rows)
    log(
        f"synthetic prompts: {len(requests)} requests ({failed} without a valid reply), {len(table)} prompts, "
        f"{int(table['passed'].sum()) if len(table) else 0} kept"
    )
    kept = table[table["passed"]].groupby("category").size() if len(table) else pd.Series(dtype=int)
    for category in cfg["categories"]:
        if int(kept.get(category, 0)) < int(cfg["prompts_per_category"]):
            log(
                f"synthetic prompts: {category!r} has {int(kept.get(category, 0))} of {cfg['prompts_per_category']} asked"
            )
    # A batch without valid prompts gave none, whatever vlm.invalid_policy says: the gate counts it
    check_step_health(
        "synth_prompts",
        [r["status"] for r in req_rows],
        [r["error"] for r in req_rows],
        float(cfg.get("max_failed_fraction", DEFAULT_MAX_FAILED_FRACTION)),
        "drop",
        _who(judge),
        "synthetic.max_failed_fraction",
    )
    return table, pd.DataFrame(req_rows)


def _who(judge) -> str:
    url = getattr(getattr(judge, "settings", None), "base_url", "")
    model = getattr(judge, "model_name", "")
    return f"model server {url} (model {model!r})" if url else f"local model {model!r}"


# -- rendering ----------------------------------------------------------------------------------


class DiffusersT2I:
    def __init__(self, model: str, device: str, dtype: str, steps: int, guidance: float | None, smoke=False):
        from diffusers import DiffusionPipeline

        dtype = torch_dtype(dtype, "synthetic.diffusers.dtype")
        try:
            self.pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype).to(device)
        except (OSError, ValueError) as exc:
            raise T2IUnavailable(
                f"config key synthetic.diffusers.model: cannot load {model!r} ({type(exc).__name__}: {exc}); give a "
                "local folder or a hub id already in the Hugging Face cache (compute nodes run offline)"
            ) from exc
        vae = getattr(self.pipe, "vae", None)
        if vae is not None and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()  # a 4K decode in tiles, not one activation map
        self.pipe.set_progress_bar_config(disable=True)
        self.device, self.steps, self.guidance, self.smoke, self.model = device, steps, guidance, smoke, model

    def render(self, prompt: str, seed: int, width: int, height: int, dest: Path) -> None:
        import torch

        kwargs = {"guidance_scale": self.guidance} if self.guidance is not None else {}
        generator = torch.Generator(self.device).manual_seed(seed)
        image = self.pipe(
            prompt, height=height, width=width, num_inference_steps=self.steps, generator=generator, **kwargs
        ).images[0]
        image.save(dest, format="PNG")


class CommandT2I:
    """An external generator: ``template`` with {prompt_file} {seed} {width} {height} {output}."""

    smoke = False

    def __init__(self, template: str, model: str):
        self.template, self.model = template, model

    def render(self, prompt: str, seed: int, width: int, height: int, dest: Path) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
            fh.write(prompt)
        try:
            argv = [
                a.format(prompt_file=fh.name, seed=seed, width=width, height=height, output=str(dest))
                for a in shlex.split(self.template)
            ]
            try:
                res = subprocess.run(argv, capture_output=True, text=True)
            except OSError as exc:  # no such program / not executable: every render would fail
                raise T2IUnavailable(f"config key synthetic.command.template: cannot run {argv[0]!r}: {exc}") from exc
        finally:
            os.unlink(fh.name)
        if res.returncode in (126, 127):
            raise T2IUnavailable(
                f"config key synthetic.command.template: cannot run {argv[0]!r}: {res.stderr.strip()[-300:]}"
            )
        if res.returncode != 0 or not dest.is_file():
            raise RuntimeError(f"generator exited {res.returncode}: {res.stderr.strip()[-300:]}")


def build_t2i(cfg: dict):
    from pixverve.models.devices import resolve_device

    backend = cfg["backend"]
    if backend == "diffusers":
        d = cfg.get("diffusers") or {}
        if not d.get("model"):
            raise T2IUnavailable("config key synthetic.diffusers.model: set a local folder or hub id")
        return DiffusersT2I(
            d["model"],
            resolve_device(d.get("device", "auto")),
            d.get("dtype", "bfloat16"),
            int(d.get("steps", 28)),
            d.get("guidance"),
        )
    if backend == "command":
        c = cfg.get("command") or {}
        if not c.get("template"):
            raise T2IUnavailable(
                "config key synthetic.command.template: backend `command` needs the generator's invocation"
            )
        return CommandT2I(c["template"], c.get("model", "external"))
    if backend == "tiny":
        from pixverve.models.tiny_models import build_tiny_sd_pipeline

        with tempfile.TemporaryDirectory(prefix="pixverve-tiny-t2i-") as folder:
            build_tiny_sd_pipeline(folder, int(cfg.get("seed", 0)))
            t2i = DiffusersT2I(folder, "cpu", "float32", 2, None, smoke=True)
        t2i.model = "tiny-stable-diffusion"
        return t2i
    raise T2IUnavailable(f"config key synthetic.backend: unknown backend {backend!r} (diffusers | command | tiny)")


def render_prompts(prompts, config: dict, t2i=None, base_dir=".", log=print):
    """Render every kept prompt not rendered yet; returns (table, manifest rows)."""
    import pandas as pd
    from PIL import Image
    from tqdm import tqdm

    from pixverve.core.paths import writable_root

    cfg = config["synthetic"]
    folder = writable_root(config, cfg["root"], "synthetic.root", base_dir, stale_glob=".*.rendering.png")
    t2i = t2i or build_t2i(cfg)
    width, height = int(cfg["width"]), int(cfg["height"])
    rows, manifest = [], []
    kept = prompts[prompts["passed"]] if len(prompts) else prompts
    streak = FailureStreak(
        int(cfg.get("stop_after_consecutive_failures", 8)),
        "drop",
        lambda limit, first, row: (
            f"synth_render: {limit} renders in a row failed ({cfg['backend']}: {t2i.model}); first {first}: "
            f"{row['reason_detail']}. Fix the text-to-image model, then rerun: finished renders are kept"
        ),
    )
    for rec in tqdm(kept.to_dict("records"), desc="render", unit="img", mininterval=2):
        seed = int(cfg["seed"]) + int(rec["prompt_id"][:8], 16)
        name = f"{rec['prompt_id']}.png"
        row = {
            "prompt_id": rec["prompt_id"],
            "category": rec["category"],
            "prompt": rec["prompt"],
            "root": cfg["root"],
            "relpath": name,
            "backend": cfg["backend"],
            "model": t2i.model,
            "seed": seed,
            "width": width,
            "height": height,
            "steps": getattr(t2i, "steps", None),
            "smoke": bool(t2i.smoke or rec.get("smoke", False)),
            "passed": True,
            "reason": "",
            "reason_detail": "",
        }
        final = folder / name
        if not final.is_file():
            tmp = folder / f".{rec['prompt_id']}.rendering.png"
            try:
                t2i.render(rec["prompt"], seed, width, height, tmp)
                with Image.open(tmp) as im:
                    im.verify()
                os.replace(tmp, final)
            except T2IUnavailable:
                raise
            except Exception as exc:  # one failed render is a row; the stream goes on
                tmp.unlink(missing_ok=True)
                row.update(passed=False, reason="render_failed", reason_detail=f"{type(exc).__name__}: {exc}"[:500])
                log(f"render {rec['prompt_id']} failed: {row['reason_detail']}")
        streak.see(rec["prompt_id"], "ok" if row["passed"] else row["reason"], row)
        rows.append(row)
        if row["passed"]:
            manifest.append(
                {
                    "path": name,
                    "source": "synthetic",
                    "licence": cfg["licence"],
                    "url": "",
                    "author": f"{cfg['backend']}: {t2i.model} (seed {seed})",
                }
            )
    check_step_health(
        "synth_render",
        [r["reason"] or "ok" for r in rows],
        [r["reason_detail"] for r in rows],
        float(cfg.get("max_failed_fraction", DEFAULT_MAX_FAILED_FRACTION)),
        "drop",
        f"{cfg['backend']}: {t2i.model}",
        "synthetic.max_failed_fraction",
    )
    return pd.DataFrame(rows), manifest
