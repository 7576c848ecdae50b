"""Local VLM backends behind the same interface as the endpoint client (``run_many``).

* ``transformers``: a chat VLM from a local folder or hub id (e.g. Qwen2.5-VL-7B-Instruct), loaded
  with ``AutoProcessor`` + ``AutoModelForImageTextToText`` and run with greedy decoding, one
  request at a time (a local GPU is busy with one; for throughput use an endpoint / vLLM);
* ``tiny``: a randomly initialised small Qwen2-VL with a byte-level tokenizer, built in-process,
  saved to a temporary folder and loaded back through the ``transformers`` code path above. It
  writes random tokens: every reply is expected to be unparseable, and every result it produces
  is marked smoke output.

Requests are the endpoint client's: ``(task, request_id, messages, schema)`` with OpenAI chat
messages whose images are base64 data URLs; the same JSON extraction and schema validation apply,
and every raw reply is kept.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pixverve.models.loading import ModelUnavailable, torch_dtype
from pixverve.models.tiny_text import TINY_CHAT_TEMPLATE, byte_level_backend
from pixverve.models.vlm import VLMResult, answer_problem, decode_data_url, parse_reply

TINY_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


class VLMUnavailable(ModelUnavailable):
    """The local model cannot be loaded; the message says which path/id and what to do."""


def build_tiny_qwen2_vl(folder: str | Path, seed: int = 0, extra_tokens: list[str] | None = None) -> Path:
    """Save a randomly initialised ~0.1 M-parameter Qwen2-VL and its processor into ``folder``.

    ``extra_tokens`` become single (non-special) tokens, e.g. a scorer's answer tokens."""
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_backend(),  # every byte one token: any text round-trips
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=TINY_SPECIAL_TOKENS,
    )
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in TINY_SPECIAL_TOKENS}
    # 28 px = one merged 2x2 group of 14 px patches; cap the image at 8x8 groups to stay tiny.
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=TINY_CHAT_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=14, spatial_merge_size=2),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _chat_for_processor(messages: list[dict]) -> tuple[list[dict], list]:
    """OpenAI messages -> (processor chat messages with image placeholders, RGB images in order)."""
    chat, images = [], []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            chat.append({"role": message["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for part in content:
            if part["type"] == "image_url":
                images.append(decode_data_url(part["image_url"]["url"]))
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": part["text"]})
        chat.append({"role": message["role"], "content": parts})
    return chat, images


class TransformersVLM:
    """A chat VLM run locally; ``run_many`` mirrors :class:`pixverve.models.vlm.VLMClient`."""

    def __init__(
        self,
        model_id: str,
        device: str = "cpu",
        dtype: str = "auto",
        max_new_tokens: int = 1024,
        smoke: bool = False,
        extra_body: dict | None = None,
        invalid_policy: str = "drop",
        stop_after_consecutive_failures: int = 8,
        probe: bool = True,
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from pixverve.core.health import FailureStreak

        self.smoke = smoke
        # the endpoint client's fail-safe, locally: the first request is checked before the rest
        # (probe_problem), and failures on stop_after_consecutive_failures images in a row stop the job
        self.invalid_policy = invalid_policy
        self.probe = probe
        self.probe_check = None  # a step's own check of its probe answer: result -> problem text or ""
        self._probed = False
        self._streak = FailureStreak(stop_after_consecutive_failures, invalid_policy, self._failing_message)
        # the vLLM request options that mean the same here (a model such as Rex-Omni answers in
        # special tokens and needs them kept; Qwen3.5 needs enable_thinking off in its template)
        extra = dict(extra_body or {})
        self.skip_special_tokens = bool(extra.get("skip_special_tokens", True))
        self.generate_kwargs = {k: extra[k] for k in ("repetition_penalty",) if k in extra}
        self.template_kwargs = dict(extra.get("chat_template_kwargs") or {})
        self.model_name = model_id  # what the tables record
        self.max_new_tokens = max_new_tokens
        self.device = device
        dtype = torch_dtype(dtype, "vlm.transformers.dtype", default="auto")
        try:
            self.processor = AutoProcessor.from_pretrained(model_id)
            self.model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as exc:
            raise VLMUnavailable(
                f"config key vlm.transformers.model: cannot load {model_id!r} ({type(exc).__name__}: {exc}). "
                "Give a local folder with the model and processor files, or a hub id already in the "
                "Hugging Face cache (these jobs run with HF_HUB_OFFLINE=1 on compute nodes)."
            ) from exc

    def generate(self, messages: list[dict]) -> str:
        import torch

        chat, images = _chat_for_processor(messages)
        text = self.processor.apply_chat_template(chat, add_generation_prompt=True, **self.template_kwargs)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, **self.generate_kwargs
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=self.skip_special_tokens)[0]

    def next_token_logprobs(self, messages: list[dict], top: int) -> str:
        """JSON ``{token: logprob}`` of the ``top`` most likely next tokens (what an endpoint's
        ``top_logprobs`` returns): one forward pass, no generation."""
        import json

        import torch

        chat, images = _chat_for_processor(messages)
        text = self.processor.apply_chat_template(chat, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        values, ids = torch.topk(logprobs, min(top, logprobs.numel()))
        tokens = self.processor.tokenizer.convert_ids_to_tokens(ids.tolist())
        return json.dumps({t: round(float(v), 8) for t, v in zip(tokens, values.tolist())})

    def run_many(self, requests, progress=None) -> list[VLMResult]:
        from pixverve.core.health import StepFailed

        results = []
        for task, request_id, messages, schema, *rest in requests:
            top_logprobs = rest[0] if rest else None
            result = VLMResult(task, request_id, "failed", None, attempts=1)
            try:
                text = self.next_token_logprobs(messages, top_logprobs) if top_logprobs else self.generate(messages)
            except (RuntimeError, ValueError) as exc:  # one bad request (e.g. out of memory) is a row
                result.error = f"{type(exc).__name__}: {exc}"
            else:
                result.raw_replies.append(text)
                result.status, result.parsed, result.error = parse_reply(text, schema)
            if self.probe and not self._probed:
                self._probed = True
                problem = self.probe_problem(result)
                if problem:
                    raise StepFailed(f"probe of local model {self.model_name!r} (task {task}): {problem}")
            self._streak.see(request_id.split(":", 1)[0], result.status, result)  # per image, as the endpoint's
            results.append(result)
            if progress is not None:
                progress(1)
        return results

    def probe_problem(self, result: VLMResult) -> str:
        """What is wrong with the first answer of this model, or "" when it is usable."""
        hint = (
            ". Check vlm.transformers.model (a chat VLM with its processor), vlm.max_tokens and "
            "vlm.extra_body (chat_template_kwargs, skip_special_tokens)"
        )
        return answer_problem(result, self.invalid_policy, self.probe_check, hint)

    def _failing_message(self, limit: int, _image, first: VLMResult) -> str:
        return (
            f"local model {self.model_name!r}: every request of {limit} images in a row failed; first "
            f"({first.task}): {first.status}: {first.error[:400]}. Fix the model or its settings, then rerun"
        )


def build_judge(config: dict):
    """The configured VLM backend (``vlm.backend``): endpoint client, transformers or tiny.

    Returns an object with ``run_many(requests, progress)`` and a ``smoke`` attribute.
    """
    from pixverve.models.devices import resolve_device
    from pixverve.models.vlm import VLMClient, VLMSettings

    vlm = config["vlm"]
    backend = vlm.get("backend", "endpoint")
    max_new = int(vlm.get("max_tokens", 1024))
    if backend == "endpoint":
        client = VLMClient(VLMSettings.from_config(vlm))
        client.check_server("vlm")
        client.smoke = False
        return client
    if backend == "transformers":
        spec = vlm.get("transformers") or {}
        if not spec.get("model"):
            raise VLMUnavailable(
                "config key vlm.transformers.model: set a local folder or hub id for backend transformers"
            )
        return TransformersVLM(
            spec["model"],
            resolve_device(spec.get("device", "auto")),
            spec.get("dtype", "auto"),
            max_new,
            extra_body=vlm.get("extra_body"),
            invalid_policy=vlm.get("invalid_policy", "drop"),
            stop_after_consecutive_failures=int(vlm.get("stop_after_consecutive_failures", 8)),
        )
    if backend == "tiny":
        spec = vlm.get("tiny") or {}
        with tempfile.TemporaryDirectory(prefix="pixverve-tiny-vlm-") as folder:
            build_tiny_qwen2_vl(folder, seed=int(spec.get("seed", 0)))
            # random tokens: the probe could only ever fail; the streak gate still applies
            judge = TransformersVLM(
                folder,
                "cpu",
                "float32",
                int(spec.get("max_new_tokens", 16)),
                smoke=True,
                invalid_policy=vlm.get("invalid_policy", "drop"),
                stop_after_consecutive_failures=int(vlm.get("stop_after_consecutive_failures", 8)),
                probe=False,
            )
        judge.model_name = f"tiny random Qwen2-VL (seed {int(spec.get('seed', 0))})"
        return judge
    raise VLMUnavailable(f"config key vlm.backend: unknown backend {backend!r} (endpoint | transformers | tiny)")


def served_judge(config: dict, stack, server_log, log=print):
    """The configured backend; with ``vlm.serve.enabled`` a vLLM server is started first and
    stopped when ``stack`` (a contextlib.ExitStack) closes.  ``config["vlm"]`` is updated in place
    with the server's URL (and served model name)."""
    from pathlib import Path

    from pixverve.models.vllm_server import served

    vlm = config["vlm"]
    serve = vlm.get("serve") or {}
    if not serve.get("enabled"):
        Path(server_log).write_text("vLLM not started here (vlm.serve.enabled: false)\n")
    else:
        from pixverve.models.vlm import VLMSettings

        key = VLMSettings.from_config(vlm).api_key() if vlm.get("api_key_env") else None
        vlm["base_url"] = stack.enter_context(served(serve, vlm["model"], server_log, key))
        if serve.get("served_model_name"):
            vlm["model"] = serve["served_model_name"]
        log(f"vLLM serving {vlm['model']} at {vlm['base_url']}")
    return build_judge(config)


def served_step_judge(config: dict, overrides: dict | None, stack, server_log, log=print):
    """``served_judge`` for one step whose ``vlm`` settings are overridden (``caption.<step>.vlm``,
    ``bench.judge.vlm``: another model or endpoint for that step)."""
    from pixverve.models.vlm import step_config

    return served_judge(step_config(config, overrides), stack, server_log, log=log)
