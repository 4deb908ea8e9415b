"""PostgreSQL access: each service's own asyncpg pool, and the SQL migrations applied at start."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import asyncpg
import orjson

from shared.settings import Settings

log = logging.getLogger(__name__)

# Any fixed number works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 0x7472_6177_6C  # "trawl"


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


@asynccontextmanager
async def create_db_pool(settings: Settings, application_name: str) -> AsyncIterator[asyncpg.Pool]:
    """The service's asyncpg pool, named so that ``pg_stat_activity`` shows who holds which connection."""
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.pg_pool_min,
        max_size=settings.pg_pool_max,
        command_timeout=settings.pg_command_timeout_s,
        # Idle connections are recycled after an hour so server-side memory and stale sessions don't pile up.
        max_inactive_connection_lifetime=3600,
        server_settings={"application_name": f"trawl-{application_name}"},
        init=_init_connection,
    )
    try:
        # Every service migrates at start; the advisory lock in migrate() makes concurrent starts safe.
        async with pool.acquire() as conn:
            await migrate(conn)
        yield pool
    finally:
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
