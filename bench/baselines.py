"""Raw baselines with nothing of trawl in them: a bare aiohttp client, and bare Playwright on reused pages."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
from playwright.async_api import Browser, CDPSession, Page, Playwright, async_playwright

from shared.browser import CHROMIUM_ARGS, find_browser
from shared.settings import Settings

TITLE = re.compile(rb"<title>([^<]*)</title>", re.IGNORECASE)
# Images, fonts and media are blocked inside Chromium through CDP: page.route() would send every request through
# Python and disable the cache, which makes crawls slower than loading the files.
BLOCKED_EXTENSIONS = "png jpg jpeg gif webp svg ico woff woff2 ttf otf mp4 webm mp3 ogg".split()
BLOCKED_URL_PATTERNS = tuple(f"*.{ext}" for ext in BLOCKED_EXTENSIONS)


async def bare_aiohttp(urls: list[str], concurrency: int = 8) -> float:
    """Pages/s fetching every URL with one ``aiohttp`` session (at most ``concurrency`` connections), reading each
    body and finding its title with a compiled regex (on the bytes: no decoding)."""
    found = 0

    async def worker(session: aiohttp.ClientSession, todo: Iterator[str]) -> None:
        nonlocal found
        for url in todo:  # the shared iterator is the queue: each worker takes the next URL when it is free
            async with session.get(url) as resp:
                body = await resp.read()
            if TITLE.search(body):
                found += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        todo = iter(urls)
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, todo) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    assert found == len(urls), f"title found in {found} of {len(urls)} pages"
    return len(urls) / elapsed


def benchmark_chromium(pw: Playwright) -> str | None:
    """The Chromium trawl's pool would launch here, so that baselines and trawl run the same browser."""
    return find_browser(Settings().browser_path, pw.chromium.executable_path)


async def launch_chromium(pw: Playwright) -> Browser:
    """Headless Chromium with the project's flags: the same build trawl uses."""
    return await pw.chromium.launch(executable_path=benchmark_chromium(pw), headless=True, args=list(CHROMIUM_ARGS))


async def block_media(page: Page) -> CDPSession:
    """Block images, fonts and media for ``page`` through CDP; returns the session (Network domain enabled)."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send("Network.setBlockedURLs", {"urls": list(BLOCKED_URL_PATTERNS)})
    return cdp


async def visit(page: Page, url: str) -> str:
    """Load ``url`` as the benchmarks do (until ``load``, then until ``#ready`` exists) and return the title."""
    await page.goto(url, wait_until="load")
    await page.wait_for_selector("#ready")
    return await page.title()


async def crawl(workers: int, urls: list[str], job: Callable[[int, str], Awaitable[str]]) -> float:
    """Pages/s running ``job(worker, url)`` for every URL on ``workers`` workers pulling from one shared queue;
    asserts that every job returned a title."""
    titles: list[str] = []

    async def worker(n: int, todo: Iterator[str]) -> None:
        for url in todo:
            titles.append(await job(n, url))

    todo = iter(urls)
    start = time.perf_counter()
    await asyncio.gather(*(worker(n, todo) for n in range(workers)))
    elapsed = time.perf_counter() - start
    missing = sum(1 for t in titles if not t)
    assert len(titles) == len(urls) and not missing, f"{missing} of {len(urls)} pages without a title"
    return len(urls) / elapsed


async def bare_playwright(urls: list[str], concurrency: int = 4) -> float:
    """Pages/s through ``concurrency`` pages of one context, reused for every URL, media blocked through CDP.
    The timing starts once the browser and its pages are up."""
    async with async_playwright() as pw:
        browser = await launch_chromium(pw)
        try:
            context = await browser.new_context()
            pages = [await context.new_page() for _ in range(concurrency)]
            for page in pages:
                await block_media(page)
            return await crawl(concurrency, urls, lambda n, url: visit(pages[n], url))
        finally:
            await browser.close()
