"""A worker that dies mid-job: its job is run again by another worker once the job's lease lapses, not after
arq's job timeout (610 s for scrapers)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from shared.queues import ScrapeRequest, create_queue_pool, enqueue_scrape
from shared.settings import Settings
from tests.conftest import free_port
from tests.site import LocalSite

LEASE_S = 2


def _start(service: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = {**env, f"TRAWL_{service.upper()}_PORT": str(free_port())}
    with open(log, "ab") as out:
        # A session of its own, so that killing it takes any Chromium with it.
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"], env=env, stdout=out, stderr=out, start_new_session=True
        )


async def _job_state(pg: asyncpg.Pool, job_id: object, want: str, within_s: float) -> asyncpg.Record:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        row = await pg.fetchrow("SELECT status, attempts, error FROM jobs WHERE id = $1", job_id)
        if row is not None and row["status"] == want:
            return row
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} was not {want} within {within_s} s: {row and dict(row)}")


@pytest.mark.timeout(120)
async def test_job_of_a_killed_scraper_is_run_again_by_another_within_the_lease(
    settings: Settings, pg: asyncpg.Pool, site: LocalSite, tmp_path: Path
) -> None:
    # A Redis database of its own: no other test's queued jobs, and no other test's workers.
    queue_settings = settings.model_copy(update={"redis_url": settings.redis_url.rsplit("/", 1)[0] + "/3"})
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": queue_settings.redis_url,
        "TRAWL_JOB_LEASE_S": str(LEASE_S),
    }
    log = tmp_path / "services.log"
    queue = await create_queue_pool(queue_settings)
    procs = [_start("storage", env, log), _start("scraper", env, log)]
    try:
        request = ScrapeRequest.model_validate({"url": site.url("/slow?s=4"), "render": "http", "formats": ["text"]})
        assert await enqueue_scrape(queue, request)
        running = await _job_state(pg, request.id, "running", within_s=60)
        assert running["attempts"] == 1

        os.killpg(procs[1].pid, signal.SIGKILL)  # mid-fetch: the page takes 4 s to answer
        procs[1].wait()
        procs.append(_start("scraper", env, log))

        # Run again by the second scraper, seconds after the kill rather than after arq's 610 s; and only once, though
        # its fetch outlasts the lease: the lease is renewed while the job runs (unrenewed, it ran 4 times here).
        done = await _job_state(pg, request.id, "succeeded", within_s=45)
        assert done["attempts"] == 2, dict(done)
    except AssertionError:
        print(log.read_text(errors="replace")[-4000:])
        raise
    finally:
        await queue.aclose()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
