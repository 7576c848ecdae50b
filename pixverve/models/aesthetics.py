"""Aesthetic predictors for stage 2, behind one small interface.

LAION aesthetic predictor ("improved aesthetic predictor", ``sac+logos+ava1-l14-linearMSE.pth``):
CLIP ViT-L/14 image embedding (the projected 768-d ``image_embeds``), L2-normalised, into an MLP
768-1024-128-64-16-1 with dropout and no activations.  The image is preprocessed as openai-clip's
``clip.load`` preprocess does it (the predictor's own inference and the published bench,
eval/metrics.py, both use it): PIL bicubic resize of the shorter side to 224, centre crop 224 with
torchvision's rounding, CLIP mean/std.  ``preprocess: processor`` uses the model folder's HF
CLIPImageProcessor instead (same steps, but its crop offset rounds down: 1 px off when the cropped
margin is odd).  A 100 MP JPEG is decoded at
a reduced DCT scale first (>= 448 px on the shorter side), never at full size.  Scores are ~1-10;
above ~10 means the embedding was not normalised.

Backends (``purify.aesthetics.predictors.<name>.backend``):
* ``laion``: the real predictor -- CLIP from a local path or hub id (the hub's cache; offline with
  HF_HUB_OFFLINE=1) and the published MLP weights file (sha256-checked, ``weights_only`` load);
* ``tiny``: the same code path with a randomly initialised tiny CLIP vision tower and MLP built
  in-process (seeded), for tests and the demo.  Its scores are marked ``smoke`` and mean nothing;
* ``none``: the predictor is not run.

ArtiMuse (an InternVL-3 chat model fine-tuned for aesthetics) scores an image in one forward pass:
the image resized to 448x448 (bicubic), its fixed rating question asked in the InternVL chat
template (both read from the user's ArtiMuse checkout, ``pixverve.models.artimuse_upstream``), and the model's next-token distribution restricted to the 101 answer tokens "aa".."az"
(0-25), "ca".."cy" (26-50), "da".."dy" (51-75), "ea".."ey" (76-100); the score is the expectation
of 0..100 under the softmax over those 101 logits -- equal to the next-token probabilities of the
101 tokens renormalised to sum 1.  Backends (``purify.aesthetics.predictors.artimuse.backend``):
* ``endpoint``: the checkpoint served by vLLM (``vllm serve <ArtiMuse> --trust-remote-code
  --max-logprobs 128 --mm-processor-kwargs '{"max_dynamic_patch": 1}'``), asked through the
  project's VLM client for one token with its ``top_logprobs``; the image is sent as a lossless
  448x448 PNG.  The 101 tokens found among the top alternatives are renormalised; how many were
  found and their total probability are recorded (``artimuse_tokens_found``, ``artimuse_token_mass``):
  with all 101 found the score is exact, otherwise the missing ones had less probability than the
  last alternative returned (raise ``top_logprobs``);
* ``tiny``: the same computation on a tiny random Qwen2-VL whose tokenizer holds the 101 tokens
  (smoke).

Every missing file is an error that says which file, where it was looked for and how to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixverve.core.paths import file_sha256
from pixverve.models.devices import resolve_device
from pixverve.models.loading import ModelUnavailable
from pixverve.models.loading import offline as hub_offline

LAION_MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"
LAION_MLP_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor"
EMBED_DIM = 768
DECODE_MIN_SIDE = 448
CLIP_INPUT_PX = 224
# openai-clip's normalisation constants (clip/clip.py `_transform`), CLIP's training statistics
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _torch():
    import torch

    return torch


def laion_mlp():
    """The predictor head with the published layer layout (state-dict keys layers.0 ... layers.7)."""
    nn = _torch().nn
    return nn.Sequential(
        nn.Linear(EMBED_DIM, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def load_laion_mlp(path: str | os.PathLike, expected_sha256: str | None):
    """Load the published MLP weights (a plain state dict) with ``weights_only=True``."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(
            f"LAION aesthetic MLP weights not found at {path.resolve()}: download {LAION_MLP_FILE} from "
            f"{LAION_MLP_URL} and put it there (or set purify.aesthetics.predictors.laion.mlp_weights)"
        )
    digest = file_sha256(path)
    if expected_sha256 and digest != expected_sha256:
        raise ModelUnavailable(f"{path}: sha256 {digest} does not match the published {expected_sha256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # the original Lightning module stores the Sequential as `layers`
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    mlp = laion_mlp()
    mlp.load_state_dict(state)
    return mlp.eval(), digest


def load_clip_vision(model: str):
    """CLIP vision tower with projection + its image processor, from a local path or the hub cache."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    offline = hub_offline(model)
    try:
        vision = CLIPVisionModelWithProjection.from_pretrained(model, local_files_only=offline)
        processor = CLIPImageProcessor.from_pretrained(model, local_files_only=offline)
    except OSError as exc:
        raise ModelUnavailable(
            f"CLIP model {model!r} could not be loaded{' offline' if offline else ''}: {exc}. Put a local copy "
            f"(config.json, model weights, preprocessor_config.json) at a path and set "
            f"purify.aesthetics.predictors.laion.clip_model to it, or pre-fill the Hugging Face cache "
            f"(huggingface-cli download {model}) on a machine with internet access"
        ) from exc
    return vision.eval(), processor


def tiny_clip_vision(seed: int = 0):
    """A randomly initialised tiny CLIP vision tower of the real class, and CLIP's preprocessing."""
    torch = _torch()
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
        projection_dim=EMBED_DIM,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
        resample=3,  # bicubic, as CLIP
    )
    return CLIPVisionModelWithProjection(config).eval(), processor


