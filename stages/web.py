"""Polite HTTP fetching for the `web` source: every URL ends as a page or as a named reason.

- robots.txt is read once per origin (protego) and honoured, Crawl-delay included; a robots.txt that answers
  4xx allows everything, one that cannot be read (5xx, timeout) disallows everything (RFC 9309);
- each origin has its own rate limit (request starts at least `1 / rate_per_host` s apart) and concurrency cap;
- 429 and 5xx are retried with exponential backoff, waiting at least what `Retry-After` asks (up to a cap);
- timeouts, a redirect limit (loops caught), a content-type allowlist, a cap on the body both as sent and once
  decompressed (a gzip bomb stops at the cap), and only http(s) URLs (`file://` and others refused);
- a content-addressed cache (`cache/blobs/<sha256>`, `cache/index/<sha256(url)>.json`) keeps each page's body and
  validators, so a rerun sends `If-None-Match` / `If-Modified-Since` and reuses the body on 304.

The HTTP client is the standard library's `http.client`, so each of those limits is enforced here, byte by byte,
rather than left to a library default.
"""

from __future__ import annotations

import collections
import email.utils
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

SCHEMES = ("http", "https")
RETRY_STATUSES = {429, 500, 502, 503, 504}
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class WebParams:
    user_agent: str                # sent with every request and matched against robots.txt groups
    timeout_s: float               # connect, each read, and the whole response
    retries: int                   # extra attempts after a 429 or 5xx
    backoff_s: float               # first retry waits this long, doubling each time (or Retry-After, if longer)
    max_retry_after_s: float       # a Retry-After longer than this is not waited for: the URL is quarantined
    max_redirects: int
    cross_host_redirects: bool     # follow a redirect to another origin (its robots.txt is checked); else refuse
    max_bytes: int                 # body cap, as sent and once decompressed
    content_types: list[str]       # media types kept; others are quarantined as not_html
    rate_per_host: float           # requests per second per origin (robots.txt Crawl-delay can only slow it)
    concurrency_per_host: int
    concurrency: int               # requests in flight over all origins


@dataclass(frozen=True)
class Page:
    """The outcome for one URL: `reason` is None for a page to keep, else the quarantine reason."""

    url: str
    final_url: str | None
    status: int | None
    body: bytes | None
    content_type: str | None
    charset: str | None            # declared in Content-Type
    fetched_at: str | None         # when the body was fetched (a 304 keeps the first fetch's time)
    reason: str | None
    detail: str = ""


