"""Model backends of stage 5: tagger, detector, segmenter (each: the paper's model or a practical
alternative, plus ``tiny``).  VLM-driven steps (tag lists, pruning, instance descriptions,
aesthetic analysis, captions, Rex-Omni boxes) go through the project's VLM client.

Backends and what they load:
* tagger ``vlm``: the VLM asked for a tag list (prompts/tags.md).
* tagger ``ram_plus``: RAM++ (the paper's tagger) from recognize-anything, in its own conda env
  (envs/ramplus.yaml: the package is on GitHub, not PyPI, and needs transformers < 5).
* tagger ``clip``: transformers ``CLIPModel`` scoring every tag of a vocabulary file
  (cosine similarity of L2-normalised embeddings, kept above a threshold, top k).
* detector ``grounding_dino``: transformers zero-shot detection (``AutoModelForZeroShotObjectDetection``)
  prompted with the kept tags; ``rex_omni``: Rex-Omni (or any grounding VLM) through the VLM
  client, its ``<|box_start|><x0><y0><x1><y1><|box_end|>`` answers (coordinates in 0..999 bins)
  parsed; ``tiny``: a random Grounding DINO.
* segmenter ``sam2``: transformers ``Sam2Model`` from the boxes; ``box``: the box itself as the
  mask (no model, coarse, for a cluster without SAM 2); ``tiny``: a random SAM 2.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from pixverve.models.loading import ModelUnavailable, load_pretrained, model_device

# ----------------------------------------------------------------------------- tagging


class ClipTagger:
    """Open-vocabulary tags: cosine similarity between the image and every vocabulary entry."""

    def __init__(
        self,
        model_id: str,
        vocabulary: list[str],
        threshold: float,
        top_k: int,
        device: str = "cpu",
        smoke: bool = False,
        key: str = "caption.tags.clip.model",
    ):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        if not vocabulary:
            raise ModelUnavailable("config key caption.tags.clip.vocabulary: the tag vocabulary file is empty")
        self.model = load_pretrained(CLIPModel.from_pretrained, model_id, key).to(device).eval()
        self.processor = load_pretrained(CLIPProcessor.from_pretrained, model_id, key)
        self.vocabulary, self.threshold, self.top_k, self.device = vocabulary, threshold, top_k, device
        self.smoke, self.model_name = smoke, model_id
        with torch.inference_mode():
            text = self.processor(text=[f"a photo of {t}" for t in vocabulary], return_tensors="pt", padding=True).to(
                device
            )
            emb = self.model.get_text_features(**text)
            emb = getattr(emb, "pooler_output", emb)
            self.text_emb = torch.nn.functional.normalize(emb.float(), dim=-1)

    def tag(self, images: list[np.ndarray]) -> list[list[tuple[str, float]]]:
        import torch

        with torch.inference_mode():
            pixels = self.processor(images=images, return_tensors="pt").to(self.device)
            emb = self.model.get_image_features(**pixels)
            emb = getattr(emb, "pooler_output", emb)
            sims = torch.nn.functional.normalize(emb.float(), dim=-1) @ self.text_emb.T
        out = []
        for row in sims.cpu().numpy().astype(np.float64):
            order = sorted(range(len(row)), key=lambda i: (-row[i], i))
            out.append(
                [(self.vocabulary[i], round(float(row[i]), 6)) for i in order[: self.top_k] if row[i] >= self.threshold]
            )
        return out


RAM_PLUS_INSTALL = (
    "conda env create -f envs/ramplus.yaml (or, in an env with transformers<5: "
    "pip install git+https://github.com/xinyu1205/recognize-anything)"
)


class RamPlusTagger:
    """RAM++ (the paper's tagger), the way recognize-anything's ``inference_ram_plus.py`` runs it:
    ``get_transform(image_size)`` (RGB, resize to a square, ImageNet normalisation), ``ram_plus(
    pretrained=..., image_size=..., vit="swin_l")``, ``generate_tag`` (its per-class thresholds),
    tags read from the English " | "-joined output.  The package is imported only here: it is on
    GitHub, not PyPI, needs transformers < 5 and runs in its own env (envs/ramplus.yaml)."""

    def __init__(
        self,
        weights: str,
        image_size: int = 384,
        vit: str = "swin_l",
        device: str = "cpu",
        key: str = "caption.tags.ram_plus",
    ):
        import importlib

        try:  # imported by name: only envs/ramplus.yaml has it
            ram = importlib.import_module("ram")
            ram_models = importlib.import_module("ram.models")
        except ImportError as exc:
            raise ModelUnavailable(
                f"config key caption.tags.backend: ram_plus needs the recognize-anything package ({exc}); install it with "
                f"{RAM_PLUS_INSTALL} and run with --use-conda"
            ) from None
        if not weights or not Path(weights).is_file():
            raise ModelUnavailable(
                f"config key {key}.weights: RAM++ checkpoint {weights!r} not found; download ram_plus_swin_large_14m.pth "
                "(https://huggingface.co/xinyu1205/recognize-anything-plus-model) and give its path"
            )
        self.transform = ram.get_transform(image_size=int(image_size))
        self.model = ram_models.ram_plus(pretrained=str(weights), image_size=int(image_size), vit=vit).eval().to(device)
        self.device, self.smoke, self.model_name = device, False, f"RAM++ {Path(weights).name}"

    def tag(self, images: list[np.ndarray]) -> list[list[tuple[str, float]]]:
        import torch
        from PIL import Image

        batch = torch.stack([self.transform(Image.fromarray(np.ascontiguousarray(im))) for im in images]).to(
            self.device
        )
        with torch.no_grad():
            english, _ = self.model.generate_tag(batch)
        # RAM++ returns the tags above their thresholds, no scores: 1.0 each, in its tag-list order
        return [[(t.strip(), 1.0) for t in line.split("|") if t.strip()] for line in english]


def read_vocabulary(path: str | Path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [t.strip() for t in lines if t.strip() and not t.startswith("#")]


def build_tagger(spec: dict):
    """``caption.tags`` -> a tagger with ``tag(images)``, or None for backend ``vlm`` (the caller
    asks the VLM client)."""
    backend = spec["backend"]
    if backend == "vlm":
        return None
    if backend == "ram_plus":
        ram = spec.get("ram_plus") or {}
        return RamPlusTagger(
            ram.get("weights"), int(ram.get("image_size", 384)), ram.get("vit", "swin_l"), model_device(ram)
        )
    clip = spec.get("clip") or {}
    vocabulary = read_vocabulary(clip["vocabulary"])
    if backend == "clip":
        if not clip.get("model"):
            raise ModelUnavailable("config key caption.tags.clip.model: set a local folder or hub id")
        return ClipTagger(clip["model"], vocabulary, float(clip["threshold"]), int(clip["top_k"]), model_device(clip))
    if backend == "tiny":
        from pixverve.models.tiny_vision import build_tiny_clip

        with tempfile.TemporaryDirectory(prefix="pixverve-tiny-clip-") as folder:
            build_tiny_clip(folder, seed=int(spec.get("seed", 0)))
            # random embeddings: a threshold would keep an arbitrary number, so keep the top k
            tagger = ClipTagger(folder, vocabulary, -1.0, int(clip["top_k"]), "cpu", smoke=True)
        tagger.model_name = "tiny random CLIP"
        return tagger
    raise ModelUnavailable(
        f"config key caption.tags.backend: unknown backend {backend!r} (vlm | ram_plus | clip | tiny)"
    )


# ----------------------------------------------------------------------------- detection


class GroundingDinoDetector:
    """Zero-shot boxes for a list of phrases (transformers Grounding DINO)."""

    def __init__(
        self,
        model_id: str,
        box_threshold: float,
        text_threshold: float,
        tags_per_prompt: int,
        device: str = "cpu",
        smoke: bool = False,
        key: str = "caption.boxes.grounding_dino.model",
    ):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.model = (
            load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained, model_id, key).to(device).eval()
        )
        self.processor = load_pretrained(AutoProcessor.from_pretrained, model_id, key)
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.tags_per_prompt, self.device, self.smoke, self.model_name = tags_per_prompt, device, smoke, model_id

    @property
    def text_limit(self) -> int:
        """Tokens one prompt may have: the model's own ``max_text_len`` (256 for the released
        models), never more than its text encoder's positions."""
        config = self.model.config
        positions = (
            getattr(getattr(config, "text_config", None), "max_position_embeddings", None) or config.max_text_len
        )
        return int(min(config.max_text_len, positions))

    def prompt_groups(self, tags: list[str]) -> list[list[str]]:
        """The tags split into prompts ("a. b. c.") that each fit ``text_limit`` tokens ([CLS] and
        [SEP] included) and hold at most ``tags_per_prompt`` tags, in order.  A single tag longer
        than the limit is a prompt of its own, truncated by the tokenizer."""
        tokenizer, limit = self.processor.tokenizer, self.text_limit
        groups: list[list[str]] = []
        for tag in (t.lower().strip() for t in tags):
            if not tag:
                continue
            candidate = (groups[-1] + [tag]) if groups else [tag]
            fits = len(tokenizer(". ".join(candidate) + ".")["input_ids"]) <= limit
            if groups and fits and len(candidate) <= self.tags_per_prompt:
                groups[-1] = candidate
            else:
                groups.append([tag])
        return groups

    def detect(self, view: np.ndarray, tags: list[str]) -> list[dict]:
        """Boxes on ``view`` (its pixel coordinates): [{label, score, box}]; the prompt is the
        tags joined by ". " (Grounding DINO's phrase separator), split by ``prompt_groups``; each
        box's label is looked up among the tags of the prompt that found it."""
        import torch

        found = []
        for group in self.prompt_groups(tags):
            text = ". ".join(group) + "."
            inputs = self.processor(
                images=view, text=text, truncation=True, max_length=self.text_limit, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                outputs = self.model(**inputs)
            result = self.processor.post_process_grounded_object_detection(
                outputs,
                inputs["input_ids"],
                threshold=self.box_threshold,
                text_threshold=self.text_threshold,
                target_sizes=[view.shape[:2]],
            )[0]
            labels = result["text_labels"] if "text_labels" in result else result["labels"]  # "labels" warns in v5
            for box, score, label in zip(result["boxes"].tolist(), result["scores"].tolist(), labels):
                found.append(
                    {"label": nearest_tag(str(label), group), "phrase": str(label), "score": float(score), "box": box}
                )
        return found


def nearest_tag(phrase: str, tags: list[str]) -> str:
    """The prompt tag a detected phrase belongs to (Grounding DINO returns the prompt's sub-words,
    sometimes several phrases run together): exact, then a tag inside the phrase (longest first),
    then the phrase inside a tag, then the closest spelling; "object" for an empty phrase."""
    import difflib

    phrase = " ".join(phrase.replace("[SEP]", " ").replace("[CLS]", " ").replace("##", "").lower().split()).strip(" .")
    if not phrase:
        return "object"
    if phrase in tags:
        return phrase
    inside = sorted(
        (t for t in tags if re.search(rf"\b{re.escape(t)}\b", phrase)), key=lambda t: (-len(t), tags.index(t))
    )
    if inside:
        return inside[0]
    containing = [t for t in tags if phrase in t]
    if containing:
        return containing[0]
    close = difflib.get_close_matches(phrase, tags, n=1, cutoff=0.0)
    return close[0] if close else "object"


# Checked against IDEA-Research/Rex-Omni rex_omni/parser.py (parse_standard_prediction): the answer
# ends at <|im_end|>, a truncated one is closed with <|box_end|>, boxes are the comma-separated
# groups of exactly four <bin> tokens, bins map to pixels as bin / 999 * size.
REX_BOX = re.compile(
    r"<\|object_ref_start\|>\s*([^<]+?)\s*<\|object_ref_end\|>\s*<\|box_start\|>(.*?)<\|box_end\|>", re.S
)
REX_BIN = re.compile(r"<(\d+)>")
REX_MARKERS = ("<|object_ref_start|>", "<|box_start|>")


def parse_rex_boxes(text: str, width: int, height: int, bins: int = 1000) -> list[dict]:
    """Boxes from a Rex-Omni answer: ``<|object_ref_start|>label<|object_ref_end|><|box_start|>
    <x0><y0><x1><y1>, <...><|box_end|>``, coordinates quantised to ``bins`` steps of the image
    size -> view pixels.  An answer cut off by the token limit is closed with ``<|box_end|>`` so
    its last category keeps the boxes it completed.  Points/polygons and broken groups are skipped
    (the raw reply is kept by the caller)."""
    text = text.split("<|im_end|>")[0]
    if not text.endswith("<|box_end|>"):
        text += "<|box_end|>"
    out = []
    for label, body in REX_BOX.findall(text):
        for group in body.split(","):
            coords = REX_BIN.findall(group)
            if len(coords) != 4:
                continue
            x0, y0, x1, y1 = (int(c) for c in coords)
            box = [x0 / (bins - 1) * width, y0 / (bins - 1) * height, x1 / (bins - 1) * width, y1 / (bins - 1) * height]
            if box[2] > box[0] and box[3] > box[1]:
                out.append({"label": label.strip().lower(), "phrase": label.strip(), "score": 1.0, "box": box})
    return out


def rex_reply_problem(text: str) -> str:
    """Why a Rex-Omni answer cannot hold boxes although it is not empty, or "": coordinate bins
    without the ``<|box_start|>``/``<|object_ref_start|>`` markers is what a server that strips
    special tokens (vLLM's default) returns."""
    if any(m in text for m in REX_MARKERS) or not text.strip():
        return ""
    if REX_BIN.search(text):
        return (
            "the reply has coordinate tokens but no <|box_start|>/<|object_ref_start|> markers: the server stripped "
            "special tokens; set caption.boxes.rex_omni.vlm.extra_body.skip_special_tokens: false"
        )
    return ""


def build_detector(spec: dict):
    """``caption.boxes`` -> a detector with ``detect(view, tags)``, or None for ``rex_omni`` (VLM client)."""
    backend = spec["backend"]
    if backend == "rex_omni":
        return None
    gd = spec.get("grounding_dino") or {}
    args = (float(gd["box_threshold"]), float(gd["text_threshold"]), int(gd["tags_per_prompt"]))
    if backend == "grounding_dino":
        if not gd.get("model"):
            raise ModelUnavailable("config key caption.boxes.grounding_dino.model: set a local folder or hub id")
        return GroundingDinoDetector(gd["model"], *args, device=model_device(gd))
    if backend == "tiny":
        from pixverve.models.tiny_vision import build_tiny_grounding_dino

        with tempfile.TemporaryDirectory(prefix="pixverve-tiny-gdino-") as folder:
            build_tiny_grounding_dino(folder, seed=int(spec.get("seed", 0)))
            detector = GroundingDinoDetector(folder, *args, device="cpu", smoke=True)
        detector.model_name = "tiny random Grounding DINO"
        return detector
    raise ModelUnavailable(
        f"config key caption.boxes.backend: unknown backend {backend!r} (grounding_dino | rex_omni | tiny)"
    )


# ----------------------------------------------------------------------------- segmentation


class Sam2Segmenter:
    """Masks from boxes (transformers SAM 2): the image is encoded once, then its embedding is
    prompted with at most ``box_chunk`` boxes per forward (a 100 MP image can have ~1000 boxes;
    all of them in one forward would hold every low- and full-resolution mask at once)."""

    def __init__(
        self,
        model_id: str,
        device: str = "cpu",
        smoke: bool = False,
        key: str = "caption.masks.sam2.model",
        box_chunk: int = 64,
    ):
        from transformers import Sam2Model, Sam2Processor

        if int(box_chunk) < 1:
            raise ModelUnavailable("config key caption.masks.box_chunk: must be at least 1")
        self.model = load_pretrained(Sam2Model.from_pretrained, model_id, key).to(device).eval()
        self.processor = load_pretrained(Sam2Processor.from_pretrained, model_id, key)
        self.device, self.smoke, self.model_name, self.box_chunk = device, smoke, model_id, int(box_chunk)

    def segment(self, view: np.ndarray, boxes: list[list[float]]) -> tuple[list[np.ndarray], list[float]]:
        import torch

        if not boxes:
            return [], []
        image = self.processor(images=view, return_tensors="pt").to(self.device)
        sizes = image["original_sizes"].cpu()
        masks, scores = [], []
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(image["pixel_values"])
            for start in range(0, len(boxes), self.box_chunk):
                chunk = [[list(map(float, b)) for b in boxes[start : start + self.box_chunk]]]
                prompt = self.processor(input_boxes=chunk, original_sizes=sizes, return_tensors="pt").to(self.device)
                out = self.model(image_embeddings=embeddings, input_boxes=prompt["input_boxes"], multimask_output=False)
                full = self.processor.post_process_masks(out.pred_masks.cpu(), sizes)[0]
                masks.extend(m[0].numpy().astype(bool) for m in full)
                scores.extend(float(s) for s in out.iou_scores[0, :, 0].float().cpu().tolist())
        return masks, scores


class BoxSegmenter:
    """The box itself as the mask: no model (coarse; for clusters without SAM 2)."""

    smoke = False
    model_name = "box (no segmentation model)"

    def segment(self, view: np.ndarray, boxes: list[list[float]]) -> tuple[list[np.ndarray], list[float]]:
        masks = []
        for x0, y0, x1, y1 in boxes:
            m = np.zeros(view.shape[:2], bool)
            m[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = True
            masks.append(m)
        return masks, [1.0] * len(boxes)


def build_segmenter(spec: dict):
    backend = spec["backend"]
    if backend == "box":
        return BoxSegmenter()
    sam = spec.get("sam2") or {}
    if backend == "sam2":
        if not sam.get("model"):
            raise ModelUnavailable("config key caption.masks.sam2.model: set a local folder or hub id")
        return Sam2Segmenter(sam["model"], model_device(sam), box_chunk=int(spec.get("box_chunk", 64)))
    if backend == "tiny":
        from pixverve.models.tiny_vision import build_tiny_sam2

        with tempfile.TemporaryDirectory(prefix="pixverve-tiny-sam2-") as folder:
            build_tiny_sam2(folder, seed=int(spec.get("seed", 0)))
            segmenter = Sam2Segmenter(folder, "cpu", smoke=True, box_chunk=int(spec.get("box_chunk", 64)))
        segmenter.model_name = "tiny random SAM 2"
        return segmenter
    raise ModelUnavailable(f"config key caption.masks.backend: unknown backend {backend!r} (sam2 | box | tiny)")
