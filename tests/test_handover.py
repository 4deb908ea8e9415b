"""How a scraper hands its results to storage: in groups shared by the jobs it runs, on a real Valkey."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from arq.connections import ArqRedis, create_pool
from arq.constants import job_key_prefix
from redis.exceptions import RedisError

from services.scraper.worker import STORE_GROUP, ResultSender
from shared.cluster import embedded_valkey
from shared.queues import STORE_QUEUE, dumps, loads, redis_settings
from shared.settings import Settings
from tests.results import make_result


async def _queue(url: str) -> ArqRedis:
    return await create_pool(redis_settings(Settings(redis_url=url)), job_serializer=dumps, job_deserializer=loads)


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