class FetchError(Exception):
    def __init__(self, reason: str, detail: str, status: int | None = None, final_url: str | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.status, self.final_url = reason, detail, status, final_url


def url_problem(url: Any) -> tuple[str, str] | None:
    """`(reason, detail)` if `url` may not be fetched at all (bad scheme, no host), else None."""
    if not isinstance(url, str) or not url.strip():
        return "invalid_url", "empty URL"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        return "invalid_url", str(exc)
    if parts.scheme.lower() not in SCHEMES:
        return "scheme_not_allowed", f"scheme {parts.scheme or '(none)'!r}; allowed: {list(SCHEMES)}"
    if not parts.hostname:
        return "invalid_url", "no host"
    return None


def normalise_url(url: str) -> str:
    """Lower-case scheme and host, drop the fragment: two spellings of one page are fetched once."""
    parts = urlsplit(url.strip())
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    if parts.username or parts.password:
        netloc = f"{parts.username or ''}{':' if parts.password else ''}{parts.password or ''}@{netloc}"
    return urlunsplit((parts.scheme.lower(), netloc.lower(), parts.path or "/", parts.query, ""))


def origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- cache


class FetchCache:
    """Bodies by sha256, and per URL the validators and metadata of its last 200."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _index(self, url: str) -> Path:
        return self.root / "index" / f"{hashlib.sha256(url.encode()).hexdigest()}.json"

    def _blob(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / sha

    def get(self, url: str) -> dict[str, Any] | None:
        """The cached entry for `url` whose body is still present, or None."""
        try:
            entry = json.loads(self._index(url).read_text())
            body = self._blob(entry["sha256"]).read_bytes()
        except (OSError, ValueError, KeyError):
            return None
        if hashlib.sha256(body).hexdigest() != entry["sha256"]:
            return None  # a damaged blob is refetched, never trusted
        return {**entry, "body": body}

    def put(self, url: str, body: bytes, meta: dict[str, Any]) -> None:
        sha = hashlib.sha256(body).hexdigest()
        _atomic_write(self._blob(sha), body)
        _atomic_write(self._index(url), json.dumps({**meta, "sha256": sha}, sort_keys=True).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- politeness


class HostGate:
    """Per-origin concurrency cap and minimum interval between request starts."""

    def __init__(self, interval_s: float, concurrency: int):
        self.interval_s = interval_s
        self._slots = threading.Semaphore(concurrency)
        self._lock = threading.Lock()
        self._next = 0.0

    def slow_down(self, interval_s: float) -> None:
        with self._lock:
            self.interval_s = max(self.interval_s, interval_s)

    def __enter__(self) -> HostGate:
        self._slots.acquire()
        with self._lock:
            start = max(time.monotonic(), self._next)
            self._next = start + self.interval_s
        time.sleep(max(0.0, start - time.monotonic()))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._slots.release()


@dataclass
class Stats:
    requests: int = 0
    conditional: int = 0
    not_modified: int = 0
    retries: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "conditional": self.conditional, "not_modified": self.not_modified,
                "retries": self.retries}


# ---------------------------------------------------------------- one HTTP exchange


def _read_body(response: http.client.HTTPResponse, *, max_bytes: int, deadline: float) -> bytes:
    """The body as sent, at most `max_bytes`, before `deadline` (a trickling server cannot stall us)."""
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise FetchError("too_large", f"Content-Length {length} exceeds acquire.web.max_bytes ({max_bytes})")
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline:
            raise FetchError("timeout", "body not complete within acquire.web.timeout_s")
        chunk = response.read1(1 << 16)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise FetchError("too_large", f"body exceeds acquire.web.max_bytes ({max_bytes})")
        chunks.append(chunk)


def decode_content(body: bytes, encoding: str | None, *, max_bytes: int) -> bytes:
    """Undo Content-Encoding gzip/deflate, stopping at `max_bytes` of output (a bomb never inflates past it)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise FetchError("unsupported_encoding", f"Content-Encoding {encoding!r}")
    # wbits 47 reads gzip or zlib headers; raw deflate (what some servers send as "deflate") needs -15
    for wbits in ((47,) if "gzip" in encoding else (47, -15)):
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, max_bytes + 1)
        except zlib.error as exc:
            last = exc
            continue
        if len(out) > max_bytes or inflater.unconsumed_tail:
            raise FetchError("too_large", f"decompressed body exceeds acquire.web.max_bytes ({max_bytes})")
        return out
    raise FetchError("bad_encoding", f"Content-Encoding {encoding}: {last}")


