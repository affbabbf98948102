"""A small web site on 127.0.0.1 for the web source's tests: good pages, a robots.txt, and every kind of trouble.

`Site` serves from threads of the test process (a `dvc repro` it runs fetches from there too). Every request is
logged with its path, its conditional headers and the time it arrived, so tests can assert the rate limit and
that a rerun sent conditional requests only.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
import time
from dataclasses import dataclass, field

TOPICS = {
    "sport": ("The striker scored twice as the home team won the league match before a crowd of forty thousand "
              "supporters. The coach praised the defence, and the goalkeeper saved a penalty in the second half."),
    "tech": ("The company released a faster processor and a new operating system update for its laptops. Engineers "
             "said the chip uses less power, and the software adds encryption for cloud storage and networks."),
}
ROBOTS = b"User-agent: *\nDisallow: /private/\n"


def article(title: str, body: str, *, links: list[str] = ()) -> str:
    anchors = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    paragraphs = "".join(f"<p>{body} Paragraph {i} adds detail for readers of {title}.</p>" for i in range(3))
    return (f"<!DOCTYPE html><html><head><title>{title}</title></head><body><nav><ul><li>Home</li><li>About</li>"
            f"</ul></nav><article><h1>{title}</h1>{paragraphs}</article><ul>{anchors}</ul>"
            "<footer>Copyright the site</footer></body></html>")


VOCABULARY = {
    "sport": ("striker goal league match coach defence goalkeeper penalty season team players referee stadium "
              "championship final tournament midfielder captain injury transfer fans victory draw cup").split(),
    "tech": ("processor software chip laptop encryption cloud network developers startup smartphone update "
             "server browser algorithm data privacy battery screen robot internet app platform").split(),
}
FILLER = "the a and with after before during while new first last week year said reported".split()


def good_pages(per_topic: int) -> dict[str, tuple[str, str]]:
    """path -> (label, html): `per_topic` articles per topic, each drawn from the topic's words (seeded), so no
    two are near duplicates for clean's MinHash."""
    import random

    pages = {}
    for label, text in TOPICS.items():
        rng = random.Random(label)
        for i in range(per_topic):
            sentences = [" ".join(rng.choice(VOCABULARY[label] + FILLER) for _ in range(14)).capitalize() + "."
                         for _ in range(6)]
            body = f"Story {i}. {text} " + " ".join(sentences)
            pages[f"/{label}/{i}.html"] = (label, article(f"{label} story {i}", body))
    return pages


@dataclass
class Logged:
    path: str
    at: float
    if_none_match: str | None
    if_modified_since: str | None
    user_agent: str | None


