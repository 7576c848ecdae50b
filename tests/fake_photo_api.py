"""A local server on 127.0.0.1 that speaks the Pexels and Unsplash API shapes, with image bytes.

``/pexels/v1/search``, ``/pexels/v1/curated``: ``{"page", "per_page", "photos": [...], "next_page"}``
with photo objects (id, width, height, url, photographer, photographer_url, src.original).
``/unsplash/search/photos``: ``{"total", "total_pages", "results": [...]}``; ``/unsplash/photos``: a
list; photo objects with id, width, height, urls.raw/full, links.html/download_location, user.
``/unsplash/track/<id>``: the download_location endpoint.  ``/img/<id>.jpg``: the image (the CDN).

Scripted trouble (attributes): ``fail_once`` paths answer 500 the first time; ``rate_limit_once``
paths answer 429 with Retry-After the first time; ``truncate`` ids send half their bytes under a
full Content-Length (always); ``lie_size`` ids are listed with a size that is not the file's;
``slow_image_s`` delays every image.  Requests are counted per path; Authorization headers are kept
per path so tests can check where the key went.
"""

from __future__ import annotations

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
    def __init__(self, photos: dict[str, tuple[int, int]], pages: list[list[str]], key: str):
        """``photos``: id -> (width, height) of the real file; ``pages``: ids per listing page."""
        self.photos, self.pages, self.key = photos, pages, key
        self.fail_once: set[str] = set()
        self.rate_limit_once: set[str] = set()
        self.truncate: set[str] = set()
        self.lie_size: set[str] = set()
        self.slow_image_s = 0.0
        self.remaining_sequence: list[int] = []  # X-Ratelimit-Remaining values to send, in order
        self.counts: dict[str, int] = {}
        self.auth_seen: dict[str, set[str]] = {}
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

    def _json(self, h, payload, headers=None):
        with self._lock:
            remaining = self.remaining_sequence.pop(0) if self.remaining_sequence else 1000
        rate = {"X-Ratelimit-Limit": "20000", "X-Ratelimit-Remaining": str(remaining),
                "X-Ratelimit-Reset": str(int(time.time()) + 1)}
        self._send(h, 200, json.dumps(payload).encode(), headers={**rate, **(headers or {})})

    def _listed_size(self, pid):
        w, h = self.photos[pid]
        return (w + 8, h) if pid in self.lie_size else (w, h)

    def pexels_photo(self, pid):
        w, h = self._listed_size(pid)
        return {"id": int(pid), "width": w, "height": h, "url": f"https://www.pexels.com/photo/{pid}/",
                "photographer": f"Author {pid}", "photographer_url": f"https://www.pexels.com/@a{pid}",
                "src": {"original": f"{self.base}/img/{pid}.jpg", "large": "unused"}}

    def unsplash_photo(self, pid):
        w, h = self._listed_size(pid)
        return {"id": pid, "width": w, "height": h,
                "urls": {"raw": f"{self.base}/img/{pid}.jpg", "full": f"{self.base}/img/{pid}.jpg"},
                "links": {"html": f"https://unsplash.com/photos/{pid}",
                          "download_location": f"{self.base}/unsplash/track/{pid}"},
                "user": {"name": f"Author {pid}", "links": {"html": f"https://unsplash.com/@a{pid}"}}}

    def handle(self, h, path, query, n):
        if path in self.fail_once and n == 1:
            return self._send(h, 500, b'{"error": "scripted"}')
        if path in self.rate_limit_once and n == 1:
            return self._send(h, 429, b'{"error": "slow down"}', headers={"Retry-After": "1"})
        if path.startswith("/img/"):
            pid = path[len("/img/") : -len(".jpg")]
            time.sleep(self.slow_image_s)
            data = self._bytes[pid]
            if pid in self.truncate:
                return self._send(h, 200, data[: len(data) // 2], "image/jpeg", length=len(data))
            return self._send(h, 200, data, "image/jpeg")
        expected = {"/pexels": self.key, "/unsplash": f"Client-ID {self.key}"}
        prefix = "/" + path.split("/")[1]
        if h.headers.get("Authorization") != expected.get(prefix):
            return self._send(h, 401, b'{"error": "bad key"}')
        page = int(query.get("page", 1))
        ids = self.pages[page - 1] if page <= len(self.pages) else []
        if path in ("/pexels/v1/search", "/pexels/v1/curated"):
            more = page < len(self.pages)
            nxt = f"{self.base}{path}?page={page + 1}" if more else None
            payload = {"page": page, "per_page": int(query.get("per_page", 15)), "photos": [self.pexels_photo(p) for p in ids]}
            if nxt:
                payload["next_page"] = nxt
            return self._json(h, payload)
        if path == "/unsplash/search/photos":
            return self._json(h, {"total": sum(map(len, self.pages)), "total_pages": len(self.pages),
                                  "results": [self.unsplash_photo(p) for p in ids]})
        if path == "/unsplash/photos":
            return self._json(h, [self.unsplash_photo(p) for p in ids])
        if path.startswith("/unsplash/track/"):
            return self._json(h, {"url": "ok"})
        return self._send(h, 404, b'{"error": "not found"}')
