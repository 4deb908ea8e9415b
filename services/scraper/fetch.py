"""Getting a page: over plain HTTP with aiohttp, or rendered in Chromium through the browser pool, and deciding
for ``render: auto`` whether a page needs the browser at all."""

from __future__ import annotations

import asyncio
import codecs
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, cast

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError
from charset_normalizer import from_bytes
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page, Request, Response
from playwright.async_api import TimeoutError as PlaywrightTimeout

from shared.browser import BrowserPool, PageOptions
from shared.errors import (
    BodyTooLarge,
    BrowserCrashed,
    BrowserError,
    CertificateInvalid,
    FetchTimeout,
    HostUnreachable,
    HTTPStatusError,
    InvalidResponse,
    NotAPage,
    ScrapeError,
    certificate_problem,
    parser_message,
)
from shared.extract import Extracted
from shared.images import fit_screenshot
from shared.queues import Format, ScrapeRequest, WaitUntil

_TEXTUAL = ("text/", "application/xhtml+xml", "application/xml", "application/json", "application/ld+json")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_SPA_ROOT = re.compile(r"""<div[^>]+id\s*=\s*["']?(root|app|__next|__nuxt|svelte)["']?[^>]*>\s*</div>""", re.IGNORECASE)
_SCRIPT_TAG = re.compile(r"<script", re.IGNORECASE)
_CERT_ERROR = re.compile(r"net::ERR_CERT_[A-Z_]+")
_INVALID_HTTP = re.compile(r"net::ERR_(INVALID_HTTP_RESPONSE|RESPONSE_HEADERS_TOO_BIG|INVALID_RESPONSE)\b")
_NOSCRIPT_HINT = re.compile(r"<noscript[^>]*>[^<]*(enable|requires?)\s+javascript", re.IGNORECASE)
# The page's HTML, and the HTTP status its document came with (0 where the browser does not say).
_SERIALIZE = (
    "[(document.doctype ? new XMLSerializer().serializeToString(document.doctype) : '')"
    " + document.documentElement.outerHTML,"
    " (performance.getEntriesByType('navigation')[0] || {}).responseStatus || 0]"
)
_META_REFRESH = re.compile(r"""<meta\b[^>]*http-equiv\s*=\s*["']?refresh[^>]*>""", re.IGNORECASE)
_REFRESH_DELAY = re.compile(r"""content\s*=\s*["']?\s*(\d+(?:\.\d*)?)\s*[;,]\s*url\s*=""", re.IGNORECASE)
# A meta refresh that sends the tab on within this many seconds is waited for; a slower one is read as it stands.
REFRESH_WAIT_MAX_S = 5.0
# A page with less text than this and scripts of its own probably writes its content with JavaScript.
_THIN_TEXT = 200
# A page that sends the tab on after loading (a meta refresh, a script setting location) is followed this often.
MAX_CLIENT_REDIRECTS = 5
# Chromium's reasons for a connection that failed before any answer: retried, as over plain HTTP.
_CANNOT_CONNECT = (
    "net::ERR_CONNECTION_REFUSED",
    "net::ERR_NAME_NOT_RESOLVED",
    "net::ERR_CONNECTION_RESET",
    "net::ERR_CONNECTION_CLOSED",
    "net::ERR_EMPTY_RESPONSE",
)
# ...and for a document whose body failed after its headers came. An undecodable body comes back the same however
# often it is asked for (not retried); a connection cut short may go through next time (retried).
_UNREADABLE_BODY = ("net::ERR_CONTENT_DECODING_FAILED", "net::ERR_INVALID_CHUNKED_ENCODING")
_BODY_FAILURES = (
    *_UNREADABLE_BODY,
    "net::ERR_CONTENT_LENGTH_MISMATCH",
    "net::ERR_INCOMPLETE_CHUNKED_ENCODING",
    "net::ERR_CONNECTION_RESET",
    "net::ERR_CONNECTION_CLOSED",
)
# How long goto has, once its document's request failed, to report the failure itself (it does for failures before
# the document arrived, at once).
BODY_FAILURE_GRACE_S = 1.0


