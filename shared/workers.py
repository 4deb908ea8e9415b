"""How trawl runs an arq worker: JSON payloads, its queue, a drain period on SIGTERM, and an ops server."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web
from arq.cron import CronJob
from arq.typing import StartupShutdown
from arq.worker import Function, Worker

from shared.observability import HealthCheck, add_ops_routes, redis_check, serve_app
from shared.queues import dumps, loads, redis_settings
from shared.settings import Settings

# Running jobs get this long to finish after SIGTERM/SIGINT before they are cancelled (and re-queued by arq).
# Kept under the 30 s stop grace period that compose.yaml gives each service.
DRAIN_GRACE_S = 20


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
    return Worker(
        functions=functions,
        cron_jobs=cron_jobs,
        queue_name=queue_name,
        redis_settings=redis_settings(settings),
        job_serializer=dumps,
        job_deserializer=loads,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
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
