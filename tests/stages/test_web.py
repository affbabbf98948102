"""Code tests for the web source (stages/web.py, `kind: web` in stages/acquire.py) against a real HTTP server on
127.0.0.1 (tests/web_site.py): robots.txt, rate limit, retries, caps, charsets, conditional reruns, link following.
No other address is ever contacted: an off-site redirect or link is refused before any connection."""

from __future__ import annotations

import gzip
import zlib

import pandas as pd
import pytest

from stages.acquire import SOURCES, AcquireSettings, SourceEnv, acquire, quarantine_frame
from stages.common import StageError
from stages.modalities import get_modality
from stages.web import FetchCache, Fetcher, FetchError, WebParams, decode_content, decode_html, retry_after_s, \
    url_problem
from tests.web_site import Site, free_port

TEXT = get_modality("text")
UA = "finetune-dataops-tests/1.0 (+loopback only)"


def web_params(**override) -> WebParams:
    values = dict(user_agent=UA, timeout_s=1.0, retries=2, backoff_s=0.05, max_retry_after_s=5.0, max_redirects=3,
                  cross_host_redirects=False, max_bytes=200_000, content_types=["text/html", "application/xhtml+xml"],
                  rate_per_host=200.0, concurrency_per_host=4, concurrency=8)
    values.update(override)
    return WebParams(**values)


@pytest.fixture
def site():
    site = Site(per_topic=2, other_port=free_port()).start()
    yield site
    site.stop()


def collect(tmp_path, urls, *, labels=None, params=None, follow=None, cache="cache"):
    """Run the web source on a URL table in a fresh source folder; return what it collected."""
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    table = pd.DataFrame({"url": urls, "label": labels if labels is not None else ["x"] * len(urls)})
    table.to_csv(source / "urls.csv", index=False)
    spec = {"kind": "web", "file": "urls.csv", "url_column": "url", "label_column": "label", "license": "CC-BY-4.0",
            "follow": follow}
    env = SourceEnv(AcquireSettings(params or web_params()), tmp_path / cache)
    return SOURCES["web"](spec, TEXT, source, env=env)


BAD = {
    "/private/secret.html": "robots_disallowed",
    "/error": "http_500",
    "/missing": "http_404",
    "/slow": "timeout",
    "/loop-a": "redirect_loop",
    "/offsite": "redirect_off_host",
    "/to-file": "bad_redirect",
    "/huge": "too_large",
    "/huge-unsized": "too_large",
    "/bomb": "too_large",
    "/doc.pdf": "not_html",
    "/empty": "empty_body",
    "/nav-only": "no_main_text",
}
REFUSED = {
    "file:///etc/passwd": "scheme_not_allowed",
    "ftp://127.0.0.1/x": "scheme_not_allowed",
    "javascript:alert(1)": "scheme_not_allowed",
    "http://": "invalid_url",
    "": "invalid_url",
}


def test_every_url_is_a_row_or_a_reason(site, tmp_path):
    good = ["/sport/0.html", "/tech/0.html", "/flaky", "/moved", "/gzipped"]
    urls = [site.base + p for p in good] + [site.base + p for p in BAD] + list(REFUSED) + [site.base + "/sport/0.html"]
    collected = collect(tmp_path, urls)
    quarantine = quarantine_frame(collected.quarantined)
    # nothing is lost: every line of the table is a row or a quarantined row
    assert len(collected.items) + len(quarantine) == len(urls)
    assert sorted(item.source_ref for item in collected.items) == sorted(site.base + p for p in good)
    reasons = dict(zip(quarantine["url"], quarantine["quarantine_reason"]))
    expected = {site.base + p: r for p, r in BAD.items()} | {u: r for u, r in REFUSED.items()}
    assert {u: reasons[u] for u in expected} == expected
    duplicate = quarantine[quarantine["quarantine_reason"] == "duplicate_url"]
    assert len(duplicate) == 1 and duplicate["row"].iloc[0] == len(urls)
    # one line per bad row naming the file, the row and the field
    refused = quarantine[quarantine["url"] == "file:///etc/passwd"]["detail"].iloc[0]
    assert refused.startswith(f"urls.csv: row {len(good) + len(BAD) + 1}: field 'url': scheme 'file'"), refused
    assert "decompressed" in quarantine[quarantine["url"] == site.base + "/bomb"]["detail"].iloc[0]
    # robots.txt was honoured: the disallowed page was never requested, and every request named us
    assert site.requests_to("/private/secret.html") == []
    assert {entry.user_agent for entry in site.log} == {UA}
    # redirects: the final URL is kept; the off-site target was never contacted (nothing listens there anyway)
    moved = next(item for item in collected.items if item.source_ref.endswith("/moved"))
    assert moved.provenance["final_url"] == site.base + "/sport/1.html"
    assert moved.provenance["http_status"] == 200 and moved.label == "x"
    assert "striker" in moved.payload and "Copyright" not in moved.payload and "Home" not in moved.payload
    assert site.requests_to("/error").__len__() == 3  # retried twice
    assert collected.extra_metrics["web"]["urls_in_table"] == len(urls)


