"""How trawl runs an arq worker: JSON payloads, its queue, a drain period on SIGTERM, job leases, and an ops
server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from typing import Any

from aiohttp import web
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.cron import CronJob
from arq.typing import StartupShutdown
from arq.worker import Function, Worker
from redis.exceptions import RedisError

from shared.observability import HealthCheck, add_ops_routes, redis_check, serve_app
from shared.queues import dumps, loads, redis_settings
from shared.settings import Settings

log = logging.getLogger(__name__)

# Running jobs get this long to finish after SIGTERM/SIGINT before they are cancelled (and re-queued by arq).
# Kept under the 30 s stop grace period that compose.yaml gives each service.
DRAIN_GRACE_S = 20


class JobLeases:
    """Keeps each running job's claim short-lived, so that the job of a worker that died is run again soon.

    arq claims a job with an in-progress key that lives for the longest job timeout + 10 s (610 s for scrapers):
    a worker that is killed (OOM, a lost host, SIGKILL) leaves its jobs untouched for that long. Here the claim
    is cut to ``lease_s`` when the job starts and renewed every third of it while the job runs; once its worker
    is gone the key expires and any worker on the queue takes the job. A worker whose event loop stalls longer
    than a lease may see its job run twice, which the ledger absorbs (a job is closed once; a page already stored
    is skipped).
    """

    def __init__(self, lease_s: float) -> None:
        self.lease_ms = round(lease_s * 1000)
        self.renew_s = lease_s / 3

    async def on_job_start(self, ctx: dict[str, Any]) -> None:
        ctx["lease"] = asyncio.create_task(self._hold(ctx["redis"], ctx["job_id"]), name=f"lease-{ctx['job_id']}")

    async def on_job_end(self, ctx: dict[str, Any]) -> None:
        # Before arq deletes the key: renewing it afterwards would be a no-op (PEXPIRE sets no missing key).
        lease: asyncio.Task[None] | None = ctx.pop("lease", None)
        if lease is not None:
            lease.cancel()
            with suppress(asyncio.CancelledError):
                await lease

    async def _hold(self, redis: ArqRedis, job_id: str) -> None:
        key = in_progress_key_prefix + job_id
        while True:
            try:
                if not await redis.pexpire(key, self.lease_ms):
                    return  # the claim is gone: the job ended (arq deleted it) or the lease lapsed
            except RedisError as exc:
                # The job goes on; if Redis stays away past the lease, another worker may run it again.
                log.warning("could not renew the lease of job %s: %s", job_id, exc)
            await asyncio.sleep(self.renew_s)


def build_worker(
    settings: Settings,
    *,
    functions: Sequence[Function],
    queue_name: str,
    max_jobs: int,
    on_startup: StartupShutdown,
    on_shutdown: StartupShutdown,
    cron_jobs: Sequence[CronJob] = (),
) -> Worker:
    leases = JobLeases(settings.job_lease_s)
    return Worker(
        functions=functions,
        cron_jobs=cron_jobs,
        queue_name=queue_name,
        redis_settings=redis_settings(settings),
        job_serializer=dumps,
        job_deserializer=loads,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        on_job_start=leases.on_job_start,
        on_job_end=leases.on_job_end,
        ctx={"settings": settings},
        max_jobs=max_jobs,
        poll_delay=settings.queue_poll_delay_s,
        job_completion_wait=DRAIN_GRACE_S,
        # The ledger in PostgreSQL holds outcomes; arq's result keys only guard against duplicate enqueues.
        keep_result=3600,
    )


async def open_ops_server(
    stack: AsyncExitStack,
    ctx: dict[str, Any],
    service: str,
    port: int,
    checks: dict[str, HealthCheck],
) -> None:
    """Serve /metrics and /healthz for a worker, closed with the worker's exit stack."""
    settings: Settings = ctx["settings"]
    all_checks = {"redis": redis_check(ctx["redis"]), **checks}
    app = web.Application()
    add_ops_routes(app, service, lambda: all_checks)
    await stack.enter_async_context(serve_app(app, settings.host, port))


async def close_stack(ctx: dict[str, Any]) -> None:
    stack: AsyncExitStack | None = ctx.get("stack")
    if stack is not None:
        # Shielded so a second signal during shutdown cannot leave pools or Chromium half-closed.
        await asyncio.shield(stack.aclose())
