"""PixVerve-Bench per method: the MLLM-agnostic metrics, the MLLM-judged ones, and the tables.

Definitions checked against the published evaluation code (github HaojunChen663/PixVerve-95K,
``eval/metrics.py`` and ``eval/eval.py``):
* FID: real and generated resized to ``size`` x ``size`` (aspect not kept; PIL bilinear, what
  torchvision's ``TF.resize`` of a PIL image is), uint8, torchmetrics FID with the TF-FID
  Inception weights (``pixverve.bench.fid``).
* FID_patch: both resized to ``size`` x ``size`` with Lanczos (the generated one only when it is
  not that size already), ``per_pair`` random ``crop`` x ``crop`` crops per pair at the same
  coordinates in real and generated, one FID over all crops.  The crop positions come from one
  ``random.Random(seed)`` (the published ``random.seed(42)`` once, before any other draw), pair by
  pair in benchmark order, ``randint(0, size - crop)`` for the top, then for the left
  (``order: yx``; ``xy`` is our earlier reading, kept as an option).
* Aesthetics: the LAION predictor of stage 2 on every full generated image, mean.
* CLIPScore: 100 x cos with CLIP ViT-B/16 on the short caption; the method's value clamps each
  batch-of-4 mean at 0, then averages (torchmetrics' functional ``clip_score`` per batch).
* GLCM: ``pixverve.bench.glcm`` on the generated image at its own size (PIL "L" grey), mean over images.
* compression ratio (Diffusion-4K's extra column): raw bytes at ``size`` / JPEG bytes.
* MSFI / ICS: the judge through the VLM client; views, patches and formulas in ``pixverve.bench.scores``.
* Failures (issue 27): every model metric has a status per image (``<metric>_status`` / ``_error``);
  a failed image is left out of the mean as published, counted (``<metric>_n`` / ``_failed``) and
  the value marked with a dagger; more than ``bench.max_failed_fraction`` failed stops the job.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
import sys
from pathlib import Path

import numpy as np

from pixverve.core.health import DEFAULT_MAX_FAILED_FRACTION

LOWER_IS_BETTER = {"fid", "fid_patch", "compression"}  # compression: less compressible = more detail (Diffusion-4K)
TABLE_COLUMNS = [
    ("fid", "FID"),
    ("fid_patch", "FID_patch"),
    ("aesthetics", "Aes"),
    ("glcm", "GLCM"),
    ("msfi", "MSFI"),
    ("clip", "CLIP"),
    ("fgclip2", "FG-CLIP2"),
    ("ics", "ICS"),
    ("compression", "Compression"),
]


# ----------------------------------------------------------------------------- per-image statuses (issue 27)
# Every model-backed metric writes <metric>_status (ok, off, or the failure code) and <metric>_error
# per image; the table counts them, so a mean over fewer images never passes as the full one.

MODEL_METRICS = ("aesthetics", "clip", "fgclip2", "msfi", "ics")  # the metrics with a status per image
FAILED_MARK = "\u2020"  # the dagger a value computed on fewer images carries in the Markdown table
NOT_FINITE = "not_finite"  # a model that returned NaN or inf for an image


def model_score(step: str, score) -> tuple[float, str, str]:
    """(value, status, error) of one model call on one image.  A model error on one image (out of
    memory, an input it cannot take) or a NaN/inf is that image's failure, not the job's: the
    health gate decides whether there are too many."""
    from pixverve.core.health import OK
    from pixverve.core.tables import MODEL_ERROR, MODEL_ERRORS, model_error_text

    try:
        value = float(score())
    except MODEL_ERRORS as exc:
        return float("nan"), MODEL_ERROR, model_error_text(step, exc)
    if not math.isfinite(value):
        return float("nan"), NOT_FINITE, f"{step}: the model returned {value}"
    return value, OK, ""


def off_columns(metric: str) -> dict:
    """The status columns of a metric whose backend is ``none`` (nothing to do, not a failure)."""
    return {metric: float("nan"), f"{metric}_status": "off", f"{metric}_error": ""}


def metric_statuses(table, metric: str) -> list[str]:
    """Per-image statuses of a metric; a table written before statuses existed: ok where it has a value."""
    if f"{metric}_status" in table:
        return [str(s) for s in table[f"{metric}_status"]]
    if metric not in table:
        return []
    return ["ok" if v == v else "not_scored" for v in table[metric].astype(float)]


def metric_counts(table, metric: str) -> tuple[int | None, int | None]:
    """(scored, failed) images of a metric in a per-image table ("off" is neither); (None, None)
    when the table does not hold the metric at all (not known, so not claimed)."""
    from pixverve.core.health import OK, rejects

    if table is None or (metric not in table and f"{metric}_status" not in table):
        return None, None
    statuses = metric_statuses(table, metric)
    return sum(s == OK for s in statuses), sum(rejects(s, "drop") for s in statuses)


def check_bench_health(step: str, table, metrics, max_failed_fraction: float, who: dict) -> None:
    """Stop the job (``StepFailed``) when a metric failed on more than ``bench.max_failed_fraction``
    of the method's images.  ``invalid_policy`` is always drop here: an off-format reply is never a
    bench score (the published aggregation leaves it out), so it counts as failed."""
    from pixverve.core.health import check_step_health

    for metric in metrics:
        if f"{metric}_status" in table and len(table):
            check_step_health(
                f"{step} {metric}",
                table[f"{metric}_status"],
                table[f"{metric}_error"],
                max_failed_fraction,
                "drop",
                who=who.get(metric, ""),
                config_key="bench.max_failed_fraction",
            )


def fid_patch_coordinates(
    n_pairs: int, size: int, crop: int = 299, per_pair: int = 20, seed: int = 42, order: str = "yx"
) -> list[list[tuple[int, int]]]:
    """(x, y) of every crop, pair by pair, from one generator seeded once (see the module docstring)."""
    if crop > size:
        raise ValueError(f"FID_patch crop {crop} is larger than the resized image {size}: raise bench.fid_patch.size")
    if order not in ("xy", "yx"):
        raise ValueError(f"bench.fid_patch.order must be xy or yx, got {order!r}")
    rng = random.Random(seed)
    out = []
    for _ in range(n_pairs):
        pair = []
        for _ in range(per_pair):
            first = rng.randint(0, size - crop)
            second = rng.randint(0, size - crop)
            pair.append((first, second) if order == "xy" else (second, first))
        out.append(pair)
    return out


def fid_patch(
    items,
    weights_path,
    size: int,
    crop: int,
    per_pair: int,
    seed: int,
    device: str = "cpu",
    max_megapixels: float = 1000.0,
    order: str = "yx",
    method: str = "?",
) -> float:
    import torch

    from pixverve.bench.fid import frechet_inception_distance, require_two_images, square_uint8

    require_two_images(len(items), method, "FID_patch")
    metric = frechet_inception_distance(weights_path, device)
    for item, coords in zip(items, fid_patch_coordinates(len(items), size, crop, per_pair, seed, order), strict=True):
        for attr, real in (("real", True), ("generated", False)):
            # published: the real image is always resized, the generated one only when it is not size x size
            full = square_uint8(getattr(item, attr), size, "lanczos", max_megapixels, only_if_needed=not real)
            crops = np.stack([full[y : y + crop, x : x + crop] for x, y in coords])
            metric.update(torch.from_numpy(crops).permute(0, 3, 1, 2).to(device), real=real)
    return float(metric.compute())


class ClipScorer:
    """torchmetrics' CLIPScore with a CLIP model loaded by our code (a local folder, a cached hub
    id, or the tiny random one)."""

    def __init__(self, spec: dict):
        from transformers import CLIPModel, CLIPProcessor

        from pixverve.models.loading import load_pretrained, model_device

        self.smoke = spec.get("backend") == "tiny"
        if self.smoke:
            import tempfile

            from pixverve.models.tiny_vision import build_tiny_clip

            with tempfile.TemporaryDirectory(prefix="pixverve-tiny-clip-") as folder:
                build_tiny_clip(folder, seed=int(spec.get("seed", 0)))
                self.model, self.processor = (
                    CLIPModel.from_pretrained(folder).eval(),
                    CLIPProcessor.from_pretrained(folder),
                )
            self.device, self.model_name = "cpu", "tiny random CLIP"
        else:
            self.model = load_pretrained(CLIPModel.from_pretrained, spec["model"], "bench.clip.model").eval()
            self.processor = load_pretrained(CLIPProcessor.from_pretrained, spec["model"], "bench.clip.model")
            self.device, self.model_name = model_device(spec), spec["model"]
            self.model.to(self.device)

    def score(self, rgb: np.ndarray, text: str) -> float:
        """100 x cos(image, text), *not* clamped: torchmetrics' ``clip_score`` clamps the mean of
        a batch, so the clamp belongs to :func:`clip_score_of_batches`.  Computed here because
        torchmetrics 1.9's ``clip_score`` breaks on transformers 5 (``get_image_features`` now
        returns an output object); the same path otherwise: the full image through the model's
        processor, the text truncated to the model's 77 tokens."""
        import torch

        with torch.inference_mode():
            inputs = self.processor(
                text=[text],
                images=[rgb],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.model.config.text_config.max_position_embeddings,
            ).to(self.device)
            img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            img, txt = (getattr(t, "pooler_output", t).float() for t in (img, txt))
            cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
        return float(100.0 * cos[0])


