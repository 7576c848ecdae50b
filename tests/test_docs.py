"""The docs site cannot drift from the code.

- Every leaf key of config.yaml is in a generated config-key table (docs/hooks.py expands the
  ``<!-- config-keys: ... -->`` markers of the pages) with a non-empty description.
- Every message fragment the troubleshooting page quotes still occurs in the code.
- The README's links into docs/ point at files that exist.
- ``mkdocs build --strict`` passes (skipped only where mkdocs is not installed; CI has it).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def hooks():
    spec = importlib.util.spec_from_file_location("pixverve_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_every_config_key_is_in_a_table_with_a_description():
    h = hooks()
    rows = {}
    for page in pages():
        for match in h.MARKER.finditer(page.read_text()):
            for row in h.rows(match.group(1).split()):
                rows[row["key"]] = row
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    keys = [path for path, _ in h.leaves(config)]
    missing = [k for k in keys if k not in rows]
    assert not missing, f"config keys in no docs table (add a <!-- config-keys: ... --> marker): {missing}"
    undescribed = [k for k in keys if not rows[k]["description"].strip()]
    assert not undescribed, (
        "config keys without a description: comment them in config.yaml or add a `description:` to "
        f"schemas/config.schema.yaml: {undescribed}"
    )


def test_the_tables_show_types_and_paper_values():
    h = hooks()
    rows = {r["key"]: r for r in h.rows(["purify", "screening", "upscale"])}
    assert rows["purify.exposure.high_value"]["paper"] == "250"
    assert rows["purify.exposure.high_value"]["type"].startswith("integer")
    assert rows["upscale.stride_px"]["paper"] == "384"
    assert rows["screening.criteria[].min_side_px"]["paper"] == "3000"
    assert rows["purify.aesthetics.keep_top_fraction"]["demo"] == "1.0"  # the demo's overlay shown where it differs
    assert "UltraFlux" in rows["purify.flatness.smooth_variance"]["description"]


def test_comments_are_read_without_evaluating_yaml(tmp_path):
    h = hooks()
    text = (
        "a:\n"
        "  # block above b\n"
        "  b: 1  # inline of b\n"
        "  c: 'x # not a comment'\n"
        "  d: >-\n"
        "    folded: not a key\n"
        "  e: {f: 1,\n"
        "      g: 2}  # flow mapping\n"
        "  items:\n"
        "    - name: one  # first item\n"
        "      size: 2\n"
    )
    (tmp_path / "c.yaml").write_text(text)
    found = h.config_comments(tmp_path / "c.yaml")
    assert found["a.b"]["inline"] == "inline of b" and found["a.b"]["above"] == "block above b"
    assert found["a.c"]["inline"] == ""
    assert "a.folded" not in found and "a.d.folded" not in found
    assert found["a.e"]["inline"] == "flow mapping"
    assert found["a.items[].name"]["inline"] == "first item" and "a.items[].size" in found


def quoted_fragments() -> list[str]:
    """The code-quoted first cell of every table row of the troubleshooting page."""
    out = []
    for line in (DOCS / "troubleshooting.md").read_text().splitlines():
        m = re.match(r"^\| `([^`]+)` \|", line)
        if m:
            out.append(m.group(1))
    return out


def code_text() -> str:
    files = [ROOT / "Snakefile", *ROOT.glob("rules/*.smk")]
    for folder in ("pixverve", "scripts"):
        files += [p for p in (ROOT / folder).rglob("*.py")]
    return "\n".join(p.read_text() for p in files)


def test_troubleshooting_quotes_messages_the_code_still_raises():
    fragments = quoted_fragments()
    assert len(fragments) >= 30, "the troubleshooting tables lost their quoted messages"
    code = code_text()
    gone = [f for f in fragments if f not in code]
    assert not gone, f"docs/troubleshooting.md quotes messages no longer in the code: {gone}"


def test_readme_links_into_docs_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "the README links into docs/"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
    assert len(readme.splitlines()) <= 220, "the README stays short: prose belongs in docs/"


def test_mkdocs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -r requirements.txt)")
    res = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "site/stages/purify/index.html").is_file()
    html = (tmp_path / "site/stages/purify/index.html").read_text()
    assert "<span>exposure</span>.<wbr><span>high_value</span>" in html and "config-keys:" not in html
