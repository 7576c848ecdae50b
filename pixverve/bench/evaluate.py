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
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np

LOWER_IS_BETTER = {"fid", "fid_patch", "compression"}  # compression: less compressible = more detail (Diffusion-4K)
TABLE_COLUMNS = [("fid", "FID"), ("fid_patch", "FID_patch"), ("aesthetics", "Aes"), ("glcm", "GLCM"), ("msfi", "MSFI"),
                 ("clip", "CLIP"), ("fgclip2", "FG-CLIP2"), ("ics", "ICS"), ("compression", "Compression")]


def fid_patch_coordinates(n_pairs: int, size: int, crop: int = 299, per_pair: int = 20, seed: int = 42,
                          order: str = "yx") -> list[list[tuple[int, int]]]:
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


def fid_patch(items, weights_path, size: int, crop: int, per_pair: int, seed: int, device: str = "cpu",
              max_megapixels: float = 1000.0, order: str = "yx", method: str = "?") -> float:
    import torch

    from pixverve.bench.fid import square_uint8, frechet_inception_distance, require_two_images

    require_two_images(len(items), method, "FID_patch")
    metric = frechet_inception_distance(weights_path, device)
    for item, coords in zip(items, fid_patch_coordinates(len(items), size, crop, per_pair, seed, order),
                            strict=True):
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
                self.model, self.processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
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
            inputs = self.processor(text=[text], images=[rgb], return_tensors="pt", padding=True, truncation=True,
                                    max_length=self.model.config.text_config.max_position_embeddings).to(self.device)
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


class FGClip2EnvError(RuntimeError):
    pass


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


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
                self.tokenizer, self.image_processor = AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
            self.device, self.model_name, self.long_mode = "cpu", "tiny random SigLIP 2 (FG-CLIP2 stand-in)", False
            return
        model = spec.get("model")
        if not model:
            raise RuntimeError("config key bench.fgclip2.model: set a local folder holding fg-clip2-base (with its code)")

        def remote(loader):
            return lambda m, **kw: loader(m, trust_remote_code=True, **kw)

        try:
            self.model = load_pretrained(remote(AutoModelForCausalLM.from_pretrained), model, "bench.fgclip2.model").eval()
        except ImportError as exc:  # its modelling code imports transformers.modeling_attn_mask_utils (gone in 5.x)
            raise FGClip2EnvError(
                f"FG-CLIP2's own model code in {model} does not import under transformers {_transformers_version()} ({exc}); "
                f"it needs transformers 4.x: run rule bench_fgclip2 in its conda env {FGCLIP2_ENV} (snakemake --use-conda)"
            ) from exc
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, model, "bench.fgclip2.model")
        self.image_processor = load_pretrained(remote(AutoImageProcessor.from_pretrained), model, "bench.fgclip2.model")
        self.device, self.model_name, self.long_mode = model_device(spec), model, True
        self.model.to(self.device)

    def score(self, rgb: np.ndarray, long_caption: str) -> float:
        import torch

        h, w = rgb.shape[:2]
        with torch.inference_mode():
            image = self.image_processor(images=rgb, max_num_patches=fgclip2_patch_budget(w, h), return_tensors="pt").to(self.device)
            # the published scorer lower-cases the caption before tokenising it
            text = self.tokenizer([long_caption.lower()], padding="max_length", max_length=196, truncation=True, return_tensors="pt").to(self.device)
            img = self.model.get_image_features(**image)
            txt = self.model.get_text_features(**text, walk_type="long") if self.long_mode else self.model.get_text_features(**text)
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
    global_view, patches = msfi_layout(img, seed, int(m["n_sobel"]), int(m["n_random"]), int(m["analysis_long_edge"]),
                                       int(m["global_long_edge"]))
    msfi_requests = [("msfi_global", f"{item.name}:global", [judge_message(prompts.msfi_global(), [global_view], quality)], None)]
    rows = []
    for p in patches:
        left, top, right, bottom = p["box"]
        text = prompts.msfi_local(p["relative"])
        msfi_requests.append(("msfi_local", f"{item.name}:{left},{top}",
                              [judge_message(text, [img.crop(p["box"]), global_view], quality)], None))
        rows.append({"x": left, "y": top, "w": right - left, "h": bottom - top, "relative": p["relative"], "picked": p["picked"]})
    ics_request = ("ics", f"{item.name}:ics", [judge_message(prompts.ics(item.long_caption),
                                                             [ics_view(img, int(spec["ics"]["long_edge"]))], quality)], None)
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