def clip_score_of_batches(raw_scores, batch: int = 4) -> float:
    """The published CLIPScore of a method: images in benchmark order in batches of ``batch``;
    each batch's value is max(mean of its 100 x cos, 0) (torchmetrics' functional clip_score);
    the method's score is the mean of the batch values (a short last batch weighs as much)."""
    values = [float(v) for v in raw_scores]
    if not values:
        return float("nan")
    means = [max(sum(values[i : i + batch]) / len(values[i : i + batch]), 0.0) for i in range(0, len(values), batch)]
    return sum(means) / len(means)


FGCLIP2_BUCKETS = (128, 256, 576, 784, 1024)


def fgclip2_patch_budget(width: int, height: int) -> int:
    """FG-CLIP2's ``max_num_patches`` for an image: (w // 16) * (h // 16) rounded up to the next
    bucket of 128/256/576/784/1024 (1024 at most)."""
    n = (width // 16) * (height // 16)
    return next((b for b in FGCLIP2_BUCKETS if n <= b), FGCLIP2_BUCKETS[-1])


FGCLIP2_ENV = "envs/fgclip2.yaml"


class FGClip2EnvError(ImportError):
    """FG-CLIP2's own model code does not import in this Python (not a missing model: the env).
    An ImportError, not a RuntimeError: per-image error capture (``model_score``) must not take it
    for one image's failure -- it fails every image, so it stops the job."""


class FGClip2MissingPackage(FGClip2EnvError):
    """FG-CLIP2's model code imports a package this Python lacks."""

    def __init__(self, message: str, packages: list[str]):
        super().__init__(message)
        self.packages, self.env = packages, FGCLIP2_ENV


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


# transformers' check of a remote-code file, before it runs it (dynamic_module_utils.check_imports)
_CHECK_IMPORTS = re.compile(r"requires the following packages that were not found in your environment: (.+?)\. Run")


def missing_packages(exc: ImportError) -> list[str]:
    """The top-level packages an ImportError says are missing ([] when it names none)."""
    listed = _CHECK_IMPORTS.search(str(exc))
    if listed:
        return [name.strip() for name in listed.group(1).split(",") if name.strip()]
    return [exc.name.split(".")[0]] if getattr(exc, "name", None) else []


def fgclip2_import_error(exc: ImportError, model: str) -> FGClip2EnvError:
    """An ImportError while loading FG-CLIP2, as what it is: a missing package named with the env
    to run in, or model code that needs another transformers (its own env keeps 4.x)."""
    run_in = f"run rule bench_fgclip2 in its conda env {FGCLIP2_ENV} (snakemake --use-conda)"
    packages = missing_packages(exc)
    if packages and packages != ["transformers"]:
        names = ", ".join(packages)
        return FGClip2MissingPackage(
            f"FG-CLIP2's own model code in {model} imports {names}, which is not installed in this Python "
            f"({sys.executable}): a missing package, not a missing model ({type(exc).__name__}: {exc}). "
            f"{run_in}; if that env lacks it, add {names} to {FGCLIP2_ENV}",
            packages,
        )
    # a transformers module or name the code imports is gone (e.g. modeling_attn_mask_utils in 5.x)
    return FGClip2EnvError(
        f"FG-CLIP2's own model code in {model} does not import under transformers {_transformers_version()} "
        f"({type(exc).__name__}: {exc}); it needs transformers 4.x: {run_in}"
    )


class FGClip2Scorer:
    """FG-CLIP2 score: 100 x max(cos(image, long caption), 0), the image with its own patch
    budget, the caption in the model's "long" text mode at max length 196.

    Backend ``fgclip2``: the published model (e.g. qihoo360/fg-clip2-base) from a local folder;
    it ships its own modelling code, so it is loaded with ``trust_remote_code=True`` -- only
    point ``bench.fgclip2.model`` at a folder you trust.  ``tiny``: a random Siglip2Model (the
    same NaFlex patch-budget image side), smoke.  Not run against the real weights here (none
    offline): the calls follow the model card's usage (get_image_features /
    get_text_features(walk_type="long")).
    """

    def __init__(self, spec: dict):
        from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

        from pixverve.models.loading import load_pretrained, model_device

        self.smoke = spec.get("backend") == "tiny"
        if self.smoke:
            import tempfile

            from pixverve.models.tiny_vision import build_tiny_siglip2

            with tempfile.TemporaryDirectory(prefix="pixverve-tiny-siglip2-") as folder:
                build_tiny_siglip2(folder, seed=int(spec.get("seed", 0)))
                self.model = AutoModel.from_pretrained(folder).eval()
                self.tokenizer, self.image_processor = (
                    AutoTokenizer.from_pretrained(folder),
                    AutoImageProcessor.from_pretrained(folder),
                )
            self.device, self.model_name, self.long_mode = "cpu", "tiny random SigLIP 2 (FG-CLIP2 stand-in)", False
            return
        model = spec.get("model")
        if not model:
            raise RuntimeError(
                "config key bench.fgclip2.model: set a local folder holding fg-clip2-base (with its code)"
            )

        def remote(loader):
            return lambda m, **kw: loader(m, trust_remote_code=True, **kw)

        try:  # the folder's own code runs here: an ImportError is the env's, raised before any image is scored
            self.model = load_pretrained(
                remote(AutoModelForCausalLM.from_pretrained), model, "bench.fgclip2.model"
            ).eval()
            self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model, "bench.fgclip2.model")
            self.image_processor = load_pretrained(
                remote(AutoImageProcessor.from_pretrained), model, "bench.fgclip2.model"
            )
        except ImportError as exc:
            raise fgclip2_import_error(exc, model) from exc
        self.device, self.model_name, self.long_mode = model_device(spec), model, True
        self.model.to(self.device)

    def score(self, rgb: np.ndarray, long_caption: str) -> float:
        try:
            return self._score(rgb, long_caption)
        except ImportError as exc:  # model code that imports lazily, on its first image: the env's, not the image's
            raise fgclip2_import_error(exc, self.model_name) from exc

    def _score(self, rgb: np.ndarray, long_caption: str) -> float:
        import torch

        h, w = rgb.shape[:2]
        with torch.inference_mode():
            image = self.image_processor(
                images=rgb, max_num_patches=fgclip2_patch_budget(w, h), return_tensors="pt"
            ).to(self.device)
            # the published scorer lower-cases the caption before tokenising it
            text = self.tokenizer(
                [long_caption.lower()], padding="max_length", max_length=196, truncation=True, return_tensors="pt"
            ).to(self.device)
            img = self.model.get_image_features(**image)
            txt = (
                self.model.get_text_features(**text, walk_type="long")
                if self.long_mode
                else self.model.get_text_features(**text)
            )
            img, txt = (getattr(t, "pooler_output", t).float() for t in (img, txt))
            cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
        return float(100.0 * torch.clamp(cos, min=0.0)[0])


# ----------------------------------------------------------------------------- MLLM judge


def jpeg_data_url(img, quality: int = 98) -> str:
    """A PIL image as a JPEG data URL, PIL's encoder at ``quality`` (the published bench: 98)."""
    import base64
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def judge_message(text: str, images, quality: int) -> dict:
    """One user turn as the published bench sends it: the prompt first, then the images."""
    content = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": jpeg_data_url(im, quality)}} for im in images]
    return {"role": "user", "content": content}


def judge_requests(item, rgb: np.ndarray, prompts, spec: dict):
    """(MSFI requests, ICS request, patch rows) of one image: 1 global + 10 local MSFI calls, 1 ICS.

    Replies are parsed as any JSON (the published calls ask for a JSON object, no schema); the
    scores are read by ``pixverve.bench.scores``."""
    from PIL import Image

    from pixverve.bench.scores import ics_view, msfi_layout

    img = Image.fromarray(rgb)
    quality = int(spec.get("jpeg_quality", 98))
    m = spec["msfi"]
    seed = int(hashlib.sha256(item.name.encode()).hexdigest()[:16], 16)  # the random patches: per image, reproducible
    global_view, patches = msfi_layout(
        img, seed, int(m["n_sobel"]), int(m["n_random"]), int(m["analysis_long_edge"]), int(m["global_long_edge"])
    )
    msfi_requests = [
        ("msfi_global", f"{item.name}:global", [judge_message(prompts.msfi_global(), [global_view], quality)], None)
    ]
    rows = []
    for p in patches:
        left, top, right, bottom = p["box"]
        text = prompts.msfi_local(p["relative"])
        msfi_requests.append(
            (
                "msfi_local",
                f"{item.name}:{left},{top}",
                [judge_message(text, [img.crop(p["box"]), global_view], quality)],
                None,
            )
        )
        rows.append(
            {
                "x": left,
                "y": top,
                "w": right - left,
                "h": bottom - top,
                "relative": p["relative"],
                "picked": p["picked"],
            }
        )
    ics_request = (
        "ics",
        f"{item.name}:ics",
        [judge_message(prompts.ics(item.long_caption), [ics_view(img, int(spec["ics"]["long_edge"]))], quality)],
        None,
    )
    return msfi_requests, ics_request, rows


