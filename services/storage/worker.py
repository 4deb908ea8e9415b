"""The storage worker: takes ``store_results`` jobs and writes pages and job outcomes to PostgreSQL in batches."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

from arq import Retry
from arq.cron import cron
from arq.worker import Worker, func
from prometheus_client import Counter
from pydantic import ValidationError
from redis.asyncio import Redis

from services.storage.batcher import BatchWriter
from shared.db import create_db_pool
from shared.observability import pg_check
from shared.pages import PageStore, Rejection, fail_jobs, rejection, rejection_from_payload
from shared.queues import STORE_QUEUE, STORE_RESULTS, ScrapeResult, StoreBatch, describe
from shared.settings import Settings
from shared.workers import build_worker, close_stack, open_ops_server

log = logging.getLogger(__name__)

# Tried for a long while: a result is only lost if PostgreSQL stays away through all of them.
MAX_TRIES = 30

MALFORMED = Counter("trawl_store_malformed_total", "Store payloads or results that failed validation")


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    stack = ctx["stack"] = AsyncExitStack()
    pg = await stack.enter_async_context(create_db_pool(settings, "storage"))
    store = PageStore(pg, settings.max_stored_body_bytes)
    redis: Redis = ctx["redis"]
    ctx["store"] = store
    ctx["writer"] = await stack.enter_async_context(
        BatchWriter(store, redis, max_rows=settings.storage_batch_rows, max_wait_s=settings.storage_batch_ms / 1000)
    )
    await open_ops_server(stack, ctx, "storage", settings.storage_port, {"postgres": pg_check(pg)})


def _malformed(item: Any, exc: ValidationError) -> Rejection | None:
    """A result that failed validation: what to record on its job, if it names one."""
    MALFORMED.inc()
    reason = "malformed result: " + describe(exc)
    found = rejection_from_payload(item, "job_id", reason, default_render="http")
    if found is None:
        log.error("dropped a result that names no job: %s", reason)
    return found


async def store_results(ctx: dict[str, Any], payload: Any) -> str:
    try:
        batch = StoreBatch.model_validate(payload)
    except ValidationError as exc:
        MALFORMED.inc()
        log.error("dropped a store_results payload with no results: %s", exc)
        return "rejected"
    results: list[ScrapeResult] = []
    malformed: list[Rejection] = []
    for item in batch.results:
        try:
            results.append(ScrapeResult.model_validate(item))
        except ValidationError as exc:
            if (bad := _malformed(item, exc)) is not None:
                malformed.append(bad)
    store: PageStore = ctx["store"]
    try:
        if malformed:
            await fail_jobs(store.pool, malformed)
        if results:
            await ctx["writer"].submit(results)
    except Exception as exc:
        if ctx["job_try"] < MAX_TRIES:
            # Most often the database stayed away through the writer's own retries: keep the job in Redis.
            log.warning("store job %s (try %d): %s; retrying", ctx["job_id"], ctx["job_try"], exc)
            raise Retry(defer=min(60, 2 ** ctx["job_try"])) from exc
        # Out of tries: the jobs still end, failed with the reason, rather than stay running for ever.
        log.exception("store job %s gave up", ctx["job_id"])
        await fail_jobs(store.pool, [rejection(r, f"storage failed: {type(exc).__name__}: {exc}") for r in results])
        return "gave up"
    return f"{len(results)} stored, {len(malformed)} malformed"


async def clean_up(ctx: dict[str, Any]) -> str:
    settings: Settings = ctx["settings"]
    removed = await ctx["store"].clean_up(settings.job_retention_days)
    log.info("retention: removed %(jobs)d old jobs and %(bodies)d unreferenced bodies", removed)
    return f"{removed['jobs']} jobs, {removed['bodies']} bodies"


def create_worker(settings: Settings) -> Worker:
    return build_worker(
        settings,
        # keep_result=0: arq's result record repeats the job's arguments, here whole pages, and would hold every
        # stored page in Redis for an hour; the ledger has the outcome, and replays are recognised there.
        functions=[func(store_results, name=STORE_RESULTS, timeout=120, max_tries=MAX_TRIES, keep_result=0)],
        queue_name=STORE_QUEUE,
        max_jobs=settings.storage_max_jobs,
        on_startup=startup,
        on_shutdown=close_stack,
        # Hourly retention clean-up; with unique=True one worker runs it, however many are started.
        cron_jobs=[cron(clean_up, name="clean_up", minute=17, unique=True, timeout=600)],
    )
