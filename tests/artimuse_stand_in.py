"""A stand-in for the user's ArtiMuse checkout (thunderbolt215/ArtiMuse): the same files, classes
and names pixverve.models.artimuse_upstream reads, with our own wording; and vLLM's rendering of a
request that carries a ``chat_template``."""

from __future__ import annotations

# A stand-in for the user's ArtiMuse checkout: the same files, classes and names the project reads,
# with our own wording (trailing spaces kept: the question must arrive byte for byte).
STAND_IN_QUESTION = "\n        Rate this image 0-100 as two letters. \n        Two letters only. \n        "
STAND_IN_FILES = {
    "src/artimuse/internvl/model/internvl_chat/modeling_artimuse.py": (
        "class InternVLChatModel:\n"
        "    def chat(self, question):\n        question = 'not this one'\n\n"
        f"    def score(self, device, tokenizer, pixel_values):\n        question = {STAND_IN_QUESTION!r}\n        return question\n"
    ),
    "src/artimuse/internvl/conversation.py": (
        "class SeparatorStyle:\n    MPT = 1\n\n"
        "register_conv_template(Conversation(name='other', roles=('a', 'b'), sep='x', sep_style=SeparatorStyle.MPT))\n"
        "register_conv_template(Conversation(name='internvl2_5', system_template='<|im_start|>system\\n{system_message}',\n"
        "    system_message='stand-in system', roles=('<|im_start|>user\\n', '<|im_start|>assistant\\n'),\n"
        "    sep_style=SeparatorStyle.MPT, sep='<|im_end|>\\n'))\n"
    ),
    "src/eval/eval_image.py": (
        "AESTHETIC_ATTRIBUTES = ['Composition & Design', 'Visual Elements & Structure', 'Technical Execution',\n"
        "    'Originality & Creativity', 'Theme & Communication', 'Emotion & Viewer Response', 'Overall Gestalt']\n"
        "def main(aspect=None):\n    for aspect in AESTHETIC_ATTRIBUTES:\n        prompt = f'Judge the {aspect} of it.'\n"
    ),
}
# what upstream's Conversation.get_prompt (MPT style) builds for the rating question, written out by hand
STAND_IN_PROMPT = (
    "<|im_start|>system\nstand-in system<|im_end|>\n<|im_start|>user\n<image>\n"
    + STAND_IN_QUESTION
    + "<|im_end|>\n<|im_start|>assistant\n"
)


def make_checkout(folder):
    for rel, text in STAND_IN_FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def vllm_render(body) -> str:
    """What vLLM feeds the model for a request with a ``chat_template`` (string content format:
    the image part becomes the model's "<image>" placeholder on its own line before the text)."""
    import jinja2

    messages = []
    for m in body["messages"]:
        content = m["content"]
        if not isinstance(content, str):
            images = ["<image>" for c in content if c["type"] == "image_url"]
            content = "\n".join(images + [c["text"] for c in content if c["type"] == "text"])
        messages.append({"role": m["role"], "content": content})
    return jinja2.Environment().from_string(body["chat_template"]).render(messages=messages, add_generation_prompt=True)