def ics_judge(judge, spec: dict):
    """The client for ICS calls: the published bench asks MSFI calls for a JSON object and ICS
    calls for nothing (``bench.judge.ics_response_format``); a local backend is used as it is."""
    import dataclasses

    from pixverve.models.vlm import VLMClient

    settings = getattr(judge, "settings", None)
    wanted = spec.get("ics_response_format", False)
    if settings is None or settings.response_format == wanted:
        return judge
    other = VLMClient(dataclasses.replace(settings, response_format=wanted))
    other.smoke = getattr(judge, "smoke", False)
    return other


def judge_who(judge) -> str:
    """The judge for an error message: the server and model of an endpoint client, else the local model."""
    settings = getattr(judge, "settings", None)
    if settings is not None:
        return f"model server {settings.base_url} (model {settings.model!r})"
    return f"local judge {getattr(judge, 'model_name', type(judge).__name__)}"


def msfi_status(g, locals_, m: dict) -> tuple[str, str]:
    """(status, error) of one image's MSFI: ok when it has a score, else why it has none -- the
    global call's failure first, then the local calls' (an image is left out only when all failed)."""
    from pixverve.core.health import OK

    if m["included"]:
        return OK, ""
    if g.status != OK:
        return g.status, f"global call: {g.error}"
    if not g.parsed:  # the published `if not global_scores`: an empty JSON object is no global score
        return "empty", "global call: the reply is an empty JSON object"
    failed = next((r for r in locals_ if r.status != OK), None)
    if failed is None:  # the image is too small for one patch at the analysis scale
        return "no_patches", "no MSFI patch fits the image"
    return failed.status, f"all {len(locals_)} local calls failed; first: {failed.error}"


