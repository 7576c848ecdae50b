"""Stage 1 sources: Pexels and Unsplash API collectors that fill a source root with photos.

Nothing is requested until ``collect.<source>.terms_acknowledgement`` names the permission the
user holds for this use (both APIs' terms restrict building datasets / training models from
their content; docs/stages/collect.md); the text is kept on every row of the collect table.

Each collector walks its API listings (search queries and the curated/editorial list, page by
page to the end or ``max_pages``), screens every photo by the API's width and height *before*
downloading (the same resolution rules as rule ``screen``, so small photos are never fetched),
and downloads the rest into the root's folder:

* streamed to a hidden temp file (``.<id>.download<ext>``; the index skips dot-files) with
  ``Accept-Encoding: identity`` (a compressed body would make the byte count differ from what
  was sent), then checked -- HTTP content type is an image, byte count equals Content-Length,
  the file decodes (every byte read, reduced-size DCT), its dimensions equal the API's (either
  orientation: EXIF may rotate) -- and renamed atomically to ``<id><ext>``;
* every photo's outcome, and every listing page once all its photos are done, is appended to a
  journal (``<root>/.collect-<source>.jsonl``) as soon as it is known, so a killed run resumes
  after the last finished page of each listing (no re-listing), without re-downloading finished
  files or repeating rows; a photo listed on two pages (listings shift while you page) is handled
  once; a query the API refuses with 410 (flagged) is skipped with a row saying so;
* API calls are paced to the documented quotas (``hourly_limit``/``monthly_limit``, counted in a
  call log ``<root>/.collect-<source>.calls.jsonl`` that outlives the run, Unsplash's
  ``download_location`` calls included); the rate headers are remembered (Pexels sends
  ``X-Ratelimit-Remaining`` of its monthly quota and ``X-Ratelimit-Reset`` as a UNIX time, and
  none on a 429; Unsplash sends the hourly remaining and no reset, and answers an exceeded limit
  with 403 "Rate Limit Exceeded" or 429); a quota that frees within ``max_rate_wait_s`` is waited
  for, one further away stops the run at once with the date it resets; a rate-limit answer with
  no headers is taken as the hourly limit once, and the same answer again after that wait stops
  the run at once with the last reset the API gave (the monthly quota).  5xx and broken
  connections are retried with exponential back-off.  Unsplash's ``links.download_location`` is
  requested before each download, as its API guidelines require.

The API key comes from the environment variable named in config and is sent only to the API host
in the ``Authorization`` header -- never to the image CDN, never logged, never written.
Outputs: a table of every photo seen (``results/collect/<source>.parquet``: ids, sizes, author,
licence, origin URL, decision and reason, the terms acknowledgement; one row per flagged query)
and a manifest CSV in the index's format (path, source, licence, url, author) for the photos kept.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import email.utils
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlparse

from pixverve.collect.terms import CollectorConfigError, terms_acknowledgement

LICENCES = {
    "pexels": ("Pexels License", "https://www.pexels.com/license/"),
    "unsplash": ("Unsplash License", "https://unsplash.com/license"),
}
CONTENT_TYPE_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/tiff": ".tif"}
HOUR_S = 3600.0
MONTH_S = 30 * 86400.0  # "per month": counted over any 30 days (conservative for calendar months)


class QuotaExhausted(RuntimeError):
    """A rate limit that frees later than ``collect.http.max_rate_wait_s``: the run stops; rerun later."""


class QueryFlagged(RuntimeError):
    """HTTP 410 on a listing: the API refuses this query."""


class HttpError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


@dataclass
class Listed:
    """One listing page (or a flagged query): ``listing`` names the request without its page."""

    query: str
    listing: str
    page: int
    photos: list = field(default_factory=list)
    last: bool = False
    flagged: str = ""


def api_key(cfg: dict, source: str) -> str:
    env = cfg.get("api_key_env")
    if not env:
        raise CollectorConfigError(
            f"config key collect.{source}.api_key_env: name the environment variable holding the key"
        )
    key = os.environ.get(env)
    if not key:
        raise CollectorConfigError(
            f"config key collect.{source}.api_key_env: environment variable {env} is not set "
            f"(export it on the node that runs the collector, or remove {source!r} from collect.enabled)"
        )
    return key


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _api_reset(seen: dict | None) -> float | None:
    """The last reset time the API's own headers gave (not a Retry-After), as remembered in ``seen``."""
    if not seen:
        return None
    if seen.get("api_reset") is not None:
        return float(seen["api_reset"])
    return float(seen["reset"]) if seen.get("reset") is not None and not seen.get("ours") else None  # older logs


