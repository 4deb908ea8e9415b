"""How a scraper hands its results to storage: in groups shared by the jobs it runs, on a real Valkey."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from redis.exceptions import RedisError

from services.scraper.worker import STORE_GROUP, ResultSender, open_deps, scrape_page
from shared.cluster import embedded_valkey
from shared.queues import STORE_QUEUE, ScrapeRequest, create_queue_pool, loads
from shared.settings import Settings
from tests.results import make_result
from tests.site import LocalSite


async def _queue(url: str) -> ArqRedis:
    return await create_queue_pool(Settings(redis_url=url))


async def _store_groups(queue: ArqRedis) -> list[list[str]]:
    """The URLs of each store job on the queue."""
    groups = []
    for job_id in await queue.zrange(STORE_QUEUE, 0, -1):
        job = loads(await queue.get(job_key_prefix + job_id.decode()))
        groups.append([r["url"] for r in job["a"][0]["results"]])
    return groups


async def test_pages_of_jobs_running_together_share_store_groups(tmp_path: Path) -> None:
    with embedded_valkey(tmp_path) as url:
        queue = await _queue(url)
        try:
            sender = ResultSender(queue)
            first_job, second_job = [], []
            for i in range(15):
                first_job.append(await sender.add(make_result(f"http://first.test/{i}")))
                second_job.append(await sender.add(make_result(f"http://second.test/{i}")))
            # the first group went as its 25th result came, from whichever job; the rest waits for a job's end
            assert all(handed.done() for handed in first_job[:12] + second_job[:12])
            assert not first_job[-1].done() and not second_job[-1].done()
            await sender.flush()
            await asyncio.gather(*first_job, *second_job)
            groups = sorted(await _store_groups(queue), key=len)
        finally:
            await queue.aclose()
    assert [len(g) for g in groups] == [30 - STORE_GROUP, STORE_GROUP]
    full = groups[1]
    assert any("first.test" in u for u in full) and any("second.test" in u for u in full)
    assert sorted(groups[0] + full) == sorted(f"http://{j}.test/{i}" for j in ("first", "second") for i in range(15))


@pytest.mark.timeout(60)
async def test_a_failed_hand_over_reaches_every_job_with_a_result_in_the_group(tmp_path: Path) -> None:
    with embedded_valkey(tmp_path) as url:
        queue = await _queue(url)
        sender = ResultSender(queue)
        first = await sender.add(make_result("http://first.test/"))
        second = await sender.add(make_result("http://second.test/"))
    try:
        # Valkey is gone: the hand-over fails, and both jobs hear of it (each then runs again, losing nothing)
        await sender.flush()
        assert first is second
        for handed in (first, second):
            with pytest.raises(RedisError):
                await handed
    finally:
        await queue.aclose()


@pytest.mark.timeout(60)
async def test_a_job_whose_results_cannot_be_handed_over_runs_again(
    settings: Settings, site: LocalSite, pg: asyncpg.Pool, tmp_path: Path
) -> None:
    request = ScrapeRequest.model_validate({"url": site.url("/page/handed-over"), "render": "http"})
    async with AsyncExitStack() as stack:
        queue = await create_queue_pool(settings)
        stack.push_async_callback(queue.aclose)
        deps = await open_deps(stack, settings, queue, "handover-tests")
        with embedded_valkey(tmp_path) as url:
            gone = await _queue(url)
        stack.push_async_callback(gone.aclose)
        # The page is read, but the queue to storage is gone: the job asks arq to run it again...
        ctx = {"deps": deps, "sender": ResultSender(gone), "job_id": "handover-test", "job_try": 1}
        with pytest.raises(Retry):
            await scrape_page(ctx, request.model_dump(mode="json"))
        # ...and stays open in the ledger, so that the next run does it.
        assert await pg.fetchval("SELECT status FROM jobs WHERE id = $1", request.id) == "running"
        again = ctx | {"sender": ResultSender(queue), "job_try": 2}
        assert await scrape_page(again, request.model_dump(mode="json")) == "1 scraped"
        assert await pg.fetchval("SELECT attempts FROM jobs WHERE id = $1", request.id) == 2