def ics_result(i) -> tuple[float, str, str]:
    """(ICS, status, error) of one image: a failed call keeps its own status; a parsed reply
    without the three numbers is ``invalid`` -- never a score."""
    from pixverve.bench.scores import ics
    from pixverve.core.health import OK

    if i.status != OK:
        return float("nan"), i.status, i.error
    try:
        return ics(i.parsed), OK, ""
    except ValueError as exc:
        return float("nan"), "invalid", str(exc)


def judge_gate(rows: list[dict], total: int, max_failed_fraction: float, who: str) -> None:
    """The health gate of the judge job, checked after every image: the images not judged yet
    count as ok, so it stops as soon as the failures already exceed what the whole method allows
    (they cannot become fewer) -- not after the last of 200 images."""
    import pandas as pd

    from pixverve.core.health import OK

    pending = [{f"{k}_{f}": (OK if f == "status" else "") for k in ("msfi", "ics") for f in ("status", "error")}] * (
        total - len(rows)
    )
    check_bench_health(
        "bench_judge", pd.DataFrame(rows + pending), ("msfi", "ics"), max_failed_fraction, {"msfi": who, "ics": who}
    )


def judge_method(
    items,
    judge,
    prompts,
    spec: dict,
    max_megapixels: float,
    log=print,
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION,
):
    """Per-image MSFI and ICS rows (with every raw reply) for one method; an image the published
    code leaves out of a mean (no global / no local reply; no valid ICS reply) has NaN there,
    ``msfi_included`` / ``ics_included`` False and ``msfi_status`` / ``ics_status`` saying why
    (``failed`` with the HTTP status and message, ``unparseable``, ...) with ``*_error``.

    The job stops (``StepFailed``, naming the server and model) when more than
    ``max_failed_fraction`` of the images failed a metric (``bench.max_failed_fraction``)."""
    import pandas as pd

    from pixverve.bench.scores import msfi
    from pixverve.core import images

    ics_client = ics_judge(judge, spec)
    who = judge_who(judge)
    rows = []
    for item in items:
        rgb, _ = images.read_rgb(item.generated, max_megapixels)
        msfi_requests, ics_request, patches = judge_requests(item, rgb, prompts, spec)
        del rgb
        results = judge.run_many(msfi_requests)
        i = ics_client.run_many([ics_request])[0]
        g, locals_ = results[0], results[1:]
        m = msfi(g.parsed if g.status == "ok" else None, [r.parsed if r.status == "ok" else None for r in locals_])
        m_status, m_error = msfi_status(g, locals_, m)
        ics_value, i_status, i_error = ics_result(i)
        rows.append(
            {
                "name": item.name,
                "msfi": m["msfi"],
                "s_global": m["s_global"],
                "s_local": m["s_local"],
                "msfi_included": m["included"],
                "msfi_status": m_status,
                "msfi_error": m_error,
                "valid_patches": m["valid_patches"],
                "n_patches": len(patches),
                "defaulted_global": ",".join(m["defaulted_global"]),
                "defaulted_local": m["defaulted_local"],
                "ics": ics_value,
                "ics_included": not math.isnan(ics_value),
                "ics_status": i_status,
                "ics_error": i_error,
                "global_status": g.status,
                "local_statuses": json.dumps([r.status for r in locals_]),
                "local_errors": json.dumps([r.error for r in locals_]),
                "patches": json.dumps(patches),
                "replies": json.dumps({r.request_id: r.raw_replies for r in [*results, i]}),
                "request_options": json.dumps({"msfi": results[0].request_options, "ics": i.request_options}),
                "judge_model": judge.model_name,
                "prompts": prompts.mode,
                "smoke": bool(judge.smoke),
            }
        )
        log(
            f"{item.name}: MSFI {m['msfi']:.3f} ({m_status}; global {g.status}, {m['valid_patches']}/{len(patches)} patches), "
            f"ICS {ics_value:.3f} ({i_status}){' -- ' + (m_error or i_error)[:300] if m_error or i_error else ''}"
        )
        judge_gate(rows, len(items), max_failed_fraction, who)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- per-image model metrics


