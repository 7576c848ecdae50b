"""Stage 1 sources: Pexels and Unsplash API collectors that fill a source root with photos.

Each collector walks its API listings (search queries and the curated/editorial list, page by
page to the end or ``max_pages``), screens every photo by the API's width and height *before*
downloading (the same resolution rules as rule ``screen``, so small photos are never fetched),
and downloads the rest into the root's folder:

* streamed to a hidden temp file (``.<id>.download<ext>``; the index skips dot-files), then
  checked -- HTTP content type is an image, byte count equals Content-Length, the file decodes
  (every byte read, reduced-size DCT), its dimensions equal the API's (either orientation: EXIF
  may rotate) -- and renamed atomically to ``<id><ext>``;
* every photo's outcome is appended to a journal (``<root>/.collect-<source>.jsonl``) as soon as
  it is known, so a killed run resumes without re-downloading finished files or repeating rows;
  a photo listed on two pages (listings shift while you page) is handled once;
* API calls honour the rate-limit headers (``X-Ratelimit-Remaining``/``-Reset``: wait for the
  reset when none are left), obey ``Retry-After`` on 429, and retry 5xx and broken connections
  with exponential back-off; Unsplash's ``links.download_location`` is requested before each
  download, as its API guidelines require.

The API key comes from the environment variable named in config and is sent only to the API host
in the ``Authorization`` header -- never to the image CDN, never logged, never written.
Outputs: a table of every photo seen (``results/collect/<source>.parquet``: ids, sizes, author,
licence, origin URL, decision and reason) and a manifest CSV in the index's format
(path, source, licence, url, author) for the photos kept.
"""

from __future__ import annotations

import csv
import email.utils
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

LICENCES = {
    "pexels": ("Pexels License", "https://www.pexels.com/license/"),
    "unsplash": ("Unsplash License", "https://unsplash.com/license"),
}
CONTENT_TYPE_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/tiff": ".tif"}


class CollectorConfigError(ValueError):
    """Bad or missing collector settings (the message names the config key / variable)."""


class DownloadRejected(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


@dataclass
class Photo:
    source: str
    photo_id: str
    width: int
    height: int
    download_url: str
    page_url: str
    author: str
    author_url: str
    query: str
    track_url: str = ""  # Unsplash: links.download_location


def api_key(cfg: dict, source: str) -> str:
    env = cfg.get("api_key_env")
    if not env:
        raise CollectorConfigError(f"config key collect.{source}.api_key_env: name the environment variable holding the key")
    key = os.environ.get(env)
    if not key:
        raise CollectorConfigError(
            f"config key collect.{source}.api_key_env: environment variable {env} is not set "
            f"(export it on the node that runs the collector, or remove {source!r} from collect.enabled)"
        )
    return key


class ApiSession:
    """HTTP to one API host with retries, back-off and rate-limit handling; the key stays in here."""

    def __init__(self, base_url: str, auth_header: str, http: dict, log=print, sleep=time.sleep):
        import requests

        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": auth_header, "Accept-Version": "v1"}
        self.http = http
        self.log, self.sleep = log, sleep
        self.session = requests.Session()
        self.api_calls = 0
        self._last_call = 0.0

    def _wait_between_calls(self):
        gap = float(self.http.get("min_interval_s", 0)) - (time.monotonic() - self._last_call)
        if gap > 0:
            self.sleep(gap)
        self._last_call = time.monotonic()

    def _backoff(self, attempt: int) -> float:
        return min(float(self.http["backoff_s"]) * 2**attempt, float(self.http["max_backoff_s"]))

    def _respect_rate_limit(self, headers) -> None:
        remaining = headers.get("X-Ratelimit-Remaining")
        if remaining is None or int(remaining) > 0:
            return
        reset = headers.get("X-Ratelimit-Reset")
        wait = float(self.http["exhausted_wait_s"])
        if reset is not None:
            wait = max(0.0, float(reset) - time.time())  # Pexels: a UNIX time
        wait = min(wait, float(self.http["max_rate_wait_s"]))
        self.log(f"rate limit used up: waiting {wait:.0f} s")
        self.sleep(wait)

    def request(self, url: str, params: dict | None = None, auth: bool = True, stream: bool = False):
        """GET with retries; returns the response (2xx).  ``auth`` only for the API host."""
        import requests

        headers = dict(self._auth) if auth else {}
        last = ""
        for attempt in range(int(self.http["retries"]) + 1):
            if auth:
                self._wait_between_calls()
                self.api_calls += 1
            try:
                resp = self.session.get(url, params=params, headers=headers, timeout=float(self.http["timeout_s"]), stream=stream)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = type(exc).__name__
                self.sleep(self._backoff(attempt))
                continue
            if resp.status_code == 429:
                wait = _retry_after(resp.headers.get("Retry-After"))
                wait = self._backoff(attempt) if wait is None else min(wait, float(self.http["max_rate_wait_s"]))
                self.log(f"429 from {_host_path(url)}: waiting {wait:.1f} s")
                resp.close()
                self.sleep(wait)
                last = "HTTP 429"
                continue
            if resp.status_code >= 500:
                resp.close()
                last = f"HTTP {resp.status_code}"
                self.sleep(self._backoff(attempt))
                continue
            if resp.status_code >= 400:
                resp.close()
                hint = " (check the API key)" if resp.status_code in (401, 403) else ""
                raise RuntimeError(f"{_host_path(url)} answered HTTP {resp.status_code}{hint}")
            if auth:
                self._respect_rate_limit(resp.headers)
            return resp
        raise RuntimeError(f"{_host_path(url)}: gave up after {int(self.http['retries']) + 1} attempts ({last})")

    def get_json(self, path_or_url: str, params: dict | None = None):
        url = path_or_url if path_or_url.startswith("http") else self.base_url + path_or_url
        resp = self.request(url, params)
        return resp.json()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())