def test_retry_after_is_honoured(site, tmp_path):
    collected = collect(tmp_path, [site.base + "/flaky"])
    assert len(collected.items) == 1
    first, second = site.requests_to("/flaky")
    assert second.at - first.at >= 0.95  # Retry-After: 1, although backoff_s is 0.05


def test_retry_after_beyond_the_cap_quarantines(site, tmp_path):
    collected = collect(tmp_path, [site.base + "/flaky"], params=web_params(max_retry_after_s=0.5))
    assert [q["quarantine_reason"] for q in collected.quarantined] == ["http_429"]
    assert "Retry-After" in collected.quarantined[0]["detail"]
    assert len(site.requests_to("/flaky")) == 1


def test_rate_limit_per_host(site, tmp_path):
    urls = [site.base + f"/{topic}/{i}.html" for topic in ("sport", "tech") for i in range(2)]
    collect(tmp_path, urls, params=web_params(rate_per_host=10.0, concurrency_per_host=2, concurrency=8))
    times = sorted(entry.at for entry in site.log)
    assert len(times) == 5  # robots.txt and four pages
    gaps = [b - a for a, b in zip(times, times[1:])]
    # request starts are 0.1 s apart at the client; arrival adds a little jitter either way, never 0.1 s of it
    assert min(gaps) >= 0.07 and times[-1] - times[0] >= 0.38, gaps


def test_rerun_sends_only_conditional_requests_and_a_changed_page_changes_the_row(site, tmp_path):
    urls = [site.base + p for p in ("/sport/0.html", "/sport/1.html", "/tech/0.html")]
    first = collect(tmp_path, urls)
    n_first = len(site.log)
    assert all(entry.if_none_match is None for entry in site.log)
    second = collect(tmp_path, urls)
    rerun = site.log[n_first:]
    assert len(rerun) == n_first and all(entry.if_none_match for entry in rerun), rerun
    assert second.extra_metrics["web"]["not_modified"] == len(rerun)
    frame = lambda c: acquire(c.items, modality=TEXT, source_name=c.source_name, license=c.license,  # noqa: E731
                              max_per_class=None, seed=0)
    pd.testing.assert_frame_equal(frame(first), frame(second))  # same bytes in raw: DVC sees no change
    site.revision = 1
    third = frame(collect(tmp_path, urls))
    changed = third[third["source_ref"].str.endswith("/sport/0.html")]
    assert "revised 1 times" in changed["text"].iloc[0]
    assert set(third["sha256"]) ^ set(frame(first)["sha256"]) and len(third) == 3


def test_charsets(site, tmp_path):
    paths = ["/cp1252-no-charset", "/says-utf8-sends-cp1252", "/says-latin1-sends-utf8", "/meta-charset"]
    collected = collect(tmp_path, [site.base + p for p in paths])
    by_path = {item.source_ref.rsplit("/", 1)[1]: item for item in collected.items}
    assert "Le café est ouvert" in by_path["cp1252-no-charset"].payload
    assert "Une idée naïve" in by_path["says-utf8-sends-cp1252"].payload
    assert by_path["says-utf8-sends-cp1252"].encoding == "cp1252"
    assert "Über Zürich" in by_path["says-latin1-sends-utf8"].payload
    assert by_path["says-latin1-sends-utf8"].encoding == "utf-8"
    assert "Málaga ganó" in by_path["meta-charset"].payload
    assert by_path["meta-charset"].encoding == "iso-8859-1"


def test_follow_links_within_limits(site, tmp_path):
    elsewhere = f"http://127.0.0.1:{site.other_port}/away.html"
    site.pages["/hub.html"] = site.good["/sport/0.html"][1].replace(
        "</article>", '</article><a href="/sport/1.html">one</a><a href="/tech/0.html#top">two</a>'
        f'<a href="/tech/1.html">three</a><a href="{elsewhere}">away</a><a href="mailto:a@b.c">mail</a>').encode()
    follow = {"max_depth": 1, "same_host_only": True, "max_pages": 2}
    collected = collect(tmp_path, [site.base + "/hub.html"], labels=["sport"], follow=follow)
    refs = sorted(item.source_ref.replace(site.base, "") for item in collected.items)
    assert refs == ["/hub.html", "/sport/1.html", "/tech/0.html"]
    followed = [item for item in collected.items if item.provenance["depth"] == 1]
    assert {item.provenance["found_on"] for item in followed} == {site.base + "/hub.html"}
    assert all(item.label is None for item in followed)  # a linked page is unlabelled: label rules decide
    assert collected.extra_metrics["web"]["links_not_followed_by_reason"] == {"max_pages": 1, "off_host": 1}