def pil_grey(rgb: np.ndarray) -> np.ndarray:
    """PIL's "L" grey (R*19595 + G*38470 + B*7471 + 2^15) >> 16, what the published GLCM reads;
    OpenCV's BT.601 fixed point (``images.grey_luma``) differs by 1 on some pixels."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))


def aesthetics_columns(aesthetic, rgb: np.ndarray) -> dict:
    """LAION aesthetics of one image with its status (``off`` without a predictor)."""
    if aesthetic is None:
        return off_columns("aesthetics")
    value, status, error = model_score("aesthetics", lambda: aesthetic.score([rgb])[0])
    return {"aesthetics": value, "aesthetics_status": status, "aesthetics_error": error}


def clip_columns(clip, rgb: np.ndarray, caption: str) -> dict:
    """CLIPScore of one image: ``clip_raw`` unclamped (the batch aggregation clamps), ``clip``
    clamped, with its status (``off`` without a model)."""
    if clip is None:
        return {"clip_raw": float("nan"), **off_columns("clip")}
    raw, status, error = model_score("clip", lambda: clip.score(rgb, caption))
    return {
        "clip_raw": raw,
        "clip": max(raw, 0.0) if status == "ok" else raw,
        "clip_status": status,
        "clip_error": error,
    }


def clip_of_method(per_image, batch: int = 4) -> float:
    """The published CLIPScore of a method over the images CLIP scored (benchmark order kept; a
    failed image is left out, as a failed judge reply is, and counted in ``clip_failed``)."""
    scored = per_image[[s == "ok" for s in metric_statuses(per_image, "clip")]]
    return clip_score_of_batches(scored["clip_raw"], batch)


def score_method(items, aesthetic, clip, max_megapixels: float, log=print, threads: int | None = None):
    """Per-image LAION aesthetics, CLIPScore (short caption; ``clip_raw`` unclamped) and GLCM
    (FG-CLIP2 has its own rule and env: :func:`fgclip2_method`).  Each model gets the full
    decoded image (decoded once) and its own preprocessing resizes it, as in the published code.
    Each model metric has ``<metric>_status`` / ``<metric>_error`` per image (:func:`model_score`).

    ``threads``: the job's CPUs, for torch and the GLCM kernel (both default to every CPU)."""
    import pandas as pd
    import torch
    from tqdm import tqdm

    from pixverve.bench.glcm import glcm_score
    from pixverve.core import images

    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    rows = []
    for item in tqdm(items, desc="bench scores", unit="img", mininterval=2):
        rgb, _ = images.read_rgb(item.generated, max_megapixels)
        row = {"name": item.name, "width": rgb.shape[1], "height": rgb.shape[0]}
        row["glcm"] = glcm_score(pil_grey(rgb), threads)
        row.update(aesthetics_columns(aesthetic, rgb))
        row.update(clip_columns(clip, rgb, item.short_caption))
        del rgb
        rows.append(row)
    return pd.DataFrame(rows)


def fgclip2_method(items, fgclip2, max_megapixels: float, log=print):
    """Per-image FG-CLIP2 score (long caption) from the full decoded image (rule bench_fgclip2)."""
    import pandas as pd

    from pixverve.core import images

    rows = []
    for item in items:
        rgb, _ = images.read_rgb(item.generated, max_megapixels)
        value, status, error = model_score("fgclip2", functools.partial(fgclip2.score, rgb, item.long_caption))
        rows.append(
            {
                "name": item.name,
                "fgclip2": value,
                "fgclip2_status": status,
                "fgclip2_error": error,
                "fgclip2_smoke": bool(fgclip2.smoke),
                "fgclip2_model": fgclip2.model_name,
            }
        )
        del rgb
    log(f"FG-CLIP2 scored {sum(r['fgclip2_status'] == 'ok' for r in rows)} of {len(rows)} images")
    return pd.DataFrame(rows, columns=FGCLIP2_COLUMNS)


FGCLIP2_COLUMNS = ["name", "fgclip2", "fgclip2_status", "fgclip2_error", "fgclip2_smoke", "fgclip2_model"]


def fgclip2_off(items):
    """The FG-CLIP2 table of a run with ``bench.fgclip2.backend: none``: every image ``off``."""
    import pandas as pd

    return pd.DataFrame(
        [{"name": i.name, **off_columns("fgclip2"), "fgclip2_smoke": False, "fgclip2_model": ""} for i in items],
        columns=FGCLIP2_COLUMNS,
    )


