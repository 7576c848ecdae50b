"""A local server on 127.0.0.1 that speaks the Pexels and Unsplash API shapes, with image bytes.

``/pexels/v1/search``, ``/pexels/v1/curated``: ``{"page", "per_page", "photos": [...], "next_page"}``
with photo objects (id, width, height, url, photographer, photographer_url, src.original).
``/unsplash/search/photos``: ``{"total", "total_pages", "results": [...]}``; ``/unsplash/photos``: a
list; photo objects with id, width, height, urls.raw/full, links.html/download_location, user.
``/unsplash/track/<id>``: the download_location endpoint.  ``/img/<id>.jpg``: the image (the CDN).

Quotas as the real services document / are seen to behave (every API call counts, Unsplash's
track calls included; the server's time is ``clock``, shareable with a test's fake clock):

* Pexels: successful answers carry ``X-Ratelimit-Limit`` (the monthly quota), ``-Remaining`` and
  ``-Reset`` (a UNIX time, ``month_reset``); past ``hourly_limit`` calls in an hour or the monthly
  quota it answers 429 with *no* rate headers and no Retry-After.
* Unsplash: successful answers carry ``X-Ratelimit-Limit``/``-Remaining`` of the hourly quota and
  no reset; past it, 403 with the plain-text body "Rate Limit Exceeded".
* ``flagged`` queries answer 410, and so do the ``download_location`` calls of ``gone_tracks`` ids.
  ``month_spent_elsewhere_after = n``: after n of our Pexels calls another user of the key spends
  the rest of the month (429s, as over the monthly quota, though the last 200 said plenty was left).  ``forbidden``: every Unsplash call answers a real 403 (JSON
  errors).  Images are sent gzip-encoded (Content-Length of the encoded bytes) unless the request
  says ``Accept-Encoding: identity``, as CDNs do; the header seen is kept per image.

Scripted trouble (attributes): ``fail_once`` paths answer 500 the first time; ``rate_limit_once``
paths answer 429 with ``Retry-After: 1`` the first time; ``truncate`` ids send half their bytes under
a full Content-Length (always); ``lie_size`` ids are listed with a size that is not the file's; ``missing`` images answer 404;
``slow_image_s`` delays every image.  Requests are counted per path (``counts``), rate-limit and
410 answers too (``refused``); Authorization headers are kept per path so tests can check where
the key went; ``sizes_asked`` keeps the Pexels ``size`` parameter of each search.
"""

from __future__ import annotations

import gzip
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

import numpy as np
from local_server import LocalServer


