"""The scraper worker: takes ``scrape_page`` jobs, fetches and reads the page, hands the result to storage."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
from arq import Retry
from arq.connections import ArqRedis
from arq.worker import Worker, func
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from redis.exceptions import RedisError

from services.scraper.fetch import Fetched, fetch_http, render_browser
from shared.browser import BrowserPool
from shared.codecs import content_hash, pack_body
from shared.db import create_db_pool
from shared.errors import TrawlError
from shared.extract import extract, to_markdown
from shared.observability import pg_check
from shared.queues import SCRAPE_PAGE, SCRAPE_QUEUE, Format, Render, ScrapeRequest, ScrapeResult, enqueue_store
from shared.settings import Settings
from shared.workers import build_worker, close_stack, open_ops_server

log = logging.getLogger(__name__)

SCRAPES = Counter("trawl_scrapes_total", "Scrape attempts by render mode and outcome", ["render", "outcome"])
SCRAPE_SECONDS = Histogram("trawl_scrape_seconds", "Time to fetch and read one page", ["render"])
REJECTED = Counter("trawl_scrape_rejected_total", "scrape_page payloads that failed validation")

# A request's own timeout is capped at 120 s (ScrapeRequest); arq's is a little longer so that ours fires first
# and the job ends with a reason. It also sets how soon a job whose worker died is re-run (this + 10 s).
JOB_TIMEOUT_S = 150


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    pg: asyncpg.Pool
    queue: ArqRedis
    http: aiohttp.ClientSession
    browser: BrowserPool


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    stack = ctx["stack"] = AsyncExitStack()
    pg = await stack.enter_async_context(create_db_pool(settings, "scraper"))
    http = await stack.enter_async_context(
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.http_max_connections, limit_per_host=20),
            headers={"User-Agent": settings.user_agent},
        )
    )
    browser = await stack.enter_async_context(BrowserPool(settings))
    await open_ops_server(stack, ctx, "scraper", settings.scraper_port, {"postgres": pg_check(pg)})
    ctx["deps"] = Deps(settings=settings, pg=pg, queue=ctx["redis"], http=http, browser=browser)


_MARK_RUNNING = """
INSERT INTO jobs (id, url, render, formats, status, attempts, started_at)
VALUES ($1, $2, $3, $4, 'running', 1, now())
ON CONFLICT (id) DO UPDATE SET status = 'running', attempts = jobs.attempts + 1, started_at = now()
WHERE jobs.status IN ('queued', 'running')
RETURNING attempts
"""

_MARK_INVALID = """
INSERT INTO jobs (id, url, render, formats, status, error, finished_at)
VALUES ($1, $2, 'http', '{}', 'failed', $3, now())
ON CONFLICT (id) DO UPDATE SET status = 'failed', error = $3, finished_at = now()
WHERE jobs.status IN ('queued', 'running')
"""


async def _reject(deps: Deps, payload: Any, exc: ValidationError) -> None:
    """An invalid payload from an outside producer: record why in the ledger if it names a job id."""
    REJECTED.inc()
    reason = "invalid scrape_page payload: " + "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors()
    )
    job_id = payload.get("id") if isinstance(payload, dict) else None
    try:
        parsed_id = uuid.UUID(str(job_id))
    except ValueError:
        log.error("dropped a scrape_page job with no valid id: %s", reason)
        return
    url = payload.get("url") if isinstance(payload, dict) else None
    await deps.pg.execute(_MARK_INVALID, parsed_id, str(url or "")[:2048], reason)
    log.warning("job %s rejected: %s", parsed_id, reason)


def _read(request: ScrapeRequest, fetched: Fetched) -> dict[str, Any]:
    """The result fields the request's formats ask for (html bodies are always kept, for reads and dedupe)."""
    page = extract(fetched.html, fetched.final_url)
    raw = fetched.html.encode()
    fields: dict[str, Any] = {
        "final_url": fetched.final_url,
        "status_code": fetched.status_code,
        "headers": fetched.headers,
        "title": page.title,
        "html_br_b64": pack_body(raw),
        "content_hash": content_hash(raw).hex(),
    }
    wanted = set(request.formats)
    if Format.TEXT in wanted:
        fields["text"] = page.text
    if Format.LINKS in wanted:
        fields["links"] = page.links
    if Format.METADATA in wanted:
        fields["metadata"] = page.metadata
    if Format.MARKDOWN in wanted:
        fields["markdown"] = to_markdown(fetched.html)
    return fields


async def scrape_page(ctx: dict[str, Any], payload: Any) -> str:
    deps: Deps = ctx["deps"]
    try:
        request = ScrapeRequest.model_validate(payload)
    except ValidationError as exc:
        await _reject(deps, payload, exc)
        return "rejected"

    try:
        attempts = await deps.pg.fetchval(
            _MARK_RUNNING, request.id, str(request.url), request.render.value, [f.value for f in request.formats]
        )
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        log.warning("job %s: database unavailable (%s), retrying", request.id, exc)
        raise Retry(defer=min(30, 2 ** ctx["job_try"])) from exc
    if attempts is None:
        # A replay of a job the ledger already closed (arq re-ran it after a lost acknowledgement).
        log.info("job %s already finished, skipping replay", request.id)
        return "already finished"

    started = datetime.now(UTC)
    t0 = time.perf_counter()
    fields: dict[str, Any]
    try:
        if request.render is Render.BROWSER:
            fetched = await render_browser(deps.browser, request)
        else:
            fetched = await fetch_http(deps.http, request, deps.settings.max_body_bytes)
        fields = _read(request, fetched)
        outcome, error = "succeeded", None
    except TrawlError as exc:
        fields = {}
        outcome, error = "failed", str(exc)
    except Exception as exc:
        # A page that trips a bug of ours must still end its job with a reason, not leave it running forever.
        log.exception("job %s: unexpected error", request.id)
        fields = {}
        outcome, error = "failed", f"internal error: {type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - t0
    SCRAPE_SECONDS.labels(request.render.value).observe(elapsed)
    SCRAPES.labels(request.render.value, outcome).inc()

    result = ScrapeResult(
        job_id=request.id,
        url=str(request.url),
        render=request.render,
        formats=request.formats,
        outcome=outcome,
        error=error,
        started_at=started,
        finished_at=datetime.now(UTC),
        fetch_ms=round(elapsed * 1000),
        **fields,
    )
    try:
        await enqueue_store(deps.queue, [result])
    except RedisError as exc:
        # The page is fetched but storage never heard of it: run the job again rather than lose it.
        log.warning("job %s: store queue unavailable (%s), retrying", request.id, exc)
        raise Retry(defer=ctx["job_try"] * 2) from exc
    log.info(
        "job %s %s in %.0f ms (%s)%s",
        request.id,
        outcome,
        elapsed * 1000,
        request.render.value,
        f": {error}" if error else "",
    )
    return outcome


def create_worker(settings: Settings) -> Worker:
    return build_worker(
        settings,
        functions=[func(scrape_page, name=SCRAPE_PAGE, timeout=JOB_TIMEOUT_S, max_tries=20)],
        queue_name=SCRAPE_QUEUE,
        max_jobs=settings.scraper_max_jobs,
        on_startup=startup,
        on_shutdown=close_stack,
    )
