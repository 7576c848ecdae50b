"""Stage 1 index: find every image of every source, identify it, read its header, shard it.

Images come from configured *roots* (folders).  A root may be scanned (every file with a known
image extension), and/or listed by manifests (CSV with ``path, source, licence, url, author``;
``path`` relative to the manifest's root).  Paths are resolved and must stay inside their root
(symlinks included); anything else becomes a row with ``reason=outside_roots``.

``image_id`` is the first 16 hex digits of the SHA-256 of the file's bytes: stable across
machines, renames and re-runs, and equal for byte-identical copies (exact duplicates).  Hashes
are cached by (path, size, mtime) under ``results/index/.cache`` so a killed index job resumes
without re-reading terabytes.
"""

from __future__ import annotations

import csv
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pixverve.core import images
from pixverve.core.paths import Root, Unresolvable, file_sha256, resolve_inside, roots_from_config
from pixverve.core.tables import fail, ok

MANIFEST_COLUMNS = ("path", "source", "licence", "url", "author")


@dataclass
class Candidate:
    root: str
    relpath: str
    source: str
    licence: str
    url: str = ""
    author: str = ""
    problem: tuple[str, str] | None = None  # (code, detail) found before reading the file
    abspath: Path | None = field(default=None, repr=False)


def generated_manifests(config: dict) -> list[dict]:
    """Manifests the source rules write (collectors, importers, the synthetic stream), as
    ``sources.manifests`` entries: the index reads them like hand-written ones."""
    out = []
    collect = config.get("collect") or {}
    for source in collect.get("enabled") or []:
        out.append({"path": f"results/collect/{source}_manifest.csv", "root": collect[source]["root"]})
    for name, spec in (config.get("imports") or {}).items():
        out.append({"path": f"results/collect/import_{name}_manifest.csv", "root": spec["root"]})
    synthetic = config.get("synthetic") or {}
    if synthetic.get("enabled"):
        out.append({"path": "results/collect/synthetic_manifest.csv", "root": synthetic["root"]})
    return out


def _problem(exc: ValueError) -> tuple[str, str]:
    return ("unresolvable" if isinstance(exc, Unresolvable) else "outside_roots", str(exc))


def _scan_root(root: Root, extensions: set[str], log) -> list[Candidate]:
    if not root.path.is_dir():
        raise FileNotFoundError(f"source root {root.name!r}: folder {root.path} does not exist")
    found, skipped = [], {}

    def unreadable_folder(exc: OSError):
        # a sub-folder the scan may not list: one row with the reason, the scan goes on
        rel = os.path.relpath(exc.filename or str(root.path), root.path)
        found.append(
            Candidate(root.name, rel, root.source, root.licence, problem=("unreadable", f"folder not listable: {exc}"))
        )

    for dirpath, dirnames, filenames in os.walk(root.path, onerror=unreadable_folder):
        # hidden entries are never images of the pool: collector journals and temp downloads,
        # macOS "._" forks, .git folders
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), root.path)
            suffix = Path(name).suffix.lower()
            if suffix not in extensions:
                skipped[suffix] = skipped.get(suffix, 0) + 1
                continue
            cand = Candidate(root.name, rel, root.source, root.licence)
            try:
                cand.abspath = resolve_inside(root.path, rel)
            except ValueError as exc:
                cand.problem = _problem(exc)
            found.append(cand)
    for suffix, n in sorted(skipped.items()):
        log(f"root {root.name}: ignored {n} file(s) with extension {suffix or '(none)'!r} (not in sources.extensions)")
    return found


def _read_manifest(manifest: dict, roots: dict[str, Root], base_dir: Path) -> list[Candidate]:
    root = roots.get(manifest["root"])
    if root is None:
        raise KeyError(f"manifest {manifest['path']}: root {manifest['root']!r} is not in sources.roots")
    path = (base_dir / manifest["path"]).resolve()
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("path",) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"manifest {path}: missing column(s) {missing}; expected {MANIFEST_COLUMNS}")
        for rec in reader:
            rel = rec["path"]
            cand = Candidate(
                root.name,
                os.path.normpath(rel),
                rec.get("source") or root.source,
                rec.get("licence") or root.licence,
                rec.get("url") or "",
                rec.get("author") or "",
            )
            try:
                cand.abspath = resolve_inside(root.path, rel)
                if not cand.abspath.is_file():
                    cand.problem = ("missing_file", f"listed in {path.name} but not found at {cand.abspath}")
            except ValueError as exc:
                cand.problem = _problem(exc)
            out.append(cand)
    return out


def discover(config: dict, base_dir: str | Path = ".", log=print) -> list[Candidate]:
    """All candidate files of all sources; manifest metadata wins over scanned defaults."""
    base_dir = Path(base_dir)
    roots = roots_from_config(config, base_dir)
    extensions = {e.lower() for e in config["sources"]["extensions"]}
    by_key: dict[tuple[str, str], Candidate] = {}
    for root in roots.values():
        if root.scan:
            for cand in _scan_root(root, extensions, log):
                by_key[(cand.root, cand.relpath)] = cand
    for manifest in config["sources"].get("manifests", []):
        for cand in _read_manifest(manifest, roots, base_dir):
            by_key[(cand.root, cand.relpath)] = cand
    return [by_key[k] for k in sorted(by_key)]


