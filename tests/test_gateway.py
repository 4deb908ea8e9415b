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
from shared.queues import SCRAPE_QUEUE, create_queue_pool
from shared.settings import Settings

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
    assert body["status"] == "queued" and body["formats"] == ["text", "links"] and body["render"] == "http"
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