def openai_clip_pixels(rgb_images, n_px: int = CLIP_INPUT_PX):
    """CLIP input tensors (N, 3, n_px, n_px) made the way openai-clip's preprocess makes them:
    torchvision Resize(n_px, bicubic) on a PIL image, CenterCrop(n_px), RGB, ToTensor, Normalize."""
    torch = _torch()
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    tensors = []
    for image in rgb_images:
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        pil = TF.center_crop(TF.resize(pil, n_px, interpolation=InterpolationMode.BICUBIC), n_px)
        tensors.append(TF.normalize(TF.to_tensor(pil.convert("RGB")), CLIP_MEAN, CLIP_STD))
    return torch.stack(tensors)


@dataclass
class PredictorInfo:
    name: str
    backend: str
    smoke: bool
    weights: str  # what was loaded: file hash or model id, for the record


class LaionPredictor:
    """CLIP image embedding -> L2 normalise -> MLP; one score per image."""

    def __init__(
        self,
        vision,
        processor,
        mlp,
        info: PredictorInfo,
        device: str = "cpu",
        batch_size: int = 8,
        preprocess: str = "openai_clip",
    ):
        torch = _torch()
        if preprocess not in ("openai_clip", "processor"):
            raise ValueError(f"LAION preprocess must be openai_clip or processor, got {preprocess!r}")
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.vision = vision.to(self.device, self.dtype)
        self.mlp = mlp.to(self.device, torch.float32)
        self.processor = processor
        self.info = info
        self.batch_size = batch_size

    def embed(self, rgb_images: list[np.ndarray]):
        torch = _torch()
        if self.preprocess == "openai_clip":
            pixels = openai_clip_pixels(rgb_images)
        else:  # writable copies (decoders hand out read-only arrays; torch wants writable memory)
            pixels = self.processor(images=[np.array(im) for im in rgb_images], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            emb = self.vision(pixel_values=pixels.to(self.device, self.dtype)).image_embeds
            # normalised in the model's dtype, then float for the MLP (as the published bench)
            return (emb / emb.norm(dim=-1, keepdim=True)).float()

    def score(self, rgb_images: list[np.ndarray]) -> np.ndarray:
        torch = _torch()
        scores = []
        for start in range(0, len(rgb_images), self.batch_size):
            emb = self.embed(rgb_images[start : start + self.batch_size])
            with torch.inference_mode():
                scores.append(self.mlp(emb).squeeze(-1).cpu().numpy().astype(np.float64))
        return np.concatenate(scores) if scores else np.zeros(0)


def artimuse_token(score: int) -> str:
    """ArtiMuse's answer token for an integer score 0..100 (two letters; 'b' is never used)."""
    for first, low in (("a", 0), ("c", 26), ("d", 51), ("e", 76)):
        high = 25 if first == "a" else low + 24
        if low <= score <= high:
            return first + chr(ord("a") + score - low)
    raise ValueError(f"score {score} is outside 0..100")


ARTIMUSE_TOKENS = [artimuse_token(i) for i in range(101)]
ARTIMUSE_INPUT_PX = 448
# ArtiMuse's rating question (and its conversation template) are the model's interface, whitespace
# included: they are read from the user's checkout at run time (pixverve.models.artimuse_upstream), not
# kept in the project.  The tiny backend, which has no checkout to read, asks this instead.
SMOKE_QUESTION = "smoke test: rate the image"


def artimuse_expectation(logprobs: dict[str, float]) -> tuple[float, int, float]:
    """(score, tokens found, their total probability) from next-token log-probabilities."""
    import math

    found = [(i, math.exp(logprobs[t])) for i, t in enumerate(ARTIMUSE_TOKENS) if t in logprobs]
    mass = sum(p for _, p in found)
    if not found or mass <= 0:
        return float("nan"), 0, 0.0
    return sum(i * p for i, p in found) / mass, len(found), mass


class ArtiMusePredictor:
    """ArtiMuse's score through a VLM backend that returns next-token log-probabilities."""

    def __init__(self, backend, info: PredictorInfo, top_logprobs: int = 128, question: str = SMOKE_QUESTION):
        self.backend, self.info, self.top_logprobs, self.question = backend, info, top_logprobs, question
        self.details: list[dict] = []

    def messages(self, rgb: np.ndarray) -> list[dict]:
        import base64
        import io

        from PIL import Image

        square = Image.fromarray(np.ascontiguousarray(rgb)).resize(
            (ARTIMUSE_INPUT_PX, ARTIMUSE_INPUT_PX), Image.BICUBIC
        )
        buf = io.BytesIO()
        square.save(buf, format="PNG")  # lossless: the server sees exactly these pixels
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        return [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": self.question}],
            }
        ]

    def score(self, rgb_images: list[np.ndarray]) -> np.ndarray:
        """One score per image (NaN where none); ``statuses``/``details`` say why per image."""
        requests = [
            ("artimuse", f"artimuse#{i}", self.messages(im), None, self.top_logprobs) for i, im in enumerate(rgb_images)
        ]
        results = self.backend.run_many(requests)
        scores, self.details, self.statuses = [], [], []
        for res in results:
            if res.status != "ok" or not isinstance(res.parsed, dict):
                scores.append(float("nan"))
                self.statuses.append(res.status if res.status != "ok" else "unparseable")
                self.details.append({"tokens_found": 0, "token_mass": 0.0, "error": res.error or res.status})
                continue
            value, found, mass = artimuse_expectation(res.parsed)
            scores.append(value)
            self.statuses.append("ok" if found else "no_answer_token")
            self.details.append(
                {"tokens_found": found, "token_mass": round(mass, 6), "error": "" if found else NO_ANSWER_TOKEN}
            )
        return np.asarray(scores, dtype=np.float64)

    def probe_problem(self, result) -> str:
        """The probe's own check: ArtiMuse's answer is one of its score tokens (a server that does
        not render ArtiMuse's conversation answers with something else)."""
        if isinstance(result.parsed, dict) and artimuse_expectation(result.parsed)[1]:
            return ""
        return (
            NO_ANSWER_TOKEN + ": the server is not rendering ArtiMuse's conversation template. Start vLLM with "
            "--chat-template FILE (python -m pixverve artimuse-template) or --trust-request-chat-template"
        )


