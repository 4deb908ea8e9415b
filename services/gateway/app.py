"""The gateway: trawl's HTTP API for submitting scrape jobs and reading their state and results."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from arq.connections import ArqRedis
from prometheus_client import Counter
from pydantic import ValidationError
from redis.exceptions import RedisError
from selectolax.lexbor import LexborHTMLParser

from services.gateway.problems import invalid, problem
from shared.backends import PG, SETTINGS, pg_ctx
from shared.codecs import decompress
from shared.observability import add_ops_routes, pg_check, redis_check
from shared.queues import Format, ScrapeRequest, create_queue_pool, enqueue_scrape
from shared.settings import Settings

QUEUE = web.AppKey("queue", ArqRedis)

JOBS_SUBMITTED = Counter("trawl_gateway_jobs_submitted_total", "Jobs accepted by the gateway", ["render"])


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


async def _queue_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = await create_queue_pool(app[SETTINGS])
    app[QUEUE] = pool
    try:
        yield
    finally:
        await pool.aclose()


_INSERT_JOB = """
INSERT INTO jobs (id, url, render, formats, status) VALUES ($1, $2, $3, $4, 'queued') RETURNING created_at
"""


async def submit_job(request: web.Request) -> web.Response:
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        return problem(400, "Malformed JSON", "the request body is not valid JSON")
    if not isinstance(body, dict):
        return problem(422, "Invalid request", "the body must be a JSON object", errors=[{"field": "body"}])
    if "id" in body:
        return problem(
            422,
            "Invalid request",
            "invalid value for: id",
            errors=[{"field": "id", "message": "job ids are assigned by the gateway"}],
        )
    try:
        job = ScrapeRequest.model_validate(body)
    except ValidationError as exc:
        return invalid(exc)

    pg, queue = request.app[PG], request.app[QUEUE]
    # The ledger row commits only once the job is on the queue, so an accepted job is always both recorded and
    # queued; if the commit itself fails, the scraper records the job from its payload when it runs.
    try:
        async with pg.acquire() as conn, conn.transaction():
            created_at = await conn.fetchval(
                _INSERT_JOB, job.id, str(job.url), job.render.value, [f.value for f in job.formats]
            )
            await enqueue_scrape(queue, job)
    except RedisError as exc:
        return problem(503, "Queue unavailable", f"the scrape queue cannot take jobs now: {exc}")
    JOBS_SUBMITTED.labels(job.render.value).inc()
    return _json(
        {
            "id": str(job.id),
            "status": "queued",
            "url": str(job.url),
            "render": job.render.value,
            "formats": [f.value for f in job.formats],
            "created_at": created_at.isoformat(),
            "links": {"self": f"/v1/jobs/{job.id}", "result": f"/v1/jobs/{job.id}/result"},
        },
        status=202,
    )


def _job_id(request: web.Request) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        return None


def _no_job(request: web.Request) -> web.Response:
    return problem(404, "No such job", f"no job with id {request.match_info['id']}")


def _ms(a: Any, b: Any) -> int | None:
    return round((b - a).total_seconds() * 1000) if a is not None and b is not None else None


async def get_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    row = job_id and await request.app[PG].fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    if not row:
        return _no_job(request)
    return _json(
        {
            "id": str(row["id"]),
            "url": row["url"],
            "render": row["render"],
            "formats": row["formats"],
            "status": row["status"],
            "attempts": row["attempts"],
            "error": row["error"],
            "created_at": row["created_at"].isoformat(),
            "started_at": row["started_at"] and row["started_at"].isoformat(),
            "finished_at": row["finished_at"] and row["finished_at"].isoformat(),
            "timings": {
                "queued_ms": _ms(row["created_at"], row["started_at"]),
                "fetch_ms": row["fetch_ms"],
                "total_ms": _ms(row["created_at"], row["finished_at"]),
            },
            "links": {"result": f"/v1/jobs/{job_id}/result"},
        }
    )


def _clean_html(raw: str) -> str:
    """The ``html`` format: the page without scripts, styles and comments (``raw_html`` keeps everything)."""
    tree = LexborHTMLParser(raw)
    for node in tree.css("script, style, noscript"):
        node.decompose()
    return tree.html or ""


async def get_result(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    pg = request.app[PG]
    job = job_id and await pg.fetchrow("SELECT status, error, formats FROM jobs WHERE id = $1", job_id)
    if not job:
        return _no_job(request)
    if job["status"] != "succeeded":
        detail = f"job {job_id} is {job['status']}" + (f": {job['error']}" if job["error"] else "")
        return problem(409, "No result", detail, job_status=job["status"])
    page = await pg.fetchrow("SELECT * FROM pages WHERE job_id = $1", job_id)
    if page is None:  # succeeded jobs always have a page; this guards against manual deletes
        return problem(404, "No result", f"the page of job {job_id} is no longer stored")
    formats = set(job["formats"])
    out: dict[str, Any] = {
        "job_id": str(job_id),
        "url": page["url"],
        "final_url": page["final_url"],
        "status_code": page["status_code"],
        "headers": page["headers"],
        "title": page["title"],
        "render": page["render"],
        "fetched_at": page["fetched_at"].isoformat(),
    }
    raw = decompress(page["html_br"]).decode() if page["html_br"] is not None else None
    if Format.RAW_HTML in formats:
        out["raw_html"] = raw
    if Format.HTML in formats and raw is not None:
        out["html"] = _clean_html(raw)
    for name in (Format.TEXT, Format.MARKDOWN, Format.LINKS, Format.METADATA):
        if name in formats:
            out[name.value] = page[name.value]
    return _json(out)


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([pg_ctx("gateway"), _queue_ctx])
    app.router.add_post("/v1/jobs", submit_job)
    app.router.add_get("/v1/jobs/{id}", get_job)
    app.router.add_get("/v1/jobs/{id}/result", get_result)
    add_ops_routes(app, "gateway", lambda: {"postgres": pg_check(app[PG]), "redis": redis_check(app[QUEUE])})
    return app
