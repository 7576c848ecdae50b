"""Text side of the tiny random models (tests, demo): a byte-level tokenizer any text round-trips
through, and a Qwen-style chat template.  No heavy imports: the tiny VLM, vision and training
models all build on it."""

from __future__ import annotations

# Qwen2-VL's chat layout (the image placeholder expands to the image's patch tokens in the processor).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c.text }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_level_backend(extra_tokens: tuple[str, ...] = (), unk_token: str | None = None):
    """A ``tokenizers.Tokenizer``: byte-level BPE without merges (every byte one token), plus
    ``extra_tokens`` appended to the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}  # alphabet() is a set
    for token in extra_tokens:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend
