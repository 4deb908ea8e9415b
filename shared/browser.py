"""The browser-context pool: one Chromium per process, driven by Playwright, shared by a service's render jobs.

Every job gets a fresh browser context (its own cookies, storage and cache), so no job sees another's state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, Page, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError
from prometheus_client import Counter, Gauge

from shared.errors import BrowserUnavailable
from shared.settings import Settings

log = logging.getLogger(__name__)

# Flags that make Chromium quiet and safe on a server: no sandbox (containers, root), no GPU, and none of the
# background traffic (updates, sync, safe browsing) that a closed network refuses.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
)
SYSTEM_CHROMIUMS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
HOW_TO_GET_ONE = (
    "no Chromium found: run `.venv/bin/playwright install chromium`, or install one from your system's packages "
    "(Debian/Ubuntu: `apt-get install chromium`) and set TRAWL_BROWSER_PATH if it is not at /usr/bin/chromium"
)

PAGES_OPEN = Gauge("trawl_browser_pages_open", "Browser pages open now")
BROWSER_LAUNCHES = Counter("trawl_browser_launches_total", "Chromium processes launched")


def find_browser(configured: str | None, playwright_own: str | None) -> str | None:
    """The Chromium to launch: the configured one, else Playwright's own download, else a system Chromium.

    Returns None when Playwright's own build is installed (Playwright finds it by itself).
    Raises BrowserUnavailable when there is none.
    """
    if configured:
        if not os.access(configured, os.X_OK):
            raise BrowserUnavailable(f"TRAWL_BROWSER_PATH={configured} is not an executable file")
        return configured
    if playwright_own and Path(playwright_own).exists():
        return None
    for candidate in SYSTEM_CHROMIUMS:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    raise BrowserUnavailable(HOW_TO_GET_ONE)


class BrowserPool:
    """Hands out isolated pages on one lazily launched Chromium, at most ``concurrency`` at a time.

    Use it as an async context manager; leaving it closes every page and the browser.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.browser_concurrency)
        self._launch_lock = asyncio.Lock()
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    async def __aenter__(self) -> BrowserPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        browser, self._browser = self._browser, None
        if browser is not None:
            try:
                await asyncio.wait_for(browser.close(), timeout=10)
            except (TimeoutError, PlaywrightError):
                log.warning("browser did not close cleanly")
        pw, self._playwright = self._playwright, None
        if pw is not None:
            await pw.stop()

    async def _ensure_browser(self) -> Browser:
        async with self._launch_lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            executable = find_browser(self._settings.browser_path, self._playwright.chromium.executable_path)
            try:
                self._browser = await asyncio.wait_for(
                    self._playwright.chromium.launch(
                        executable_path=executable,
                        headless=self._settings.browser_headless,
                        args=list(CHROMIUM_ARGS),
                    ),
                    timeout=30,
                )
            except (PlaywrightError, TimeoutError) as exc:
                raise BrowserUnavailable(f"Chromium failed to launch ({executable or 'playwright'}): {exc}") from exc
            BROWSER_LAUNCHES.inc()
            log.info("launched Chromium %s from %s", self._browser.version, executable or "playwright")
            return self._browser

    @asynccontextmanager
    async def page(self, extra_headers: dict[str, str] | None = None) -> AsyncIterator[Page]:
        """A page in a context of its own, closed (with the context) on exit."""
        async with self._slots:
            browser = await self._ensure_browser()
            context = await browser.new_context(extra_http_headers=extra_headers or None)
            PAGES_OPEN.inc()
            try:
                yield await context.new_page()
            finally:
                PAGES_OPEN.dec()
                try:
                    await asyncio.wait_for(context.close(), timeout=10)
                except (TimeoutError, PlaywrightError):
                    log.warning("browser context did not close in time")
