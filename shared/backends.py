"""aiohttp cleanup contexts for the backends every service app holds: its own asyncpg pool and Redis client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from shared.db import create_db_pool
from shared.observability import HealthCheck, pg_check, redis_check
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
PG = web.AppKey("pg", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)


def pg_ctx(service: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with create_db_pool(app[SETTINGS], service) as pool:
            app[PG] = pool
            yield

    return ctx


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = Redis.from_url(app[SETTINGS].redis_url)
    app[REDIS] = client
    try:
        yield
    finally:
        await client.aclose()


def backend_checks(app: web.Application, redis_key: web.AppKey[Any] = REDIS) -> Callable[[], dict[str, HealthCheck]]:
    """The health checks of an app that holds a pool and a Redis client: both must answer."""
    return lambda: {"postgres": pg_check(app[PG]), "redis": redis_check(app[redis_key])}