class HashCache:
    """SHA-256 per (path, size, mtime_ns), appended as hashes complete; survives a killed job."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.known: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self._fh = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    parts = line.rstrip("\n").split("\t")
                    if len(parts) == 4 and len(parts[3]) == 64:  # a torn last line is ignored
                        self.known[(parts[0], int(parts[1]), int(parts[2]))] = parts[3]
        self._fh = open(self.path, "a", encoding="utf-8")

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        hit = self.known.get(key)
        if hit:
            return hit
        digest = file_sha256(path)
        if self._fh is not None:
            with self._lock:
                self._fh.write(f"{key[0]}\t{key[1]}\t{key[2]}\t{digest}\n")
                self._fh.flush()
        return digest

    def close(self):
        if self._fh is not None:
            self._fh.close()


def _blank_row(cand: Candidate, max_megapixels: float) -> dict:
    return {
        "image_id": "",
        "sha256": "",
        "root": cand.root,
        "relpath": cand.relpath,
        "source": cand.source,
        "licence": cand.licence,
        "url": cand.url,
        "author": cand.author,
        "bytes": -1,
        "format": "",
        "mode": "",
        "bit_depth": 0,
        "orientation": 0,
        "has_alpha": False,
        "width": 0,
        "height": 0,
        "megapixels": 0.0,
        "max_megapixels": float(max_megapixels),
        "passed": False,
        "reason": "",
        "reason_detail": "",
    }


def _index_one(cand: Candidate, cache: HashCache, max_megapixels: float) -> dict:
    row = _blank_row(cand, max_megapixels)
    if cand.problem:
        return fail(row, *cand.problem)
    path = cand.abspath
    try:
        row["bytes"] = path.stat().st_size
        row["sha256"] = cache.sha256(path)
        row["image_id"] = row["sha256"][:16]
    except OSError as exc:
        return fail(row, "unreadable", str(exc))
    try:
        info = images.probe(path, max_megapixels)
    except images.ImageError as exc:
        return fail(row, exc.code, exc.detail)
    except OSError as exc:  # vanished or lost its permission between hashing and probing
        return fail(row, "unreadable", str(exc))
    row.update(
        format=info.format,
        mode=info.mode,
        bit_depth=info.bit_depth,
        orientation=info.orientation,
        has_alpha=info.has_alpha,
        width=info.width,
        height=info.height,
        megapixels=round(info.megapixels, 6),
    )
    return ok(row)


def build_index(config: dict, base_dir: str | Path = ".", threads: int = 1, cache_path=None, log=print) -> pd.DataFrame:
    """Index every candidate; rows that cannot be read are kept with their reason."""
    images.set_pixel_cap(config["io"]["max_megapixels"])
    cands = discover(config, base_dir, log)
    log(f"index: {len(cands)} candidate file(s) in {len(config['sources']['roots'])} root(s)")
    cache = HashCache(cache_path)
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            rows = list(
                tqdm(
                    pool.map(lambda c: _index_one(c, cache, config["io"]["max_megapixels"]), cands),
                    total=len(cands),
                    desc="index",
                    unit="img",
                    mininterval=2,
                )
            )
    finally:
        cache.close()
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=list(_blank_row(Candidate("", "", "", ""), 0).keys()))
    return assign_shards(df, int(config["shards"]["images_per_shard"]))


def assign_shards(df: pd.DataFrame, images_per_shard: int) -> pd.DataFrame:
    """Readable images, ordered by (image_id, root, relpath), cut into shards of fixed size.

    Byte-identical copies stay in the same shard order position next to each other.  Rows that
    failed at the index get shard ``""`` -- no later stage has work for them.
    """
    df = df.sort_values(["image_id", "root", "relpath"], kind="mergesort").reset_index(drop=True)
    good = df["passed"].astype(bool).to_numpy()
    position = np.cumsum(good) - 1  # rank among the readable images
    shard_no = pd.Series(position // images_per_shard).map("s{:05d}".format)
    df["shard"] = np.where(good, shard_no, "")
    return df


def write_shards(df: pd.DataFrame, table_path, shards_dir) -> list[str]:
    """Write the whole index and one manifest per shard; return the shard names."""
    from pixverve.core.tables import write_table

    write_table(df, table_path, sort_by=["image_id", "root", "relpath"])
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name, rows in df[df["shard"] != ""].groupby("shard", sort=True):
        write_table(rows, shards_dir / f"{name}.parquet", sort_by=["image_id", "root", "relpath"])
        names.append(name)
    return names


def bundle_of_shards(shards: list[str], shards_per_bundle: int) -> dict[str, list[str]]:
    """Consecutive shards cut into bundles ``b00000``, ``b00001``...: each is one SLURM job.

    The cut depends only on the sorted shard names and the bundle size, so every evaluation of
    the DAG (before and after the index checkpoint, a resumed run) gives the same bundles.
    """
    if shards_per_bundle < 1:
        raise ValueError(f"shards per bundle must be >= 1, got {shards_per_bundle}")
    shards = sorted(shards)
    return {
        f"b{i // shards_per_bundle:05d}": shards[i : i + shards_per_bundle]
        for i in range(0, len(shards), shards_per_bundle)
    }