def _host_path(url: str) -> str:
    """A URL for messages: host and path only (no query string, where some APIs put keys)."""
    p = urlparse(url)
    return f"{p.netloc}{p.path}"


# -- listings ---------------------------------------------------------------------------------


def pexels_listings(api: ApiSession, cfg: dict):
    """(query, page, photos) for each search query, then the curated list."""
    per_page = int(cfg["per_page"])
    plans = [("/search", {"query": q}, q, int(cfg["max_pages"])) for q in cfg.get("queries") or []]
    if int(cfg.get("curated_pages", 0)):
        plans.append(("/curated", {}, "curated", int(cfg["curated_pages"])))
    for path, params, label, max_pages in plans:
        page = 1
        while page <= max_pages:
            data = api.get_json(path, {**params, "page": page, "per_page": per_page})
            photos = [_pexels_photo(p, label) for p in data.get("photos", [])]
            yield label, page, photos
            if not photos or not data.get("next_page"):
                break
            page += 1


def _pexels_photo(p: dict, query: str) -> Photo:
    return Photo(
        "pexels", str(p["id"]), int(p["width"]), int(p["height"]), p["src"]["original"], p.get("url", ""),
        p.get("photographer", ""), p.get("photographer_url", ""), query,
    )


def unsplash_listings(api: ApiSession, cfg: dict):
    per_page = int(cfg["per_page"])
    for q in cfg.get("queries") or []:
        page = 1
        while page <= int(cfg["max_pages"]):
            data = api.get_json("/search/photos", {"query": q, "page": page, "per_page": per_page})
            photos = [_unsplash_photo(p, q, cfg) for p in data.get("results", [])]
            yield q, page, photos
            if not photos or page >= int(data.get("total_pages", page)):
                break
            page += 1
    for page in range(1, int(cfg.get("list_pages", 0)) + 1):
        photos = [_unsplash_photo(p, "editorial", cfg) for p in api.get_json("/photos", {"page": page, "per_page": per_page})]
        yield "editorial", page, photos
        if not photos:
            break


def _unsplash_photo(p: dict, query: str, cfg: dict) -> Photo:
    user = p.get("user") or {}
    return Photo(
        "unsplash", str(p["id"]), int(p["width"]), int(p["height"]), p["urls"][cfg.get("download_size", "raw")],
        (p.get("links") or {}).get("html", ""), user.get("name", ""), (user.get("links") or {}).get("html", ""), query,
        (p.get("links") or {}).get("download_location", ""),
    )


LISTINGS = {"pexels": pexels_listings, "unsplash": unsplash_listings}
AUTH = {"pexels": lambda key: key, "unsplash": lambda key: f"Client-ID {key}"}


# -- downloads --------------------------------------------------------------------------------


def _ext_for(content_type: str, url: str) -> str:
    ext = CONTENT_TYPE_EXT.get(content_type.split(";")[0].strip().lower())
    if ext:
        return ext
    suffix = Path(urlparse(url).path).suffix.lower()
    return ".jpg" if suffix == ".jpeg" else suffix


