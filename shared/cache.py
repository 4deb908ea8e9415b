"""The hot cache: the latest stored page of each URL, compressed in Redis with a TTL, in front of PostgreSQL."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from prometheus_client import Counter
from redis.asyncio import Redis

from shared.codecs import compress, decompress
from shared.pages import PageStore

LOOKUPS = Counter(
    "trawl_cache_lookups_total", "Latest-page lookups by where they were answered", ["result"]
)  # result: hot (Redis), warm (PostgreSQL), miss
SETS = Counter("trawl_cache_sets_total", "Pages put in the hot cache")
EVICTIONS = Counter("trawl_cache_evictions_total", "Hot entries removed because a newer page was stored")

_PREFIX = "trawl:hot:latest:"


def cache_key(url: str) -> str:
    return _PREFIX + hashlib.blake2b(url.encode(), digest_size=16).hexdigest()


class PageCache:
    def __init__(self, redis: Redis, store: PageStore, ttl_s: int) -> None:
        self.redis = redis
        self.store = store
        self.ttl_s = ttl_s

    async def hot(self, url: str) -> dict[str, Any] | None:
        raw = await self.redis.get(cache_key(url))
        if raw is None:
            return None
        page: dict[str, Any] = orjson.loads(decompress(raw))
        return page

    async def put(self, url: str, page: dict[str, Any]) -> None:
        await self.redis.set(cache_key(url), compress(orjson.dumps(page)), ex=self.ttl_s)
        SETS.inc()

    async def latest(self, url: str) -> dict[str, Any] | None:
        """The latest stored page of ``url``: from Redis if hot, else from PostgreSQL (and then made hot)."""
        page = await self.hot(url)
        if page is not None:
            LOOKUPS.labels("hot").inc()
            return page
        page = await self.store.latest(url)
        if page is None:
            LOOKUPS.labels("miss").inc()
            return None
        LOOKUPS.labels("warm").inc()
        await self.put(url, page)
        return page


async def invalidate(redis: Redis, urls: list[str]) -> int:
    """Drop the hot entries of URLs that just got a newer page; the next read refills them from PostgreSQL."""
    if not urls:
        return 0
    removed: int = await redis.delete(*{cache_key(u) for u in urls})
    EVICTIONS.inc(removed)
    return removed
