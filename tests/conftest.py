"""Session fixtures: a real PostgreSQL and Valkey (embedded wheels) and the local test website."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from shared.cluster import embedded_postgres, embedded_valkey
from shared.db import create_db_pool
from shared.settings import Settings
from tests.site import LocalSite


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_postgres(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_valkey(tmp_path_factory.mktemp("valkey")) as url:
        yield url


@pytest.fixture(scope="session")
def site() -> Iterator[LocalSite]:
    test_site = LocalSite().start()
    yield test_site
    test_site.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=Path(tmp_path_factory.mktemp("data")),
        gateway_port=free_port(),
        scraper_port=free_port(),
        storage_port=free_port(),
        archival_port=free_port(),
        metrics_port=free_port(),
    )


@pytest.fixture(scope="session")
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The tests' own pool on the test database (migrated, with trawl's JSON codecs)."""
    async with create_db_pool(settings, "tests") as pool:
        yield pool


@pytest.fixture
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """A new, empty database on the test server, for tests that must see the schema from nothing."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield database_url.replace("/postgres?", f"/{name}?", 1)
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()
