"""What isolating browser jobs from each other costs: pages/s and peak Chromium PSS of each isolation design against
reused pages, on the benchmark site (``python -m bench.isolation``)."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import psutil
from playwright.async_api import Browser, Page, async_playwright

from bench.baselines import block_media, crawl, launch_chromium, visit
from bench.common import machine
from bench.memory import TreeSampler
from bench.site import page_urls, site_process

SITE_PAGES = 600
# Pages 0..N-1, the same list for every design. 150 keeps the run under 3 minutes on 2 cores, where the isolated
# designs manage ~3 pages/s; ``--urls 300`` gives the same ratios in twice the time.
MEASURED = 150
WARMUP = 8  # the site's last 8 pages: each design's fresh browser loads them first, untimed
CONCURRENCY = 4
# PSS comes from /proc/PID/smaps_rollup, which walks each process's page tables under its mmap lock: sampled every
# 0.25 s it slowed the fresh-renderer designs by ~25%; once a second it costs a few percent and still sees the peak.
SAMPLE_INTERVAL_S = 1.0

Job = Callable[[int, str], Awaitable[str]]


@dataclass(frozen=True)
class Figure:
    design: str
    pages_per_s: float
    peak_pss: int  # bytes, every Chromium process together
    browser_cpu_per_page: float  # CPU seconds of the driver and Chromium per measured page
    other_cpu: float  # share of the machine's CPU that processes outside this run used while it measured


def tree_cpu(root: psutil.Process) -> float:
    """CPU seconds used so far by ``root`` and its descendants, including those already exited and reaped inside
    the tree (Chromium's zygote reaps its renderers, so per-job renderers are counted after they exit)."""
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_now(me: psutil.Process, driver: psutil.Process) -> tuple[float, float, float, float]:
    """CPU seconds so far of this run's whole tree (this process, the site, the driver, Chromium), of the driver
    and Chromium alone, and of the whole machine; and the monotonic time."""
    t = psutil.cpu_times()
    busy = float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)
    return tree_cpu(me), tree_cpu(driver), busy, time.monotonic()


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def reused_pages(browser: Browser) -> Job:
    """(a) One context, one page per worker, reused for every URL: no isolation at all."""
    context = await browser.new_context()
    pages = [await context.new_page() for _ in range(CONCURRENCY)]
    for page in pages:
        await block_media(page)

    async def job(worker: int, url: str) -> str:
        return await visit(pages[worker], url)

    return job


async def pooled_contexts(browser: Browser, cache: Literal["disabled", "cleared"]) -> Job:
    """(b) One long-lived context per worker and a fresh page per job; after the job the origin's storage, the
    context's cookies and (``cleared``) its HTTP cache are wiped, or (``disabled``) the cache is never used."""
    contexts = [await browser.new_context() for _ in range(CONCURRENCY)]

    async def job(worker: int, url: str) -> str:
        context = contexts[worker]
        page: Page = await context.new_page()
        try:
            cdp = await block_media(page)
            if cache == "disabled":
                await cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
            title = await visit(page, url)
            # Independent wipes, sent together: the next job waits for one round trip, not two.
            wipes = [cdp.send("Storage.clearDataForOrigin", {"origin": origin(url), "storageTypes": "all"})]
            if cache == "cleared":
                wipes.append(cdp.send("Network.clearBrowserCache"))  # this context's cache only
            await asyncio.gather(*wipes)
        finally:
            await page.close()
        await context.clear_cookies()
        return title

    return job


async def context_per_job(browser: Browser) -> Job:
    """(c) A new context for every job, closed after it: nothing survives a job."""

    async def job(worker: int, url: str) -> str:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await block_media(page)
            return await visit(page, url)
        finally:
            await context.close()

    return job


DESIGNS: dict[str, Callable[[Browser], Awaitable[Job]]] = {
    "(a) reused pages, no isolation": reused_pages,
    "(b1) pooled contexts, fresh page, cache disabled": lambda b: pooled_contexts(b, "disabled"),
    "(b2) pooled contexts, fresh page, cache cleared": lambda b: pooled_contexts(b, "cleared"),
    "(c) new context per job": context_per_job,
}


async def measure(base: str, measured: int = MEASURED) -> list[Figure]:
    """Every design on a browser of its own. Memory is the PSS of the Playwright driver's descendants: Chromium's
    browser, renderer, GPU and utility processes, but not the driver (node) itself nor this Python process.
    The machine is shared, so each figure also says how much CPU other processes took while it was measured."""
    urls = page_urls(base, measured)
    warmup = page_urls(base, WARMUP, first=SITE_PAGES - WARMUP)
    figures: list[Figure] = []
    me = psutil.Process()
    before = {p.pid for p in me.children()}  # the site's process is a child too: leave it out
    async with async_playwright() as pw:
        (driver,) = [p for p in me.children() if p.pid not in before]
        for name, design in DESIGNS.items():
            browser = await launch_chromium(pw)
            try:
                with TreeSampler(driver.pid, SAMPLE_INTERVAL_S, include_root=False) as memory:
                    job = await design(browser)
                    await crawl(CONCURRENCY, warmup, job)
                    memory.mark("measured")
                    # Read before the browser closes: at exit Chromium's children are not reaped inside the tree.
                    start = cpu_now(me, driver)
                    rate = await crawl(CONCURRENCY, urls, job)
                    end = cpu_now(me, driver)
            finally:
                await browser.close()
            ours, browser_cpu, busy, wall = (e - s for e, s in zip(end, start, strict=True))
            other = max(0.0, busy - ours) / (wall * (psutil.cpu_count() or 1))
            figures.append(Figure(name, rate, memory.peak_pss, browser_cpu / len(urls), other))
            print(f"  {name}: {rate:.1f} pages/s, other load {other:.0%}", flush=True)
    return figures


def table(figures: list[Figure]) -> str:
    baseline = figures[0].pages_per_s
    rows = [
        "| design | pages/s | of (a) | peak PSS MB | browser CPU ms/page | other load |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows += [
        f"| {f.design} | {f.pages_per_s:.1f} | {f.pages_per_s / baseline:.0%} | {f.peak_pss / 2**20:.0f} "
        f"| {f.browser_cpu_per_page * 1000:.0f} | {f.other_cpu:.0%} |"
        for f in figures
    ]
    return "\n".join(rows)


async def main(measured: int = MEASURED) -> None:
    assert 0 < measured <= SITE_PAGES - WARMUP, f"at most {SITE_PAGES - WARMUP} URLs"
    print(
        f"isolation benchmark: {measured} pages of a {SITE_PAGES}-page site, {CONCURRENCY} workers, "
        f"media blocked through CDP, {machine()}"
    )
    start = time.monotonic()
    with site_process(SITE_PAGES) as base:
        figures = await measure(base, measured)
    print(table(figures))
    print(
        f"({time.monotonic() - start:.0f} s. Browser CPU: the driver and Chromium, per page. Other load: the share "
        "of the machine's CPU used by processes outside this run while a design was measured; above a few percent "
        "the pages/s of that design are depressed.)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--urls", type=int, default=MEASURED, help=f"URLs per design (default {MEASURED})")
    asyncio.run(main(parser.parse_args().urls))