NO_ANSWER_TOKEN = "no ArtiMuse answer token among the top log-probabilities"


ARTIMUSE_KEYS = ("backend", "top_logprobs", "upstream", "template", "system_message", "chat_template")


def artimuse_request_setup(spec: dict, key: str = "purify.aesthetics.predictors.artimuse") -> tuple[dict, dict]:
    """(upstream reader results, extra request-body fields) for ArtiMuse behind vLLM: the
    conversation template of the checkout rendered by our own Jinja template unless
    ``chat_template: server`` (then the server's tokenizer template is trusted as it is)."""
    from pixverve.models import artimuse_upstream as up

    root = spec.get("upstream")
    conv = up.conversation(root, spec.get("template", "internvl2_5"), f"{key}.upstream")
    extra = {}
    mode = spec.get("chat_template", "upstream")
    if mode == "upstream":
        extra["chat_template"] = up.chat_template(conv, spec.get("system_message"))
    elif mode != "server":
        raise ModelUnavailable(f"config key {key}.chat_template: {mode!r} is not one of upstream, server")
    return {"root": root, "conversation": conv}, extra


def build_artimuse(spec: dict) -> ArtiMusePredictor:
    from pixverve.models.vlm import VLMClient, VLMSettings

    backend = spec["backend"]
    top = int(spec.get("top_logprobs", 128))
    if backend == "endpoint":
        from pixverve.models.artimuse_upstream import rating_question

        key = "purify.aesthetics.predictors.artimuse"
        question = rating_question(spec.get("upstream"), f"{key}.upstream")
        _, extra = artimuse_request_setup(spec, key)
        cfg = {k: v for k, v in spec.items() if k not in ARTIMUSE_KEYS}
        cfg["extra_body"] = dict(cfg.get("extra_body") or {}) | extra
        settings = VLMSettings.from_config(cfg)
        info = PredictorInfo("artimuse", "endpoint", False, spec["model"])
        client = VLMClient(settings)
        client.check_server(key)
        predictor = ArtiMusePredictor(client, info, top, question)
        client.probe_check = predictor.probe_problem
        return predictor
    if backend == "tiny":
        import tempfile

        from pixverve.models.vlm_local import TransformersVLM, build_tiny_qwen2_vl

        with tempfile.TemporaryDirectory(prefix="pixverve-tiny-artimuse-") as folder:
            build_tiny_qwen2_vl(folder, seed=2, extra_tokens=ARTIMUSE_TOKENS)
            vlm = TransformersVLM(folder, "cpu", "float32", max_new_tokens=1, smoke=True, probe=False)
        info = PredictorInfo("artimuse", "tiny", True, "tiny random Qwen2-VL with the 101 answer tokens (seed 2)")
        return ArtiMusePredictor(vlm, info, 1024)  # the whole tiny vocabulary: every answer token is seen
    raise ModelUnavailable(f"purify.aesthetics.predictors.artimuse.backend: unknown backend {backend!r}")


