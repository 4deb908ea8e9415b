"""The scraper worker: takes ``scrape_page`` and ``scrape_pages`` jobs, fetches and reads each page politely, and
hands the results to storage in groups."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from arq import Retry
from arq.connections import ArqRedis
from arq.worker import Worker, func
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from redis.exceptions import RedisError

from services.scraper.fetch import Fetched, browser_reason, fetch_http, render_browser
from shared.browser import BrowserPool
from shared.codecs import compress, content_hash
from shared.db import create_db_pool
from shared.errors import RobotsDisallowed, ScrapeError
from shared.extract import Extracted, extract, to_markdown
from shared.observability import pg_check
from shared.pages import CONNECTION_ERRORS, fail_jobs, rejection_from_payload
from shared.politeness import DomainGate, RobotsRules
from shared.queues import (
    SCRAPE_PAGE,
    SCRAPE_PAGES,
    SCRAPE_QUEUE,
    Format,
    Render,
    ScrapeBatch,
    ScrapeRequest,
    ScrapeResult,
    describe,
    enqueue_store,
    keeps_body,
)
from shared.settings import Settings
from shared.workers import build_worker, close_stack, open_ops_server

log = logging.getLogger(__name__)

SCRAPES = Counter("trawl_scrapes_total", "Pages scraped, by the render mode used and outcome", ["render", "outcome"])
SCRAPE_SECONDS = Histogram("trawl_scrape_seconds", "Time to fetch and read one page, retries included", ["render"])
RETRIES = Counter("trawl_scrape_retries_total", "Fetch attempts repeated after a transient failure")
REJECTED = Counter("trawl_scrape_rejected_total", "Scrape requests that failed validation")

# A request's own budget is capped at 120 s (ScrapeOptions); arq's is longer so that ours fires first and the job
# ends with a reason. A batch job runs its pages concurrently, but a large batch on a slow site can queue behind the
# per-domain limit, hence the margin. (A job whose worker died is run again after the job lease, not this.)
JOB_TIMEOUT_S = 600
# Results go to storage in groups of this many, or after this long: one queue job per group, not per page.
STORE_GROUP = 25
STORE_GROUP_WAIT_S = 0.5
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    pg: asyncpg.Pool
    queue: ArqRedis
    http: aiohttp.ClientSession
    http_slots: asyncio.Semaphore
    browser: BrowserPool
    gate: DomainGate
    robots: RobotsRules


async def open_deps(
    stack: AsyncExitStack, settings: Settings, queue: ArqRedis, application_name: str = "scraper"
) -> Deps:
    """Everything a scraper needs, opened on ``stack`` (closed with it, in reverse). The worker, the tests and the
    benchmark all build it here, so they scrape with the same wiring."""
    pg = await stack.enter_async_context(create_db_pool(settings, application_name))
    # Shared by every fetch of the process for its connection pool; it keeps no cookies, so that nothing one job's
    # site sets reaches another job (each fetch has a jar of its own, fetch.job_session).
    http = await stack.enter_async_context(
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.http_max_connections, ttl_dns_cache=300),
            headers={"User-Agent": settings.user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),
        )
    )
    browser = await stack.enter_async_context(BrowserPool(settings))
    return Deps(
        settings=settings,
        pg=pg,
        queue=queue,
        http=http,
        http_slots=asyncio.Semaphore(settings.http_concurrency),
        browser=browser,
        gate=DomainGate(queue, max_per_domain=settings.domain_concurrency, min_delay_s=settings.domain_delay_s),
        robots=RobotsRules(queue, http, settings.user_agent, ttl_s=settings.robots_ttl_s),
    )


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    stack = ctx["stack"] = AsyncExitStack()
    deps = await open_deps(stack, settings, ctx["redis"])
    await open_ops_server(stack, ctx, "scraper", settings.scraper_port, {"postgres": pg_check(deps.pg)})
    ctx["deps"] = deps
    ctx["sender"] = ResultSender(deps.queue)


# Upserted, so that jobs an outside producer put straight on the queue get a ledger row too; the WHERE clause
# skips jobs the ledger has already closed (arq re-runs a job after a crash or a lost acknowledgement).
_MARK_RUNNING = """
INSERT INTO jobs AS j (id, url, render, formats, status, attempts, started_at, batch_id)
SELECT v.id, v.url, v.render, string_to_array(v.formats, ','), 'running', 1, now(), v.batch_id
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[]) AS v(id, url, render, formats, batch_id)
ON CONFLICT (id) DO UPDATE SET status = 'running', attempts = j.attempts + 1, started_at = now()
WHERE j.status IN ('queued', 'running')
RETURNING j.id
"""


async def _reject(deps: Deps, payload: Any, exc: ValidationError) -> None:
    """An invalid request from an outside producer: record why in the ledger if it names a job id."""
    REJECTED.inc()
    reason = "invalid scrape request: " + describe(exc)
    found = rejection_from_payload(payload, "id", reason, default_render="auto")
    if found is None:
        log.error("dropped a scrape request with no valid id: %s", reason)
        return
    await fail_jobs(deps.pg, [found])
    log.warning("job %s rejected: %s", found.job_id, reason)


def _read(request: ScrapeRequest, fetched: Fetched, page: Extracted) -> dict[str, Any]:
    """The result fields the request's formats ask for. Every page carries its body's hash; the body itself only
    when html or raw_html is asked for (compressing, moving and storing it was measured at a quarter of the
    cluster's CPU per page)."""
    raw = fetched.html_utf8
    fields: dict[str, Any] = {
        "final_url": fetched.final_url,
        "status_code": fetched.status_code,
        "headers": fetched.headers,
        "title": page.title,
        "content_hash": content_hash(raw).hex(),
    }
    wanted = set(request.formats)
    if keeps_body(wanted):
        fields["html_packed"] = compress(raw)
    if Format.TEXT in wanted:
        fields["text_packed"] = compress(page.text.encode())
    if Format.LINKS in wanted:
        fields["links"] = page.links
    if Format.METADATA in wanted:
        fields["metadata"] = page.metadata
    if Format.MARKDOWN in wanted:
        fields["markdown_packed"] = compress(to_markdown(fetched.html).encode())
    if fetched.screenshot is not None:
        fields["screenshot"] = fetched.screenshot
        fields["screenshot_type"] = fetched.screenshot_type
    if fetched.pdf is not None:
        fields["pdf"] = fetched.pdf
    return fields


async def _attempt(deps: Deps, request: ScrapeRequest, budget_s: float) -> tuple[Fetched, Extracted, Render, str]:
    """One try at a page: robots, the domain's politeness slot, then HTTP and/or the browser."""
    url = str(request.url)
    if request.respect_robots:
        allowed, why = await deps.robots.verdict(url)
        if not allowed:
            raise RobotsDisallowed(why)
    settings = deps.settings
    async with deps.gate.slot(urlsplit(url).hostname or ""):
        if request.needs_browser:
            fetched = await render_browser(deps.browser, request, settings.max_body_bytes, budget_s)
            why = "asked for" if request.render is Render.BROWSER else "the options need a browser"
            return fetched, _extract(request, fetched), Render.BROWSER, why
        t0 = time.monotonic()
        async with deps.http_slots:
            fetched = await fetch_http(deps.http, request, settings.max_body_bytes, budget_s)
        page = _extract(request, fetched)
        if request.render is Render.AUTO and (needs := browser_reason(fetched.html, page)):
            remaining = budget_s - (time.monotonic() - t0)
            fetched = await render_browser(deps.browser, request, settings.max_body_bytes, remaining)
            return fetched, _extract(request, fetched), Render.BROWSER, needs
        return fetched, page, Render.HTTP, "asked for" if request.render is Render.HTTP else "the HTML has the content"


def _extract(request: ScrapeRequest, fetched: Fetched) -> Extracted:
    wanted = set(request.formats)
    return extract(
        fetched.html_utf8,
        fetched.final_url,
        # auto decides on the amount of text, so it always reads it
        text=Format.TEXT in wanted or request.render is Render.AUTO,
        links=Format.LINKS in wanted,
        metadata=Format.METADATA in wanted,
    )


def _backoff(retry: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; a site's Retry-After is a floor, not a suggestion."""
    delay = random.uniform(0, min(MAX_BACKOFF_S, 0.5 * 2**retry))
    return max(delay, retry_after or 0.0)


async def scrape_one(deps: Deps, request: ScrapeRequest) -> ScrapeResult:
    """Scrape one page within its budget, retrying transient failures; always returns a result, never raises."""
    started = datetime.now(UTC)
    t0 = time.monotonic()
    deadline = t0 + request.timeout_s
    retries = 0
    fields: dict[str, Any] = {}
    error: str | None = None
    used: Render | None = None
    reason: str | None = None
    while True:
        try:
            fetched, page, used, reason = await _attempt(deps, request, deadline - time.monotonic())
            fields = _read(request, fetched, page)
            break
        except ScrapeError as exc:
            delay = _backoff(retries, exc.retry_after)
            if exc.retryable and retries < request.max_retries and time.monotonic() + delay < deadline - 0.1:
                RETRIES.inc()
                retries += 1
                log.info("job %s: %s; retry %d in %.2f s", request.id, exc, retries, delay)
                await asyncio.sleep(delay)
                continue
            error = str(exc) + (f" (after {retries + 1} attempts)" if retries else "")
            break
        except Exception as exc:
            # A page that trips a bug of ours must still end its job with a reason, not leave it running.
            log.exception("job %s: unexpected error", request.id)
            error = f"internal error: {type(exc).__name__}: {exc}"
            break
    elapsed = time.monotonic() - t0
    outcome: Literal["succeeded", "failed"] = "failed" if error else "succeeded"
    label = (used or request.render).value
    SCRAPE_SECONDS.labels(label).observe(elapsed)
    SCRAPES.labels(label, outcome).inc()
    if error:
        log.info("job %s failed in %.0f ms: %s", request.id, elapsed * 1000, error)
    return ScrapeResult(
        job_id=request.id,
        url=str(request.url),
        render=request.render,
        formats=request.formats,
        batch_id=request.batch_id,
        outcome=outcome,
        error=error,
        started_at=started,
        finished_at=datetime.now(UTC),
        fetch_ms=round(elapsed * 1000),
        retries=retries,
        render_used=used if not error else None,
        render_reason=reason if not error else None,
        **fields,
    )


class ResultSender:
    """Hands results to storage in groups: one store job per ``STORE_GROUP`` results, or per ``STORE_GROUP_WAIT_S``.

    One per process, shared by every job it runs, so a group fills from all of them: a batch job's pages take
    turns with the other jobs' pages for the domain's slots, and a sender of its own filled its first group only
    after ~8 times as many pages had been read (about a tenth of a second at full speed). Each result's ``add``
    returns the hand-over of the group it went into; a job ends only once all of its own have been handed over,
    and runs again if one failed, whichever job's page started that hand-over."""

    def __init__(self, queue: ArqRedis) -> None:
        self.queue = queue
        self._buffer: list[ScrapeResult] = []
        self._handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._since = 0.0
        self._handing: set[asyncio.Task[None]] = set()

    async def add(self, result: ScrapeResult) -> asyncio.Future[None]:
        if not self._buffer:
            self._since = time.monotonic()
        self._buffer.append(result)
        handed = self._handed
        if len(self._buffer) >= STORE_GROUP or time.monotonic() - self._since >= STORE_GROUP_WAIT_S:
            await self.flush()
        return handed

    async def flush(self) -> None:
        """Hand over what is waiting. A failure is not raised here but reaches every job with a result in the
        group, through the future ``add`` returned."""
        if not self._buffer:
            return
        results, handed = self._buffer, self._handed
        self._buffer, self._handed = [], asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._hand_over(results, handed))
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)
        # Shielded: the group holds other jobs' pages too, and one job being cancelled must not drop them.
        await asyncio.shield(task)

    async def _hand_over(self, results: list[ScrapeResult], handed: asyncio.Future[None]) -> None:
        try:
            await enqueue_store(self.queue, results)
        except Exception as exc:
            handed.set_exception(exc)
            handed.exception()  # marked as seen: every job of the group may have stopped waiting for it
        else:
            handed.set_result(None)