def judge_method(items, judge, prompts, spec: dict, max_megapixels: float, log=print):
    """Per-image MSFI and ICS rows (with every raw reply) for one method; an image the published
    code leaves out of a mean (no global / no local reply; no valid ICS reply) has NaN there and
    ``msfi_included`` / ``ics_included`` False."""
    import pandas as pd

    from pixverve.bench.scores import ics, msfi
    from pixverve.core import images

    ics_client = ics_judge(judge, spec)
    rows = []
    for item in items:
        rgb, _ = images.read_rgb(item.generated, max_megapixels)
        msfi_requests, ics_request, patches = judge_requests(item, rgb, prompts, spec)
        del rgb
        results = judge.run_many(msfi_requests)
        i = ics_client.run_many([ics_request])[0]
        g, locals_ = results[0], results[1:]
        m = msfi(g.parsed if g.status == "ok" else None, [r.parsed if r.status == "ok" else None for r in locals_])
        try:
            ics_value = ics(i.parsed) if i.status == "ok" else float("nan")
        except ValueError:
            ics_value = float("nan")
        rows.append({
            "name": item.name, "msfi": m["msfi"], "s_global": m["s_global"], "s_local": m["s_local"],
            "msfi_included": m["included"], "valid_patches": m["valid_patches"], "n_patches": len(patches),
            "defaulted_global": ",".join(m["defaulted_global"]), "defaulted_local": m["defaulted_local"],
            "ics": ics_value, "ics_included": not math.isnan(ics_value), "ics_status": i.status, "global_status": g.status,
            "local_statuses": json.dumps([r.status for r in locals_]), "patches": json.dumps(patches),
            "replies": json.dumps({r.request_id: r.raw_replies for r in [*results, i]}),
            "request_options": json.dumps({"msfi": results[0].request_options, "ics": i.request_options}),
            "judge_model": judge.model_name, "prompts": prompts.mode, "smoke": bool(judge.smoke),
        })
        log(f"{item.name}: MSFI {m['msfi']:.3f} (global {g.status}, {m['valid_patches']}/{len(patches)} patches), "
            f"ICS {ics_value:.3f} ({i.status})")
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- per-image model metrics


def pil_grey(rgb: np.ndarray) -> np.ndarray:
    """PIL's "L" grey (R*19595 + G*38470 + B*7471 + 2^15) >> 16, what the published GLCM reads;
    OpenCV's BT.601 fixed point (``images.grey_luma``) differs by 1 on some pixels."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))


def score_method(items, aesthetic, clip, max_megapixels: float, log=print, threads: int | None = None):
    """Per-image LAION aesthetics, CLIPScore (short caption; ``clip_raw`` unclamped) and GLCM
    (FG-CLIP2 has its own rule and env: :func:`fgclip2_method`).  Each model gets the full
    decoded image (decoded once) and its own preprocessing resizes it, as in the published code.

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
        row["aesthetics"] = float(aesthetic.score([rgb])[0]) if aesthetic is not None else float("nan")
        raw = clip.score(rgb, item.short_caption) if clip is not None else float("nan")
        row["clip_raw"], row["clip"] = raw, max(raw, 0.0) if not math.isnan(raw) else raw
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
        rows.append({"name": item.name, "fgclip2": fgclip2.score(rgb, item.long_caption), "fgclip2_smoke": bool(fgclip2.smoke),
                     "fgclip2_model": fgclip2.model_name})
        del rgb
    log(f"FG-CLIP2 scored {len(rows)} images")
    return pd.DataFrame(rows, columns=["name", "fgclip2", "fgclip2_smoke", "fgclip2_model"])


# ----------------------------------------------------------------------------- tables


