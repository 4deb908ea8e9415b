"""The browser-context pool: Chromium processes driven by Playwright, handing out isolated pages to render jobs.

Isolation design, measured in ``bench/isolation.py`` (BENCHMARKS.md): a fresh page per job costs a new renderer
process, about 600 ms of CPU against 130 ms for a reused page, so pooled contexts with fresh pages ran at a quarter of
the speed of reused pages, no faster than a new context per job. So each context keeps one page and serves one job
at a time. After every job the tab leaves the job's page (so that nothing the page runs later can write), then its
cookies, the storage of every origin the page visited, sessionStorage and window.name are cleared, with the HTTP
cache off: the next job sees nothing of the last. Pages cannot open windows. A reused renderer grows
(to 200-290 MB after 40-75 pages), so contexts retire after ``browser_context_max_jobs`` jobs, and a Chromium is
relaunched after ``browser_max_jobs`` jobs or above ``browser_max_rss_mb``, which keeps memory flat on long runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil
from playwright.async_api import Browser, BrowserContext, CDPSession, Page, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError
from prometheus_client import Counter, Gauge

from shared.errors import BrowserCrashed, BrowserUnavailable
from shared.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Flags that make Chromium quiet and safe on a server: no sandbox (containers, root), no GPU, none of the background
# traffic (updates, sync, safe browsing) that a closed network refuses, and no automation flag for pages to see.
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
STEALTH_ARGS = ("--disable-blink-features=AutomationControlled",)
# Pages may not open windows (window.open, popups): a window a job's page opened would live on in the context after
# the job, and could leave cookies and storage for the next job there once its state had been cleared (a test
# showed it). Blocked at the source, so a hostile page cannot spawn renderers either.
ISOLATION_ARGS = ("--block-new-web-contents",)
LEAVE_TIMEOUT_S = 2.0
# Chromium's headless shell first (Playwright's own choice for headless since 1.49). Full Chromium in headless mode
# keeps its browser UI: each browser context gets WebUI renderers of its own (the omnibox popups) that work on every
# navigation. Measured on the benchmark site at 4 pages, one per context: 187-191 ms of CPU a page against 143-149
# with the 4 pages in one context, and 80-87 ms with the headless shell.
# Debian's /usr/bin/chromium-headless-shell is a shell script that runs the binary as its child without exec: the
# binary itself is launched, so that the browser's pid is Chromium's (a signal to the script would orphan it).
HEADLESS_SHELLS = ("/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium-headless-shell")
SYSTEM_CHROMIUMS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
HOW_TO_GET_ONE = (
    "no Chromium found: run `.venv/bin/playwright install chromium`, or install one from your system's packages "
    "(Debian: `apt-get install chromium-headless-shell`, or `chromium`) and set TRAWL_BROWSER_PATH if it is not in "
    "/usr/bin"
)
BLOCKED_RESOURCES = [
    f"*.{ext}"
    for ext in "png jpg jpeg gif webp avif svg ico bmp woff woff2 ttf otf eot mp4 webm mp3 ogg wav m4a".split()
]

CONTEXTS = Gauge("trawl_browser_contexts", "Browser contexts by state", ["state"])
PAGES_OPEN = Gauge("trawl_browser_pages_open", "Browser pages open now")
LAUNCHES = Counter("trawl_browser_launches_total", "Chromium processes launched")
RELAUNCHES = Counter("trawl_browser_relaunches_total", "Chromium processes replaced, by reason", ["reason"])
RETIREMENTS = Counter("trawl_browser_context_retirements_total", "Contexts replaced, by reason", ["reason"])
CRASHES = Counter("trawl_browser_crashes_total", "Tabs or browsers that crashed or disconnected", ["what"])


@dataclass(frozen=True, slots=True)
class Profile:
    """A coherent fingerprint: the user agent's platform, screen, language and clock all agree."""

    platform: str
    navigator_platform: str
    viewport: tuple[int, int]
    locale: str
    timezone: str
    accept_language: str

    def user_agent(self, chrome_major: str) -> str:
        return (
            f"Mozilla/5.0 ({self.platform}) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"Chrome/{chrome_major}.0.0.0 Safari/537.36"
        )


