"""The storage path on real PostgreSQL and Valkey: migrations, batched writes, dedupe, partitions, bad rows, the
hot cache, retries after a lost connection, and the indexes the hot queries use."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import brotli
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.storage.batcher import BatchWriter
from shared.cache import PageCache, cache_key
from shared.codecs import decompress
from shared.db import create_db_pool, migrate, migrate_url
from shared.pages import PageStore, domain_of
from shared.settings import Settings
from tests.results import make_result


def unique_url(path: str = "") -> str:
    return f"http://site-{uuid.uuid4().hex[:8]}.test/{path}"


@pytest.fixture
def store(pg: asyncpg.Pool) -> PageStore:
    return PageStore(pg, max_body_bytes=64 * 1024)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


async def job_row(pg: asyncpg.Pool, job_id: uuid.UUID) -> dict[str, Any]:
    row = await pg.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    assert row is not None
    return dict(row)


async def test_migrations_apply_once_when_many_services_start_together(fresh_database: str) -> None:
    applied = await asyncio.gather(*(migrate_url(fresh_database) for _ in range(5)))
    # Exactly one of the five applied each file; the others found it done.
    names = [name for run in applied for name in run]
    assert sorted(names) == sorted(set(names)) and "0001_ledger_and_pages.sql" in names
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(names)
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_batch_closes_jobs_stores_pages_and_dedupes_bodies(store: PageStore, pg: asyncpg.Pool) -> None:
    same = "<html><title>same</title><body>identical bytes</body></html>"
    url = unique_url("a")
    results = [
        make_result(url, same),
        make_result(url, same),  # a later fetch of the same URL, byte-identical
        make_result(unique_url("b"), "<html><body>other</body></html>"),
        make_result(unique_url("c"), outcome="failed"),
    ]
    outcome = await store.write_batch(results)
    assert outcome.closed == {r.job_id for r in results}
    assert not outcome.rejected and outcome.replays == 0

    ids = [r.job_id for r in results]
    pages = await pg.fetch("SELECT job_id, content_hash FROM pages WHERE job_id = ANY($1)", ids)
    assert len(pages) == 3
    hashes = {p["content_hash"] for p in pages}
    assert len(hashes) == 2
    assert await pg.fetchval("SELECT count(*) FROM bodies WHERE content_hash = ANY($1)", list(hashes)) == 2

    for r in results[:3]:
        job = await job_row(pg, r.job_id)
        assert job["status"] == "succeeded" and job["page_id"] is not None
    failed = await job_row(pg, results[3].job_id)
    assert failed["status"] == "failed" and failed["error"].startswith("HTTP 500") and failed["page_id"] is None


async def test_replayed_batch_writes_nothing_twice(store: PageStore, pg: asyncpg.Pool) -> None:
    results = [make_result(unique_url(str(i)), f"<p>{i}</p>") for i in range(5)]
    first = await store.write_batch(results)
    assert len(first.closed) == 5
    # arq re-runs a store job whose worker died before acknowledging it; and a batch may hold one job twice.
    again = await store.write_batch([*results, results[0]])
    assert again.closed == set() and again.replays == 6
    ids = [r.job_id for r in results]
    assert await pg.fetchval("SELECT count(*) FROM pages WHERE job_id = ANY($1)", ids) == 5


async def test_bad_rows_fail_alone_and_the_rest_of_the_batch_lands(store: PageStore, pg: asyncpg.Pool) -> None:
    good = [make_result(unique_url(str(i)), f"<p>fine {i}</p>") for i in range(3)]
    nul = make_result(unique_url("nul"), "<p>x</p>", title="PostgreSQL text cannot hold \x00 bytes")
    huge = make_result(unique_url("huge"), "".join(f"<p>{uuid.uuid4()}</p>" for _ in range(5000)))
    outcome = await store.write_batch([good[0], nul, good[1], huge, good[2]])

    assert {r.job_id for r in outcome.rejected} == {nul.job_id, huge.job_id}
    assert outcome.closed == {r.job_id for r in good}
    nul_job = await job_row(pg, nul.job_id)
    assert nul_job["status"] == "failed" and "refused by the database" in nul_job["error"]
    huge_job = await job_row(pg, huge.job_id)
    assert huge_job["status"] == "failed" and "storage cap" in huge_job["error"]
    stored = await pg.fetchval("SELECT count(*) FROM pages WHERE job_id = ANY($1)", [r.job_id for r in good])
    assert stored == 3


async def test_body_is_kept_only_for_pages_read_for_html(store: PageStore, pg: asyncpg.Pool) -> None:
    text_only = make_result(unique_url("text"), "<p>text only</p>", formats=("text",), html_packed=None)
    with_html = make_result(unique_url("html"), "<p>with html</p>", formats=("raw_html",))
    missing = make_result(unique_url("missing"), "<p>lost</p>", formats=("html", "text"), html_packed=None)
    outcome = await store.write_batch([text_only, with_html, missing])

    assert outcome.closed == {text_only.job_id, with_html.job_id}
    rows = {
        r["job_id"]: r
        for r in await pg.fetch(
            "SELECT job_id, formats, (SELECT count(*) FROM bodies b WHERE b.content_hash = p.content_hash) AS bodies "
            "FROM pages p WHERE job_id = ANY($1)",
            [text_only.job_id, with_html.job_id],
        )
    }
    assert rows[text_only.job_id]["formats"] == ["text"] and rows[text_only.job_id]["bodies"] == 0
    assert rows[with_html.job_id]["formats"] == ["raw_html"] and rows[with_html.job_id]["bodies"] == 1
    # Asked for html, arrived without it: the job fails with the reason rather than store a page it cannot show.
    job = await job_row(pg, missing.job_id)
    assert job["status"] == "failed" and "result has no body" in job["error"]


async def test_pages_land_in_month_partitions(store: PageStore, pg: asyncpg.Pool) -> None:
    old = make_result(unique_url("old"), fetched_at=datetime(2024, 2, 29, 23, 59, tzinfo=UTC))
    new = make_result(unique_url("new"), fetched_at=datetime(2024, 3, 1, 0, 0, tzinfo=UTC))
    await store.write_batch([old, new])
    where = {
        r["job_id"]: r["partition"]
        for r in await pg.fetch(
            "SELECT job_id, tableoid::regclass::text AS partition FROM pages WHERE job_id = ANY($1)",
            [old.job_id, new.job_id],
        )
    }
    assert where == {old.job_id: "pages_2024_02", new.job_id: "pages_2024_03"}


async def test_bodies_stored_before_zstd_are_still_read(store: PageStore, pg: asyncpg.Pool) -> None:
    """Bodies written before the switch to zstd are brotli; reads tell the two apart and serve both."""
    result = make_result(unique_url("old-codec"), "<p>stored as brotli</p>")
    await store.write_batch([result])
    old = brotli.compress(b"<p>stored as brotli</p>", quality=1)
    await pg.execute(
        "UPDATE bodies SET html_packed = $1 WHERE content_hash = $2", old, bytes.fromhex(result.content_hash or "")
    )
    body = await store.body(result.content_hash or "")
    assert body is not None and decompress(body) == b"<p>stored as brotli</p>"
    fresh = make_result(unique_url("new-codec"), "<p>stored as zstd</p>")
    await store.write_batch([fresh])
    body = await store.body(fresh.content_hash or "")
    assert body is not None and body.startswith(b"\x28\xb5\x2f\xfd") and decompress(body) == b"<p>stored as zstd</p>"


async def test_compressed_columns_are_not_compressed_again(store: PageStore, pg: asyncpg.Pool) -> None:
    """Text and markdown come brotli-compressed from the scrapers: every partition, old or made on demand, stores
    them EXTERNAL so PostgreSQL spends no CPU on a second compression."""
    result = make_result(unique_url("new-month"), fetched_at=datetime(2031, 7, 4, tzinfo=UTC))
    await store.write_batch([result])
    rows = await pg.fetch(
        "SELECT c.relname, a.attname, a.attstorage::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_attribute a ON a.attrelid = c.oid"
        " WHERE i.inhparent = 'pages'::regclass AND a.attname IN ('text_packed', 'markdown_packed')"
    )
    partitions = {r["relname"] for r in rows}
    assert "pages_2031_07" in partitions, partitions
    assert {r["attstorage"] for r in rows} == {"e"}, rows


async def test_hot_queries_use_indexes(store: PageStore, pg: asyncpg.Pool) -> None:
    await store.write_batch([make_result(unique_url(str(i))) for i in range(20)])
    queries = {
        "latest page of a URL": ("SELECT * FROM pages WHERE url = $1 ORDER BY fetched_at DESC LIMIT 1", ["x"]),
        "page by id": ("SELECT * FROM pages WHERE id = $1", [1]),
        "listing by domain": (
            "SELECT id FROM pages WHERE domain = $1 ORDER BY fetched_at DESC, id DESC LIMIT 50", ["a.test"],
        ),
        "listing by time": ("SELECT id FROM pages ORDER BY fetched_at DESC, id DESC LIMIT 50", []),
        "jobs by state": ("SELECT count(*) FROM jobs WHERE status = $1", ["queued"]),
    }  # fmt: skip
    async with pg.acquire() as conn, conn.transaction():
        # The test tables are tiny, where a sequential scan is cheapest; the question is whether an index serves.
        await conn.execute("SET LOCAL enable_seqscan = off")
        for name, (sql, args) in queries.items():
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))
            assert "Index" in plan and "Seq Scan" not in plan, f"{name}:\n{plan}"


async def test_cache_answers_hot_after_warm_and_is_invalidated_by_new_writes(
    store: PageStore, redis: Redis, settings: Settings
) -> None:
    url = unique_url("cached")
    cache = PageCache(redis, store, ttl_s=60)
    assert await cache.latest(url) is None

    first = make_result(url, "<p>v1</p>", title="v1")
    writer = BatchWriter(store, redis, max_rows=10, max_wait_s=0.01)
    async with writer:
        await writer.submit([first])
        before = REGISTRY.get_sample_value("trawl_cache_lookups_total", {"result": "warm"}) or 0
        warm = await cache.latest(url)
        assert REGISTRY.get_sample_value("trawl_cache_lookups_total", {"result": "warm"}) == before + 1
        assert warm is not None and warm["title"] == "v1"
        assert 0 < await redis.ttl(cache_key(url)) <= 60
        assert await cache.hot(url) == warm

        second = make_result(url, "<p>v2</p>", title="v2")
        await writer.submit([second])
    # Storing a newer page dropped the hot entry, so the next read cannot return the old one.
    assert await cache.hot(url) is None
    latest = await cache.latest(url)
    assert latest is not None and latest["title"] == "v2"


async def test_batch_writer_coalesces_concurrent_jobs(store: PageStore, redis: Redis, pg: asyncpg.Pool) -> None:
    results = [make_result(unique_url(str(i)), f"<p>{i}</p>") for i in range(60)]
    async with BatchWriter(store, redis, max_rows=25, max_wait_s=0.2) as writer:
        await asyncio.gather(*(writer.submit([r]) for r in results))
        assert writer.batches_written <= 4  # 60 rows at 25 a batch, not 60 transactions
    stored = await pg.fetchval("SELECT count(*) FROM pages WHERE job_id = ANY($1)", [r.job_id for r in results])
    assert stored == 60


async def test_batch_writer_writes_at_once_when_idle_and_gathers_when_busy(store: PageStore, redis: Redis) -> None:
    async with BatchWriter(store, redis, max_rows=3, max_wait_s=5) as writer:
        # idle: a single job's result is written at once, not after the 5 s a batch may take to gather
        await asyncio.wait_for(writer.submit([make_result(unique_url("alone"))]), timeout=2.5)
        assert writer.batches_written == 1
        # just written: the next result waits for company (until the batch is full, here)
        first = asyncio.create_task(writer.submit([make_result(unique_url("gathered-1"))]))
        await asyncio.sleep(0.3)
        assert not first.done()
        more = [writer.submit([make_result(unique_url(f"gathered-{i}"))]) for i in (2, 3)]
        await asyncio.wait_for(asyncio.gather(first, *more), timeout=2.5)
        assert writer.batches_written == 2


async def test_batch_writer_retries_after_the_database_connection_is_lost(
    settings: Settings, redis: Redis, pg: asyncpg.Pool
) -> None:
    async with create_db_pool(settings.model_copy(update={"pg_pool_max": 1}), "storage-retry") as pool:
        store = PageStore(pool, max_body_bytes=64 * 1024)
        async with BatchWriter(store, redis, max_rows=5, max_wait_s=0.01) as writer:
            await writer.submit([make_result(unique_url("warm-up"))])
            # Kill the pool's only connection under it, as a database restart or a network cut would.
            killed = await pg.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'trawl-storage-retry'"
            )
            assert killed == 1
            after = make_result(unique_url("after-cut"))
            await writer.submit([after])
    assert (await job_row(pg, after.job_id))["status"] == "succeeded"


async def test_slow_queries_are_logged_and_counted(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    quick = settings.model_copy(update={"slow_query_warn_s": 0.05, "slow_query_error_s": 0.3})
    before = REGISTRY.get_sample_value("trawl_pg_slow_queries_total", {"level": "warning"}) or 0
    async with create_db_pool(quick, "slow") as pool:
        with caplog.at_level(logging.WARNING, logger="shared.db"):
            await pool.execute("SELECT pg_sleep(0.1)")
            await pool.execute("SELECT 1")
    assert REGISTRY.get_sample_value("trawl_pg_slow_queries_total", {"level": "warning"}) == before + 1
    assert [r.levelname for r in caplog.records if "pg_sleep" in r.getMessage()] == ["WARNING"]


async def test_pool_exports_its_size_and_name(settings: Settings) -> None:
    async with create_db_pool(settings, "named") as pool:
        assert await pool.fetchval("SELECT current_setting('application_name')") == "trawl-named"
        assert REGISTRY.get_sample_value("trawl_pg_pool_size", {"pool": "trawl-named"}) == pool.get_size()
        assert REGISTRY.get_sample_value("trawl_pg_pool_waiters", {"pool": "trawl-named"}) == 0
    assert REGISTRY.get_sample_value("trawl_pg_pool_size", {"pool": "trawl-named"}) is None


async def test_retention_removes_old_jobs_and_unreferenced_bodies(store: PageStore, pg: asyncpg.Pool) -> None:
    old = make_result(unique_url("retired"), "<p>only this old job had me</p>")
    await store.write_batch([old])
    await pg.execute("UPDATE jobs SET finished_at = now() - interval '40 days' WHERE id = $1", old.job_id)
    await pg.execute("DELETE FROM pages WHERE job_id = $1", old.job_id)
    removed = await store.clean_up(job_retention_days=30)
    assert removed["jobs"] >= 1 and removed["bodies"] >= 1
    assert await pg.fetchval("SELECT count(*) FROM jobs WHERE id = $1", old.job_id) == 0
    assert (
        await pg.fetchval("SELECT count(*) FROM bodies WHERE content_hash = $1", bytes.fromhex(old.content_hash or ""))
        == 0
    )


@pytest.mark.parametrize(
    "url",
    ["http://Example.COM:8080/a?b#c", "https://user:pw@host.test/x", "http://[::1]:80/", "http://a.test",
     "http://a.test?q=1", "http://127.0.0.1:5/p", "not a url"],
)  # fmt: skip
def test_domain_of_agrees_with_urlsplit(url: str) -> None:
    assert domain_of(url) == (urlsplit(url).hostname or "").lower()
