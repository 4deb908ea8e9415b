"""``/v1/batches``: many URLs in one request, scraped as a few queue jobs, with progress in one query."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from prometheus_client import Counter
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from services.gateway.jobs import read_json_object
from services.gateway.problems import invalid, problem
from services.gateway.state import QUEUE, json_response, path_uuid
from shared.backends import PG
from shared.queues import ScrapeOptions, batch_items, enqueue_scrape_batches

BATCHES = Counter("trawl_gateway_batches_total", "Batches accepted by the gateway")
# Pages per queue job: enough to amortise the queue's cost per page, few enough that several scraper processes
# share a batch and a re-run after a crash repeats little.
CHUNK = 50


class BatchSubmission(ScrapeOptions):
    """The body of ``POST /v1/batches``: the URLs, and the options every one of them is scraped with."""

    urls: list[AnyHttpUrl] = Field(min_length=1, max_length=10_000)


class JobsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str | None = Field(None, pattern="^(queued|running|succeeded|failed)$")
    after: uuid.UUID | None = None
    limit: int = Field(100, ge=1, le=1000)


_INSERT_JOBS = """
INSERT INTO jobs (id, url, render, formats, status, batch_id)
SELECT v.id, v.url, $3, $4, 'queued', $5 FROM unnest($1::uuid[], $2::text[]) AS v(id, url)
"""


async def submit_batch(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    try:
        submission = BatchSubmission.model_validate(body)
    except ValidationError as exc:
        return invalid(exc)
    batch_id = uuid.uuid4()
    pages = [(uuid.uuid4(), str(url)) for url in submission.urls]
    items = batch_items(submission, pages, batch_id)
    formats = [f.value for f in submission.formats]
    try:
        async with request.app[PG].acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO batches (id, total) VALUES ($1, $2)", batch_id, len(pages))
            await conn.execute(
                _INSERT_JOBS, [job_id for job_id, _ in pages], [url for _, url in pages], submission.render.value,
                formats, batch_id,
            )  # fmt: skip
            # Committed only once every chunk is on the queue (see submit_job for why): all in one MULTI/EXEC.
            chunks = [(f"batch:{batch_id}:{n}", items[n : n + CHUNK]) for n in range(0, len(items), CHUNK)]
            await enqueue_scrape_batches(request.app[QUEUE], chunks)
    except RedisError as exc:
        return problem(503, "Queue unavailable", f"the scrape queue cannot take jobs now: {exc}")
    BATCHES.inc()
    return json_response(
        {
            "id": str(batch_id),
            "status": "queued",
            "total": len(pages),
            "links": {"self": f"/v1/batches/{batch_id}", "jobs": f"/v1/batches/{batch_id}/jobs"},
        },
        status=202,
    )


async def get_batch(request: web.Request) -> web.Response:
    batch_id = path_uuid(request)
    pg = request.app[PG]
    batch = batch_id and await pg.fetchrow("SELECT total, created_at FROM batches WHERE id = $1", batch_id)
    if not batch:
        return problem(404, "No such batch", f"no batch with id {request.match_info['id']}")
    counts: dict[str, Any] = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}
    for row in await pg.fetch("SELECT status, count(*) AS n FROM jobs WHERE batch_id = $1 GROUP BY status", batch_id):
        counts[row["status"]] = row["n"]
    done = counts["succeeded"] + counts["failed"]
    return json_response(
        {
            "id": str(batch_id),
            "total": batch["total"],
            "created_at": batch["created_at"].isoformat(),
            "status": "done" if done >= batch["total"] else "running",
            "counts": counts,
            "links": {"jobs": f"/v1/batches/{batch_id}/jobs"},
        }
    )


async def list_batch_jobs(request: web.Request) -> web.Response:
    batch_id = path_uuid(request)
    if batch_id is None:
        return problem(404, "No such batch", f"no batch with id {request.match_info['id']}")
    try:
        query = JobsQuery.model_validate(dict(request.query))
    except ValidationError as exc:
        return invalid(exc)
    rows = await request.app[PG].fetch(
        "SELECT id, url, status, error, page_id FROM jobs WHERE batch_id = $1"
        " AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
        batch_id, query.status, query.after, query.limit,
    )  # fmt: skip
    items = [
        {"id": str(r["id"]), "url": r["url"], "status": r["status"], "error": r["error"],
         "page_id": r["page_id"] and str(r["page_id"])}
        for r in rows
    ]  # fmt: skip
    after = items[-1]["id"] if len(items) == query.limit else None
    return json_response({"items": items, "next_after": after})
