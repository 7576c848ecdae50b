"""The atlas site: static pages plus data files, laid out as notes/atlas-contract.md fixes.

Data reaches the pages as ``<script>`` files calling a global callback (``ATLAS.page(...)``), since
Chromium refuses fetch/XHR on ``file://``.  Every value is encoded by :func:`js_value`:
``json.dumps(ensure_ascii=True)`` with ``<``, ``>``, ``&`` escaped, so no string can close the
script tag; the pages set strings with ``textContent``/``setAttribute`` only.

Entries stream: a full image entry is written to ``data/images/`` and reduced at once to its thumb
(six short fields); galleries and the search index are written from thumbs, a page of 200 at a
time, so a 95K-image run never holds its entries in memory.  On a cluster each shard job calls
:func:`write_image_data` for its own entries and keeps the thumbs it returns; one last job calls
:func:`write_site` with every shard's thumbs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

STATIC = Path(__file__).with_name("static")
VENDOR_DIR = Path(__file__).resolve().parents[2] / "resources" / "vendor" / "openseadragon"
PAGE_SIZE = 200  # thumb entries per gallery page (the contract)
SEARCH_CHUNK = 5000  # [image_id, name, gallery key, page] rows per search file
PAGES = ("index.html", "image.html", "bench.html")
ASSETS = ("atlas.js", "atlas.css")
OSD_FILES = ("openseadragon.min.js", "LICENSE.txt", "images")
THUMB_FIELDS = ("image_id", "name", "thumb", "status", "left_stage", "left_reason")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")
_JS_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


# --- encoding ------------------------------------------------------------------------------------


def _plain(value):
    """JSON-able Python: numpy scalars and arrays, paths; NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return value.as_posix()
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _plain(value.tolist())
    raise TypeError(f"atlas data: cannot encode {type(value).__name__}")


def js_value(value) -> str:
    """A JavaScript literal of ``value`` safe inside a ``<script>`` element."""
    text = json.dumps(_plain(value), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return re.sub(r"[<>&]", lambda m: _JS_ESCAPES[m.group()], text)


def _write_call(path: Path, callback: str, *args) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"ATLAS.{callback}({','.join(js_value(a) for a in args)});\n", encoding="ascii")


# --- per image -----------------------------------------------------------------------------------


def image_data_path(out_dir, image_id: str) -> Path:
    if not _SAFE_ID.match(str(image_id)):
        raise ValueError(f"atlas: image id {image_id!r} is not [A-Za-z0-9_-]+")
    return Path(out_dir) / "data" / "images" / image_id[:2] / f"{image_id}.js"


def thumb_of(entry: dict) -> dict:
    """The gallery fields of one image entry."""
    left = entry.get("left") or {}
    return {
        "image_id": entry["image_id"],
        "name": entry.get("name", ""),
        "thumb": entry.get("thumb"),
        "status": entry.get("status", "pending"),
        "left_stage": left.get("stage"),
        "left_reason": left.get("reason"),
    }


def write_image_data(out_dir, entries: Iterable[dict]) -> list[dict]:
    """Write ``data/images/<id[:2]>/<id>.js`` for each entry (one shard's, streamed); return the
    thumbs, in order, for :func:`write_site`."""
    thumbs = []
    for entry in entries:
        _write_call(image_data_path(out_dir, entry["image_id"]), "image", entry)
        thumbs.append(thumb_of(entry))
    return thumbs


# --- galleries and search ------------------------------------------------------------------------


def gallery_keys(thumb: dict) -> list[str]:
    """The galleries an image is in; the first is where search sends it."""
    status = thumb.get("status") or "pending"
    if status != "rejected":
        return [status]
    stage, reason = thumb.get("left_stage") or "unknown", thumb.get("left_reason") or "unknown"
    return [f"reason:{stage}:{reason}", f"stage:{stage}", "rejected"]


def gallery_label(key: str) -> str:
    kind, _, rest = key.partition(":")
    if kind == "stage":
        return f"rejected at {rest}"
    if kind == "reason":
        stage, _, reason = rest.partition(":")
        return f"{stage}: {reason}"
    return key


