"""End to end: the five services running as processes under ``trawl up``, on real PostgreSQL, Valkey and
Chromium, scraping the local test website."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import orjson
import pytest
from arq.connections import create_pool
from redis.asyncio import Redis

from shared.codecs import decompress
from shared.queues import (
    SCRAPE_PAGES,
    STORE_RESULTS,
    Format,
    Render,
    ScrapeRequest,
    ScrapeResult,
    create_queue_pool,
    dumps,
    enqueue_scrape,
    enqueue_scrape_batch,
    enqueue_store,
    loads,
    redis_settings,
)
from shared.settings import Settings
from tests.cluster import TRAWL, cluster_env, start_trawl_up, stop_trawl_up, submit, wait_for_job, wait_until_up
from tests.conftest import free_port
from tests.results import make_result
from tests.site import LocalSite


@pytest.fixture(scope="module")
def cluster(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    ports = {
        "gateway": settings.gateway_port,
        "scraper": settings.scraper_port,
        "storage": settings.storage_port,
        "archival": settings.archival_port,
        "metrics": settings.metrics_port,
    }
    folder = tmp_path_factory.mktemp("cluster")
    env = cluster_env(ports, folder, DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url)
    log = folder / "trawl-up.log"
    proc = start_trawl_up(env, log)
    try:
        wait_until_up(proc, log)
        yield settings
    finally:
        code = stop_trawl_up(proc)
        assert code == 0, log.read_text()[-3000:]


@pytest.fixture
async def gateway(cluster: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{cluster.gateway_port}") as session:
        yield session


async def test_http_job_is_fetched_read_and_stored(
    gateway: aiohttp.ClientSession, site: LocalSite, pg: asyncpg.Pool
) -> None:
    job_id = await submit(
        gateway, url=site.url("/page/1"), render="http", formats=["html", "text", "links", "metadata"]
    )
    job = await wait_for_job(gateway, job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1
    assert job["timings"]["fetch_ms"] is not None and job["timings"]["total_ms"] >= job["timings"]["fetch_ms"]

    row = await pg.fetchrow(
        "SELECT p.*, b.html_packed FROM pages p JOIN bodies b USING (content_hash) WHERE job_id = $1", uuid.UUID(job_id)
    )
    assert row is not None
    assert row["status_code"] == 200 and row["render"] == "http"
    assert row["title"] == "Page 1" and row["domain"] == "127.0.0.1"
    html = decompress(row["html_packed"]).decode()
    assert "<h1>Page 1</h1>" in html
    # Plain HTTP never runs the page's JavaScript.
    assert "Written by JavaScript" not in decompress(row["text_packed"]).decode()
    assert row["links"] == [site.url("/page/2"), "https://example.org/x"]
    assert row["metadata"]["description"] == "A page of the trawl test site"
    assert row["metadata"]["og"] == {"title": "OG Page 1"}
    assert row["metadata"]["language"] == "en"

    async with gateway.get(f"/v1/jobs/{job_id}/result") as resp:
        result = await resp.json()
    assert resp.status == 200
    assert result["title"] == "Page 1"
    assert "<script>" not in result["html"] and "<h1>Page 1</h1>" in result["html"]
    assert result["links"] == row["links"]


async def test_text_only_job_keeps_the_pages_hash_but_not_its_body(
    gateway: aiohttp.ClientSession, site: LocalSite, pg: asyncpg.Pool
) -> None:
    # A page no other test fetches, so no other job can have kept a body with its hash.
    job_id = await submit(gateway, url=site.url("/page/4242"), render="http", formats=["text"])
    job = await wait_for_job(gateway, job_id)
    assert job["status"] == "succeeded", job

    row = await pg.fetchrow("SELECT * FROM pages WHERE job_id = $1", uuid.UUID(job_id))
    assert row is not None and row["formats"] == ["text"] and len(row["content_hash"]) == 16
    assert "Page 4242" in decompress(row["text_packed"]).decode()
    assert await pg.fetchval("SELECT count(*) FROM bodies WHERE content_hash = $1", row["content_hash"]) == 0

    async with gateway.get(f"/v1/jobs/{job_id}/result") as resp:
        result = await resp.json()
    assert resp.status == 200 and "Page 4242" in result["text"] and "html" not in result


async def test_browser_job_runs_the_pages_javascript(
    gateway: aiohttp.ClientSession, site: LocalSite, pg: asyncpg.Pool
) -> None:
    job_id = await submit(gateway, url=site.url("/page/js"), render="browser", formats=["text", "markdown"])
    job = await wait_for_job(gateway, job_id)
    assert job["status"] == "succeeded", job
    row = await pg.fetchrow(
        "SELECT render, text_packed, markdown_packed FROM pages WHERE job_id = $1", uuid.UUID(job_id)
    )
    assert row["render"] == "browser"
    assert "Written by JavaScript 42" in decompress(row["text_packed"]).decode()
    assert "# Page js" in decompress(row["markdown_packed"]).decode()
    async with gateway.get(f"/v1/jobs/{job_id}/result") as resp:
        result = await resp.json()
    assert "Written by JavaScript 42" in result["text"] and "# Page js" in result["markdown"]


async def test_outside_producer_pushes_straight_onto_the_queue(
    cluster: Settings, gateway: aiohttp.ClientSession, site: LocalSite, pg: asyncpg.Pool
) -> None:
    request = ScrapeRequest(url=site.url("/page/outside"))  # type: ignore[arg-type]
    queue = await create_queue_pool(cluster)
    try:
        assert await enqueue_scrape(queue, request)
        # The payload in Redis is JSON that any language can write, not a pickle.
        raw = await queue.get(f"arq:job:{request.id}")
        assert raw is None or orjson.loads(raw)["f"] == "scrape_page"
    finally:
        await queue.aclose()
    job = await wait_for_job(gateway, str(request.id))
    assert job["status"] == "succeeded", job
    assert await pg.fetchval("SELECT title FROM pages WHERE job_id = $1", request.id) == "Page outside"


async def test_outside_producer_pushes_many_pages_as_one_job(
    cluster: Settings, gateway: aiohttp.ClientSession, site: LocalSite, pg: asyncpg.Pool
) -> None:
    requests = [
        ScrapeRequest(url=site.url(f"/page/outside-{n}"), render=Render.HTTP, formats=(Format.TEXT,))  # type: ignore[arg-type]
        for n in range(3)
    ]
    job_id = f"mine:{uuid.uuid4()}"
    queue = await create_queue_pool(cluster)
    try:
        assert await enqueue_scrape_batch(queue, requests, job_id=job_id)
        assert not await enqueue_scrape_batch(queue, requests, job_id=job_id)  # the same id again is refused
    finally:
        await queue.aclose()
    for request in requests:
        assert (await wait_for_job(gateway, str(request.id)))["status"] == "succeeded"
    titles = await pg.fetch("SELECT title, formats FROM pages WHERE job_id = ANY($1::uuid[])", [r.id for r in requests])
    assert sorted((r["title"], tuple(r["formats"])) for r in titles) == [
        (f"Page outside-{n}", ("text",)) for n in range(3)
    ]


async def test_invalid_payload_from_outside_producer_fails_the_job_with_its_reason(
    cluster: Settings, gateway: aiohttp.ClientSession
) -> None:
    job_id = uuid.uuid4()
    queue = await create_queue_pool(cluster)
    try:
        await queue.enqueue_job(
            "scrape_page", {"id": str(job_id), "url": "not a url"}, _job_id=str(job_id), _queue_name="trawl:scrape"
        )
    finally:
        await queue.aclose()
    job = await wait_for_job(gateway, str(job_id))
    assert job["status"] == "failed"
    assert "invalid scrape request" in job["error"] and "url" in job["error"]


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/status/404", {}, "HTTP 404"),
        ("/status/503", {}, "HTTP 503"),
        ("/slow?s=30", {"timeout_s": 1}, "within 1 s"),
        ("/loop", {}, "too many redirects"),
        (None, {"render": "browser", "timeout_s": 5}, "cannot connect"),
        (None, {}, "cannot connect"),
    ],
)
async def test_bad_pages_end_failed_with_the_reason(
    gateway: aiohttp.ClientSession, site: LocalSite, path: str | None, body: dict[str, object], reason: str
) -> None:
    # No path: a port on which nothing listens.
    url = site.url(path) if path else f"http://127.0.0.1:{free_port()}/"
    job_id = await submit(gateway, url=url, **body)
    job = await wait_for_job(gateway, job_id)
    assert job["status"] == "failed"
    assert reason in job["error"]
    async with gateway.get(f"/v1/jobs/{job_id}/result") as resp:
        assert resp.status == 409
        assert resp.content_type == "application/problem+json"


async def test_every_service_serves_healthz_and_metrics(cluster: Settings, gateway: aiohttp.ClientSession) -> None:
    async with aiohttp.ClientSession() as session:
        for port in (
            cluster.gateway_port,
            cluster.scraper_port,
            cluster.storage_port,
            cluster.archival_port,
            cluster.metrics_port,
        ):
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                health = await resp.json()
                assert resp.status == 200, health
                assert set(health["checks"].values()) == {"ok"}
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                assert "process_resident_memory_bytes" in await resp.text()
        async with session.get(f"http://127.0.0.1:{cluster.metrics_port}/metrics") as resp:
            text = await resp.text()
    assert 'trawl_queue_depth{queue="trawl:scrape"}' in text
    assert 'trawl_queue_depth{queue="trawl:store"}' in text
    for state in ("queued", "running", "succeeded", "failed"):
        assert f'trawl_jobs{{state="{state}"}}' in text


async def test_malformed_result_on_the_store_queue_fails_its_job_and_spares_the_rest(
    cluster: Settings, gateway: aiohttp.ClientSession, pg: asyncpg.Pool
) -> None:
    bad_id = uuid.uuid4()
    good = make_result(f"http://malformed-neighbour-{uuid.uuid4().hex[:6]}.test/")
    queue = await create_queue_pool(cluster)
    try:
        await queue.enqueue_job(
            "store_results",
            {"results": [{"job_id": str(bad_id), "url": "http://x.test/", "outcome": "maybe"}, good.model_dump()]},
            _queue_name="trawl:store",
        )
    finally:
        await queue.aclose()
    bad = await wait_for_job(gateway, str(bad_id))
    assert bad["status"] == "failed" and "malformed result" in bad["error"] and "outcome" in bad["error"]
    assert (await wait_for_job(gateway, str(good.job_id)))["status"] == "succeeded"
    assert await pg.fetchval("SELECT count(*) FROM pages WHERE job_id = $1", good.job_id) == 1


async def test_a_group_of_results_is_enqueued_as_arq_writes_it_and_stored(
    cluster: Settings, gateway: aiohttp.ClientSession, pg: asyncpg.Pool
) -> None:
    # Groups skip arq's duplicate-id checks (a fresh id each): the storage worker must still read and run them.
    results = [make_result(f"http://group-{uuid.uuid4().hex[:6]}.test/{i}") for i in range(3)]
    queue = await create_queue_pool(cluster)
    try:
        await enqueue_store(queue, results)
    finally:
        await queue.aclose()
    for result in results:
        assert (await wait_for_job(gateway, str(result.job_id)))["status"] == "succeeded"
    assert await pg.fetchval("SELECT count(*) FROM pages WHERE job_id = ANY($1)", [r.job_id for r in results]) == 3


async def test_store_jobs_travel_as_msgpack_and_json_producers_send_base64(
    cluster: Settings, gateway: aiohttp.ClientSession, pg: asyncpg.Pool
) -> None:
    """trawl's own store jobs carry bytes as bytes (msgpack); a producer writing JSON sends them base64-encoded,
    and a field that is neither fails its own result with the field named."""
    ours = make_result(f"http://ours-{uuid.uuid4().hex[:6]}.test/")
    raw = dumps({"f": STORE_RESULTS, "a": [{"results": [ours.model_dump()]}], "k": {}, "t": 1, "et": 0})
    assert raw[:1] not in (b"{", b"[") and loads(raw)["a"][0]["results"][0]["html_packed"] == ours.html_packed

    def as_json(result: ScrapeResult) -> dict[str, object]:
        fields = result.model_dump(mode="json", exclude={"html_packed", "text_packed"})
        return fields | {
            k: base64.b64encode(getattr(result, k) or b"").decode() for k in ("html_packed", "text_packed")
        }

    theirs = make_result(f"http://theirs-{uuid.uuid4().hex[:6]}.test/")
    garbled = as_json(make_result(f"http://garbled-{uuid.uuid4().hex[:6]}.test/")) | {"text_packed": "not base64!"}
    queue = await create_pool(redis_settings(cluster), job_serializer=orjson.dumps)
    try:
        await queue.enqueue_job("store_results", {"results": [as_json(theirs), garbled]}, _queue_name="trawl:store")
    finally:
        await queue.aclose()
    assert (await wait_for_job(gateway, str(theirs.job_id)))["status"] == "succeeded"
    async with gateway.get(f"/v1/jobs/{theirs.job_id}/result") as resp:
        assert (await resp.json())["text"] == "hello"
    bad = await wait_for_job(gateway, str(garbled["job_id"]))
    assert bad["status"] == "failed" and "text_packed" in bad["error"] and "base64" in bad["error"], bad


async def test_batch_is_scraped_stored_and_reported(
    cluster: Settings, gateway: aiohttp.ClientSession, site: LocalSite, pg: asyncpg.Pool
) -> None:
    # Three queue jobs: 50 pages, 50, 20.
    urls = [site.url(f"/page/batch-{n}") for n in range(119)] + [site.url("/status/404")]
    async with gateway.post("/v1/batches", json={"urls": urls, "render": "http", "formats": ["text"]}) as resp:
        batch = await resp.json()
        assert resp.status == 202, batch
    assert batch["total"] == 120
    for _ in range(300):
        async with gateway.get(f"/v1/batches/{batch['id']}") as resp:
            progress = await resp.json()
        if progress["status"] == "done":
            break
        await asyncio.sleep(0.1)
    assert progress["counts"] == {"queued": 0, "running": 0, "succeeded": 119, "failed": 1}, progress
    async with gateway.get(f"/v1/batches/{batch['id']}/jobs", params={"status": "failed"}) as resp:
        failed = (await resp.json())["items"]
    assert [j["url"] for j in failed] == [site.url("/status/404")] and "HTTP 404" in failed[0]["error"]
    stored = await pg.fetch(
        "SELECT p.formats FROM pages p JOIN jobs j ON j.page_id = p.id WHERE j.batch_id = $1", uuid.UUID(batch["id"])
    )
    assert len(stored) == 119 and {tuple(r["formats"]) for r in stored} == {("text",)}
    # The pages are in PostgreSQL; Redis keeps no copy of them in arq's records of finished store jobs.
    redis = Redis.from_url(cluster.redis_url)
    try:
        kept = [key async for key in redis.scan_iter(match="arq:result:*")]
        records = [loads(raw) for raw in await redis.mget(kept)] if kept else []
    finally:
        await redis.aclose()
    functions = {r["f"] for r in records if r}
    assert SCRAPE_PAGES in functions  # scrape jobs' records are kept (their payloads are small)
    assert STORE_RESULTS not in functions, "store jobs' payloads, whole pages, were kept in Redis"


async def test_screenshot_is_stored_apart_and_served(gateway: aiohttp.ClientSession, site: LocalSite) -> None:
    job_id = await submit(gateway, url=site.url("/page/shot"), formats=["screenshot", "text"])
    job = await wait_for_job(gateway, job_id)
    assert job["status"] == "succeeded", job
    async with gateway.get(f"/v1/jobs/{job_id}/result") as resp:
        result = await resp.json()
    assert result["render"] == "browser" and result["screenshot"] == f"/v1/pages/{result['id']}/screenshot"
    async with gateway.get(result["screenshot"]) as resp:
        assert resp.status == 200 and resp.content_type == "image/webp"
        assert 0 < len(await resp.read()) <= 200 * 1024


@pytest.mark.parametrize("count", [1, 3])
async def test_trawl_submit_waits_and_summarises(cluster: Settings, site: LocalSite, count: int) -> None:
    urls = [site.url(f"/page/cli-{count}-{n}") for n in range(count)]
    proc = await asyncio.create_subprocess_exec(
        TRAWL, "submit", *urls, "--render", "http", "--wait", "--timeout", "60",
        "--gateway", f"http://127.0.0.1:{cluster.gateway_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, (out, err)
    assert f"{count} succeeded, 0 failed, 0 unfinished" in out.decode()