async def _scrape(ctx: dict[str, Any], payloads: Sequence[Any]) -> str:
    deps: Deps = ctx["deps"]
    requests: list[ScrapeRequest] = []
    for payload in payloads:
        try:
            requests.append(ScrapeRequest.model_validate(payload))
        except ValidationError as exc:
            await _reject(deps, payload, exc)
    if not requests:
        return "rejected"
    try:
        runnable = {
            row[0]
            for row in await deps.pg.fetch(
                _MARK_RUNNING,
                [r.id for r in requests],
                [str(r.url) for r in requests],
                [r.render.value for r in requests],
                [",".join(f.value for f in r.formats) for r in requests],
                [r.batch_id for r in requests],
            )
        }
    except CONNECTION_ERRORS as exc:
        log.warning("job %s: database unavailable (%s), retrying", ctx["job_id"], exc)
        raise Retry(defer=min(30, 2 ** ctx["job_try"])) from exc

    sender: ResultSender = ctx["sender"]
    handovers: list[asyncio.Future[None]] = []

    async def one(request: ScrapeRequest) -> None:
        handovers.append(await sender.add(await scrape_one(deps, request)))

    async with asyncio.TaskGroup() as pages:
        for request in requests:
            if request.id in runnable:
                pages.create_task(one(request))
    await sender.flush()
    try:
        await asyncio.gather(*set(handovers))
    except RedisError as exc:
        # Pages were fetched but storage never heard of them: run the job again rather than lose them.
        log.warning("job %s: store queue unavailable (%s), retrying", ctx["job_id"], exc)
        raise Retry(defer=min(30, 2 ** ctx["job_try"])) from exc
    skipped = len(requests) - len(runnable)
    return f"{len(runnable)} scraped" + (f", {skipped} already finished" if skipped else "")


async def scrape_page(ctx: dict[str, Any], payload: Any) -> str:
    return await _scrape(ctx, [payload])


async def scrape_pages(ctx: dict[str, Any], payload: Any) -> str:
    try:
        batch = ScrapeBatch.model_validate(payload)
    except ValidationError as exc:
        REJECTED.inc()
        log.error("dropped a scrape_pages payload with no requests: %s", exc)
        return "rejected"
    return await _scrape(ctx, batch.requests)


def create_worker(settings: Settings) -> Worker:
    return build_worker(
        settings,
        functions=[
            func(scrape_page, name=SCRAPE_PAGE, timeout=JOB_TIMEOUT_S, max_tries=20),
            func(scrape_pages, name=SCRAPE_PAGES, timeout=JOB_TIMEOUT_S, max_tries=20),
        ],
        queue_name=SCRAPE_QUEUE,
        max_jobs=settings.scraper_max_jobs,
        on_startup=startup,
        on_shutdown=close_stack,
    )
