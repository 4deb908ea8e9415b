"""What every trawl service exposes about itself: logging set-up, ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from redis.asyncio import Redis

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[None]]


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def pg_check(pool: asyncpg.Pool) -> HealthCheck:
    async def check() -> None:
        await pool.fetchval("SELECT 1")

    return check


def redis_check(redis: Redis) -> HealthCheck:
    async def check() -> None:
        await redis.ping()

    return check


async def _run_checks(checks: dict[str, HealthCheck]) -> dict[str, str]:
    async def one(check: HealthCheck) -> str:
        try:
            await asyncio.wait_for(check(), timeout=2)
        except Exception as exc:  # a health check reports every failure, whatever its kind
            return f"failing: {type(exc).__name__}: {exc}"
        return "ok"

    results = await asyncio.gather(*(one(c) for c in checks.values()))
    return dict(zip(checks, results, strict=True))


def add_ops_routes(
    app: web.Application,
    service: str,
    checks: Callable[[], dict[str, HealthCheck]],
    registry: CollectorRegistry = REGISTRY,
    before_scrape: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Add ``/healthz`` (200 when every dependency answers, else 503) and ``/metrics`` (Prometheus text).

    ``checks`` is called per request because the pools it names are opened after the routes are added.
    ``before_scrape`` refreshes gauges that are read from PostgreSQL or Redis at scrape time.
    """

    async def healthz(request: web.Request) -> web.Response:
        results = await _run_checks(checks())
        ok = all(v == "ok" for v in results.values())
        return web.json_response(
            {"service": service, "status": "ok" if ok else "failing", "checks": results},
            status=200 if ok else 503,
        )

    async def metrics(request: web.Request) -> web.Response:
        if before_scrape is not None:
            await before_scrape()
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)


@asynccontextmanager
async def serve_app(app: web.Application, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    """Serve an aiohttp app beside something else that owns the event loop (an arq worker)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("serving /metrics and /healthz on http://%s:%s", host, port)
        yield runner
    finally:
        await runner.cleanup()