def _exchange(url: str, headers: dict[str, str], params: WebParams) -> tuple[int, dict[str, str], bytes]:
    """One GET: `(status, lower-cased headers, decoded body)`; transport failures raise FetchError."""
    parts = urlsplit(url)
    deadline = time.monotonic() + params.timeout_s
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=params.timeout_s, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=params.timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        head = {k.lower(): v for k, v in response.getheaders()}
        raw = b"" if response.status in REDIRECT_STATUSES or response.status == 304 else \
            _read_body(response, max_bytes=params.max_bytes, deadline=deadline)
        return response.status, head, decode_content(raw, head.get("content-encoding"), max_bytes=params.max_bytes)
    except (socket.timeout, TimeoutError):
        raise FetchError("timeout", f"no response within acquire.web.timeout_s ({params.timeout_s} s)") from None
    except ssl.SSLError as exc:
        raise FetchError("tls_error", str(exc)) from None
    except (http.client.HTTPException, ValueError) as exc:
        raise FetchError("bad_response", f"{type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise FetchError("connection_error", f"{type(exc).__name__}: {exc.strerror or exc}") from None
    finally:
        conn.close()


def retry_after_s(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


# ---------------------------------------------------------------- the fetcher


class Fetcher:
    """Fetches URLs politely; `fetch(url)` returns a `Page` and never raises for a bad page or server."""

    def __init__(self, params: WebParams, cache: FetchCache, *, sleep: Callable[[float], None] = time.sleep):
        from protego import Protego  # noqa: F401 -- fail at start, not on the first page, if it is missing

        self.params = params
        self.cache = cache
        self.stats = Stats()
        self._sleep = sleep
        self._gates: dict[str, HostGate] = {}
        self._robots: dict[str, Any] = {}
        self._origin_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._lock = threading.Lock()

    def _gate(self, key: str) -> HostGate:
        with self._lock:
            if key not in self._gates:
                self._gates[key] = HostGate(1.0 / self.params.rate_per_host, self.params.concurrency_per_host)
            return self._gates[key]

    def _get(self, url: str, *, accept: str) -> tuple[int, dict[str, str], bytes, dict[str, Any] | None]:
        """GET with retries and conditional headers; `(status, headers, body, cache entry used on 304)`."""
        cached = self.cache.get(url)
        headers = {"User-Agent": self.params.user_agent, "Accept": accept, "Accept-Encoding": "gzip"}
        if cached:
            if cached.get("etag"):
                headers["If-None-Match"] = cached["etag"]
            if cached.get("last_modified"):
                headers["If-Modified-Since"] = cached["last_modified"]
        conditional = "If-None-Match" in headers or "If-Modified-Since" in headers
        gate = self._gate(origin(url))
        for attempt in range(self.params.retries + 1):
            with gate:
                self.stats.add(requests=1, conditional=int(conditional), retries=int(attempt > 0))
                status, head, body = _exchange(url, headers, self.params)
            if status == 304 and cached:
                self.stats.add(not_modified=1)
                return 200, head, cached["body"], cached
            if status not in RETRY_STATUSES:
                return status, head, body, None
            if attempt == self.params.retries:
                break
            asked = retry_after_s(head.get("retry-after"))
            if asked is not None and asked > self.params.max_retry_after_s:
                raise FetchError(f"http_{status}", f"Retry-After {asked:.0f} s exceeds "
                                 f"acquire.web.max_retry_after_s ({self.params.max_retry_after_s})", status)
            self._sleep(max(self.params.backoff_s * 2 ** attempt, asked or 0.0))
        raise FetchError(f"http_{status}", f"HTTP {status} after {self.params.retries + 1} attempts", status)

    def robots(self, url: str) -> Any:
        """The parsed robots.txt of `url`'s origin (fetched once); raises FetchError if it cannot be read."""
        key = origin(url)
        with self._origin_locks[key]:
            if key not in self._robots:
                self._robots[key] = self._load_robots(key)
        found = self._robots[key]
        if isinstance(found, FetchError):
            raise found
        return found

    def _load_robots(self, key: str) -> Any:
        from protego import Protego

        robots_url = f"{key}/robots.txt"
        try:
            status, head, body, cached, final = self._follow(robots_url, accept="text/plain", check_robots=False)
        except FetchError as exc:
            if exc.reason.startswith("http_4"):
                return Protego.parse("")  # no robots.txt: everything allowed
            return FetchError("robots_unavailable", f"{robots_url}: {exc.reason}: {exc.detail}")
        if 400 <= status < 500:
            return Protego.parse("")
        if status != 200:
            return FetchError("robots_unavailable", f"{robots_url}: HTTP {status}")
        if cached is None:
            self.cache.put(final, body, {"url": final, "status": status, "etag": head.get("etag"),
                                         "last_modified": head.get("last-modified"), "content_type": "text/plain",
                                         "charset": None, "fetched_at": now_iso()})
        parser = Protego.parse(body.decode("utf-8", "replace"))
        delay = parser.crawl_delay(self.params.user_agent)
        if delay:
            self._gate(key).slow_down(float(delay))
        return parser

    def _allowed(self, url: str) -> None:
        if not self.robots(url).can_fetch(url, self.params.user_agent):
            raise FetchError("robots_disallowed", f"{url}: disallowed by {origin(url)}/robots.txt")

    def _follow(self, url: str, *, accept: str, check_robots: bool = True
                ) -> tuple[int, dict[str, str], bytes, dict[str, Any] | None, str]:
        """GET `url`, following redirects within the limits; returns the final exchange and URL."""
        seen = {url}
        current = url
        for _ in range(self.params.max_redirects + 1):
            if check_robots:
                self._allowed(current)
            try:
                status, head, body, cached = self._get(current, accept=accept)
            except FetchError as exc:
                exc.final_url = current
                raise
            if status not in REDIRECT_STATUSES:
                return status, head, body, cached, current
            location = head.get("location")
            if not location:
                raise FetchError("bad_redirect", f"HTTP {status} without Location", status, current)
            target = urljoin(current, location.strip())
            problem = url_problem(target)
            if problem:
                raise FetchError("bad_redirect", f"redirect to {target}: {problem[1]}", status, current)
            target = normalise_url(target)
            if target in seen:
                raise FetchError("redirect_loop", f"{current} redirects back to {target}", status, current)
            if origin(target) != origin(url) and not self.params.cross_host_redirects:
                raise FetchError("redirect_off_host", f"{current} redirects to {target} (another origin; "
                                 "acquire.web.cross_host_redirects is false)", status, current)
            seen.add(target)
            current = target
        raise FetchError("too_many_redirects", f"more than acquire.web.max_redirects ({self.params.max_redirects})",
                         None, current)

    def fetch(self, url: str) -> Page:
        """Fetch one page; any failure is a Page with a reason, nothing raises."""
        problem = url_problem(url)
        if problem:
            return Page(url, None, None, None, None, None, None, *problem)
        url = normalise_url(url)
        try:
            status, head, body, cached, final = self._follow(
                url, accept=", ".join(self.params.content_types) + ", */*;q=0.1")
        except FetchError as exc:
            return Page(url, exc.final_url, exc.status, None, None, None, None, exc.reason, exc.detail)
        if cached is not None:  # 304: the body, its metadata and its fetch time are the cached ones
            return Page(url, final, cached["status"], body, cached["content_type"], cached["charset"],
                        cached["fetched_at"], None)
        content_type, charset = parse_content_type(head.get("content-type"))
        if status != 200:
            return Page(url, final, status, None, content_type, charset, None, f"http_{status}",
                        f"HTTP {status}")
        if not body:
            return Page(url, final, status, None, content_type, charset, None, "empty_body", "200 with no body")
        if content_type is None and sniff_html(body):
            content_type = "text/html"
        if content_type not in self.params.content_types:
            return Page(url, final, status, None, content_type, charset, None, "not_html",
                        f"Content-Type {content_type!r} not in acquire.web.content_types")
        fetched_at = now_iso()
        self.cache.put(final, body, {
            "url": final, "status": status, "etag": head.get("etag"), "last_modified": head.get("last-modified"),
            "content_type": content_type, "charset": charset, "fetched_at": fetched_at})
        return Page(url, final, status, body, content_type, charset, fetched_at, None)

    def fetch_all(self, urls: Sequence[str]) -> list[Page]:
        """Fetch `urls` concurrently (within the per-origin limits); results in input order."""
        if not urls:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.params.concurrency)) as pool:
            return list(pool.map(self.fetch, urls))