@dataclass
class Site:
    per_topic: int = 3
    pages: dict[str, bytes] = field(default_factory=dict)      # extra HTML pages (link-following tests)
    log: list[Logged] = field(default_factory=list)
    flaky_left: int = 1                                         # 429s /flaky sends before a 200
    revision: int = 0                                           # bump to change /sport/0.html
    other_port: int = 9                                         # /offsite redirects to 127.0.0.1:<this>

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.good = good_pages(self.per_topic)

    # ---- serving

    def start(self, port: int = 0) -> Site:
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                with site.lock:
                    site.log.append(Logged(self.path, time.monotonic(), self.headers.get("If-None-Match"),
                                           self.headers.get("If-Modified-Since"), self.headers.get("User-Agent")))
                site.respond(self)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # a client that hung up at its body cap or timeout: expected here

        self.server = Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests_to(self, path: str) -> list[Logged]:
        return [entry for entry in self.log if entry.path == path]

    # ---- content

    def respond(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = h.path
        if path == "/robots.txt":
            return self.cached(h, ROBOTS, "text/plain")
        if path in self.good:
            label, html = self.good[path]
            if path == "/sport/0.html" and self.revision:
                html = html.replace("Story 0.", f"Story 0, revised {self.revision} times.")
            return self.cached(h, html.encode(), "text/html; charset=utf-8")
        if path in self.pages:
            return self.cached(h, self.pages[path], "text/html; charset=utf-8")
        if path.startswith("/private/"):
            return self.send(h, 200, article("secret", TOPICS["tech"]).encode(), "text/html")
        if path == "/flaky":
            with self.lock:
                self.flaky_left -= 1
                busy = self.flaky_left >= 0
            if busy:
                return self.send(h, 429, b"slow down", "text/plain", {"Retry-After": "1"})
            return self.send(h, 200, article("flaky", TOPICS["sport"]).encode(), "text/html")
        if path == "/error":
            return self.send(h, 500, b"oops", "text/plain")
        if path == "/slow":
            time.sleep(3.0)  # past the tests' timeout_s of 1 s
            return self.send(h, 200, article("slow", TOPICS["sport"]).encode(), "text/html")
        if path in ("/loop-a", "/loop-b"):
            return self.send(h, 302, b"", "text/plain", {"Location": "/loop-b" if path == "/loop-a" else "/loop-a"})
        if path == "/moved":
            return self.send(h, 301, b"", "text/plain", {"Location": "/sport/1.html"})
        if path == "/offsite":
            return self.send(h, 302, b"", "text/plain", {"Location": f"http://127.0.0.1:{self.other_port}/x"})
        if path == "/to-file":
            return self.send(h, 302, b"", "text/plain", {"Location": "file:///etc/passwd"})
        if path == "/huge":
            return self.send(h, 200, b"<html><body><p>" + b"x" * 300_000 + b"</p></body></html>", "text/html")
        if path == "/huge-unsized":  # no Content-Length: read until the server closes, so the cap must count
            return self.send(h, 200, b"<html><body><p>" + b"y" * 300_000 + b"</p></body></html>", "text/html",
                             sized=False)
        if path == "/bomb":  # 20 MB of spaces in a ~20 KB gzip stream
            body = gzip.compress(b"<html><body><p>" + b" " * 20_000_000, compresslevel=9)
            return self.send(h, 200, body, "text/html", {"Content-Encoding": "gzip"})
        if path == "/gzipped":
            body = gzip.compress(article("gzipped", TOPICS["tech"]).encode())
            return self.send(h, 200, body, "text/html; charset=utf-8", {"Content-Encoding": "gzip"})
        if path == "/doc.pdf":
            return self.send(h, 200, b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF\n", "application/pdf")
        if path == "/empty":
            return self.send(h, 200, b"", "text/html")
        if path == "/nav-only":
            body = b"<html><body><img src='a.png'><script>var x = 1;</script></body></html>"
            return self.send(h, 200, body, "text/html")
        if path == "/cp1252-no-charset":
            return self.send(h, 200, article("caf\u00e9 news", "Le caf\u00e9 est ouvert. " + TOPICS["sport"]).encode(
                "cp1252"), "text/html")
        if path == "/says-utf8-sends-cp1252":
            return self.send(h, 200, article("na\u00efve", "Une id\u00e9e na\u00efve. " + TOPICS["tech"]).encode(
                "cp1252"), "text/html; charset=utf-8")
        if path == "/says-latin1-sends-utf8":
            return self.send(h, 200, article("Z\u00fcrich", "\u00dcber Z\u00fcrich \u2014 " + TOPICS["tech"]).encode(
                "utf-8"), "text/html; charset=iso-8859-1")
        if path == "/meta-charset":
            html = article("M\u00e1laga", "M\u00e1laga gan\u00f3. " + TOPICS["sport"]).replace(
                "<head>", '<head><meta charset="iso-8859-1">')
            return self.send(h, 200, html.encode("latin-1"), "text/html")
        return self.send(h, 404, b"not found", "text/plain")

    def cached(self, h, body: bytes, content_type: str) -> None:
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        modified = "Tue, 01 Dec 2026 10:00:00 GMT"
        if h.headers.get("If-None-Match") == etag:
            return self.send(h, 304, b"", None, {"ETag": etag, "Last-Modified": modified})
        return self.send(h, 200, body, content_type, {"ETag": etag, "Last-Modified": modified})

    @staticmethod
    def send(h, status: int, body: bytes, content_type: str | None, headers: dict[str, str] | None = None, *,
             sized: bool = True) -> None:
        try:
            h.send_response(status)
            if content_type:
                h.send_header("Content-Type", content_type)
            for key, value in (headers or {}).items():
                h.send_header(key, value)
            if sized:
                h.send_header("Content-Length", str(len(body)))
            else:
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            if status != 304:
                h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading at its cap, as it should


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


