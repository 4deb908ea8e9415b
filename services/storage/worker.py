"""The storage worker: takes ``store_result`` jobs and writes pages and job outcomes to PostgreSQL."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
from arq import Retry
from arq.worker import Worker, func
from prometheus_client import Counter
from pydantic import ValidationError

from shared.codecs import content_hash, unpack_body
from shared.db import create_db_pool
from shared.observability import pg_check
from shared.queues import STORE_QUEUE, STORE_RESULT, ScrapeResult
from shared.settings import Settings
from shared.workers import build_worker, close_stack, open_ops_server

log = logging.getLogger(__name__)

STORED = Counter("trawl_store_results_total", "Results written to the ledger, by outcome", ["outcome"])
REJECTED = Counter("trawl_store_rejected_total", "store_result payloads that failed validation")

# Closing the job and writing its page happen in one transaction; the WHERE clause makes a replayed store job a
# no-op, so arq re-running it after a crash never writes a second row.
_CLOSE_JOB = """
INSERT INTO jobs (id, url, render, formats, status, attempts, error, started_at, finished_at, fetch_ms)
VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9)
ON CONFLICT (id) DO UPDATE SET status = $5, error = $6, started_at = coalesce(jobs.started_at, $7),
    finished_at = $8, fetch_ms = $9
WHERE jobs.status IN ('queued', 'running')
RETURNING id
"""

_INSERT_PAGE = """
INSERT INTO pages (job_id, url, final_url, status_code, headers, title, text, markdown, links, metadata,
                   html_br, content_hash, render, fetched_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (job_id) DO NOTHING
"""


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    stack = ctx["stack"] = AsyncExitStack()
    pg = await stack.enter_async_context(create_db_pool(settings, "storage"))
    await open_ops_server(stack, ctx, "storage", settings.storage_port, {"postgres": pg_check(pg)})
    ctx["pg"] = pg


async def write_result(pg: asyncpg.Pool, result: ScrapeResult) -> bool:
    """Close the job in the ledger and store its page. Returns False when the job was already closed."""
    html_br = unpack_body(result.html_br_b64) if result.html_br_b64 else None
    async with pg.acquire() as conn, conn.transaction():
        closed = await conn.fetchval(
            _CLOSE_JOB,
            result.job_id,
            result.url,
            result.render.value,
            [f.value for f in result.formats],
            result.outcome,
            result.error,
            result.started_at,
            result.finished_at,
            result.fetch_ms,
        )
        if closed is None:
            return False
        if result.outcome == "succeeded":
            await conn.execute(
                _INSERT_PAGE,
                result.job_id,
                result.url,
                result.final_url,
                result.status_code,
                result.headers,
                result.title,
                result.text,
                result.markdown,
                result.links,
                result.metadata,
                html_br,
                content_hash(html_br) if html_br else None,
                result.render.value,
                result.finished_at,
            )
    return True


async def store_result(ctx: dict[str, Any], payload: Any) -> str:
    try:
        result = ScrapeResult.model_validate(payload)
    except ValidationError as exc:
        REJECTED.inc()
        log.error("dropped an invalid store_result payload: %s", exc)
        return "rejected"
    try:
        written = await write_result(ctx["pg"], result)
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        # The database is away: keep the job and try again later rather than lose the result.
        log.warning("job %s: database unavailable (%s), retrying", result.job_id, exc)
        raise Retry(defer=min(30, 2 ** ctx["job_try"])) from exc
    if not written:
        log.info("job %s was already closed, store replay ignored", result.job_id)
        return "already closed"
    STORED.labels(result.outcome).inc()
    log.info("job %s stored as %s", result.job_id, result.outcome)
    return result.outcome


def create_worker(settings: Settings) -> Worker:
    return build_worker(
        settings,
        # Retried for a long while: a result is only lost if PostgreSQL stays away for all of them.
        functions=[func(store_result, name=STORE_RESULT, timeout=60, max_tries=20)],
        queue_name=STORE_QUEUE,
        max_jobs=settings.storage_max_jobs,
        on_startup=startup,
        on_shutdown=close_stack,
    )