PROFILES = (
    Profile("Windows NT 10.0; Win64; x64", "Win32", (1920, 1080), "en-US", "America/New_York", "en-US,en;q=0.9"),
    Profile("Windows NT 10.0; Win64; x64", "Win32", (1366, 768), "en-GB", "Europe/London", "en-GB,en;q=0.9"),
    Profile("Macintosh; Intel Mac OS X 10_15_7", "MacIntel", (1440, 900), "en-US", "America/Los_Angeles",
            "en-US,en;q=0.9"),
    Profile("Macintosh; Intel Mac OS X 10_15_7", "MacIntel", (1536, 864), "de-DE", "Europe/Berlin",
            "de-DE,de;q=0.9,en;q=0.8"),
    Profile("X11; Linux x86_64", "Linux x86_64", (1280, 800), "fr-FR", "Europe/Paris", "fr-FR,fr;q=0.9,en;q=0.8"),
)  # fmt: skip


def find_browser(configured: str | None, playwright_own: str | None, *, headless: bool = True) -> str | None:
    """The Chromium to launch: the configured one, else Playwright's own download, else a system Chromium (its
    headless shell first when running headless: a shell cannot show a window).

    Returns None when Playwright's own build is installed (Playwright finds it by itself, and picks its headless
    shell for headless launches). Raises BrowserUnavailable when there is none.
    """
    if configured:
        if not os.access(configured, os.X_OK):
            raise BrowserUnavailable(f"TRAWL_BROWSER_PATH={configured} is not an executable file")
        return configured
    if playwright_own and Path(playwright_own).exists():
        return None
    for candidate in (*HEADLESS_SHELLS, *SYSTEM_CHROMIUMS) if headless else SYSTEM_CHROMIUMS:
        if os.access(candidate, os.X_OK):
            return candidate
    found = (
        (headless and shutil.which("chromium-headless-shell"))
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if found:
        return found
    raise BrowserUnavailable(HOW_TO_GET_ONE)


def _chromium_pids() -> set[int]:
    """Chromium processes below this one (Playwright's driver starts them)."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chrom" in child.name().lower():
                pids.add(child.pid)
    return pids


def _parent(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).ppid())
    except psutil.Error:
        return None


def _kill_tree(pid: int) -> None:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [*root.children(recursive=True), root]:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _tree_rss(pid: int) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
    return total


@dataclass(eq=False)
class _Engine:
    """One Chromium process and the contexts that live in it."""

    index: int
    browser: Browser | None = None
    pid: int | None = None
    jobs: int = 0
    busy: int = 0
    recycling: bool = False
    idle_since: float = field(default_factory=time.monotonic)
    parked: list[_Slot] = field(default_factory=list)
    # Set while no job runs in this engine: a recycle waits for it.
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.drained.set()


@dataclass(eq=False)
class _Slot:
    """A context and its one page in an engine, serving one job at a time."""

    engine: _Engine
    context: BrowserContext | None = None
    page: Page | None = None
    cdp: CDPSession | None = None
    browser: Browser | None = None  # the browser the context belongs to, to notice a relaunch
    jobs: int = 0
    crashed: bool = False
    # What the last job changed on the page, so the next job only pays for what differs.
    blocking: bool | None = None
    headers: dict[str, str] = field(default_factory=dict)
    viewport: tuple[int, int] | None = None
    default_viewport: tuple[int, int] = (1280, 800)
    origins: set[str] = field(default_factory=set)


@dataclass(slots=True)
class PageOptions:
    extra_headers: dict[str, str] = field(default_factory=dict)
    block_resources: bool = True
    viewport: tuple[int, int] | None = None


class BrowserPool:
    """Hands out isolated pages, at most ``browser_concurrency`` at a time, over ``browser_processes`` Chromiums.

    An async context manager: leaving it closes every page, context and browser, and kills any Chromium process
    that does not close in time, with its whole process tree.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._call_timeout = settings.browser_call_timeout_s
        self._playwright: Playwright | None = None
        self._executable: str | None = None
        self._engines = [_Engine(i) for i in range(settings.browser_processes)]
        self._slots: asyncio.Queue[_Slot] = asyncio.Queue()
        for n in range(settings.browser_concurrency):
            self._slots.put_nowait(_Slot(self._engines[n % len(self._engines)]))
        self._launch_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._chrome_major = ""
        self._sync_gauges()

    async def __aenter__(self) -> BrowserPool:
        self._reaper = asyncio.create_task(self._reap_idle(), name="browser-idle-reaper")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for engine in self._engines:
            await self._shut(engine)
        pw, self._playwright = self._playwright, None
        if pw is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pw.stop(), timeout=self._call_timeout)

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """Every browser call has a deadline: a hung Chromium must not hang the worker."""
        return await asyncio.wait_for(awaitable, timeout=self._call_timeout)

    async def _launch(self, engine: _Engine) -> Browser:
        async with self._launch_lock:
            if engine.browser is not None and engine.browser.is_connected():
                return engine.browser
            if self._closed:
                raise BrowserUnavailable("the browser pool is closed")
            if self._playwright is None:
                self._playwright = await async_playwright().start()
                self._executable = find_browser(
                    self._settings.browser_path,
                    self._playwright.chromium.executable_path,
                    headless=self._settings.browser_headless,
                )
            before = _chromium_pids()
            try:
                browser = await asyncio.wait_for(
                    self._playwright.chromium.launch(
                        executable_path=self._executable,
                        headless=self._settings.browser_headless,
                        args=[*CHROMIUM_ARGS, *STEALTH_ARGS, *ISOLATION_ARGS],
                    ),
                    timeout=30,
                )
            except (PlaywrightError, TimeoutError) as exc:
                raise BrowserUnavailable(f"Chromium failed to launch ({self._executable}): {exc}") from exc
            new = _chromium_pids() - before
            # The browser process is the new Chromium whose parent is not itself a new Chromium.
            roots = [p for p in new if _parent(p) not in new]
            engine.browser, engine.pid, engine.jobs = browser, (roots[0] if roots else None), 0
            self._chrome_major = browser.version.split(".")[0]
            browser.on("disconnected", lambda _: self._disconnected(engine, browser))
            LAUNCHES.inc()
            log.info("launched Chromium %s (pid %s) from %s", browser.version, engine.pid, self._executable)
            return browser

    def _disconnected(self, engine: _Engine, browser: Browser) -> None:
        if engine.browser is browser:
            if not engine.recycling and not self._closed:
                CRASHES.labels("browser").inc()
                log.warning("Chromium %s disconnected; it will be relaunched", engine.pid)
            engine.browser = None
            if engine.pid:
                _kill_tree(engine.pid)

    async def _shut(self, engine: _Engine) -> None:
        """Close an engine's Chromium, killing its process tree if it does not close in time."""
        browser, pid = engine.browser, engine.pid
        engine.browser, engine.pid = None, None
        if browser is not None:
            try:
                await asyncio.wait_for(browser.close(), timeout=self._call_timeout)
            except (TimeoutError, PlaywrightError) as exc:
                log.warning("Chromium %s did not close (%s); killing it", pid, exc)
        if pid is not None:
            _kill_tree(pid)

    async def _recycle(self, engine: _Engine, reason: str) -> None:
        """Relaunch an engine once its running jobs are done; its contexts wait parked meanwhile."""
        if engine.recycling:
            return
        engine.recycling = True
        try:
            await engine.drained.wait()
            log.info("recycling Chromium %s: %s", engine.pid, reason)
            RELAUNCHES.labels(reason).inc()
            await self._shut(engine)
        finally:
            engine.recycling = False
            for slot in engine.parked:
                self._slots.put_nowait(slot)
            engine.parked.clear()
            self._sync_gauges()

    async def _reap_idle(self) -> None:
        """Close browsers that had nothing to do for ``browser_idle_s``; the next job launches one again."""
        while True:
            await asyncio.sleep(min(30.0, self._settings.browser_idle_s / 2))
            now = time.monotonic()
            for engine in self._engines:
                idle = now - engine.idle_since >= self._settings.browser_idle_s
                if engine.browser is not None and engine.busy == 0 and idle and not engine.recycling:
                    await self._recycle(engine, "idle")

    def _background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sync_gauges(self) -> None:
        total = self._settings.browser_concurrency
        idle = self._slots.qsize()
        CONTEXTS.labels("idle").set(idle)
        CONTEXTS.labels("busy").set(total - idle - sum(len(e.parked) for e in self._engines))

    # -- pages -------------------------------------------------------------------------------------------------

    async def _take_slot(self) -> _Slot:
        while True:
            slot = await self._slots.get()
            if not slot.engine.recycling:
                return slot
            slot.engine.parked.append(slot)

    async def _fresh_context(self, slot: _Slot, browser: Browser) -> Page:
        """A new context with a coherent fingerprint, and the one page it will reuse for its jobs."""
        if slot.context is not None:
            RETIREMENTS.labels("relaunch" if slot.browser is not browser else "max_jobs").inc()
            await self._drop_context(slot)
        profile = random.choice(PROFILES)
        context = await self._call(
            browser.new_context(
                user_agent=profile.user_agent(self._chrome_major),
                viewport={"width": profile.viewport[0], "height": profile.viewport[1]},
                locale=profile.locale,
                timezone_id=profile.timezone,
                extra_http_headers={"Accept-Language": profile.accept_language},
            )
        )
        slot.context, slot.browser, slot.jobs = context, browser, 0
        await self._call(
            context.add_init_script(
                "Object.defineProperty(Navigator.prototype, 'platform', "
                f"{{get: () => '{profile.navigator_platform}'}});"
            )
        )
        page = await self._call(context.new_page())
        PAGES_OPEN.inc()
        slot.page, slot.crashed, slot.default_viewport = page, False, profile.viewport
        slot.blocking, slot.headers, slot.viewport = None, {}, None
        page.on("crash", lambda _: setattr(slot, "crashed", True))
        page.on("framenavigated", lambda frame: _note_origin(slot, frame.url))
        slot.cdp = await self._call(context.new_cdp_session(page))
        await self._call(slot.cdp.send("Network.enable"))
        # No job reads what an earlier job left in the HTTP cache.
        await self._call(slot.cdp.send("Network.setCacheDisabled", {"cacheDisabled": True}))
        return page

    async def _drop_context(self, slot: _Slot) -> None:
        context, slot.context, slot.cdp = slot.context, None, None
        if slot.page is not None:
            PAGES_OPEN.dec()
            slot.page = None
        if context is not None:
            try:
                await self._call(context.close())
            except (PlaywrightError, TimeoutError):
                if slot.engine.browser is not None and slot.engine.browser.is_connected():
                    self._background(self._recycle(slot.engine, "hung"))

    async def _prepare(self, slot: _Slot, page: Page, options: PageOptions) -> None:
        """Apply this job's options, paying only for what differs from the last job on this page."""
        assert slot.cdp is not None
        if slot.blocking != options.block_resources:
            urls = BLOCKED_RESOURCES if options.block_resources else []
            await self._call(slot.cdp.send("Network.setBlockedURLs", {"urls": urls}))
            slot.blocking = options.block_resources
        if slot.headers != options.extra_headers:
            await self._call(page.set_extra_http_headers(options.extra_headers))
            slot.headers = dict(options.extra_headers)
        if slot.viewport != options.viewport:
            width, height = options.viewport or slot.default_viewport
            await self._call(page.set_viewport_size({"width": width, "height": height}))
            slot.viewport = options.viewport

    @asynccontextmanager
    async def page(self, options: PageOptions | None = None) -> AsyncIterator[Page]:
        """A page that no other job uses meanwhile, in a context of its own; everything the job leaves behind
        (cookies, storage, cache) is cleared when it ends, so the next job on it starts clean."""
        options = options or PageOptions()
        slot = await self._take_slot()
        engine = slot.engine
        engine.busy += 1
        engine.drained.clear()
        self._sync_gauges()
        healthy = True
        try:
            browser = engine.browser if engine.browser is not None and engine.browser.is_connected() else None
            if browser is None:
                browser = await self._launch(engine)
            page = slot.page
            if (
                page is None
                or slot.browser is not browser
                or slot.crashed
                or slot.jobs >= self._settings.browser_context_max_jobs
            ):
                page = await self._fresh_context(slot, browser)
            slot.jobs += 1
            engine.jobs += 1
            await self._prepare(slot, page, options)
            try:
                yield page
            except PlaywrightError as exc:
                healthy = False
                if slot.crashed or "crash" in str(exc).lower():
                    CRASHES.labels("tab").inc()
                    raise BrowserCrashed("the tab crashed while rendering the page") from exc
                if not browser.is_connected() or "closed" in str(exc).lower():
                    raise BrowserCrashed(f"the browser went away while rendering the page: {exc}") from exc
                raise
            except BaseException:
                # A timeout or cancellation may leave the tab busy (a script looping for ever): don't trust it.
                healthy = False
                raise
        except (PlaywrightError, TimeoutError) as exc:
            healthy = False
            if engine.browser is None or not engine.browser.is_connected():
                raise BrowserCrashed(f"the browser went away: {exc}") from exc
            raise
        finally:
            await self._release(slot, healthy)

    async def _clear(self, slot: _Slot) -> None:
        """Forget everything the last job left: cookies, the storage of every origin it visited, sessionStorage and
        window.name (the tab's, which outlive navigations). The tab leaves the job's page first, so that what the
        page does as it is left (``pagehide``, ``unload``) happens before the clearing, not after it."""
        assert slot.page is not None and slot.context is not None and slot.cdp is not None
        # Left from inside the page, and its timers stop with it. (A navigation the browser starts, page.goto, swaps
        # the tab to a new renderer process: 11.5 pages/s against 18.5 in the benchmark, and 25 without leaving.)
        leave = {"expression": "location.replace('about:blank')"}
        # Leaving takes milliseconds. A page that keeps navigating itself, or whose script never yields, can stop
        # it: then the context goes instead, after LEAVE_TIMEOUT_S rather than the longer deadline of other calls.
        async with (
            asyncio.timeout(LEAVE_TIMEOUT_S),
            slot.page.expect_navigation(url="about:blank", wait_until="commit", timeout=LEAVE_TIMEOUT_S * 1e3),
        ):
            await slot.cdp.send("Runtime.evaluate", leave)
        for origin in slot.origins:
            await self._call(slot.cdp.send("Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"}))
            # sessionStorage belongs to the tab and outlives its navigations; the call above leaves it.
            session = {"securityOrigin": origin, "isLocalStorage": False}
            await self._call(slot.cdp.send("DOMStorage.clear", {"storageId": session}))
        slot.origins.clear()
        await self._call(slot.context.clear_cookies())
        # Last, and set twice: the left page's renderer can still be renaming the tab from its pagehide handler
        # after the new page has loaded, and setting the name it already has ('') tells the browser nothing.
        await self._call(slot.cdp.send("Runtime.evaluate", {"expression": "window.name = 'x'; window.name = ''"}))

    async def _release(self, slot: _Slot, healthy: bool) -> None:
        engine = slot.engine
        try:
            if healthy and slot.context is not None and len(slot.context.pages) > 1:
                # A window the page got open all the same may act after the job: the context is not reused.
                healthy = False
            if healthy and slot.page is not None:
                try:
                    await self._clear(slot)
                except (PlaywrightError, TimeoutError):
                    healthy = False
            if not healthy and slot.context is not None:
                # A context that may hold a job's state, or a hung tab, is not handed out again.
                RETIREMENTS.labels("unhealthy").inc()
                await self._drop_context(slot)
        finally:
            engine.busy -= 1
            if engine.busy == 0:
                engine.drained.set()
            engine.idle_since = time.monotonic()
            self._slots.put_nowait(slot)
            self._sync_gauges()
        if engine.browser is not None and not engine.recycling:
            if engine.jobs >= self._settings.browser_max_jobs:
                self._background(self._recycle(engine, "max_jobs"))
            elif engine.pid and engine.jobs % 50 == 0:
                if _tree_rss(engine.pid) > self._settings.browser_max_rss_mb * 2**20:
                    self._background(self._recycle(engine, "rss"))

    def chromium_pids(self) -> list[int]:
        """The browser processes this pool runs now (for tests and memory measurements)."""
        return [e.pid for e in self._engines if e.pid is not None]


def _note_origin(slot: _Slot, url: str) -> None:
    if url.startswith(("http://", "https://")):
        scheme, _, rest = url.partition("://")
        slot.origins.add(f"{scheme}://{rest.split('/', 1)[0]}")