class CallLog:
    """Times of one source's API calls (sorted) and the rate headers last seen, kept in a JSONL file
    so that a resumed run counts the calls made before it.  Lines: ``{"t"}`` a call; ``{"t",
    "remaining", "limit", "reset", "ours", "api_reset", "bare"}`` what the server said
    (``remaining`` 0 also for a rate-limit answer; ``api_reset``: the last reset time the API's own
    headers gave, carried through the answers without one; ``bare``: 1 for a rate-limit answer
    without Retry-After or rate headers, 2 for one that came again after waiting for the first).
    Calls older than ``horizon_s`` (the longest window paced) are dropped."""

    def __init__(self, path: Path | None, clock, horizon_s: float = MONTH_S):
        self.clock, self.horizon_s = clock, float(horizon_s)
        self.calls: list[float] = []
        self.seen: dict | None = None
        self._fh = None
        if path is None:
            return
        lines = 0
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                lines += 1
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn last line
                if "remaining" in row:
                    self.seen = row
                else:
                    self.calls.append(float(row["t"]))
            self.calls.sort()
            self._prune()
        if lines > 2 * len(self.calls) + 1000:  # mostly expired: rewrite it short
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"t": t}) + "\n" for t in self.calls)
                if self.seen:
                    fh.write(json.dumps(self.seen) + "\n")
            os.replace(tmp, path)
        self._fh = open(path, "a", encoding="utf-8")

    def _prune(self) -> None:
        del self.calls[: bisect.bisect_right(self.calls, self.clock() - self.horizon_s)]

    def _write(self, row: dict) -> None:
        if self._fh:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()

    def add_call(self) -> None:
        t = self.clock()
        if self.calls and t < self.calls[-1]:
            t = self.calls[-1]  # the wall clock stepped back: keep the list sorted
        self.calls.append(t)
        self._write({"t": t})
        if len(self.calls) % 1000 == 0:
            self._prune()

    def observe(
        self, remaining: int, limit: int | None, reset: float | None, ours: bool = False, bare: int = 0
    ) -> None:
        api_reset = reset if reset is not None and not ours else _api_reset(self.seen)
        self.seen = {
            "t": self.clock(),
            "remaining": int(remaining),
            "limit": limit,
            "reset": reset,
            "ours": ours,
            "api_reset": api_reset,
            "bare": bare,
        }
        self._write(self.seen)

    def since(self, t0: float) -> int:
        """Calls after ``t0``."""
        return len(self.calls) - bisect.bisect_right(self.calls, t0)

    def nth_last_after(self, t0: float, n: int) -> float | None:
        """The time of the n-th last call, if at least n calls came after ``t0``."""
        return self.calls[-n] if n and self.since(t0) >= n else None

    def close(self) -> None:
        if self._fh:
            self._fh.close()


