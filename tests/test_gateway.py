"""The gateway's API in process (aiohttp_client), on the real PostgreSQL and Valkey: what it accepts, what it
refuses and how it says so."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from services.gateway.app import create_app
from shared.pages import PageStore
from shared.queues import SCRAPE_QUEUE, ScrapeRequest, create_queue_pool
from shared.settings import Settings
from tests.results import make_result

Client = TestClient[Any, Any]


@pytest.fixture
async def client(aiohttp_client: Callable[..., Awaitable[Client]], settings: Settings) -> Client:
    return await aiohttp_client(create_app(settings))


async def test_accepted_job_is_in_the_ledger_and_on_the_queue_as_json(
    client: Client, settings: Settings, pg: asyncpg.Pool
) -> None:
    resp = await client.post("/v1/jobs", json={"url": "http://127.0.0.1:1/a", "formats": ["text", "links"]})
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "queued" and body["formats"] == ["text", "links"] and body["render"] == "auto"
    job_id = uuid.UUID(body["id"])
    row = await pg.fetchrow("SELECT status, url, formats FROM jobs WHERE id = $1", job_id)
    assert dict(row) == {"status": "queued", "url": "http://127.0.0.1:1/a", "formats": ["text", "links"]}

    queue = await create_queue_pool(settings)
    try:
        assert await queue.zscore(SCRAPE_QUEUE, str(job_id)) is not None
        job = orjson.loads(await queue.get(f"arq:job:{job_id}"))
        # Take it off the queue again: no scraper runs in this module, and the cluster tests share this Redis.
        await queue.zrem(SCRAPE_QUEUE, str(job_id))
    finally:
        await queue.aclose()
    assert job["f"] == "scrape_page"
    assert job["a"][0]["url"] == "http://127.0.0.1:1/a" and job["a"][0]["id"] == str(job_id)

    resp = await client.get(f"/v1/jobs/{job_id}")
    assert resp.status == 200
    assert (await resp.json())["status"] == "queued"
    resp = await client.get(f"/v1/jobs/{job_id}/result")
    assert resp.status == 409


async def test_batch_goes_on_the_queue_in_chunks_carrying_its_options(
    client: Client, settings: Settings, pg: asyncpg.Pool
) -> None:
    urls = [f"http://127.0.0.1:1/b/{n}" for n in range(120)]
    options = {"render": "browser", "formats": ["text", "screenshot"], "timeout_s": 12, "headers": {"X-A": "1"},
               "wait_for": "#main", "viewport": {"width": 800, "height": 600}, "respect_robots": False}  # fmt: skip
    resp = await client.post("/v1/batches", json={"urls": urls, **options})
    assert resp.status == 202
    batch_id = uuid.UUID((await resp.json())["id"])
    ledger = {r["url"]: r["id"] for r in await pg.fetch("SELECT id, url FROM jobs WHERE batch_id = $1", batch_id)}
    assert len(ledger) == 120

    queue = await create_queue_pool(settings)
    try:
        chunk_ids = [f"batch:{batch_id}:{n}" for n in (0, 50, 100)]
        assert all([await queue.zscore(SCRAPE_QUEUE, job_id) is not None for job_id in chunk_ids])
        jobs = [orjson.loads(await queue.get(f"arq:job:{job_id}")) for job_id in chunk_ids]
        await queue.zrem(SCRAPE_QUEUE, *chunk_ids)  # no scraper runs in this module
    finally:
        await queue.aclose()
    assert [job["f"] for job in jobs] == ["scrape_pages"] * 3
    items = [item for job in jobs for item in job["a"][0]["requests"]]
    assert [len(job["a"][0]["requests"]) for job in jobs] == [50, 50, 20]
    # Each item is, for the scraper that reads it, the request the batch asked for under its ledger id.
    for url, item in zip(urls, items, strict=True):
        expected = ScrapeRequest.model_validate({**options, "url": url, "id": ledger[url], "batch_id": batch_id})
        assert ScrapeRequest.model_validate(item) == expected


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["url"]),
        ({"url": "ftp://example.org/"}, ["url"]),
        ({"url": "not a url"}, ["url"]),
        ({"url": "http://example.org/", "render": "telepathy"}, ["render"]),
        ({"url": "http://example.org/", "formats": ["html", "hologram"]}, ["formats.1"]),
        ({"url": "http://example.org/", "formats": []}, ["formats"]),
        ({"url": "http://example.org/", "timeout_s": 0}, ["timeout_s"]),
        ({"url": "http://example.org/", "colour": "red"}, ["colour"]),
        ({"url": "http://example.org/", "id": str(uuid.uuid4())}, ["id"]),
        ([1, 2], ["body"]),
    ],
)
async def test_invalid_submission_is_422_naming_the_field(client: Client, body: Any, fields: list[str]) -> None:
    resp = await client.post("/v1/jobs", json=body)
    assert resp.status == 422
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert [e["field"] for e in problem["errors"]] == fields
    assert problem["status"] == 422


async def test_malformed_json_is_400(client: Client) -> None:
    resp = await client.post("/v1/jobs", data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json(content_type=None))["title"] == "Malformed JSON"


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid"])
async def test_unknown_job_is_404(client: Client, job_id: str) -> None:
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result"):
        resp = await client.get(path)
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"


async def test_max_age_answers_from_a_stored_page_without_scraping(
    client: Client, pg: asyncpg.Pool, settings: Settings
) -> None:
    url = f"http://fresh-{uuid.uuid4().hex[:8]}.test/"
    stored = make_result(url, "<html><title>kept</title><body>stored body</body></html>", title="kept")
    await PageStore(pg, 1 << 20).write_batch([stored])

    resp = await client.post("/v1/jobs", json={"url": url, "max_age_s": 3600, "formats": ["raw_html", "text"]})
    assert resp.status == 200
    job = await resp.json()
    assert job["status"] == "succeeded" and job["cached"] is True
    result = await (await client.get(f"/v1/jobs/{job['id']}/result")).json()
    assert result["title"] == "kept" and "stored body" in result["raw_html"] and result["text"] == "hello"

    # Too old for the caller: scraped again.
    resp = await client.post("/v1/jobs", json={"url": url, "max_age_s": 0})
    assert resp.status == 202 and (await resp.json())["cached"] is False
    queue = await create_queue_pool(settings)
    try:
        await queue.zrem(SCRAPE_QUEUE, (await resp.json())["id"])
    finally:
        await queue.aclose()


async def test_max_age_answers_only_from_a_page_read_for_every_format_asked(
    client: Client, pg: asyncpg.Pool, settings: Settings
) -> None:
    url = f"http://text-only-{uuid.uuid4().hex[:8]}.test/"
    # A page scraped for text alone: no body kept, only its hash.
    stored = make_result(url, formats=("text",), html_packed=None)
    await PageStore(pg, 1 << 20).write_batch([stored])

    resp = await client.post("/v1/jobs", json={"url": url, "max_age_s": 3600, "formats": ["text"]})
    job = await resp.json()
    assert resp.status == 200 and job["cached"] is True, job
    result = await (await client.get(f"/v1/jobs/{job['id']}/result")).json()
    assert result["text"] == "hello" and result["formats"] == ["text"]
    assert result["content_hash"] == stored.content_hash

    # Its HTML was never kept: a job that asks for it is scraped, not answered with a null.
    resp = await client.post("/v1/jobs", json={"url": url, "max_age_s": 3600, "formats": ["raw_html", "text"]})
    queued = await resp.json()
    assert resp.status == 202 and queued["cached"] is False, queued
    queue = await create_queue_pool(settings)
    try:
        await queue.zrem(SCRAPE_QUEUE, queued["id"])
    finally:
        await queue.aclose()

    # Read by id for formats it was not read for: named as null, and its formats say why.
    page = await (await client.get(f"/v1/pages/{result['id']}", params={"formats": "raw_html,html,text"})).json()
    assert page["raw_html"] is None and page["html"] is None and page["text"] == "hello"
    assert page["formats"] == ["text"]


async def test_pages_stored_before_they_recorded_formats_answer_from_what_they_hold(
    client: Client, pg: asyncpg.Pool, settings: Settings
) -> None:
    url = f"http://legacy-{uuid.uuid4().hex[:8]}.test/"
    stored = make_result(url, "<p>old body</p>", formats=("html", "text"))
    await PageStore(pg, 1 << 20).write_batch([stored])
    # As a row written before migration 0003 looks: no formats, its body kept whatever its job asked for.
    await pg.execute("UPDATE pages SET formats = NULL WHERE job_id = $1", stored.job_id)

    resp = await client.post("/v1/jobs", json={"url": url, "max_age_s": 3600, "formats": ["raw_html", "text"]})
    job = await resp.json()
    assert resp.status == 200 and job["cached"] is True, job
    result = await (await client.get(f"/v1/jobs/{job['id']}/result")).json()
    assert result["raw_html"] == "<p>old body</p>" and result["text"] == "hello"
    assert result["formats"] == ["html", "links", "metadata", "raw_html", "text"]


async def test_pages_latest_by_url_by_id_and_listing_with_keyset_pagination(client: Client, pg: asyncpg.Pool) -> None:
    domain = f"list-{uuid.uuid4().hex[:8]}.test"
    results = [make_result(f"http://{domain}/{i}", f"<p>{i}</p>", title=f"p{i}") for i in range(5)]
    await PageStore(pg, 1 << 20).write_batch(results)

    latest = await (await client.get("/v1/pages", params={"url": f"http://{domain}/3"})).json()
    assert latest["title"] == "p3" and latest["domain"] == domain
    by_id = await (await client.get(f"/v1/pages/{latest['id']}", params={"formats": "raw_html"})).json()
    assert by_id["raw_html"] == "<p>3</p>"

    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"domain": domain.upper(), "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/v1/pages", params=params)).json()
        seen += [item["title"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"p{i}" for i in range(5)] and len(seen) == 5

    resp = await client.get("/v1/pages", params={"url": f"http://{domain}/missing"})
    assert resp.status == 404
    for bad in ({"limit": "0"}, {"since": "yesterday"}, {"cursor": "???"}, {"colour": "red"}):
        resp = await client.get("/v1/pages", params=bad)
        assert resp.status == 422, bad
        assert (await resp.json())["errors"][0]["field"] == next(iter(bad))


async def test_stats_count_jobs_by_state_and_pages_by_domain(client: Client, pg: asyncpg.Pool) -> None:
    domain = f"stats-{uuid.uuid4().hex[:8]}.test"
    await PageStore(pg, 1 << 20).write_batch(
        [make_result(f"http://{domain}/{i}", f"<p>{i}</p>") for i in range(3)]
        + [make_result(f"http://{domain}/x", outcome="failed")]
    )
    stats = await (await client.get("/v1/stats")).json()
    assert set(stats["jobs"]) == {"queued", "running", "succeeded", "failed"}
    assert stats["jobs"]["succeeded"] >= 3 and stats["jobs"]["failed"] >= 1
    mine = [d for d in stats["domains"] if d["domain"] == domain]
    assert len(mine) == 1 and mine[0]["pages"] == 3


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, ["urls"]),
        ({"urls": []}, ["urls"]),
        ({"urls": ["http://a.test/", "ftp://b.test/"]}, ["urls.1"]),
        ({"urls": ["http://a.test/"], "render": "http", "formats": ["pdf"]}, ["formats"]),
        ({"urls": ["http://a.test/"], "render": "http", "wait_for": "#x"}, ["wait_for"]),
    ],
)
async def test_invalid_batch_is_422_naming_the_field(client: Client, body: Any, fields: list[str]) -> None:
    resp = await client.post("/v1/batches", json=body)
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == fields


async def test_unknown_batch_is_404(client: Client) -> None:
    for path in (f"/v1/batches/{uuid.uuid4()}", "/v1/batches/nope", "/v1/batches/nope/jobs"):
        assert (await client.get(path)).status == 404


@pytest.mark.parametrize("page_id", ["-1", "x", "99999999999999999999999", "123456789"])
async def test_unknown_page_is_404(client: Client, page_id: str) -> None:
    for path in (f"/v1/pages/{page_id}", f"/v1/pages/{page_id}/screenshot"):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert resp.content_type == "application/problem+json"
