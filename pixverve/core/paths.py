"""Where images live: the configured source roots, paths kept inside them, and file hashes.

Every stage that opens an indexed image goes through ``image_path``: the relative path the index
recorded is resolved again (symlinks followed) and refused if it now points outside its root.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

HASH_CHUNK = 4 << 20


@dataclass
class Root:
    name: str
    path: Path
    source: str
    licence: str
    scan: bool


def writable_root(config: dict, root_name: str, config_key: str, base_dir=".", stale_glob: str | None = None) -> Path:
    """The folder of the source root a source rule writes into (created), with the temp files a
    killed run left there (``stale_glob``) removed."""
    roots = roots_from_config(config, base_dir)
    if root_name not in roots:
        raise ValueError(f"config key {config_key}: {root_name!r} is not one of sources.roots {sorted(roots)}")
    folder = roots[root_name].path
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(stale_glob) if stale_glob else ():
        stale.unlink()
    return folder


def roots_from_config(config: dict, base_dir: str | Path = ".") -> dict[str, Root]:
    roots = {}
    for r in config["sources"]["roots"]:
        path = (Path(base_dir) / r["path"]).resolve()
        roots[r["name"]] = Root(r["name"], path, r.get("source", r["name"]), r.get("licence", ""), r.get("scan", True))
    return roots


class Unresolvable(ValueError):
    """A path whose symlinks cannot be followed (a loop, a link the process may not read)."""


def resolve_inside(root: Path, relpath: str) -> Path:
    """Resolve ``root/relpath`` (following symlinks) and refuse anything outside ``root``."""
    if os.path.isabs(relpath):
        raise ValueError(f"absolute path {relpath!r} in a manifest; paths must be relative to their root")
    try:
        path = (root / relpath).resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: "Symlink loop" (Python < 3.13)
        raise Unresolvable(f"{relpath!r} cannot be resolved: {exc}") from exc
    if not path.is_relative_to(root):
        raise ValueError(f"{relpath!r} resolves to {path}, outside root {root}")
    return path


def image_path(roots: dict[str, Root], root_name: str, relpath: str) -> Path:
    """Absolute path of an indexed image, re-checked to lie inside its root."""
    return resolve_inside(roots[root_name].path, relpath)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()
