"""ArtiMuse's prompts and conversation template, read at run time from the user's own checkout of
thunderbolt215/ArtiMuse (config key ``purify.aesthetics.predictors.artimuse.upstream``).

The model was trained on its own wording (the rating question of ``InternVLChatModel.score`` in
``modeling_artimuse.py``, trailing spaces included; the per-attribute question of
``src/eval/eval_image.py``) inside its InternVL conversation template (``conversation.py``).  The
project does not carry that text: it parses those files (``ast``, nothing imported or executed)
and sends what it finds, byte for byte.  vLLM renders the tokenizer's chat template, which for an
InternVL checkpoint need not be the conversation template the model was trained with (system
message, separators); :func:`chat_template` writes a Jinja template that renders the upstream
conversation exactly, passed as the request's ``chat_template``.
"""

from __future__ import annotations

import ast
from pathlib import Path

MODELING = "src/artimuse/internvl/model/internvl_chat/modeling_artimuse.py"
CONVERSATION = "src/artimuse/internvl/conversation.py"
EVAL_IMAGE = "src/eval/eval_image.py"
CLONE = "git clone https://github.com/thunderbolt215/ArtiMuse"
KEY = "purify.aesthetics.predictors.artimuse.upstream"


class UpstreamUnavailable(RuntimeError):
    """The ArtiMuse checkout is not configured or lacks what is read from it; the message says which key and file."""


def _tree(root, rel: str, key: str = KEY) -> ast.Module:
    if not root:
        raise UpstreamUnavailable(
            f"config key {key}: not set; `{CLONE}` and set it to the checkout (its prompts are read from there)"
        )
    path = Path(root) / rel
    if not path.is_file():
        raise UpstreamUnavailable(f"config key {key}: {path} not found; is {root} a checkout of ArtiMuse? (`{CLONE}`)")
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def rating_question(root, key: str = KEY) -> str:
    """The string ``InternVLChatModel.score`` assigns to ``question`` (the model's rating question)."""
    for node in ast.walk(_tree(root, MODELING, key)):
        if isinstance(node, ast.FunctionDef) and node.name == "score":
            for stmt in ast.walk(node):
                if (
                    isinstance(stmt, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "question" for t in stmt.targets)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                ):
                    return stmt.value.value
    raise UpstreamUnavailable(f"config key {key}: no rating question found in score() of {Path(root) / MODELING}")


def attribute_prompts(root, key: str = KEY) -> dict[str, str]:
    """{attribute: question} from ``eval_image.py``: its ``AESTHETIC_ATTRIBUTES`` and the f-string
    asked per attribute (its single placeholder filled with the attribute)."""
    tree = _tree(root, EVAL_IMAGE, key)
    attributes, template = None, None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "AESTHETIC_ATTRIBUTES" for t in node.targets
        ):
            attributes = ast.literal_eval(node.value)
        if isinstance(node, ast.JoinedStr) and template is None:
            holes = [v for v in node.values if isinstance(v, ast.FormattedValue)]
            if len(holes) == 1 and isinstance(holes[0].value, ast.Name) and holes[0].value.id == "aspect":
                template = [v.value if isinstance(v, ast.Constant) else None for v in node.values]
    if not attributes or template is None:
        raise UpstreamUnavailable(
            f"config key {key}: no AESTHETIC_ATTRIBUTES / per-aspect prompt in {Path(root) / EVAL_IMAGE}"
        )
    return {a: "".join(a if part is None else part for part in template) for a in attributes}


def conversation(root, name: str, key: str = KEY) -> dict:
    """The keyword arguments of the ``Conversation(name=<name>, ...)`` registered in conversation.py
    (``sep_style`` as the enum member's name)."""
    for node in ast.walk(_tree(root, CONVERSATION, key)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Conversation":
            kwargs = {}
            for kw in node.keywords:
                kwargs[kw.arg] = kw.value.attr if isinstance(kw.value, ast.Attribute) else ast.literal_eval(kw.value)
            if kwargs.get("name") == name:
                return kwargs
    raise UpstreamUnavailable(
        f"config key {key}: conversation template {name!r} not in {Path(root) / CONVERSATION} "
        "(purify.aesthetics.predictors.artimuse.template: the checkpoint's config.json 'template')"
    )


def render(conv: dict, system_message: str | None, user_text: str) -> str:
    """The prompt upstream builds for one user turn and an open assistant turn (MPT separator style)."""
    if conv.get("sep_style") != "MPT":
        raise UpstreamUnavailable(
            f"conversation template {conv.get('name')!r}: separator style {conv.get('sep_style')} is not supported"
        )
    system = conv.get("system_template", "{system_message}").format(
        system_message=conv.get("system_message", "") if system_message is None else system_message
    )
    user, assistant = conv["roles"]
    return system + conv["sep"] + user + user_text + conv["sep"] + assistant


def chat_template(conv: dict, system_message: str | None) -> str:
    """A Jinja chat template that renders :func:`render`'s prompt for vLLM's chat endpoint (a
    system message in the request is ignored: the model's own is used, as upstream does)."""
    system = conv.get("system_template", "{system_message}").format(
        system_message=conv.get("system_message", "") if system_message is None else system_message
    )
    user, assistant = conv["roles"]
    parts = [system + conv["sep"], user, assistant, conv["sep"]]
    if any(mark in p for p in parts for mark in ("{{", "{%", "{#", "}}", "%}", "#}")):
        raise UpstreamUnavailable(
            "the conversation template holds Jinja markup; pass vlm.extra_body.chat_template yourself"
        )
    head, u, a, sep = parts
    return (
        head
        + "{% for m in messages %}{% if m['role'] == 'user' %}"
        + u
        + "{{ m['content'] }}"
        + sep
        + "{% elif m['role'] == 'assistant' %}"
        + a
        + "{{ m['content'] }}"
        + sep
        + "{% endif %}{% endfor %}"
        + "{% if add_generation_prompt %}"
        + a
        + "{% endif %}"
    )


def stop_strings(conv: dict) -> list[str]:
    """Where upstream stops generating: its chat sets ``eos_token_id`` to the template's separator
    token (``<|im_end|>`` for internvl2_5), so a request must stop there too."""
    sep = str(conv.get("sep", "")).strip()
    return [sep] if sep else []


def main(argv: list[str]) -> int:
    """``python -m pixverve artimuse-template --upstream CHECKOUT [--template NAME] [--out FILE]``:
    ArtiMuse's chat template as a file for ``vllm serve --chat-template FILE``; then set the
    step's ``chat_template: server`` and vLLM needs no ``--trust-request-chat-template``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m pixverve artimuse-template", description=main.__doc__.splitlines()[0]
    )
    parser.add_argument("--upstream", required=True, help="your ArtiMuse checkout (thunderbolt215/ArtiMuse)")
    parser.add_argument(
        "--template", default="internvl2_5", help="the checkpoint's config.json 'template' (default internvl2_5)"
    )
    parser.add_argument(
        "--system-message", default=None, help="replace the template's system message (default: upstream's)"
    )
    parser.add_argument("--out", default=None, help="write here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        text = chat_template(conversation(args.upstream, args.template, "--upstream"), args.system_message)
    except UpstreamUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