class ApiSession:
    """HTTP to one API host with pacing, retries, back-off and rate-limit handling; the key stays in here.

    ``clock`` (UNIX seconds) and ``sleep`` are injectable so tests run hours of pacing at once."""

    def __init__(
        self,
        base_url: str,
        auth_header: str,
        http: dict,
        limits: dict | None = None,
        log=print,
        sleep=time.sleep,
        clock=time.time,
        call_log: CallLog | None = None,
        source: str = "api",
    ):
        import requests

        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": auth_header, "Accept-Version": "v1"}
        self.http = http
        self.limits = limits or {}
        self.source = source
        self.log, self.sleep, self.clock = log, sleep, clock
        self.calls = call_log or CallLog(None, clock)
        self.session = requests.Session()
        self.api_calls = 0
        self.rate_waited_s = 0.0
        self._last_call = float("-inf")
        self._hinted = False

    def _backoff(self, attempt: int) -> float:
        return min(float(self.http["backoff_s"]) * 2**attempt, float(self.http["max_backoff_s"]))

    # -- pacing ---------------------------------------------------------------------------

    def _free_at(self) -> tuple[float, str]:
        """(the time the next API call may go, why): the hourly and monthly windows of our own
        calls, and the server's last word on what is left."""
        now = self.clock()
        when, why = now, ""
        gap = self._last_call + float(self.http.get("min_interval_s", 0))
        if gap > when:
            when, why = gap, "collect.http.min_interval_s"
        seen = self.calls.seen
        # the server's monthly count (Pexels: Remaining until Reset) is the better one where we have it
        server_counts_month = bool(seen and seen.get("reset") and not seen.get("ours") and seen["reset"] > now)
        for key, window, per in (("hourly_limit", HOUR_S, "hour"), ("monthly_limit", MONTH_S, "30 days")):
            limit = int(self.limits.get(key) or 0)
            if key == "monthly_limit" and server_counts_month:
                continue
            oldest = self.calls.nth_last_after(now - window, limit)
            if oldest is not None and oldest + window > when:  # free when it leaves the window
                when, why = oldest + window, f"collect.{self.source}.{key} = {limit} calls per {per}"
        if seen is not None:
            left = seen["remaining"] - self.calls.since(seen["t"])
            reset = seen.get("reset")
            if left <= 0 and reset is not None and reset > now:
                # a header's reset: whole seconds on another host's clock; Retry-After: on ours
                back = float(reset) + (0.0 if seen.get("ours") else float(self.http.get("reset_margin_s", 5)))
                if back > when:  # Pexels: the monthly quota, back at X-Ratelimit-Reset
                    when, why = back, "the API's quota is used up (X-Ratelimit-Reset)"
            elif left <= 0 and seen.get("bare") == 2 and (_api_reset(seen) or 0) > now:
                # a bare 429 came again after the hourly wait: the monthly quota, back at the last reset the API gave
                back = _api_reset(seen) + float(self.http.get("reset_margin_s", 5))
                if back > when:
                    when, why = (
                        back,
                        (
                            f"the monthly quota may be used up (HTTP 429 again after waiting for the hourly "
                            f"window); {self.source.capitalize()} last said it resets at "
                            f"{_utc(_api_reset(seen))} (X-Ratelimit-Reset)"
                        ),
                    )
            elif left <= 0 and reset is None and now - seen["t"] < float(self.http["exhausted_wait_s"]):
                # no reset time (Unsplash, or a bare 429).  If our own calls filled the server's hourly
                # limit, it frees as they leave the hour; if not, someone else shares the key: wait it out.
                limit = int(seen.get("limit") or self.limits.get("hourly_limit") or 0)
                ours_then = self.calls.since(seen["t"] - HOUR_S) - self.calls.since(seen["t"])
                t = seen["t"] + float(self.http["exhausted_wait_s"])
                if limit and ours_then >= limit:
                    oldest = self.calls.nth_last_after(now - HOUR_S, limit)
                    t = now if oldest is None else oldest + HOUR_S
                if t > when:
                    when, why = t, "the API's hourly limit is used up"
                    if seen.get("bare") and (_api_reset(seen) or 0) > now:  # a bare 429: or the monthly quota
                        why += (
                            f" (or, if it is the monthly quota, {self.source.capitalize()} last said it resets at "
                            f"{_utc(_api_reset(seen))}, X-Ratelimit-Reset)"
                        )
        return when, why

    def _pace(self, spent: float = 0.0) -> float:
        """Wait until the next call may go; returns the wait.  ``spent``: what this request has
        already waited after rate-limit answers (counts against ``max_rate_wait_s`` too)."""
        when, why = self._free_at()
        wait = when - self.clock()
        if wait <= 0:
            return 0.0
        cap = float(self.http["max_rate_wait_s"])
        if wait + spent > cap:
            waited = f" after waiting {spent:.0f} s for it" if spent else ""
            raise QuotaExhausted(
                f"{self.source}: {why}{waited}; it frees at {_utc(when)}, {wait / 3600:.1f} h from now -- beyond "
                f"collect.http.max_rate_wait_s = {cap:.0f} s. Rerun after then: the journal resumes where this run stopped."
            )
        if wait > 1:
            self.log(f"{self.source}: pacing ({why}): waiting {wait:.0f} s, until {_utc(when)}")
        self.rate_waited_s += wait
        self.sleep(wait)
        return wait

    def _remember_rate_headers(self, headers) -> None:
        remaining = headers.get("X-Ratelimit-Remaining")
        if remaining is None:
            return
        limit, reset = headers.get("X-Ratelimit-Limit"), headers.get("X-Ratelimit-Reset")
        self.calls.observe(int(remaining), int(limit) if limit else None, float(reset) if reset else None)
        ours = self.limits.get("hourly_limit")
        if limit and not reset and ours and int(limit) > int(ours) and not self._hinted:
            self._hinted = True  # Unsplash's limit is hourly: a production app may go faster
            self.log(
                f"{self.source}: the API allows {limit} calls an hour; collect.{self.source}.hourly_limit is {ours}"
            )

    def _rate_limited(self, url: str, resp) -> None:
        """A rate-limit answer: note what it means so that _pace waits for it, or stop.

        With Retry-After, that is waited for.  Without it (Pexels' 429 and Unsplash's 403 carry no
        rate headers) it is taken as the hourly limit the first time, keeping the last reset the API
        gave (``api_reset``); the same answer again after that wait, with no successful answer
        between, is not the hour: the run stops at once naming that reset (a monthly quota spent by
        another user of the key, or by calls the call log did not see).  (A quota our own count says
        is used up never gets here: ``_free_at`` holds such a call back.)"""
        retry_after = _retry_after(resp.headers.get("Retry-After"), self.clock())
        seen, now = self.calls.seen, self.clock()
        if retry_after is not None:
            self.calls.observe(0, None, now + retry_after, ours=True)
            self.log(f"HTTP {resp.status_code} (rate limit) from {_host_path(url)}: Retry-After {retry_after:.1f} s")
            return
        again = bool(seen and seen.get("bare") and now - seen["t"] < HOUR_S + float(self.http["exhausted_wait_s"]))
        # the limit to wait out is hourly: Unsplash's header limit (no reset) is; Pexels' (with a reset) is monthly
        hourly = seen.get("limit") if seen and (seen.get("bare") or not seen.get("reset")) else None
        self.calls.observe(0, hourly or self.limits.get("hourly_limit"), None, bare=2 if again else 1)
        if again:
            resp.close()
            reset = _api_reset(self.calls.seen)
            tail = (
                f"the monthly quota may be used up; {self.source.capitalize()} last said it resets at {_utc(reset)} "
                f"(X-Ratelimit-Reset). Rerun after then"
                if reset and reset > now
                else "the API sends no reset time. Rerun later"
            )
            raise QuotaExhausted(
                f"{self.source}: HTTP {resp.status_code} (rate limit) from {_host_path(url)} again after waiting for the "
                f"hourly window: {tail}: the journal resumes where this run stopped."
            )
        self.log(
            f"HTTP {resp.status_code} (rate limit) from {_host_path(url)}: no reset time given: waiting for the hourly window"
        )

    # -- requests -------------------------------------------------------------------------

    def request(
        self, url: str, params: dict | None = None, auth: bool = True, stream: bool = False, headers: dict | None = None
    ):
        """GET with retries; returns the response (2xx).  ``auth`` only for the API host."""
        import requests

        sent = {**(self._auth if auth else {}), **(headers or {})}
        last, spent, limited = "", 0.0, False
        attempts = int(self.http["retries"]) + 1
        for attempt in range(attempts):
            if auth:
                wait = self._pace(spent if limited else 0.0)
                spent += wait if limited else 0.0
                self.calls.add_call()
                self._last_call = self.clock()
                self.api_calls += 1
            try:
                resp = self.session.get(
                    url, params=params, headers=sent, timeout=float(self.http["timeout_s"]), stream=stream
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = type(exc).__name__
                self.sleep(self._backoff(attempt))
                continue
            if auth and (resp.status_code == 429 or _is_rate_limit_403(resp)):
                self._rate_limited(url, resp)
                limited = True
                resp.close()
                last = f"HTTP {resp.status_code} rate limit"
                continue  # the next _pace() waits for it, or stops the run
            if resp.status_code == 429:  # the CDN
                wait = _retry_after(resp.headers.get("Retry-After"), self.clock())
                resp.close()
                self.sleep(self._backoff(attempt) if wait is None else min(wait, float(self.http["max_rate_wait_s"])))
                last = "HTTP 429"
                continue
            if resp.status_code >= 500:
                resp.close()
                last = f"HTTP {resp.status_code}"
                self.sleep(self._backoff(attempt))
                continue
            if resp.status_code == 410 and auth:
                resp.close()
                raise QueryFlagged(f"{_host_path(url)} answered HTTP 410 Gone")
            if resp.status_code >= 400:
                resp.close()
                hint = (
                    " (check the API key and that the application may use this endpoint)"
                    if resp.status_code in (401, 403)
                    else ""
                )
                raise HttpError(resp.status_code, f"{_host_path(url)} answered HTTP {resp.status_code}{hint}")
            if auth:
                self._remember_rate_headers(resp.headers)
            return resp
        if auth and last.endswith("rate limit"):
            raise QuotaExhausted(
                f"{_host_path(url)}: still rate-limited after {attempts} attempts ({last}); rerun later"
            )
        raise RuntimeError(f"{_host_path(url)}: gave up after {attempts} attempts ({last})")

    def get_json(self, path_or_url: str, params: dict | None = None):
        url = path_or_url if path_or_url.startswith("http") else self.base_url + path_or_url
        resp = self.request(url, params)
        return resp.json()


def _is_rate_limit_403(resp) -> bool:
    """Unsplash answers an exceeded limit with 403 and the plain body "Rate Limit Exceeded"."""
    if resp.status_code != 403:
        return False
    try:
        body = resp.content[:200].decode("utf-8", "replace")
    except Exception:
        return False
    return "rate limit exceeded" in body.lower()


def _retry_after(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - now)


def _host_path(url: str) -> str:
    """A URL for messages: host and path only (no query string, where some APIs put keys)."""
    p = urlparse(url)
    return f"{p.netloc}{p.path}"


# -- listings ---------------------------------------------------------------------------------


def _listing_name(path: str, params: dict) -> str:
    """A listing's identity without its page: a resumed run continues it only if this is unchanged."""
    return f"{path}?{urlencode(sorted(params.items()))}"


def _walk(api: ApiSession, label: str, path: str, params: dict, max_pages: int, first_page, parse):
    """Pages ``first_page(label, listing)`` .. ``max_pages`` of one listing (None: already finished).
    ``parse(data, page) -> (photos, is_last)``.  A 410 ends the listing with a flagged entry."""
    listing = _listing_name(path, params)
    page = first_page(label, listing)
    while page is not None and page <= max_pages:
        try:
            data = api.get_json(path, {**params, "page": page})
        except QueryFlagged as exc:
            yield Listed(label, listing, page, last=True, flagged=f"{exc} (the API refuses this query)")
            return
        photos, last = parse(data, page)
        yield Listed(label, listing, page, photos, last or not photos)
        if last or not photos:
            return
        page += 1


def pexels_listings(api: ApiSession, cfg: dict, first_page):
    """Each search query's pages, then the curated list's."""
    per_page = int(cfg["per_page"])
    search = {"per_page": per_page, **({"size": cfg["size"]} if cfg.get("size") else {})}
    plans = [("/search", {**search, "query": q}, q, int(cfg["max_pages"])) for q in cfg.get("queries") or []]
    if int(cfg.get("curated_pages", 0)):
        plans.append(("/curated", {"per_page": per_page}, "curated", int(cfg["curated_pages"])))
    for path, params, label, max_pages in plans:

        def parse(data, page, label=label):
            return [_pexels_photo(p, label) for p in data.get("photos", [])], not data.get("next_page")

        yield from _walk(api, label, path, params, max_pages, first_page, parse)


def _pexels_photo(p: dict, query: str) -> Photo:
    return Photo(
        "pexels",
        str(p["id"]),
        int(p["width"]),
        int(p["height"]),
        p["src"]["original"],
        p.get("url", ""),
        p.get("photographer", ""),
        p.get("photographer_url", ""),
        query,
    )


def unsplash_listings(api: ApiSession, cfg: dict, first_page):
    """Each search query's pages, then the editorial list's (/photos)."""
    per_page = int(cfg["per_page"])
    for q in cfg.get("queries") or []:

        def parse(data, page, q=q):
            return [_unsplash_photo(p, q, cfg) for p in data.get("results", [])], page >= int(
                data.get("total_pages", page)
            )

        yield from _walk(
            api, q, "/search/photos", {"query": q, "per_page": per_page}, int(cfg["max_pages"]), first_page, parse
        )
    if int(cfg.get("list_pages", 0)):

        def parse_list(data, page):
            return [_unsplash_photo(p, "editorial", cfg) for p in data], False

        yield from _walk(
            api, "editorial", "/photos", {"per_page": per_page}, int(cfg["list_pages"]), first_page, parse_list
        )


def _unsplash_photo(p: dict, query: str, cfg: dict) -> Photo:
    user = p.get("user") or {}
    return Photo(
        "unsplash",
        str(p["id"]),
        int(p["width"]),
        int(p["height"]),
        p["urls"][cfg.get("download_size", "raw")],
        (p.get("links") or {}).get("html", ""),
        user.get("name", ""),
        (user.get("links") or {}).get("html", ""),
        query,
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
    from pixverve.core import images

    retries = int(api.http["retries"])
    for attempt in range(retries + 1):
        # identity: with gzip the body would be decoded on the fly and its length could not be
        # checked against Content-Length (which counts the encoded bytes)
        try:
            resp = api.request(photo.download_url, auth=False, stream=True, headers={"Accept-Encoding": "identity"})
        except HttpError as exc:  # this photo is gone or refused (5xx and broken connections stop the run instead)
            raise DownloadRejected(f"http_{exc.status}", str(exc)) from None
        content_type = resp.headers.get("Content-Type", "")
        if not content_type.lower().startswith("image/"):
            resp.close()
            raise DownloadRejected(
                "not_an_image", f"content type {content_type!r} from {_host_path(photo.download_url)}"
            )
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
                raise DownloadRejected(
                    "truncated", f"download broke off after {written} bytes: {type(exc).__name__}"
                ) from None
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
    """Append-only JSONL: photo outcomes (keyed by photo id) and finished listing pages (``kind``
    ``page``; a flagged query is a finished last page with ``flagged`` set).  The resume state."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = {}
        self.pages: dict[tuple[str, str], set[int]] = {}
        self.finished: set[tuple[str, str]] = set()
        self.flagged: dict[tuple[str, str], dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a killed run
                self._take(row)
        self._fh = open(path, "a", encoding="utf-8")

    def _take(self, row: dict) -> None:
        if row.get("kind") == "page":
            key = (row["query"], row["listing"])
            self.pages.setdefault(key, set()).add(int(row["page"]))
            if row.get("last"):
                self.finished.add(key)
            if row.get("flagged"):
                self.flagged[key] = row
        else:  # photo rows (journals from before page rows have only these)
            self.rows[row["photo_id"]] = row

    def first_page(self, query: str, listing: str) -> int | None:
        """The page a run starts this listing at: after the pages finished in a row from 1."""
        key = (query, listing)
        if key in self.finished:
            return None
        done, page = self.pages.get(key, set()), 1
        while page in done:
            page += 1
        return page

    def done(self, photo_id: str, folder: Path) -> bool:
        row = self.rows.get(photo_id)
        if row is None:
            return False
        return not row["passed"] or (folder / row["relpath"]).is_file()

    def add(self, row: dict) -> None:
        self._take(row)
        self._fh.write(json.dumps(row, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self):
        self._fh.close()


def collect(source: str, config: dict, base_dir=".", log=print, sleep=time.sleep, clock=time.time):
    """Run one collector; returns (table of every photo seen, manifest rows for the kept ones).

    ``sleep``/``clock`` (UNIX seconds): injectable for tests of the pacing."""
    import pandas as pd
    from tqdm import tqdm

    from pixverve.core.config import check_resolution, screening_criteria
    from pixverve.core.paths import writable_root

    cfg = config["collect"][source]
    ack = terms_acknowledgement(cfg, source)
    key = api_key(cfg, source)
    folder = writable_root(config, cfg["root"], f"collect.{source}.root", base_dir, stale_glob=".*.download*")
    criteria = screening_criteria(config)
    cap = float(config["io"]["max_megapixels"])
    licence, licence_url = LICENCES[source]
    limits = {"hourly_limit": cfg.get("hourly_limit"), "monthly_limit": cfg.get("monthly_limit")}
    horizon = MONTH_S if limits["monthly_limit"] else HOUR_S + float(config["collect"]["http"]["exhausted_wait_s"])
    call_log = CallLog(folder / f".collect-{source}.calls.jsonl", clock, horizon)
    api = ApiSession(
        cfg["api_base"],
        AUTH[source](key),
        config["collect"]["http"],
        limits,
        log=log,
        sleep=sleep,
        clock=clock,
        call_log=call_log,
        source=source,
    )
    journal = Journal(folder / f".collect-{source}.jsonl")
    fetched = 0
    base = {"root": cfg["root"], "licence": licence, "licence_url": licence_url, "terms_acknowledgement": ack}
    log(f"{source}: terms acknowledgement (collect.{source}.terms_acknowledgement): {ack!r}")

    def first_page(query, listing):
        page = journal.first_page(query, listing)
        if page != 1:
            log(
                f"{source} '{query}': " + ("finished in an earlier run" if page is None else f"resuming at page {page}")
            )
        return page

    bar = tqdm(desc=f"{source} photos", unit="photo", mininterval=2)
    try:
        for listed in LISTINGS[source](api, cfg, first_page):
            if listed.flagged:
                journal.add(
                    {
                        "kind": "page",
                        "query": listed.query,
                        "listing": listed.listing,
                        "page": listed.page,
                        "last": True,
                        "flagged": listed.flagged,
                        "photos": 0,
                    }
                )
                log(f"{source} '{listed.query}': skipped ({listed.flagged})")
                continue
            for photo in listed.photos:
                bar.update(1)
                if journal.done(photo.photo_id, folder):
                    continue  # finished in an earlier run, or seen on an earlier page
                row = {
                    **asdict(photo),
                    **base,
                    "page": listed.page,
                    "attribution": f"Photo by {photo.author} on {source.capitalize()}",
                    "relpath": "",
                    "bytes": 0,
                }
                name, code, detail = check_resolution(photo.width, photo.height, criteria)
                if name is None:
                    journal.add(
                        {**row, "passed": False, "reason": code, "reason_detail": f"from the API's size: {detail}"}
                    )
                    continue
                try:
                    if photo.track_url:
                        try:
                            api.request(photo.track_url)  # Unsplash: count the download (an API call: paced, counted)
                        except QueryFlagged as exc:
                            gone = f"download_location: {exc} (the API no longer serves this photo)"
                            raise DownloadRejected("gone", gone) from None
                    relpath, nbytes = download(api, photo, folder, cap)
                except DownloadRejected as exc:
                    journal.add({**row, "passed": False, "reason": exc.code, "reason_detail": exc.detail})
                    log(f"{source} {photo.photo_id}: rejected ({exc.code}: {exc.detail})")
                    continue
                fetched += 1
                journal.add(
                    {**row, "relpath": relpath, "bytes": nbytes, "passed": True, "reason": "", "reason_detail": ""}
                )
            # every photo of the page is in the journal: a resumed run starts after this page
            journal.add(
                {
                    "kind": "page",
                    "query": listed.query,
                    "listing": listed.listing,
                    "page": listed.page,
                    "last": listed.last,
                    "photos": len(listed.photos),
                }
            )
            log(f"{source} '{listed.query}' page {listed.page}: {len(listed.photos)} photos listed")
    finally:
        bar.close()
        journal.close()
        call_log.close()
    log(
        f"{source}: {fetched} downloaded in this run, {api.api_calls} API calls, {api.rate_waited_s:.0f} s waited for quotas"
    )
    flagged = [
        {
            "source": source,
            "photo_id": "",
            "width": 0,
            "height": 0,
            "page_url": "",
            "author": "",
            "author_url": "",
            "query": r["query"],
            "page": r["page"],
            **base,
            "attribution": "",
            "relpath": "",
            "bytes": 0,
            "passed": False,
            "reason": "query_flagged",
            "reason_detail": r["flagged"],
        }
        for r in journal.flagged.values()
    ]
    table = pd.DataFrame(flagged + sorted(journal.rows.values(), key=lambda r: r["photo_id"]))
    kept = table[table["passed"].astype(bool)] if len(table) else table
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