# ----------------------------------------------------------------------------- tables


def method_row(name: str, resolution: str, per_image, judged, sets: dict, smoke: dict, fgclip2=None) -> dict:
    """One table row.  CLIP is the published batch aggregation (``sets["clip"]``, in benchmark
    order); the other per-image metrics are means over the images that have one (as published:
    a failed call is left out).  ``<metric>_n`` / ``<metric>_failed`` count the images scored and
    failed; ``partial_columns`` names the values computed on fewer images than the benchmark's."""
    from pixverve.bench.scores import mean_over_included

    row = {"method": name, "resolution": resolution, "images": sets.get("images", len(per_image))}
    row["aesthetics"] = mean_over_included(scored_values(per_image, "aesthetics"))[0]
    row["glcm"] = float(per_image["glcm"].mean()) if len(per_image) and "glcm" in per_image else float("nan")
    row["clip"] = sets.get("clip", float("nan"))
    row["fgclip2"] = mean_over_included(scored_values(fgclip2, "fgclip2"))[0]
    for key in ("msfi", "ics"):
        row[key], row[f"{key}_images"] = mean_over_included(scored_values(judged, key))
    row.update({k: sets.get(k, float("nan")) for k in ("fid", "fid_patch", "compression")})
    tables = {"aesthetics": per_image, "clip": per_image, "fgclip2": fgclip2, "msfi": judged, "ics": judged}
    for metric, table in tables.items():
        row[f"{metric}_n"], row[f"{metric}_failed"] = metric_counts(table, metric)
    row["partial_columns"] = ",".join(m for m in MODEL_METRICS if is_partial(row, m))
    row["smoke_columns"] = ",".join(sorted(k for k, v in smoke.items() if v))
    return row


def scored_values(table, metric: str) -> list[float]:
    """A metric's values on the images whose status is ok (a failure's value is never read)."""
    if table is None or metric not in table or not len(table):
        return []
    return [float(v) for v, s in zip(table[metric], metric_statuses(table, metric), strict=True) if s == "ok"]


def is_partial(row: dict, metric: str) -> bool:
    """Whether a method's value covers fewer images than the benchmark because some failed (a "--"
    where every image failed is marked too: it is not a metric switched off) or were not scored."""
    value, n, failed = row.get(metric), row.get(f"{metric}_n"), row.get(f"{metric}_failed")
    if failed:
        return True
    has_value = value is not None and not (isinstance(value, float) and math.isnan(value))
    return has_value and n is not None and n < row["images"]


def best_marks(df) -> dict[str, set[int]]:
    """Row positions holding the best value of each metric column (ties all marked).  A value
    computed on fewer images than the benchmark (a dagger) is not comparable with a full one, so
    it competes for no mark: a failure is never a "best"."""
    marks = {}
    for key, _ in TABLE_COLUMNS:
        values = df[key].to_numpy(dtype=float).copy()
        values[[i for i in range(len(df)) if key in partial_columns(df, i)]] = np.nan
        if np.isnan(values).all():
            marks[key] = set()
            continue
        best = np.nanmin(values) if key in LOWER_IS_BETTER else np.nanmax(values)
        marks[key] = {
            i for i, v in enumerate(values) if not math.isnan(v) and math.isclose(v, best, rel_tol=0, abs_tol=1e-12)
        }
    return marks