def jpeg_bytes(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


class FakePhotoAPI(LocalServer):
    def __init__(self, photos: dict[str, tuple[int, int]], pages: list[list[str]], key: str, clock=time.time):
        """``photos``: id -> (width, height) of the real file; ``pages``: ids per listing page."""
        self.photos, self.pages, self.key, self.clock = photos, pages, key, clock
        self.fail_once: set[str] = set()
        self.rate_limit_once: set[str] = set()
        self.truncate: set[str] = set()
        self.lie_size: set[str] = set()
        self.missing: set[str] = set()
        self.flagged: set[str] = set()
        self.gone_tracks: set[str] = set()
        self.month_spent_elsewhere_after: int | None = None
        self.forbidden = False
        self.slow_image_s = 0.0
        self.hourly_limit = {"pexels": 1_000_000, "unsplash": 1_000_000}
        self.monthly_limit = 20_000
        self.month_reset = clock() + 20 * 86400
        self.served: dict[str, list[float]] = {"pexels": [], "unsplash": []}  # times of counted API calls
        self.counts: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.auth_seen: dict[str, set[str]] = {}
        self.encoding_seen: dict[str, set[str]] = {}
        self.sizes_asked: list[str | None] = []
        self._bytes = {pid: jpeg_bytes(w, h, i) for i, (pid, (w, h)) in enumerate(sorted(photos.items()))}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                with server._lock:
                    server.counts[url.path] = server.counts.get(url.path, 0) + 1
                    n = server.counts[url.path]
                    server.auth_seen.setdefault(url.path, set()).add(self.headers.get("Authorization", ""))
                server.handle(self, url.path, {k: v[0] for k, v in parse_qs(url.query).items()}, n)

        self._serve(Handler)

    @property
    def base(self) -> str:
        return self.root_url

    def downloads(self, pid: str) -> int:
        return self.counts.get(f"/img/{pid}.jpg", 0)

    # -- responses -------------------------------------------------------------------------

    def _send(self, h, code: int, body: bytes, ctype="application/json", headers=None, length=None):
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
        if length is not None and length != len(body):
            h.close_connection = True

    def _refuse(self, h, path, code, body, ctype="application/json", headers=None):
        with self._lock:
            self.refused[path] = self.refused.get(path, 0) + 1
        return self._send(h, code, body, ctype, headers=headers)

    def _quota(self, h, path, service) -> bool:
        """Count one API call against the service's quotas, or answer as the service does when it
        is over one (True: answered)."""
        now = self.clock()
        with self._lock:
            calls = self.served[service]
            in_hour = sum(1 for t in calls if t > now - 3600)
            in_month = sum(1 for t in calls if service == "pexels" and now < self.month_reset)
            over = in_hour >= self.hourly_limit[service] or (service == "pexels" and in_month >= self.monthly_limit)
            elsewhere = self.month_spent_elsewhere_after
            over = over or (
                service == "pexels" and elsewhere is not None and len(calls) >= elsewhere and now < self.month_reset
            )
            if not over:
                calls.append(now)
        if not over:
            return False
        if service == "pexels":  # no rate headers, no Retry-After on a 429 (Pexels' help pages)
            self._refuse(h, path, 429, b'{"error": "Too Many Requests"}')
        else:
            self._refuse(h, path, 403, b"Rate Limit Exceeded", "text/plain")
        return True

    def _rate_headers(self, service) -> dict:
        now = self.clock()
        with self._lock:
            calls = self.served[service]
            if service == "pexels":
                left = self.monthly_limit - sum(1 for t in calls if now < self.month_reset)
                return {
                    "X-Ratelimit-Limit": str(self.monthly_limit),
                    "X-Ratelimit-Remaining": str(max(0, left)),
                    "X-Ratelimit-Reset": str(int(self.month_reset)),
                }
            left = self.hourly_limit[service] - sum(1 for t in calls if t > now - 3600)
            return {"X-Ratelimit-Limit": str(self.hourly_limit[service]), "X-Ratelimit-Remaining": str(max(0, left))}

    def _json(self, h, payload, service):
        self._send(h, 200, json.dumps(payload).encode(), headers=self._rate_headers(service))

    def _listed_size(self, pid):
        w, h = self.photos[pid]
        return (w + 8, h) if pid in self.lie_size else (w, h)

    def pexels_photo(self, pid):
        w, h = self._listed_size(pid)
        return {
            "id": int(pid),
            "width": w,
            "height": h,
            "url": f"https://www.pexels.com/photo/{pid}/",
            "photographer": f"Author {pid}",
            "photographer_url": f"https://www.pexels.com/@a{pid}",
            "src": {"original": f"{self.base}/img/{pid}.jpg", "large": "unused"},
        }

    def unsplash_photo(self, pid):
        w, h = self._listed_size(pid)
        return {
            "id": pid,
            "width": w,
            "height": h,
            "urls": {"raw": f"{self.base}/img/{pid}.jpg", "full": f"{self.base}/img/{pid}.jpg"},
            "links": {
                "html": f"https://unsplash.com/photos/{pid}",
                "download_location": f"{self.base}/unsplash/track/{pid}",
            },
            "user": {"name": f"Author {pid}", "links": {"html": f"https://unsplash.com/@a{pid}"}},
        }

    def handle(self, h, path, query, n):
        if path in self.fail_once and n == 1:
            return self._send(h, 500, b'{"error": "scripted"}')
        if path in self.rate_limit_once and n == 1:
            return self._refuse(h, path, 429, b'{"error": "slow down"}', headers={"Retry-After": "1"})
        if path.startswith("/img/"):
            pid = path[len("/img/") : -len(".jpg")]
            time.sleep(self.slow_image_s)
            accept = h.headers.get("Accept-Encoding", "")
            with self._lock:
                self.encoding_seen.setdefault(pid, set()).add(accept)
            if pid in self.missing:
                return self._send(h, 404, b"Not Found", "text/plain")
            data = self._bytes[pid]
            if pid in self.truncate:
                return self._send(h, 200, data[: len(data) // 2], "image/jpeg", length=len(data))
            if "gzip" in accept:  # as a CDN may: the length is the encoded body's
                return self._send(h, 200, gzip.compress(data), "image/jpeg", headers={"Content-Encoding": "gzip"})
            return self._send(h, 200, data, "image/jpeg")
        expected = {"/pexels": self.key, "/unsplash": f"Client-ID {self.key}"}
        prefix = "/" + path.split("/")[1]
        service = prefix[1:]
        if h.headers.get("Authorization") != expected.get(prefix):
            return self._send(h, 401, b'{"errors": ["OAuth error: The access token is invalid"]}')
        if service == "unsplash" and self.forbidden:
            return self._send(h, 403, b'{"errors": ["Forbidden"]}')
        if query.get("query") in self.flagged or (
            path.startswith("/unsplash/track/") and path.rsplit("/", 1)[-1] in self.gone_tracks
        ):
            return self._refuse(h, path, 410, b'{"error": "Gone"}')
        if self._quota(h, path, service):
            return None
        page = int(query.get("page", 1))
        ids = self.pages[page - 1] if page <= len(self.pages) else []
        if path in ("/pexels/v1/search", "/pexels/v1/curated"):
            if path.endswith("search"):
                with self._lock:
                    self.sizes_asked.append(query.get("size"))
            more = page < len(self.pages)
            nxt = f"{self.base}{path}?page={page + 1}" if more else None
            payload = {
                "page": page,
                "per_page": int(query.get("per_page", 15)),
                "photos": [self.pexels_photo(p) for p in ids],
            }
            if nxt:
                payload["next_page"] = nxt
            return self._json(h, payload, service)
        if path == "/unsplash/search/photos":
            return self._json(
                h,
                {
                    "total": sum(map(len, self.pages)),
                    "total_pages": len(self.pages),
                    "results": [self.unsplash_photo(p) for p in ids],
                },
                service,
            )
        if path == "/unsplash/photos":
            return self._json(h, [self.unsplash_photo(p) for p in ids], service)
        if path.startswith("/unsplash/track/"):
            return self._json(h, {"url": "ok"}, service)
        return self._send(h, 404, b'{"error": "not found"}')
