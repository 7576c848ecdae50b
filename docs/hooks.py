"""mkdocs hook: config-key tables generated from config.yaml and schemas/config.schema.yaml.

A page holds a marker line such as ``<!-- config-keys: purify -->`` (or several prefixes,
``<!-- config-keys: sr_tiers upscale -->``), alone on its line; at build time it becomes a table with one row per leaf
key under those prefixes: the key path, its type and constraints (from the schema), the value in
``config.yaml`` (the paper's run) and ``configs/demo.yaml`` where the demo differs, and a
description. The description is the key's own comment in config.yaml (inline, else the comment
block right above it), else the schema's ``description``, else the comment of the line a flow
mapping holding it sits on, else the nearest schema ``description`` above it. Values come from
``yaml.safe_load`` only; comments are read line by line, never evaluated. So the docs cannot
drift from the code: tests/test_docs.py checks that every leaf key of config.yaml is in a table
with a description.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!--\s*config-keys:\s*([^>]*?)\s*-->[ \t]*$", re.M)
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<dash>- )?(?P<key>\"[^\"]+\"|[A-Za-z0-9_.]+):(?:\s+|$)(?P<rest>.*)$")


# -- comments of config.yaml, by key path ------------------------------------------------------


def _split_comment(rest: str) -> tuple[str, str]:
    """(value text, inline comment) of what follows a key's colon; quotes respected."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].rstrip(), rest[i + 1 :].strip()
    return rest.rstrip(), ""


def _depth(text: str) -> int:
    """Open flow brackets ({ [) left by a value text, quotes respected."""
    depth, quote = 0, None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
    return depth


def config_comments(path: Path) -> dict[str, dict[str, str]]:
    """Per key path (``a.b``, ``a.list[].c``): its inline comment and the comment block right above it."""
    out: dict[str, dict[str, str]] = {}
    stack: list[tuple[int, str]] = []  # (column, name)
    pending: list[str] = []  # comment lines above the next key
    open_flow, block_scalar_col, record = 0, None, None
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        col = len(raw) - len(raw.lstrip())
        if block_scalar_col is not None:
            if not stripped or col > block_scalar_col:
                continue
            block_scalar_col = None
        if open_flow > 0:  # a flow mapping/list over several lines: its comment may end the last one
            text, comment = _split_comment(raw)
            open_flow += _depth(text)
            if comment and record is not None and not record["inline"]:
                record["inline"] = comment
            continue
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        m = KEY_LINE.match(raw)
        if not m:
            pending = []
            continue
        key_col = col + (2 if m["dash"] else 0)
        if m["dash"]:
            while stack and stack[-1][0] >= col:
                stack.pop()
            stack.append((col, "[]"))
        while stack and stack[-1][0] >= key_col:
            stack.pop()
        name = m["key"].strip('"')
        stack.append((key_col, name))
        value, inline = _split_comment(m["rest"])
        above = " ".join(pending)
        dotted = ".".join(n for _, n in stack).replace(".[]", "[]")
        record = out.setdefault(dotted, {"inline": inline, "above": above})
        pending = []
        if value.startswith((">", "|")):
            block_scalar_col = key_col
        open_flow = _depth(value)
    return out


# -- leaves of the loaded config ---------------------------------------------------------------