def write_bench_tables(df, stem, title: str) -> list[Path]:
    """CSV (numbers + ``best_in``), Markdown (best in bold) and LaTeX (best in \\textbf) with the
    paper's column order, the best taken among the values computed on every image; a value a tiny
    model produced carries a ``*`` and the table a note; a value computed on fewer images than the
    benchmark (failed calls left out) a dagger and a footnote with its counts (``partial_columns``,
    ``<metric>_n`` / ``<metric>_failed``)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    df = df.reset_index(drop=True)
    marks = best_marks(df)
    csv = df.copy()
    csv["best_in"] = [",".join(k for k, _ in TABLE_COLUMNS if i in marks[k]) for i in range(len(df))]
    csv.to_csv(stem.with_suffix(".csv"), index=False)

    def cell(i, key, bold, dagger):
        v = df.loc[i, key]
        if isinstance(v, float) and math.isnan(v):
            return "--" + (dagger if key in partial_columns(df, i) else "")
        text = f"{v:.3f}"
        text = bold(text) if i in marks[key] else text
        text += dagger if key in partial_columns(df, i) else ""
        return text + ("*" if key in str(df.loc[i, "smoke_columns"]).split(",") else "")

    heads = [label for _, label in TABLE_COLUMNS]
    md = [f"**{title}**", "", "| method | resolution | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    tex_rows = []
    for i in range(len(df)):
        md.append(
            f"| {df.loc[i, 'method']} | {df.loc[i, 'resolution']} | "
            + " | ".join(cell(i, k, lambda t: f"**{t}**", FAILED_MARK) for k, _ in TABLE_COLUMNS)
            + " |"
        )
        tex_rows.append(
            " & ".join(
                [str(df.loc[i, "method"]).replace("_", r"\_"), str(df.loc[i, "resolution"])]
                + [cell(i, k, lambda t: rf"\textbf{{{t}}}", r"$^\dagger$") for k, _ in TABLE_COLUMNS]
            )
            + r" \\"
        )
    partial = failed_note(df)
    counts = [
        f"{df.loc[i, 'method']}: MSFI {int(df.loc[i, 'msfi_images'])}, ICS {int(df.loc[i, 'ics_images'])} of {int(df.loc[i, 'images'])}"
        for i in range(len(df))
        if {"msfi_images", "ics_images", "images"} <= set(df.columns)
    ]
    if counts:
        md += [
            "",
            "Images each judged mean covers (as published, an image without a valid reply is left out): "
            + "; ".join(counts)
            + ".",
        ]
    if partial:
        md += ["", f"{FAILED_MARK} {partial}"]
    if df["smoke_columns"].astype(bool).any():
        md += ["", "\\* SMOKE: scored, judged or generated by a tiny random model -- exercises the code, not a result."]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    tex_heads = " & ".join(["Method", "Res."] + [h.replace("_", r"\_") for h in heads]) + r" \\"
    tex = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{title}}}",
        r"\begin{tabular}{ll" + "r" * len(heads) + "}",
        r"\toprule",
        tex_heads,
        r"\midrule",
        *tex_rows,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if partial:
        tex.append(r"\par\footnotesize $^\dagger$ " + latex_text(partial))
    tex.append(r"\end{table}")
    stem.with_suffix(".tex").write_text("\n".join(tex) + "\n")
    return [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]


def partial_columns(df, i: int) -> list[str]:
    """The metrics of row ``i`` computed on fewer images than the benchmark."""
    return (
        str(df.loc[i, "partial_columns"]).split(",")
        if "partial_columns" in df and isinstance(df.loc[i, "partial_columns"], str)
        else []
    )


def failed_note(df) -> str:
    """The dagger's footnote: per marked method and metric, images scored of the benchmark's and failed."""
    labels = dict(TABLE_COLUMNS)
    parts = []
    for i in range(len(df)):
        cols = [m for m in partial_columns(df, i) if m]
        counts = [
            f"{labels[m]} {count_text(df, i, m + '_n')} of {int(df.loc[i, 'images'])} ({count_text(df, i, m + '_failed')} failed)"
            for m in cols
        ]
        if counts:
            parts.append(f"{df.loc[i, 'method']}: " + ", ".join(counts))
    if not parts:
        return ""
    return (
        "computed on fewer images than the benchmark (-- : on none): the images whose scorer or judge call failed "
        "are left out (as published), so the value is not comparable with a full one -- " + "; ".join(parts) + "."
    )


def count_text(df, i: int, column: str) -> str:
    v = df.loc[i, column] if column in df else None
    return "?" if v is None or v != v else str(int(v))


def latex_text(text: str) -> str:
    """Plain text for a LaTeX footnote (the characters method names and our notes use)."""
    return (
        text.replace("\\", r"\textbackslash{}")
        .replace("_", r"\_")
        .replace("%", r"\%")
        .replace("&", r"\&")
        .replace("#", r"\#")
    )


def crops_figure(
    method_dirs: dict[str, Path],
    real_dir: Path,
    names: list[str],
    crop_px: int,
    out_png,
    max_megapixels: float,
    smoke_methods: frozenset = frozenset(),
) -> None:
    """Side-by-side crops at 100 % zoom: one row per image, the real image then each method, the
    same region (centre of the image, ``crop_px`` square, scaled to each image's size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pixverve.core import images

    columns = [("real", real_dir)] + list(method_dirs.items())
    fig, axes = plt.subplots(len(names), len(columns), figsize=(2.6 * len(columns), 2.6 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c, (label, folder) in enumerate(columns):
            ax = axes[r][c]
            ax.axis("off")
            path = next((p for p in sorted(Path(folder).glob(name + ".*"))), None)
            if path is None:
                continue
            rgb, _ = images.read_rgb(path, max_megapixels)
            h, w = rgb.shape[:2]
            side = min(crop_px, h, w)
            y, x = (h - side) // 2, (w - side) // 2
            ax.imshow(rgb[y : y + side, x : x + side], interpolation="nearest")
            if r == 0:
                ax.set_title(label + (" [SMOKE]" if label in smoke_methods else ""), fontsize=9)
    fig.suptitle("centre crops at 100 % zoom", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