def gallery_dir(key: str) -> str:
    """``data/gallery/<key>/`` as the contract has it; a key that is no safe file name (a reason
    holding '/' or '..') gets a hashed folder, named in run.js so the page needs no rule."""
    if _SAFE_KEY.match(key) and ".." not in key:
        return f"data/gallery/{key}/"
    return f"data/gallery/k{hashlib.sha1(key.encode()).hexdigest()[:16]}/"


class _Galleries:
    """Gallery pages and search chunks written as they fill: at most one page per key in memory."""

    def __init__(self, out_dir: Path):
        self.out = out_dir
        self.open: dict[str, list] = {}
        self.meta: dict[str, dict] = {}
        self.search: list = []
        self.search_chunks = 0

    def add(self, thumb: dict) -> None:
        keys = gallery_keys(thumb)
        for key in keys:
            meta = self.meta.setdefault(
                key, {"label": gallery_label(key), "count": 0, "pages": 0, "dir": gallery_dir(key)}
            )
            page = self.open.setdefault(key, [])
            if key == keys[0]:
                self.search.append([thumb["image_id"], thumb.get("name") or "", key, meta["pages"]])
            page.append(thumb)
            meta["count"] += 1
            if len(page) == PAGE_SIZE:
                self._flush(key)
        if len(self.search) == SEARCH_CHUNK:
            self._flush_search()

    def _flush(self, key: str) -> None:
        meta = self.meta[key]
        _write_call(self.out / meta["dir"] / f"{meta['pages']}.js", "page", key, meta["pages"], self.open.pop(key))
        meta["pages"] += 1

    def _flush_search(self) -> None:
        _write_call(
            self.out / "data" / "search" / f"{self.search_chunks}.js", "search", self.search_chunks, self.search
        )
        self.search, self.search_chunks = [], self.search_chunks + 1

    def close(self) -> None:
        for key in list(self.open):
            if self.open[key]:
                self._flush(key)
        if self.search or not self.search_chunks:
            self._flush_search()


# --- the site ------------------------------------------------------------------------------------


def copy_static(out_dir, vendor_dir=VENDOR_DIR) -> None:
    """The pages, the glue script and style, and OpenSeadragon (vendored by ``make``)."""
    out_dir, vendor_dir = Path(out_dir), Path(vendor_dir)
    if not (vendor_dir / "openseadragon.min.js").exists():
        raise FileNotFoundError(f"{vendor_dir}/openseadragon.min.js missing: run `make vendor` (part of the set-up)")
    for name in PAGES:
        shutil.copyfile(STATIC / name, out_dir / name)
    (out_dir / "assets").mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        shutil.copyfile(STATIC / name, out_dir / "assets" / name)
    osd = out_dir / "assets" / "openseadragon"
    shutil.rmtree(osd, ignore_errors=True)
    osd.mkdir()
    for name in OSD_FILES:
        src = vendor_dir / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, osd / name)


def write_site(
    out_dir,
    run: dict,
    entries: Iterable[dict] = (),
    bench: dict | None = None,
    vendor_dir=VENDOR_DIR,
    thumbs: Iterable[dict] = (),
) -> dict:
    """Write the whole site but the tiles into ``out_dir``.

    ``entries``: full image entries, written to ``data/images/`` here as they stream;
    ``thumbs``: those of images whose data a shard job already wrote (:func:`write_image_data`).
    ``run``: the funnel part of run.js (title, smoke, stages, funnel, table1); this adds
    ``galleries``, ``search_chunks`` and ``bench``.  Returns the run.js object.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("gallery", "search"):  # a rerun with fewer galleries leaves none behind
        shutil.rmtree(out_dir / "data" / stale, ignore_errors=True)
    copy_static(out_dir, vendor_dir)

    galleries = _Galleries(out_dir)
    for entry in entries:
        galleries.add(write_image_data(out_dir, [entry])[0])
    for thumb in thumbs:
        galleries.add(thumb)
    galleries.close()

    run = {**run, "galleries": galleries.meta, "search_chunks": galleries.search_chunks, "bench": bench is not None}
    run.setdefault("table1", None)
    _write_call(out_dir / "data" / "run.js", "run", run)
    bench_js = out_dir / "data" / "bench.js"
    if bench is not None:
        _write_call(bench_js, "bench", bench)
    else:
        bench_js.unlink(missing_ok=True)
    return run