def method_row(name: str, resolution: str, per_image, judged, sets: dict, smoke: dict, fgclip2=None) -> dict:
    """One table row.  CLIP is the published batch aggregation (``sets["clip"]``, in benchmark
    order); MSFI and ICS are means over the images that have one, with their counts."""
    from pixverve.bench.scores import mean_over_included

    row = {"method": name, "resolution": resolution, "images": sets.get("images", len(per_image))}
    for key in ("aesthetics", "glcm"):
        row[key] = float(per_image[key].mean()) if len(per_image) and key in per_image else float("nan")
    row["clip"] = sets.get("clip", float("nan"))
    row["fgclip2"] = float(fgclip2["fgclip2"].mean()) if fgclip2 is not None and len(fgclip2) else float("nan")
    for key in ("msfi", "ics"):
        row[key], row[f"{key}_images"] = mean_over_included(judged[key]) if len(judged) else (float("nan"), 0)
    row.update({k: sets.get(k, float("nan")) for k in ("fid", "fid_patch", "compression")})
    row["smoke_columns"] = ",".join(sorted(k for k, v in smoke.items() if v))
    return row


def best_marks(df) -> dict[str, set[int]]:
    """Row positions holding the best value of each metric column (ties all marked)."""
    marks = {}
    for key, _ in TABLE_COLUMNS:
        values = df[key].to_numpy(dtype=float)
        if np.isnan(values).all():
            marks[key] = set()
            continue
        best = np.nanmin(values) if key in LOWER_IS_BETTER else np.nanmax(values)
        marks[key] = {i for i, v in enumerate(values) if not math.isnan(v) and math.isclose(v, best, rel_tol=0, abs_tol=1e-12)}
    return marks


def write_bench_tables(df, stem, title: str) -> list[Path]:
    """CSV (numbers + ``best_in``), Markdown (best in bold) and LaTeX (best in \\textbf) with the
    paper's column order; a value a tiny model produced carries a ``*`` and the table a note."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    df = df.reset_index(drop=True)
    marks = best_marks(df)
    csv = df.copy()
    csv["best_in"] = [",".join(k for k, _ in TABLE_COLUMNS if i in marks[k]) for i in range(len(df))]
    csv.to_csv(stem.with_suffix(".csv"), index=False)

    def cell(i, key, bold):
        v = df.loc[i, key]
        if isinstance(v, float) and math.isnan(v):
            return "--"
        text = f"{v:.3f}"
        text = bold(text) if i in marks[key] else text
        return text + ("*" if key in str(df.loc[i, "smoke_columns"]).split(",") else "")

    heads = [label for _, label in TABLE_COLUMNS]
    md = [f"**{title}**", "", "| method | resolution | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    tex_rows = []
    for i in range(len(df)):
        md.append(f"| {df.loc[i, 'method']} | {df.loc[i, 'resolution']} | " + " | ".join(cell(i, k, lambda t: f"**{t}**") for k, _ in TABLE_COLUMNS) + " |")
        tex_rows.append(" & ".join([str(df.loc[i, "method"]).replace("_", r"\_"), str(df.loc[i, "resolution"])]
                                   + [cell(i, k, lambda t: rf"\textbf{{{t}}}") for k, _ in TABLE_COLUMNS]) + r" \\")
    counts = [f"{df.loc[i, 'method']}: MSFI {int(df.loc[i, 'msfi_images'])}, ICS {int(df.loc[i, 'ics_images'])} of {int(df.loc[i, 'images'])}"
              for i in range(len(df)) if {"msfi_images", "ics_images", "images"} <= set(df.columns)]
    if counts:
        md += ["", "Images each judged mean covers (as published, an image without a valid reply is left out): " + "; ".join(counts) + "."]
    if df["smoke_columns"].astype(bool).any():
        md += ["", "\\* SMOKE: scored, judged or generated by a tiny random model -- exercises the code, not a result."]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    tex_heads = " & ".join(["Method", "Res."] + [h.replace("_", r"\_") for h in heads]) + r" \\"
    tex = [r"\begin{table}[t]", r"\centering", rf"\caption{{{title}}}", r"\begin{tabular}{ll" + "r" * len(heads) + "}", r"\toprule",
           tex_heads, r"\midrule", *tex_rows, r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    stem.with_suffix(".tex").write_text("\n".join(tex) + "\n")
    return [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]


def crops_figure(method_dirs: dict[str, Path], real_dir: Path, names: list[str], crop_px: int, out_png, max_megapixels: float,
                 smoke_methods: frozenset = frozenset()) -> None:
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
