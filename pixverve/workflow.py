"""Glue between Snakemake's ``script:`` jobs and the library: logging and config checks."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pixverve.collect.terms import TERMS, terms_acknowledgement


def start_script(snakemake, name: str) -> logging.Logger:
    """Send this job's stderr (tracebacks, tqdm progress) and log lines to the rule's log file."""
    if snakemake.log:
        sys.stderr = open(snakemake.log[0], "w", buffering=1, encoding="utf-8")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    from pixverve.models.replies import use_reply_cache

    use_reply_cache(
        reply_cache_path(snakemake) if (snakemake.config.get("vlm") or {}).get("reply_cache", True) else None
    )
    return logging.getLogger(f"pixverve.{name}")


REPLY_CACHE_DIR = Path("results/cache/replies")


def reply_cache_path(snakemake) -> Path:
    """``results/cache/replies/<rule>/<wildcard values>.jsonl``: the ok model answers of one job
    (kept when the job fails, so its rerun asks only for what is missing or failed)."""
    values = [str(v) for _, v in snakemake.wildcards.items()]
    return REPLY_CACHE_DIR / snakemake.rule / (("_".join(values) or "all") + ".jsonl")


def check_config(config: dict) -> None:
    """Checks the JSON schema cannot express; each error names the offending key."""
    roots = [r["name"] for r in config["sources"]["roots"]]
    dupes = sorted({n for n in roots if roots.count(n) > 1})
    if dupes:
        raise ValueError(f"config key sources.roots: root name(s) {dupes} used more than once")
    for i, m in enumerate(config["sources"].get("manifests", [])):
        if m["root"] not in roots:
            raise ValueError(
                f"config key sources.manifests[{i}].root: {m['root']!r} is not one of sources.roots {roots}"
            )
    for i, c in enumerate(config["screening"]["criteria"]):
        top = c.get("max_megapixels")
        if top is not None and top < c["min_megapixels"]:
            raise ValueError(
                f"config key screening.criteria[{i}].max_megapixels: {top} is below min_megapixels {c['min_megapixels']}"
            )
    scales = [t["scale"] for t in sorted(config["sr_tiers"], key=lambda t: -t["min_megapixels"])]
    if scales != sorted(scales):
        raise ValueError(
            f"config key sr_tiers: smaller sources must get larger scales, got {scales} from largest tier down"
        )
    up = config.get("upscale")
    if up:
        if up["stride_px"] > up["tile_px"]:
            raise ValueError(f"config key upscale.stride_px: {up['stride_px']} is larger than tile_px {up['tile_px']}")
        scales = {t["scale"] for t in config["sr_tiers"]} - {1}
        bad = [s for s in scales if up["tile_px"] % s or up["stride_px"] % s]
        if bad:
            raise ValueError(
                f"config keys upscale.tile_px/stride_px must be multiples of every tier scale; not of {bad}"
            )
        command = up.get("command") or {}
        if up["backend"] == "command" and not (command.get("template") or command.get("batch_template")):
            raise ValueError(
                "config key upscale.command.template (or batch_template): backend `command` needs the program's invocation"
            )
        if up["backend"] == "command":
            for key in ("template", "batch_template"):
                into_checkout = [w for w in (command.get(key) or "").split() if w.startswith(("pixverve/", "scripts/"))]
                if into_checkout:  # the job's working directory is not the checkout under --directory or a module
                    raise ValueError(
                        f"config key upscale.command.{key}: {into_checkout[0]} is relative to the working "
                        f"directory; write {{workflow}}/{into_checkout[0]} (the workflow's folder)"
                    )
    collect = config.get("collect") or {}
    for source in collect.get("enabled") or []:
        if source not in collect:
            raise ValueError(f"config key collect.{source}: collector {source!r} is enabled but has no settings")
        if collect[source]["root"] not in roots:
            raise ValueError(
                f"config key collect.{source}.root: {collect[source]['root']!r} is not one of sources.roots {roots}"
            )
        if source in TERMS:  # before any job: a cluster run must not get as far as the collector to learn this
            terms_acknowledgement(collect[source], source)
    for name, spec in (config.get("imports") or {}).items():
        if spec["root"] not in roots:
            raise ValueError(f"config key imports.{name}.root: {spec['root']!r} is not one of sources.roots {roots}")
    synthetic = config.get("synthetic") or {}
    if synthetic.get("enabled"):
        if synthetic["root"] not in roots:
            raise ValueError(f"config key synthetic.root: {synthetic['root']!r} is not one of sources.roots {roots}")
        if synthetic["backend"] == "diffusers" and not (synthetic.get("diffusers") or {}).get("model"):
            raise ValueError("config key synthetic.diffusers.model: backend `diffusers` needs a local folder or hub id")
        if synthetic["backend"] == "command" and not (synthetic.get("command") or {}).get("template"):
            raise ValueError(
                "config key synthetic.command.template: backend `command` needs the generator's invocation"
            )
    vlm = config.get("vlm")
    if vlm:
        if vlm.get("backend") == "transformers" and not (vlm.get("transformers") or {}).get("model"):
            raise ValueError("config key vlm.transformers.model: backend `transformers` needs a local folder or hub id")
        if (vlm.get("serve") or {}).get("enabled") and vlm.get("backend", "endpoint") != "endpoint":
            raise ValueError("config key vlm.serve.enabled: starting vLLM only makes sense with vlm.backend: endpoint")
        check_serve_gpus(vlm.get("serve") or {})
    check_artimuse_checkouts(config)
    from pixverve.train.config import check_train_config

    check_train_config(config)


def set_cuda_override(config: dict) -> None:
    """CONDA_OVERRIDE_CUDA for this process from software.cuda_override, unless the user set it."""
    override = (config.get("software") or {}).get("cuda_override")
    if override is not None and "CONDA_OVERRIDE_CUDA" not in os.environ:
        os.environ["CONDA_OVERRIDE_CUDA"] = str(override)


def fgclip2_model_missing(bench: dict) -> str | None:
    """The error for a bench that scores FG-CLIP2 without its model folder (checked when a bench job is
    planned, not at parse time: the shipped config's EDIT line stays empty until a user fills it)."""
    fg = bench.get("fgclip2") or {}
    if fg.get("backend") == "fgclip2" and not fg.get("model"):
        return "config key bench.fgclip2.model: set a local folder with fg-clip2-base (EDIT line), or backend tiny/none"
    return None


def check_serve_gpus(serve: dict) -> None:
    """A job that starts vLLM holds one GPU (its rule's gpu resource): tensor parallelism over more
    would fail only after the model's download, on the node -- stopped here instead."""
    if not serve.get("enabled"):
        return
    args = [str(a) for a in serve.get("args") or []]
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name in ("--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp"):
            size = value or (args[i + 1] if i + 1 < len(args) else "1")
            if int(size) > 1:
                raise ValueError(
                    f"config key vlm.serve.args: {name} {size}: a job that starts vLLM holds one GPU; "
                    "serve a model that needs several GPUs as a standing server and set vlm.base_url "
                    "(vlm.serve.enabled: false)"
                )


def check_artimuse_checkouts(config: dict) -> None:
    """An ArtiMuse step whose checkout (where its prompts and conversation template are read from)
    is missing fails here, naming the key, not in its job.  ``caption.aesthetics.backend: artimuse``
    needs ``caption.aesthetics.artimuse.upstream``; the purify predictor (``backend: endpoint``) is
    checked when its ``upstream`` is set -- null there is the shipped config's EDIT placeholder
    (the paper config dry-runs as shipped) and its job says the same when it starts."""
    from pixverve.models import artimuse_upstream as up  # ast + pathlib only: nothing of ArtiMuse is imported

    caption = (config.get("caption") or {}).get("aesthetics") or {}
    predictor = (((config.get("purify") or {}).get("aesthetics") or {}).get("predictors") or {}).get("artimuse") or {}
    checks = []
    if caption.get("backend") == "artimuse":
        spec = caption.get("artimuse") or {}
        checks.append(("caption.aesthetics.artimuse", spec, up.attribute_prompts))
    if predictor.get("backend") == "endpoint" and predictor.get("upstream"):
        checks.append(("purify.aesthetics.predictors.artimuse", predictor, up.rating_question))
    for key, spec, prompts in checks:
        try:
            prompts(spec.get("upstream"), f"{key}.upstream")
            up.conversation(spec.get("upstream"), spec.get("template", "internvl2_5"), f"{key}.upstream")
        except up.UpstreamUnavailable as exc:
            raise ValueError(str(exc)) from None


def roots_filled_by_rules(config: dict) -> set[str]:
    """Source roots a rule of this workflow writes into (enabled collectors, the synthetic stream)."""
    collect = config.get("collect") or {}
    names = {collect[s]["root"] for s in collect.get("enabled") or [] if s in collect}
    synthetic = config.get("synthetic") or {}
    if synthetic.get("enabled"):
        names.add(synthetic["root"])
    return names


def _has_image(folder: Path, extensions: set[str]) -> bool:
    """Stops at the first file with a configured extension (cheap on a full root)."""
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(Path(n).suffix.lower() in extensions and not n.startswith(".") for n in filenames):
            return True
    return False


def check_roots(config: dict, workdir: str | Path = ".") -> None:
    """A scanned root that is missing or holds no image stops the run with what to do.

    Roots a rule fills (an enabled collector, the synthetic stream) may be missing: the rule
    creates them.  Roots listed only by manifests (``scan: false``) are not checked here; a
    listed file that is missing is a row with its reason."""
    filled = roots_filled_by_rules(config)
    extensions = {e.lower() for e in config["sources"]["extensions"]}
    for i, r in enumerate(config["sources"]["roots"]):
        if not r.get("scan", True) or r["name"] in filled:
            continue
        folder = Path(workdir) / r["path"]
        where = (
            f"{r['path']!r} (relative to the working directory {Path(workdir).resolve()})"
            if not Path(r["path"]).is_absolute()
            else repr(r["path"])
        )
        if not folder.is_dir():
            problem = f"folder {where} does not exist"
        elif not _has_image(folder, extensions):
            problem = f"folder {where} holds no file with an extension of sources.extensions {sorted(extensions)}"
        else:
            continue
        hint = (
            f" Put the {r['name']} images there, point `path` at the folder that holds them, fill it with its"
            f" collector (collect.enabled: [{r['name']}] when a collector writes into this root), or remove"
            " the entry from your config overlay."
        )
        if r["name"] in ("pexels", "unsplash"):
            hint += " To try the workflow on the bundled demo pool instead: --configfile configs/demo.yaml."
        raise ValueError(f"config key sources.roots[{i}] (name {r['name']!r}): {problem}.{hint}")


# Shipped files named in config (prompts, vocabularies, schemas): a relative value under one of
# these folders that is not present in the working directory is read from the workflow's folder,
# so `--directory` runs and Snakemake `module` use find them.
SHIPPED_FOLDERS = ("prompts/", "schemas/", "report/", "configs/")


def shipped_path(value: str, workflow_dir: str | Path, workdir: str | Path = ".") -> str:
    """``value`` itself when absolute or present in the working directory, else the workflow's copy."""
    if os.path.isabs(value) or (Path(workdir) / value).exists():
        return value
    candidate = Path(workflow_dir) / value
    return str(candidate) if candidate.exists() else value


def resolve_shipped_files(config, workflow_dir: str | Path, workdir: str | Path = ".") -> list[str]:
    """Rewrite (in place) every config string naming a shipped file by :func:`shipped_path`;
    return the dotted keys that now point into the workflow folder."""
    changed = []

    def walk(node, key):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            name = f"{key}.{k}" if key else str(k)
            if isinstance(v, str) and v.startswith(SHIPPED_FOLDERS):
                new = shipped_path(v, workflow_dir, workdir)
                if new != v:
                    node[k] = new
                    changed.append(name)
            else:
                walk(v, name)

    walk(config, "")
    return changed


def note_empty(log, n: int, stage: str) -> None:
    """The one clear log line of a stage that received no image (its tables are written empty)."""
    if n == 0:
        log.info(
            f"{stage}: no image entered (every image was dropped by an earlier stage, or the pool is empty); "
            "writing empty tables"
        )


def load_config(*paths: str | Path) -> dict:
    """config.yaml plus overrides, validated against the schema (defaults filled in)."""
    from snakemake.utils import validate

    from pixverve.core.config import load_yaml, merge

    config: dict = {}
    for p in paths:
        config = merge(config, load_yaml(p))
    validate(config, str(Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"))
    check_config(config)
    return config