def parse_content_type(value: str | None) -> tuple[str | None, str | None]:
    """`("text/html", "utf-8")` from a Content-Type header; `(None, None)` without one."""
    if not value:
        return None, None
    media, _, rest = value.partition(";")
    charset = None
    for part in rest.split(";"):
        key, _, val = part.strip().partition("=")
        if key.strip().lower() == "charset" and val.strip():
            charset = val.strip().strip("\"'").lower()
    return media.strip().lower() or None, charset


def sniff_html(body: bytes) -> bool:
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def decode_html(body: bytes, declared: str | None) -> tuple[str, str]:
    """Decode a page: a BOM, then valid UTF-8, then the header's charset, then a <meta> charset, then cp1252.

    Valid UTF-8 goes first because pages that declare one charset and send another mostly send UTF-8, and a
    non-ASCII byte sequence that happens to be valid UTF-8 is rare in other encodings. Returns `(text, encoding)`.
    """
    if body.startswith(b"\xef\xbb\xbf"):
        return body[3:].decode("utf-8", "replace"), "utf-8"
    candidates = ["utf-8", declared]
    meta = _META_CHARSET.search(body[:4096])
    if meta:
        candidates.append(meta.group(1).decode("ascii", "replace").lower())
    for encoding in candidates:
        if not encoding:
            continue
        try:
            return body.decode(encoding), encoding
        except (UnicodeDecodeError, LookupError):
            continue
    return body.decode("cp1252", "replace"), "cp1252"