def test_web_source_errors_are_one_line(site, tmp_path):
    with pytest.raises(StageError, match="column 'link' not found"):
        SOURCES["web"]({"kind": "web", "file": "urls.csv", "url_column": "link", "label_column": None,
                        "license": "x", "follow": None}, TEXT, _table(tmp_path, ["http://127.0.0.1/"]),
                       env=SourceEnv(AcquireSettings(web_params()), tmp_path / "c"))
    with pytest.raises(StageError, match="modality is 'image'"):
        SOURCES["web"]({"kind": "web", "file": "urls.csv", "url_column": "url", "label_column": None,
                        "license": "x", "follow": None}, get_modality("image"), _table(tmp_path, ["x"]),
                       env=SourceEnv(AcquireSettings(web_params()), tmp_path / "c"))


def _table(tmp_path, urls):
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    pd.DataFrame({"url": urls}).to_csv(source / "urls.csv", index=False)
    return source


def test_robots_unreachable_disallows_the_origin(tmp_path):
    site = Site()
    site.respond_original = site.respond

    def respond(h):
        if h.path == "/robots.txt":
            return site.send(h, 503, b"down", "text/plain")
        return site.respond_original(h)

    site.respond = respond
    site.start()
    try:
        collected = collect(tmp_path, [site.base + "/sport/0.html"], params=web_params(retries=0))
    finally:
        site.stop()
    assert [q["quarantine_reason"] for q in collected.quarantined] == ["robots_unavailable"]
    assert site.requests_to("/sport/0.html") == []


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("url,reason", [*REFUSED.items(), ("http://127.0.0.1:99999/", "invalid_url"),
                                        ("https://example.org/a", None), ("HTTP://Example.org", None)])
def test_url_problem(url, reason):
    problem = url_problem(url)
    assert (problem[0] if problem else None) == reason


def test_decode_content_caps_a_bomb_without_inflating_it():
    bomb = gzip.compress(b"\0" * 50_000_000)
    with pytest.raises(FetchError) as caught:
        decode_content(bomb, "gzip", max_bytes=1_000_000)
    assert caught.value.reason == "too_large"
    assert decode_content(zlib.compress(b"hello"), "deflate", max_bytes=10) == b"hello"
    with pytest.raises(FetchError, match="br"):
        decode_content(b"x", "br", max_bytes=10)


def test_retry_after_parsing():
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def test_decode_html_prefers_valid_utf8_then_declared():
    assert decode_html("café".encode(), "iso-8859-1") == ("café", "utf-8")
    assert decode_html("café".encode("cp1252"), "utf-8") == ("café", "cp1252")
    assert decode_html("café".encode("latin-1"), "iso-8859-1") == ("café", "iso-8859-1")


def test_cache_ignores_a_damaged_body(tmp_path):
    cache = FetchCache(tmp_path)
    cache.put("http://127.0.0.1/a", b"body", {"etag": '"1"'})
    assert cache.get("http://127.0.0.1/a")["body"] == b"body"
    blob = next((tmp_path / "blobs").rglob("*"))
    for path in (tmp_path / "blobs").rglob("*"):
        if path.is_file():
            path.write_bytes(b"tampered")
    assert blob and cache.get("http://127.0.0.1/a") is None


def test_fetcher_needs_no_network_for_refused_urls(tmp_path):
    fetcher = Fetcher(web_params(), FetchCache(tmp_path))
    page = fetcher.fetch("file:///etc/passwd")
    assert page.reason == "scheme_not_allowed" and fetcher.stats.requests == 0


def test_cross_host_redirect_when_allowed_checks_the_target(site, tmp_path):
    # allowed, the redirect goes to the other port: nothing listens there, so its robots.txt cannot be read
    collected = collect(tmp_path, [site.base + "/offsite"], params=web_params(cross_host_redirects=True, retries=0))
    [quarantined] = collected.quarantined
    assert quarantined["quarantine_reason"] == "robots_unavailable"
    assert f"127.0.0.1:{site.other_port}/robots.txt: connection_error" in quarantined["detail"]
