"""What the gateway's handlers share: typed app keys, and the cleanup contexts that fill them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from arq.connections import ArqRedis

from shared.backends import PG, SETTINGS
from shared.cache import PageCache
from shared.pages import PageStore
from shared.queues import create_queue_pool

QUEUE = web.AppKey("queue", ArqRedis)
STORE = web.AppKey("store", PageStore)
CACHE = web.AppKey("cache", PageCache)


async def queue_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = await create_queue_pool(app[SETTINGS])
    app[QUEUE] = pool
    try:
        yield
    finally:
        await pool.aclose()


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    """The page store and its hot cache; entered after the pool and the queue, whose clients they use."""
    settings = app[SETTINGS]
    app[STORE] = PageStore(app[PG], settings.max_stored_body_bytes)
    app[CACHE] = PageCache(app[QUEUE], app[STORE], settings.cache_ttl_s)
    yield


def path_uuid(request: web.Request) -> uuid.UUID | None:
    """The ``{id}`` of the path as a UUID, or None when it is not one (the caller answers 404)."""
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        return None


def path_int(request: web.Request) -> int | None:
    """The ``{id}`` of the path as a page id (a non-negative bigint), or None when it cannot be one."""
    value = request.match_info["id"]
    if not (value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if number < 2**63 else None


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")