def download(api: ApiSession, photo: Photo, folder: Path, max_megapixels: float) -> tuple[str, int]:
    """Fetch, check and atomically place one photo; returns (file name, bytes).  Raises DownloadRejected."""
    from . import images

    retries = int(api.http["retries"])
    for attempt in range(retries + 1):
        resp = api.request(photo.download_url, auth=False, stream=True)
        content_type = resp.headers.get("Content-Type", "")
        if not content_type.lower().startswith("image/"):
            resp.close()
            raise DownloadRejected("not_an_image", f"content type {content_type!r} from {_host_path(photo.download_url)}")
        ext = _ext_for(content_type, photo.download_url)
        tmp = folder / f".{photo.photo_id}.download{ext}"
        expected = resp.headers.get("Content-Length")
        written = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in resp.iter_content(chunk_size=int(api.http["chunk_bytes"])):
                    fh.write(chunk)
                    written += len(chunk)
        except Exception as exc:  # a connection broken mid-body: start the file again
            tmp.unlink(missing_ok=True)
            if attempt == retries:
                raise DownloadRejected("truncated", f"download broke off after {written} bytes: {type(exc).__name__}") from None
            api.sleep(api._backoff(attempt))
            continue
        finally:
            resp.close()
        if expected is not None and written != int(expected):
            tmp.unlink(missing_ok=True)
            if attempt == retries:
                raise DownloadRejected("truncated", f"got {written} of {expected} bytes")
            api.sleep(api._backoff(attempt))
            continue
        try:
            info = images.probe(tmp, max_megapixels)
            images.read_rgb(tmp, max_megapixels, reduce_to_min_side=256)  # reads every byte: truncation shows
        except images.ImageError as exc:
            tmp.unlink(missing_ok=True)
            raise DownloadRejected(exc.code, exc.detail) from None
        if (info.width, info.height) not in ((photo.width, photo.height), (photo.height, photo.width)):
            tmp.unlink(missing_ok=True)
            raise DownloadRejected(
                "size_mismatch", f"API says {photo.width}x{photo.height}, file is {info.width}x{info.height}"
            )
        final = folder / f"{photo.photo_id}{ext}"
        os.replace(tmp, final)  # atomic: a file with its final name is complete and checked
        return final.name, written
    raise AssertionError("unreachable")


# -- the run ------------------------------------------------------------------------------------


class Journal:
    """Append-only JSONL of photo outcomes; the resume state of a collector."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a killed run
                self.rows[row["photo_id"]] = row
        self._fh = open(path, "a", encoding="utf-8")

    def done(self, photo_id: str, folder: Path) -> bool:
        row = self.rows.get(photo_id)
        if row is None:
            return False
        return not row["passed"] or (folder / row["relpath"]).is_file()

    def add(self, row: dict) -> None:
        self.rows[row["photo_id"]] = row
        self._fh.write(json.dumps(row, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self):
        self._fh.close()


def collect(source: str, config: dict, base_dir=".", log=print, sleep=time.sleep):
    """Run one collector; returns (table of every photo seen, manifest rows for the kept ones)."""
    import pandas as pd
    from tqdm import tqdm

    from .config import screening_criteria
    from .index import writable_root
    from .screening import check_resolution

    cfg = config["collect"][source]
    key = api_key(cfg, source)
    folder = writable_root(config, cfg["root"], f"collect.{source}.root", base_dir, stale_glob=".*.download*")
    criteria = screening_criteria(config)
    cap = float(config["io"]["max_megapixels"])
    licence, licence_url = LICENCES[source]
    api = ApiSession(cfg["api_base"], AUTH[source](key), config["collect"]["http"], log=log, sleep=sleep)
    journal = Journal(folder / f".collect-{source}.jsonl")
    fetched = 0
    bar = tqdm(desc=f"{source} photos", unit="photo", mininterval=2)
    try:
        for query, page, photos in LISTINGS[source](api, cfg):
            for photo in photos:
                bar.update(1)
                if journal.done(photo.photo_id, folder):
                    continue  # finished in an earlier run, or seen on an earlier page
                row = {**asdict(photo), "root": cfg["root"], "page": page, "licence": licence, "licence_url": licence_url,
                       "attribution": f"Photo by {photo.author} on {source.capitalize()}", "relpath": "", "bytes": 0}
                name, code, detail = check_resolution(photo.width, photo.height, criteria)
                if name is None:
                    journal.add({**row, "passed": False, "reason": code, "reason_detail": f"from the API's size: {detail}"})
                    continue
                try:
                    if photo.track_url:
                        api.request(photo.track_url)  # Unsplash: count the download
                    relpath, nbytes = download(api, photo, folder, cap)
                except DownloadRejected as exc:
                    journal.add({**row, "passed": False, "reason": exc.code, "reason_detail": exc.detail})
                    log(f"{source} {photo.photo_id}: rejected ({exc.code}: {exc.detail})")
                    continue
                fetched += 1
                journal.add({**row, "relpath": relpath, "bytes": nbytes, "passed": True, "reason": "", "reason_detail": ""})
            log(f"{source} '{query}' page {page}: {len(photos)} photos listed")
    finally:
        bar.close()
        journal.close()
    log(f"{source}: {fetched} downloaded in this run, {api.api_calls} API calls")
    table = pd.DataFrame(sorted(journal.rows.values(), key=lambda r: r["photo_id"]))
    kept = table[table["passed"]] if len(table) else table
    manifest = [
        {"path": r["relpath"], "source": source, "licence": r["licence"], "url": r["page_url"], "author": r["author"]}
        for r in kept.to_dict("records")
    ]
    return table.drop(columns=["download_url", "track_url"], errors="ignore"), manifest


def write_manifest(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "source", "licence", "url", "author"])
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["path"]))