@dataclass(slots=True)
class Fetched:
    final_url: str
    status_code: int
    headers: dict[str, str]
    html: str
    # ``html`` as UTF-8, encoded once for parsing, hashing and compression: for a UTF-8 body (most pages), the
    # bytes that arrived.
    html_utf8: bytes
    screenshot: bytes | None = None
    screenshot_type: str | None = None
    pdf: bytes | None = None


def retry_after_s(value: str | None) -> float | None:
    """The Retry-After header in seconds (it may be a number or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def decode_body(body: bytes, declared: str | None) -> tuple[str, str]:
    """Text from a body, and the codec that read it: the declared charset, else a ``<meta charset>``, else
    detection; bytes that are text in no charset (binary served as HTML) are refused rather than stored as
    garbage."""
    candidates = [declared] if declared else []
    if match := _META_CHARSET.search(body[:4096]):
        candidates.append(match.group(1).decode("ascii", "replace"))
    candidates.append("utf-8")
    for charset in candidates:
        try:
            return body.decode(charset), codecs.lookup(charset).name
        except (LookupError, UnicodeDecodeError):
            continue
    best = from_bytes(body[:200_000]).best()
    if best is None or best.encoding is None:
        raise NotAPage("the body is not text in any known charset")
    return body.decode(best.encoding, errors="replace"), "replaced"


def job_session(shared: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """A session for one fetch: the process's connection pool and headers, with a cookie jar of its own. Cookies a
    site sets during one job's redirects go back with that job's next hop, and never with another job's requests
    (the process's shared session keeps no cookies at all). About 3 us to make."""
    return aiohttp.ClientSession(
        connector=shared.connector,
        connector_owner=False,
        headers=shared.headers,
        # unsafe: keep cookies of sites addressed by IP too, as a browser does (the jar lives for one fetch)
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    )


async def fetch_http(shared: aiohttp.ClientSession, request: ScrapeRequest, max_body: int, timeout_s: float) -> Fetched:
    url = str(request.url)
    try:
        async with (
            job_session(shared) as session,
            session.get(
                url, headers=request.headers, timeout=aiohttp.ClientTimeout(total=timeout_s), max_redirects=10
            ) as resp,
        ):
            if resp.status >= 400:
                raise HTTPStatusError(resp.status, str(resp.url), retry_after_s(resp.headers.get("Retry-After")))
            content_type = resp.headers.get("Content-Type", "text/html")
            if not content_type.startswith(_TEXTUAL):
                raise NotAPage(f"not a text page: Content-Type {content_type}")
            if resp.content_length is not None and resp.content_length > max_body:
                raise BodyTooLarge(f"body of {resp.content_length} bytes is over the {max_body}-byte cap")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > max_body:
                    raise BodyTooLarge(f"body is over the {max_body}-byte cap")
                chunks.append(chunk)
            body = b"".join(chunks)
            html, codec = decode_body(body, resp.charset)
            utf8 = body if codec == "utf-8" else html.encode()
            return Fetched(str(resp.url), resp.status, dict(resp.headers), html, utf8)
    except TimeoutError as exc:
        raise FetchTimeout(f"no complete answer from {url} within {timeout_s:.3g} s") from exc
    except aiohttp.TooManyRedirects as exc:
        raise ScrapeError(f"too many redirects from {url}") from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        # Not retried: another attempt meets the same certificate.
        raise CertificateInvalid(f"the TLS certificate of {url} is not valid: {certificate_problem(exc)}") from exc
    except aiohttp.ClientConnectorError as exc:
        raise HostUnreachable(f"cannot connect to {url}: {exc.os_error or exc}") from exc
    except aiohttp.RedirectClientError as exc:
        kind = "an http or https URL" if isinstance(exc, aiohttp.NonHttpUrlClientError) else "a valid URL"
        raise ScrapeError(f"{url} redirects to {exc.args[0] if exc.args else '?'}, which is not {kind}") from exc
    except aiohttp.ClientResponseError as exc:
        # Raised by aiohttp's parser for an answer that is not HTTP (its status, 400, is aiohttp's, not the site's);
        # the other causes (raise_for_status, TooManyRedirects above) do not arise here.
        raise InvalidResponse(f"{url} did not answer in valid HTTP: {parser_message(exc.message)}") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
        if isinstance(exc.__cause__, ContentEncodingError):
            # "Can not decode content-encoding: gzip": not a broken connection, and the same body comes again
            encoding = exc.__cause__.message.rpartition(": ")[2]
            raise InvalidResponse(f"the body from {url} is not valid {encoding} (its Content-Encoding)") from exc
        raise HostUnreachable(f"the connection to {url} broke: {type(exc).__name__}: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise ScrapeError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from exc


async def render_browser(pool: BrowserPool, request: ScrapeRequest, max_body: int, timeout_s: float) -> Fetched:
    url = str(request.url)
    timeout_ms = timeout_s * 1000
    deadline = time.monotonic() + timeout_s
    options = PageOptions(
        extra_headers=request.headers,
        block_resources=request.blocks_resources,
        viewport=(request.viewport.width, request.viewport.height) if request.viewport else None,
    )
    try:
        # The page's own deadline comes first; this one catches a browser that stops answering altogether.
        async with asyncio.timeout(timeout_s + 5), pool.page(options) as page, _Documents(page) as documents:
            response = await documents.open(url, request.wait_until, timeout_ms)
            if response is None:
                raise BrowserError(f"the browser got no response for {url}")
            if response.status >= 400:
                retry_after = retry_after_s(response.headers.get("retry-after"))
                raise HTTPStatusError(response.status, response.url, retry_after)
            if request.wait_for:
                await page.wait_for_selector(request.wait_for, timeout=timeout_ms)
            if request.wait_ms:
                await page.wait_for_timeout(request.wait_ms)
            html, status = await _settled_html(page, request, deadline)
            # Where the page sent the tab on after loading, the page it landed on is the one reported.
            landing = documents.latest if documents.latest is not None and documents.latest.url == page.url else None
            if page.url == response.url or not status:
                status = response.status
            elif status >= 400:  # the page sent the tab on to an error
                raise HTTPStatusError(status, page.url)
            if len(html) > max_body:
                raise BodyTooLarge(f"the rendered page is over the {max_body}-byte cap")
            headers = (landing or response).headers
            fetched = Fetched(page.url, status, headers, html, html.encode())
            if Format.SCREENSHOT in request.formats:
                png = await page.screenshot(full_page=request.full_page, type="png", timeout=timeout_ms)
                shot = await asyncio.to_thread(
                    fit_screenshot, png, target_kb=request.screenshot_target_kb, image_format=request.screenshot_format
                )
                fetched.screenshot, fetched.screenshot_type = shot.data, shot.content_type
            if Format.PDF in request.formats:
                fetched.pdf = await page.pdf(print_background=True)
            return fetched
    except (PlaywrightTimeout, TimeoutError) as exc:
        what = f"the selector {request.wait_for!r} did not appear" if request.wait_for else "the page did not load"
        raise FetchTimeout(f"{what} within {timeout_s:.3g} s ({url})") from exc
    except BrowserCrashed:
        raise
    except PlaywrightError as exc:
        message = str(exc.message).splitlines()[0] if exc.message else repr(exc)
        if any(code in message for code in _CANNOT_CONNECT):
            raise HostUnreachable(f"cannot connect to {url}: {message}") from exc
        if invalid := _INVALID_HTTP.search(message):
            raise InvalidResponse(f"{url} did not answer in valid HTTP: {invalid.group(0)}") from exc
        if cert := _CERT_ERROR.search(message):
            raise CertificateInvalid(f"the TLS certificate of {url} is not valid: {cert.group(0)}") from exc
        if "net::ERR_TOO_MANY_REDIRECTS" in message:
            raise ScrapeError(f"too many redirects from {url}") from exc
        if "Download is starting" in message:
            raise NotAPage(f"{url} is a file to download, not a page") from exc
        raise BrowserError(f"rendering {url} failed: {message}") from exc


class _Documents:
    """What the browser says about the tab's main-frame documents during one job: the response of the latest (a page
    that sends the tab on is reported with its landing page's headers), and a failure of a document's body after its
    headers came (an undecodable Content-Encoding, broken chunks, a connection cut short). The tab never fires its
    load event then, and goto alone waited out the job's whole timeout."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.latest: Response | None = None
        self.broke: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> _Documents:
        self.page.on("response", self._on_response)
        self.page.on("requestfailed", self._on_failed)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.page.remove_listener("response", self._on_response)
        self.page.remove_listener("requestfailed", self._on_failed)

    def _on_response(self, response: Response) -> None:
        if response.frame == self.page.main_frame and response.request.is_navigation_request():
            self.latest = response

    def _on_failed(self, request: Request) -> None:
        failure = request.failure or ""
        if failure in _BODY_FAILURES and request.is_navigation_request() and request.frame == self.page.main_frame:
            if not self.broke.done():
                self.broke.set_result(failure)

    async def open(self, url: str, wait_until: WaitUntil, timeout_ms: float) -> Response | None:
        """``page.goto``, failing at once with the browser's reason when the document's body fails."""
        opened = asyncio.ensure_future(self.page.goto(url, wait_until=wait_until.value, timeout=timeout_ms))
        try:
            await asyncio.wait([opened, cast("asyncio.Future[Any]", self.broke)], return_when=asyncio.FIRST_COMPLETED)
            if not opened.done():
                # A failure before the document arrived is goto's to report, and it does so at once.
                await asyncio.wait([opened], timeout=BODY_FAILURE_GRACE_S)
            if opened.done():
                return opened.result()
            failure = self.broke.result()
            if failure in _UNREADABLE_BODY:
                raise InvalidResponse(f"the body of {url} cannot be read: {failure}")
            raise HostUnreachable(f"the connection to {url} broke: {failure}")
        finally:
            if not opened.done():
                opened.cancel()
                await asyncio.gather(opened, return_exceptions=True)


async def _settled_html(page: Page, request: ScrapeRequest, deadline: float) -> tuple[str, int]:
    """The page's HTML once it stays put, and the HTTP status its document came with (0 if unknown). A page may
    send the tab on after loading, by a meta refresh (waited for when it is due within ``REFRESH_WAIT_MAX_S``) or a
    script setting ``location`` (reading a page whose document is gone fails): then the page it went to is read
    instead, up to ``MAX_CLIENT_REDIRECTS`` times."""
    for _ in range(MAX_CLIENT_REDIRECTS + 1):
        left = page.url
        try:
            # outerHTML costs about 3 ms where page.content() costs 15-18 (measured on the benchmark site).
            html, status = await page.evaluate(_SERIALIZE)
        except PlaywrightError as exc:
            if "Execution context was destroyed" not in str(exc.message):
                raise
            await page.wait_for_load_state(request.wait_until.value, timeout=_ms_left(deadline))
            continue
        delay = refresh_delay(html)
        # Not waited for: no refresh, one too slow to wait for, or one due after the job's budget is spent.
        if delay is None or delay > REFRESH_WAIT_MAX_S or delay >= deadline - time.monotonic():
            return html, int(status)

        def moved(url: str, gone: str = left) -> bool:
            return url != gone

        try:
            await page.wait_for_url(
                moved,
                wait_until=request.wait_until.value,
                timeout=min(_ms_left(deadline), (delay + 2) * 1000),
            )
        except PlaywrightTimeout:
            return html, int(status)  # the refresh did not lead anywhere else in time: the page as it stands
    raise ScrapeError(f"the page kept sending the tab on, more than {MAX_CLIENT_REDIRECTS} times after loading")


def _ms_left(deadline: float) -> float:
    # At least 1 ms: to Playwright a timeout of 0 means none at all.
    return max(1.0, (deadline - time.monotonic()) * 1000)


def refresh_delay(html: str) -> float | None:
    """The delay, in seconds, of a meta refresh in ``html`` that sends the page to another URL, or None."""
    tag = _META_REFRESH.search(html[:20_000])
    found = _REFRESH_DELAY.search(tag.group(0)) if tag else None
    return float(found.group(1)) if found else None


def browser_reason(html: str, page: Extracted) -> str | None:
    """Why a page fetched over HTTP needs a browser to show its content, or None when its HTML has it."""
    text_len = len(page.text)
    if (delay := refresh_delay(html)) is not None and delay <= REFRESH_WAIT_MAX_S:
        return "the page sends the browser on with a meta refresh"
    if _SPA_ROOT.search(html) and text_len < 2 * _THIN_TEXT:
        return f"an empty application root and only {text_len} characters of text"
    if _NOSCRIPT_HINT.search(html):
        return "the page says it needs JavaScript"
    if text_len < _THIN_TEXT and _SCRIPT_TAG.search(html):
        return f"only {text_len} characters of text and scripts that may write the rest"
    return None
