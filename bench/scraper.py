"""Scraper benchmark: pages/s for ``http`` and ``browser``, through the scraper alone and end to end (a batch
submitted to the gateway, scraped, stored in PostgreSQL), beside bare aiohttp and bare Playwright baselines at the
same concurrency, in one run; and the scraper's memory (process tree, Chromium included) over a long browser run.

Sizes can be lowered for a quick look: ``TRAWL_BENCH_HTTP_PAGES``, ``TRAWL_BENCH_BROWSER_PAGES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import aiohttp
from playwright.async_api import async_playwright

from bench.baselines import bare_aiohttp, bare_playwright, benchmark_chromium
from bench.common import backends, machine
from bench.cpu import CpuLedger
from bench.memory import TreeSampler
from bench.site import page_urls, site_process
from services.scraper.worker import Deps, open_deps, scrape_one
from shared.cluster import service_ports, started_services
from shared.queues import ScrapeRequest, create_queue_pool
from shared.settings import Settings

HTTP_PAGES = int(os.environ.get("TRAWL_BENCH_HTTP_PAGES", "10000"))
BROWSER_PAGES = int(os.environ.get("TRAWL_BENCH_BROWSER_PAGES", "2000"))
HTTP_CONCURRENCY = 8
BROWSER_CONCURRENCY = 4
# http end to end is run this many times, each beside the bare loop (the figure is the median run).
E2E_HTTP_RUNS = 3
# One-page jobs submitted one at a time, for the time a user waits for a page scraped on demand.
LATENCY_JOBS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def scraper_deps(settings: Settings) -> AsyncIterator[Deps]:
    async with AsyncExitStack() as stack:
        queue = await create_queue_pool(settings)
        stack.push_async_callback(queue.aclose)
        yield await open_deps(stack, settings, queue, "bench-scraper")


async def scraper_alone(deps: Deps, urls: list[str], render: str) -> float:
    """The scraper's own per-page work (robots, politeness slot, fetch, extraction, compression), no queue. All
    pages are started at once, as a batch job starts its pages: the scraper's own limits (http or browser
    concurrency, the per-domain limit) decide how many run at a time."""
    requests = [ScrapeRequest.model_validate({"url": u, "render": render, "formats": ["text"]}) for u in urls]

    async def one(request: ScrapeRequest) -> None:
        result = await scrape_one(deps, request)
        assert result.outcome == "succeeded", result.error
        if render == "browser":
            # Every page says "Page N ready", on a quarter of them written by JavaScript on load: a rendered page
            # without it was read too early.
            assert f"Page {str(request.url).rsplit('/', 1)[-1]} ready" in (result.text or ""), request.url

    await one(requests[0])  # warm-up: robots.txt, the browser's launch
    t0 = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests[1:]))
    return (len(requests) - 1) / (time.perf_counter() - t0)


@dataclass
class Cluster:
    gateway: str
    scraper_pid: int


@contextlib.asynccontextmanager
async def cluster(settings: Settings, env_extra: dict[str, str]) -> AsyncIterator[Cluster]:
    """Gateway, scraper and storage as separate processes, started as ``trawl up`` starts them."""
    settings = settings.model_copy(
        update={f"{n}_port": _free_port() for n in ("gateway", "scraper", "storage", "archival", "metrics")}
    )
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "TRAWL_LOG_LEVEL": "WARNING",
        **{f"TRAWL_{n.upper()}_PORT": str(p) for n, p in service_ports(settings).items()},
        **env_extra,
    }
    async with started_services(("storage", "scraper", "gateway"), env, settings, startup_timeout=60) as procs:
        yield Cluster(f"http://{settings.host}:{settings.gateway_port}", procs["scraper"].pid)


async def end_to_end(
    gateway: str,
    urls: list[str],
    render: str,
    sampler: TreeSampler | None = None,
    formats: tuple[str, ...] = ("text",),
) -> tuple[float, list[tuple[float, int]]]:
    """Submit ``urls`` as one batch and wait until every page is stored. Returns pages/s and the progress seen
    over time (monotonic time, pages done)."""
    progress: list[tuple[float, int]] = []
    cpu = CpuLedger()
    async with aiohttp.ClientSession(base_url=gateway) as session:
        cpu.start()
        t0 = time.perf_counter()
        async with session.post("/v1/batches", json={"urls": urls, "render": render, "formats": formats}) as resp:
            batch = await resp.json()
            assert resp.status == 202, batch
        while True:
            async with session.get(f"/v1/batches/{batch['id']}") as resp:
                state = await resp.json()
            done = state["counts"]["succeeded"] + state["counts"]["failed"]
            progress.append((time.monotonic(), done))
            if sampler is not None:
                sampler.mark(str(done))
            if state["status"] == "done":
                elapsed = time.perf_counter() - t0
                cpu.stop()
                print(f"  {render} end to end, {'+'.join(formats)}, {len(urls)} pages: {cpu.per_page_ms(len(urls))}")
                assert state["counts"]["failed"] == 0, state
                return len(urls) / elapsed, progress
            await asyncio.sleep(0.1)


async def one_page_latency(gateway: str, urls: list[str]) -> list[float]:
    """Milliseconds from POSTing a one-page job to its page being stored, a job at a time (what a user scraping a
    page on demand waits), polled every 5 ms."""
    waits = []
    async with aiohttp.ClientSession(base_url=gateway) as session:
        for i, url in enumerate(urls):
            t0 = time.perf_counter()
            async with session.post("/v1/jobs", json={"url": url, "render": "http", "formats": ["text"]}) as resp:
                job = await resp.json()
                assert resp.status == 202, job
            while True:
                async with session.get(f"/v1/jobs/{job['id']}") as resp:
                    status = (await resp.json())["status"]
                if status in ("succeeded", "failed"):
                    break
                await asyncio.sleep(0.005)
            assert status == "succeeded", job
            waits.append((time.perf_counter() - t0) * 1000)
            # Spaced unevenly, so submissions do not fall in step with the workers' looks at the queue.
            await asyncio.sleep(0.05 + (i % 7) * 0.013)
    return sorted(waits)


def _window_rss(sampler: TreeSampler, progress: list[tuple[float, int]], lo: int, hi: int) -> float:
    """Mean RSS of the samples taken while pages ``lo``..``hi`` were being done."""
    start = next(t for t, done in progress if done >= lo)
    end = next(t for t, done in progress if done >= hi)
    window = [rss for t, rss, _ in sampler.samples if start <= t <= end]
    return sum(window) / len(window) if window else float("nan")


class BareLoop:
    """The bare aiohttp loop, measured again right after each trawl http figure: the machine's speed drifts by 4-20%
    within minutes (other tenants), so each http figure is compared with the bare loop measured just before and just
    after it rather than with one measurement at the start."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.runs: list[float] = []

    async def measure(self) -> float:
        self.runs.append(await bare_aiohttp(self.urls, HTTP_CONCURRENCY))
        return self.runs[-1]

    async def beside(self, trawl_run: Awaitable[float]) -> tuple[float, float]:
        """A trawl figure and the mean of the bare loop right before and right after it."""
        before = self.runs[-1] if self.runs else await self.measure()
        rate = await trawl_run
        return rate, (before + await self.measure()) / 2