def leaves(value, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted path, value) of every leaf. A list of mappings contributes ``path[].key`` leaves (union
    over its items, first value kept); a mapping keyed by numbers (per-resolution values) is a leaf."""
    if isinstance(value, dict) and value and not all(str(k).isdigit() for k in value):
        out = []
        for k, v in value.items():
            out += leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        seen: dict[str, object] = {}
        for item in value:
            for k, v in leaves(item, f"{prefix}[]"):
                seen.setdefault(k, v)
        return list(seen.items())
    return [(prefix, value)]


def get_path(config, dotted: str):
    """The value at a dotted path (``[]``: the first item of a list); KeyError when absent."""
    node = config
    for part in re.split(r"\.(?![^\[]*\])", dotted):
        name, listed = (part[:-2], True) if part.endswith("[]") else (part, False)
        if not isinstance(node, dict) or name not in node:
            raise KeyError(dotted)
        node = node[name]
        if listed:
            if not isinstance(node, list) or not node:
                raise KeyError(dotted)
            node = node[0]
    return node


# -- the schema --------------------------------------------------------------------------------


class Schema:
    def __init__(self, schema: dict):
        self.root = schema

    def resolve(self, node):
        while isinstance(node, dict) and "$ref" in node:
            target = self.root
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node if isinstance(node, dict) else {}

    def _alternatives(self, node) -> list[dict]:
        node = self.resolve(node)
        out = [node]
        for key in ("allOf", "oneOf", "anyOf"):
            for sub in node.get(key, []):
                out += self._alternatives(sub)
        return out

    def child(self, node, name: str) -> dict:
        for alt in self._alternatives(node):
            if name == "[]" and isinstance(alt.get("items"), dict):
                return self.resolve(alt["items"])
            if name in alt.get("properties", {}):
                return self.resolve(alt["properties"][name])
        for alt in self._alternatives(node):
            if isinstance(alt.get("additionalProperties"), dict):
                return self.resolve(alt["additionalProperties"])
        return {}

    def node(self, dotted: str) -> dict:
        node = self.resolve(self.root)
        for part in re.split(r"\.(?![^\[]*\])", dotted):
            if part.endswith("[]"):
                node = self.child(self.child(node, part[:-2]), "[]")
            else:
                node = self.child(node, part)
        return node

    def describe(self, node: dict) -> str:
        """Type and constraints in a few words: ``integer >= 1``, ``one of: a, b``, ``null or number``."""
        parts = []
        for alt in [node] + [self.resolve(s) for s in node.get("oneOf", []) + node.get("anyOf", [])]:
            parts.append(self._one(alt))
        return " or ".join(dict.fromkeys(p for p in parts if p))

    def _one(self, node: dict) -> str:
        if "const" in node:
            return json.dumps(node["const"])
        if "enum" in node:
            return "one of: " + ", ".join("null" if v is None else str(v) for v in node["enum"])
        types = node.get("type")
        if types is None:
            return ""
        text = " or ".join(types) if isinstance(types, list) else types
        bounds = []
        for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in node:
                bounds.append(f"{sign} {node[key]}")
        if "minItems" in node:
            bounds.append(f"{node['minItems']}+ items")
        if "maxItems" in node:
            bounds.append(f"<= {node['maxItems']} items")
        return text + (" " + ", ".join(bounds) if bounds else "")


# -- the rows and the table --------------------------------------------------------------------


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def rows(prefixes: list[str], root: Path = ROOT) -> list[dict[str, str]]:
    """One row per leaf key of config.yaml under the prefixes."""
    config = _load(root / "config.yaml")
    demo = _load(root / "configs/demo.yaml") or {}
    schema = Schema(_load(root / "schemas/config.schema.yaml"))
    comments = config_comments(root / "config.yaml")
    out = []
    for prefix in prefixes:
        for path, value in leaves(get_path(config, prefix), prefix):
            node = schema.node(path)
            found = comments.get(path, {})
            held = [c["inline"] or c["above"] for c in (comments.get(a, {}) for a in _ancestors(path)) if c]
            held = [t for t in held if t]
            holder = next((t for t in held if _names(t, path)), held[0] if held else "")
            description = (
                found.get("inline")
                or found.get("above")
                or node.get("description", "")
                or _about(holder, path)
                or next((d for d in (schema.node(a).get("description") for a in _ancestors(path)) if d), "")
            )
            try:
                demo_value = get_path(demo, path)
                demo_text = _value(demo_value) if demo_value != value else ""
            except KeyError:
                demo_text = ""
            out.append(
                {
                    "key": path,
                    "type": schema.describe(node),
                    "paper": _value(value),
                    "demo": demo_text,
                    "description": description,
                }
            )
    return out


def _leaf(path: str) -> str:
    return re.split(r"\.(?![^\[]*\])", path)[-1].removesuffix("[]")


def _names(text: str, path: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(_leaf(path))}(?!\w)", text) is not None


def _about(text: str, path: str) -> str:
    """The sentences of a comment that name the key (a comment above a flow mapping describes its keys
    one by one, each sentence starting ``key:``), else the whole comment."""
    sentences = re.split(r"(?<=\.)\s+(?=[A-Za-z_][\w.]*(?:\s*/\s*[\w.]+)*:\s)", text)
    named = [s for s in sentences if _names(s, path)]
    return " ".join(named) if named and len(sentences) > 1 else text


def _ancestors(path: str) -> list[str]:
    parts = re.split(r"\.(?![^\[]*\])", path)
    return [".".join(parts[:i]).replace(".[]", "[]") for i in range(len(parts) - 1, 0, -1)]


def _value(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    if value is None:
        text = "null"
    if len(text) > 90:
        text = text[:87] + "..."
    return text


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "&#124;").replace("\n", " ")


def _code(text: str) -> str:
    return f"<code>{_cell(text)}</code>" if text else ""


def _key(path: str) -> str:
    """A key path that breaks only after its dots (one unbroken run per segment)."""
    parts = [f"<span>{_cell(p)}</span>" for p in path.split(".")]
    return '<code class="config-key">' + ".<wbr>".join(parts) + "</code>"


def table(prefixes: list[str], root: Path = ROOT) -> str:
    lines = [
        "| key | type | paper run | demo | description |",
        "|---|---|---|---|---|",
    ]
    for row in rows(prefixes, root):
        lines.append(
            f"| {_key(row['key'])} | {_cell(row['type'])} | {_code(row['paper'])} | {_code(row['demo'])} "
            f"| {_cell(row['description'])} |"
        )
    return "\n".join(lines)


def expand(markdown: str, root: Path = ROOT) -> str:
    return MARKER.sub(lambda m: table(m.group(1).split(), root), markdown)


def on_page_markdown(markdown, page=None, config=None, files=None, **kwargs):  # mkdocs hook
    return expand(markdown)