def extract_main_text(html: str, url: str) -> tuple[str | None, str | None]:
    """`(main text, title)` of an HTML page with trafilatura; text None when it finds no main text."""
    import trafilatura

    document = trafilatura.bare_extraction(html, url=url, with_metadata=True)
    if document is None or not (document.text or "").strip():
        return None, None
    return document.text.strip(), (document.title or None)


def links(html: str, base_url: str) -> list[str]:
    """Absolute http(s) targets of the page's <a href>, fragments dropped, in page order, each once."""
    import lxml.etree
    import lxml.html

    try:
        tree = lxml.html.fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return []
    found: dict[str, None] = {}
    for element, attribute, link, _ in tree.iterlinks():
        if element.tag != "a" or attribute != "href":
            continue
        target = urljoin(base_url, link.strip())
        if url_problem(target) is None:
            found[normalise_url(target)] = None
    return list(found)


@dataclass(frozen=True)
class FollowParams:
    max_depth: int                 # links followed this many hops from a seed
    same_host_only: bool           # only links to the seed page's own origin
    max_pages: int                 # pages fetched by following, over the whole crawl (seeds not counted)


@dataclass(frozen=True)
class Crawled:
    page: Page
    depth: int                     # 0 for a seed
    found_on: str | None           # the page that linked to it (None for a seed)


def crawl(fetcher: Fetcher, seeds: Sequence[str], follow: FollowParams | None
          ) -> tuple[list[Crawled], dict[str, int]]:
    """Fetch `seeds` (distinct), then, level by level, the links of the pages fetched, within `follow`.

    Returns every fetched URL's outcome and the count of links not followed per reason (`off_host`,
    `max_pages`); a link already seen is not counted, and none is fetched twice.
    """
    out: list[Crawled] = []
    not_followed: collections.Counter[str] = collections.Counter()
    visited = set(seeds)
    level: list[tuple[str, str | None]] = [(url, None) for url in seeds]
    depth, followed = 0, 0
    while level:
        pages = fetcher.fetch_all([url for url, _ in level])
        out.extend(Crawled(page, depth, parent) for page, (_, parent) in zip(pages, level))
        if follow is None or depth >= follow.max_depth:
            break
        level = []
        for page in pages:
            if page.reason is not None or page.body is None:
                continue
            html, _ = decode_html(page.body, page.charset)
            for link in links(html, page.final_url or page.url):
                if link in visited:
                    continue
                visited.add(link)
                if follow.same_host_only and origin(link) != origin(page.final_url or page.url):
                    not_followed["off_host"] += 1
                elif followed >= follow.max_pages:
                    not_followed["max_pages"] += 1
                else:
                    followed += 1
                    level.append((link, page.url))
        depth += 1
    return out, dict(sorted(not_followed.items()))