async def _rate(run: Awaitable[tuple[float, list[tuple[float, int]]]]) -> float:
    rate, _ = await run
    return rate


async def main() -> None:
    mb = 2**20
    print(f"scraper benchmark: {HTTP_PAGES} http pages, {BROWSER_PAGES} browser pages; {machine()}")
    async with async_playwright() as driver:  # the same lookup the baseline and the pool make
        chromium = benchmark_chromium(driver) or driver.chromium.executable_path
    print(f"Chromium for trawl and bare Playwright: {chromium}")
    http_runs = 1 + E2E_HTTP_RUNS + 1  # scraper alone, end to end (text), end to end (html+text)
    http_end = http_runs * HTTP_PAGES
    latency_first = http_end + 800 + BROWSER_PAGES
    with site_process(latency_first + LATENCY_JOBS) as base, backends() as settings:
        settings = settings.model_copy(
            update={
                "domain_concurrency": max(HTTP_CONCURRENCY, BROWSER_CONCURRENCY),
                "http_concurrency": HTTP_CONCURRENCY,
                "browser_concurrency": BROWSER_CONCURRENCY,
            }
        )
        http_urls = iter(page_urls(base, HTTP_PAGES, first=n * HTTP_PAGES) for n in range(http_runs))
        browser_urls = page_urls(base, 400, first=http_end)
        bare = BareLoop(page_urls(base, HTTP_PAGES))
        # name: (pages/s, the baseline's pages/s it is compared with)
        figures: dict[str, tuple[float, float]] = {}

        await bare.measure()
        playwright = await bare_playwright(browser_urls, BROWSER_CONCURRENCY)

        async with scraper_deps(settings) as deps:
            figures["trawl http, scraper alone (c=8)"] = await bare.beside(scraper_alone(deps, next(http_urls), "http"))
            alone = await scraper_alone(deps, browser_urls, "browser")
            figures["trawl browser, scraper alone (c=4)"] = (alone, playwright)

        env = {
            "TRAWL_DOMAIN_CONCURRENCY": str(settings.domain_concurrency),
            "TRAWL_HTTP_CONCURRENCY": str(HTTP_CONCURRENCY),
            "TRAWL_BROWSER_CONCURRENCY": str(BROWSER_CONCURRENCY),
        }
        async with cluster(settings, env) as running:
            latency = await one_page_latency(running.gateway, page_urls(base, LATENCY_JOBS, first=latency_first))
            # Several runs, each beside the bare loop; the table shows the median run by ratio, and all are printed.
            runs = [
                await bare.beside(_rate(end_to_end(running.gateway, next(http_urls), "http")))
                for _ in range(E2E_HTTP_RUNS)
            ]
            for rate, baseline in runs:
                print(
                    f"  http end to end: {rate:.0f} pages/s, bare loop beside it {baseline:.0f} ({rate / baseline:.1%})"
                )
            figures["trawl http, end to end (c=8)"] = sorted(runs, key=lambda r: r[0] / r[1])[len(runs) // 2]
            # The same with the HTML asked for too, so its body is compressed, sent and kept as well.
            figures["trawl http, end to end, html+text (c=8)"] = await bare.beside(
                _rate(end_to_end(running.gateway, next(http_urls), "http", formats=("html", "text")))
            )
            browser_e2e = page_urls(base, len(browser_urls), first=http_end + len(browser_urls))
            figures["trawl browser, end to end (c=4)"] = (
                await _rate(end_to_end(running.gateway, browser_e2e, "browser")),
                playwright,
            )
            # Memory in a run of its own: reading PSS walks every process's page tables and slows what it measures.
            long_run = page_urls(base, BROWSER_PAGES, first=http_end + 800)
            with TreeSampler(running.scraper_pid, interval_s=1.0) as sampler:
                _, progress = await end_to_end(running.gateway, long_run, "browser", sampler)

    print("  bare aiohttp loop, in order: " + ", ".join(f"{r:.0f}" for r in bare.runs) + " pages/s")
    mean_bare = sum(bare.runs) / len(bare.runs)
    table = {
        f"bare aiohttp loop (c=8), mean of {len(bare.runs)}": (mean_bare, mean_bare),
        "bare Playwright, 4 reused pages (c=4)": (playwright, playwright),
        **figures,
    }
    print(f"{'path':<44}{'pages/s':>10}{'of baseline':>14}")
    for name, (value, baseline) in table.items():
        print(f"{name:<44}{value:>10.1f}{value / baseline:>13.0%}")
    print(
        f"one-page http job, POST to stored, {len(latency)} jobs one at a time: median {latency[len(latency) // 2]:.0f}"
        f" ms, 90th percentile {latency[int(len(latency) * 0.9)]:.0f} ms"
    )
    first = _window_rss(sampler, progress, 0, min(500, BROWSER_PAGES // 4))
    last = _window_rss(sampler, progress, BROWSER_PAGES - min(500, BROWSER_PAGES // 4), BROWSER_PAGES)
    print(f"scraper process tree over the {BROWSER_PAGES}-page browser run (Chromium included):")
    print(f"  peak RSS {sampler.peak_rss / mb:.0f} MB, peak PSS {sampler.peak_pss / mb:.0f} MB")
    print(f"  mean RSS over the first 500 pages {first / mb:.0f} MB, over the last 500 {last / mb:.0f} MB "
          f"({(last - first) / first:+.1%})")  # fmt: skip
