"""PostgreSQL access: each service's own asyncpg pool, and the SQL migrations applied at start."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import asyncpg
import orjson
from asyncpg.connection import LoggedQuery
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from shared.settings import Settings

log = logging.getLogger(__name__)

SLOW_QUERIES = Counter("trawl_pg_slow_queries_total", "Queries over the slow-query thresholds", ["level"])


class _PoolCollector(Collector):
    """Size, idle connections and waiters of every live pool in this process, read at scrape time."""

    def __init__(self) -> None:
        self.pools: dict[str, asyncpg.Pool] = {}

    def collect(self):  # type: ignore[no-untyped-def]
        size = GaugeMetricFamily("trawl_pg_pool_size", "Connections open in the pool", labels=["pool"])
        idle = GaugeMetricFamily("trawl_pg_pool_idle", "Connections idle in the pool", labels=["pool"])
        waiters = GaugeMetricFamily(
            "trawl_pg_pool_waiters", "Tasks waiting for a connection from the pool", labels=["pool"]
        )
        for name, pool in self.pools.items():
            size.add_metric([name], pool.get_size())
            idle.add_metric([name], pool.get_idle_size())
            # asyncpg has no public count of waiters; its free-connection queue knows them.
            queue = getattr(pool, "_queue", None)
            waiters.add_metric([name], len(getattr(queue, "_getters", ())))
        yield from (size, idle, waiters)


POOLS = _PoolCollector()
REGISTRY.register(POOLS)


def _slow_query_logger(settings: Settings, application_name: str):  # type: ignore[no-untyped-def]
    def log_query(query: LoggedQuery) -> None:
        if query.elapsed >= settings.slow_query_error_s:
            SLOW_QUERIES.labels("error").inc()
            log.error("%s: query took %.2f s: %.300s", application_name, query.elapsed, query.query)
        elif query.elapsed >= settings.slow_query_warn_s:
            SLOW_QUERIES.labels("warning").inc()
            log.warning("%s: query took %.2f s: %.300s", application_name, query.elapsed, query.query)

    return log_query


# Any fixed number works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 0x7472_6177_6C  # "trawl"


async def _set_codecs(conn: asyncpg.Connection) -> None:
    # Binary codecs, so that COPY (binary only in asyncpg) can write JSON columns too. A jsonb value on the wire
    # is a version byte (1) and the JSON text; a json value is the text alone.
    await conn.set_type_codec(
        "jsonb", encoder=lambda v: b"\x01" + orjson.dumps(v), decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog", format="binary",
    )  # fmt: skip
    await conn.set_type_codec("json", encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog", format="binary")


@asynccontextmanager
async def create_db_pool(settings: Settings, application_name: str) -> AsyncIterator[asyncpg.Pool]:
    """The service's asyncpg pool, named so that ``pg_stat_activity`` shows who holds which connection."""
    query_logger = _slow_query_logger(settings, application_name)

    async def init(conn: asyncpg.Connection) -> None:
        await _set_codecs(conn)
        conn.add_query_logger(query_logger)

    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.pg_pool_min,
        max_size=settings.pg_pool_max,
        command_timeout=settings.pg_command_timeout_s,
        # Idle connections are recycled after an hour so server-side memory and stale sessions don't pile up.
        max_inactive_connection_lifetime=3600,
        server_settings={"application_name": f"trawl-{application_name}"},
        init=init,
    )
    name = f"trawl-{application_name}"
    POOLS.pools[name] = pool
    try:
        # Every service migrates at start; the advisory lock in migrate() makes concurrent starts safe.
        async with pool.acquire() as conn:
            await migrate(conn)
        yield pool
    finally:
        POOLS.pools.pop(name, None)
        await pool.close()


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("shared") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name, f.read_text()) for f in files]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the SQL files in ``shared/migrations`` that this database has not seen yet, in name order.

    A session-level advisory lock makes concurrent starts safe: five services starting at once apply each file
    exactly once. Returns the names applied now.
    """
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in _migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            log.info("applied migration %s", name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def migrate_url(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