def build_predictor(name: str, spec: dict):
    """The predictor a config block asks for, or None for backend ``none``."""
    backend = spec["backend"]
    if backend == "none":
        return None
    if name == "artimuse":
        return build_artimuse(spec)
    if name != "laion":
        raise ModelUnavailable(f"purify.aesthetics.predictors.{name}: backend {backend!r} is not available for {name}")
    device = resolve_device(spec.get("device", "auto"))
    if backend == "tiny":
        torch = _torch()
        vision, processor = tiny_clip_vision(seed=0)
        torch.manual_seed(1)
        mlp = laion_mlp().eval()
        info = PredictorInfo(name, "tiny", True, "tiny random CLIP + MLP (seed 0/1)")
    elif backend == "laion":
        vision, processor = load_clip_vision(spec["clip_model"])
        mlp, digest = load_laion_mlp(spec["mlp_weights"], spec.get("mlp_sha256"))
        info = PredictorInfo(name, "laion", False, f"{spec['clip_model']} + sha256:{digest[:16]}")
    else:
        raise ModelUnavailable(f"purify.aesthetics.predictors.{name}.backend: unknown backend {backend!r}")
    return LaionPredictor(
        vision,
        processor,
        mlp,
        info,
        device=device,
        batch_size=int(spec.get("batch_size", 8)),
        preprocess=spec.get("preprocess", "openai_clip"),
    )
