"""Getting a page: over plain HTTP with aiohttp, or rendered in Chromium through the browser pool."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeout

from shared.browser import BrowserPool
from shared.errors import BodyTooLarge, BrowserError, FetchTimeout, HostUnreachable, HTTPStatusError, ScrapeError
from shared.queues import ScrapeRequest

_TEXTUAL = ("text/", "application/xhtml+xml", "application/xml", "application/json", "application/ld+json")


@dataclass(slots=True)
class Fetched:
    final_url: str
    status_code: int
    headers: dict[str, str]
    html: str


async def fetch_http(session: aiohttp.ClientSession, request: ScrapeRequest, max_body: int) -> Fetched:
    url = str(request.url)
    try:
        async with session.get(
            url,
            headers=request.headers,
            timeout=aiohttp.ClientTimeout(total=request.timeout_s),
            max_redirects=10,
        ) as resp:
            if resp.status >= 400:
                raise HTTPStatusError(resp.status, str(resp.url))
            content_type = resp.headers.get("Content-Type", "text/html")
            if not content_type.startswith(_TEXTUAL):
                raise ScrapeError(f"not a text page: Content-Type {content_type}")
            if resp.content_length is not None and resp.content_length > max_body:
                raise BodyTooLarge(f"body of {resp.content_length} bytes is over the {max_body}-byte cap")
            body = await resp.content.read(max_body + 1)
            if len(body) > max_body:
                raise BodyTooLarge(f"body is over the {max_body}-byte cap")
            charset = resp.charset or "utf-8"
            try:
                html = body.decode(charset, errors="replace")
            except LookupError:  # a charset name Python does not know
                html = body.decode("utf-8", errors="replace")
            return Fetched(str(resp.url), resp.status, dict(resp.headers), html)
    except TimeoutError as exc:
        raise FetchTimeout(f"no complete answer from {url} within {request.timeout_s:g} s") from exc
    except aiohttp.TooManyRedirects as exc:
        raise ScrapeError(f"too many redirects from {url}") from exc
    except aiohttp.ClientConnectorError as exc:
        raise HostUnreachable(f"cannot connect to {url}: {exc.os_error or exc}") from exc
    except aiohttp.ClientError as exc:
        raise ScrapeError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from exc


async def render_browser(pool: BrowserPool, request: ScrapeRequest) -> Fetched:
    url = str(request.url)
    timeout_ms = request.timeout_s * 1000
    try:
        async with asyncio.timeout(request.timeout_s + 5), pool.page(request.headers) as page:
            response = await page.goto(url, wait_until="load", timeout=timeout_ms)
            if response is None:
                raise BrowserError(f"the browser got no response for {url}")
            if response.status >= 400:
                raise HTTPStatusError(response.status, response.url)
            html = await page.content()
            return Fetched(page.url, response.status, await response.all_headers(), html)
    except (PlaywrightTimeout, TimeoutError) as exc:
        raise FetchTimeout(f"the page {url} did not load within {request.timeout_s:g} s") from exc
    except PlaywrightError as exc:
        message = str(exc.message).splitlines()[0] if exc.message else repr(exc)
        if "net::ERR_CONNECTION_REFUSED" in message or "net::ERR_NAME_NOT_RESOLVED" in message:
            raise HostUnreachable(f"cannot connect to {url}: {message}") from exc
        raise BrowserError(f"rendering {url} failed: {message}") from exc
