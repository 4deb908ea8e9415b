"""Storage benchmark: rows/s through the storage worker's batched path against one-INSERT-per-row and a raw COPY
of the same rows, and latest-page lookup latency from the hot cache (Redis) and from PostgreSQL (warm)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from redis.asyncio import Redis

from bench.common import backends, machine, percentile
from services.storage.batcher import BatchWriter
from shared.cache import PageCache
from shared.codecs import compress
from shared.db import create_db_pool
from shared.pages import PAGE_COLUMNS, PageStore, page_row
from shared.queues import ScrapeResult
from tests.results import make_result

ROWS = 4000
LOOKUPS = 2000
WORDS = "the quick brown fox jumps over a lazy dog while trawl stores every page it fetched".split()


def _page(i: int, rng: random.Random) -> tuple[str, str]:
    text = " ".join(rng.choice(WORDS) for _ in range(450))  # ~2.5 KB of text
    html = (
        f"<html><head><title>Page {i}</title></head><body><p>{text}</p>" + "<div>filler</div>" * 200 + "</body></html>"
    )
    return text, html


def make_results(n: int, seed: int = 7) -> list[ScrapeResult]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text, html = _page(i, rng)
        out.append(
            make_result(
                f"http://bench-{i % 50}.test/page/{i}",
                html,
                title=f"Page {i}",
                text_packed=compress(text.encode()),
                links=[f"http://bench-{i % 50}.test/page/{i + 1}"],
            )
        )
    return out


def page_rows(results: list[ScrapeResult], first_id: int) -> list[tuple[Any, ...]]:
    return [page_row(r, first_id + n) for n, r in enumerate(results)]


async def _mark_running(pool: Any, results: list[ScrapeResult]) -> None:
    # As the scraper does before fetching: the ledger row exists and is running when storage closes it.
    await pool.executemany(
        "INSERT INTO jobs (id, url, render, formats, status, attempts, started_at) "
        "VALUES ($1, $2, 'http', '{html}', 'running', 1, now())",
        [(r.job_id, r.url) for r in results],
    )


async def main() -> None:
    print(f"storage benchmark: {ROWS} rows of ~2.5 KB text, {machine()}")
    with backends() as settings:
        async with create_db_pool(settings.model_copy(update={"pg_pool_max": 4}), "bench") as pool:
            store = PageStore(pool, settings.max_stored_body_bytes)
            redis = Redis.from_url(settings.redis_url)
            await store.ensure_partitions(
                {r.finished_at.replace(day=1, hour=0, minute=0, second=0, microsecond=0) for r in make_results(1)}
            )
            figures: dict[str, float] = {}

            # 1. Naive: one INSERT, one commit, per row (what "commits in loops" costs).
            naive = make_results(ROWS // 4, seed=1)
            rows = page_rows(naive, 10_000_000)
            placeholders = ", ".join(f"${i + 1}" for i in range(len(PAGE_COLUMNS)))
            insert = f"INSERT INTO pages ({', '.join(PAGE_COLUMNS)}) VALUES ({placeholders})"
            t0 = time.perf_counter()
            for row in rows:
                await pool.execute(insert, *row)
            figures["naive INSERT per row"] = len(rows) / (time.perf_counter() - t0)

            # 2. Raw COPY of the same rows (pages and their bodies), one transaction, nothing else.
            raw = make_results(ROWS, seed=2)
            rows = page_rows(raw, 20_000_000)
            bodies = [(bytes.fromhex(r.content_hash or ""), r.html_packed or b"", 0) for r in raw]
            t0 = time.perf_counter()
            async with pool.acquire() as conn, conn.transaction():
                await conn.copy_records_to_table(
                    "bodies", records=bodies, columns=("content_hash", "html_packed", "size")
                )
                await conn.copy_records_to_table("pages", records=rows, columns=PAGE_COLUMNS)
            figures["raw COPY"] = len(rows) / (time.perf_counter() - t0)

            # 3. The storage worker's path: many concurrent store jobs, coalesced into batches that close the jobs,
            # store deduplicated bodies and COPY the pages, one transaction each. First with one result per store
            # job (one arq job per page), then with 25 (a scraper handing over its results in groups).
            batched: list[ScrapeResult] = []
            for label, per_job, seed in (("1 result per store job", 1, 3), ("25 results per store job", 25, 4)):
                results = make_results(ROWS, seed=seed)
                await _mark_running(pool, results)
                writer = BatchWriter(
                    store, redis, max_rows=settings.storage_batch_rows, max_wait_s=settings.storage_batch_ms / 1000
                )
                async with writer:
                    t0 = time.perf_counter()
                    await asyncio.gather(*(writer.submit(results[i : i + per_job]) for i in range(0, ROWS, per_job)))
                    figures[f"batched path, {label}"] = len(results) / (time.perf_counter() - t0)
                batched += results

            # 4. Latest-page lookups: warm (PostgreSQL, index on url) and hot (Redis, compressed).
            cache = PageCache(redis, store, settings.cache_ttl_s)
            urls = [r.url for r in batched[:LOOKUPS]]
            warm, hot = [], []
            for url in urls:
                t0 = time.perf_counter()
                assert await store.latest(url) is not None
                warm.append(time.perf_counter() - t0)
            for url in urls:
                await cache.latest(url)  # fills the hot entry
            for url in urls:
                t0 = time.perf_counter()
                assert await cache.hot(url) is not None
                hot.append(time.perf_counter() - t0)
            await redis.aclose()

    copy = figures["raw COPY"]
    print(f"{'path':<44}{'rows/s':>10}{'of raw COPY':>14}")
    for name, rate in figures.items():
        print(f"{name:<44}{rate:>10.0f}{rate / copy:>13.0%}")
    print(f"{'latest-page lookup':<44}{'p50 ms':>10}{'p99 ms':>14}")
    for name, samples in (("hot (Redis)", hot), ("warm (PostgreSQL)", warm)):
        print(f"{name:<44}{percentile(samples, 0.5) * 1000:>10.3f}{percentile(samples, 0.99) * 1000:>14.3f}")
