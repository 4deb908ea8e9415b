"""``/v1/jobs``: submit a scrape job, read its state, read its result."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter
from pydantic import Field, ValidationError
from redis.exceptions import RedisError
from selectolax.lexbor import LexborHTMLParser

from services.gateway.problems import invalid, problem
from services.gateway.state import CACHE, QUEUE, STORE, json_response, path_uuid
from shared.backends import PG
from shared.codecs import decompress
from shared.pages import page_formats
from shared.queues import Format, ScrapeRequest, enqueue_scrape, keeps_body

JOBS_SUBMITTED = Counter("trawl_gateway_jobs_submitted_total", "Jobs accepted by the gateway", ["render"])
JOBS_FROM_CACHE = Counter("trawl_gateway_jobs_from_cache_total", "Jobs answered from a stored page")


class JobSubmission(ScrapeRequest):
    """The body of ``POST /v1/jobs``: a scrape request, and how old a stored page may be to answer it instead."""

    max_age_s: int | None = Field(None, ge=0, le=365 * 86400)


_INSERT_JOB = """
INSERT INTO jobs (id, url, render, formats, status) VALUES ($1, $2, $3, $4, 'queued') RETURNING created_at
"""

_INSERT_CACHED_JOB = """
INSERT INTO jobs (id, url, render, formats, status, cached, started_at, finished_at, page_id, page_fetched_at)
VALUES ($1, $2, $3, $4, 'succeeded', true, now(), now(), $5, $6) RETURNING created_at
"""


def _job_links(job_id: uuid.UUID) -> dict[str, str]:
    return {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result"}


async def read_json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object, or the problem response that says why there is none."""
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        return problem(400, "Malformed JSON", "the request body is not valid JSON")
    if not isinstance(body, dict):
        return problem(422, "Invalid request", "the body must be a JSON object", errors=[{"field": "body"}])
    return body


async def submit_job(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, web.Response):
        return body
    if assigned := [f for f in ("id", "batch_id") if f in body]:
        return problem(
            422, "Invalid request", f"invalid value for: {', '.join(assigned)}",
            errors=[{"field": f, "message": "assigned by the gateway"} for f in assigned],
        )  # fmt: skip
    try:
        submission = JobSubmission.model_validate(body)
    except ValidationError as exc:
        return invalid(exc)
    job = ScrapeRequest.model_validate(submission.model_dump(exclude={"max_age_s"}))
    url, formats = str(job.url), [f.value for f in job.formats]
    answer = {"id": str(job.id), "url": url, "render": job.render.value, "formats": formats}

    pg = request.app[PG]
    if submission.max_age_s is not None:
        page = await request.app[CACHE].latest(url)
        # Only a page that was read for every format this job asks for can answer it.
        if page is not None and set(formats) <= page_formats(page):
            age = (datetime.now(UTC) - datetime.fromisoformat(page["fetched_at"])).total_seconds()
            if age <= submission.max_age_s:
                created_at = await pg.fetchval(
                    _INSERT_CACHED_JOB, job.id, url, job.render.value, formats,
                    int(page["id"]), datetime.fromisoformat(page["fetched_at"]),
                )  # fmt: skip
                JOBS_FROM_CACHE.inc()
                return json_response(
                    {**answer, "status": "succeeded", "cached": True, "page_age_s": round(age, 3),
                     "created_at": created_at.isoformat(), "links": _job_links(job.id)},
                )  # fmt: skip

    # The ledger row commits only once the job is on the queue, so an accepted job is always both recorded and
    # queued; if the commit itself fails, the scraper records the job from its payload when it runs.
    try:
        async with pg.acquire() as conn, conn.transaction():
            created_at = await conn.fetchval(_INSERT_JOB, job.id, url, job.render.value, formats)
            await enqueue_scrape(request.app[QUEUE], job)
    except RedisError as exc:
        return problem(503, "Queue unavailable", f"the scrape queue cannot take jobs now: {exc}")
    JOBS_SUBMITTED.labels(job.render.value).inc()
    return json_response(
        {**answer, "status": "queued", "cached": False, "created_at": created_at.isoformat(),
         "links": _job_links(job.id)},
        status=202,
    )  # fmt: skip


def _no_job(request: web.Request) -> web.Response:
    return problem(404, "No such job", f"no job with id {request.match_info['id']}")


def _ms(a: Any, b: Any) -> int | None:
    return round((b - a).total_seconds() * 1000) if a is not None and b is not None else None


async def get_job(request: web.Request) -> web.Response:
    job_id = path_uuid(request)
    row = job_id and await request.app[PG].fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    if not row:
        return _no_job(request)
    return json_response(
        {
            "id": str(row["id"]),
            "url": row["url"],
            "render": row["render"],
            "formats": row["formats"],
            "status": row["status"],
            "cached": row["cached"],
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
            "page_id": row["page_id"] and str(row["page_id"]),
            "links": _job_links(row["id"]),
        }
    )


def clean_html(raw: str) -> str:
    """The ``html`` format: the page without scripts and styles (``raw_html`` keeps everything)."""
    tree = LexborHTMLParser(raw)
    for node in tree.css("script, style, noscript"):
        node.decompose()
    return tree.html or ""


async def page_in_formats(request: web.Request, page: dict[str, Any], formats: set[str]) -> dict[str, Any]:
    """A stored page as the formats ask: html bodies are read (and decompressed) only when asked for. A format the
    page was not read for is null (``formats`` says which it was read for)."""
    out = {
        k: page[k]
        for k in ("id", "url", "final_url", "status_code", "headers", "title", "render", "render_reason",
                  "fetched_at", "domain", "content_hash")
    }  # fmt: skip
    kept = page_formats(page)
    out["formats"] = sorted(kept)
    if Format.RAW_HTML in formats or Format.HTML in formats:
        html_packed = await request.app[STORE].body(page["content_hash"]) if keeps_body(kept) else None
        raw = decompress(html_packed).decode() if html_packed is not None else None
        if Format.RAW_HTML in formats:
            out["raw_html"] = raw
        if Format.HTML in formats:
            out["html"] = clean_html(raw) if raw is not None else None
    for name in (Format.TEXT, Format.MARKDOWN, Format.LINKS, Format.METADATA):
        if name in formats:
            out[name.value] = page[name.value]
    for name in (Format.SCREENSHOT, Format.PDF):
        if name in formats:
            # Pages stored before they recorded their formats may have captures: the link answers 404 if not.
            captured = name in kept or page.get("formats") is None
            out[name.value] = f"/v1/pages/{page['id']}/{name.value}" if captured else None
    return out


async def get_result(request: web.Request) -> web.Response:
    job_id = path_uuid(request)
    job = job_id and await request.app[PG].fetchrow(
        "SELECT status, error, formats, page_id, page_fetched_at FROM jobs WHERE id = $1", job_id
    )
    if not job:
        return _no_job(request)
    if job["status"] != "succeeded":
        detail = f"job {job_id} is {job['status']}" + (f": {job['error']}" if job["error"] else "")
        return problem(409, "No result", detail, job_status=job["status"])
    page = await request.app[STORE].get(job["page_id"], job["page_fetched_at"])
    if page is None:  # archived or removed since
        return problem(410, "Result gone", f"the page of job {job_id} is no longer in the live store")
    return json_response({"job_id": str(job_id), **await page_in_formats(request, page, set(job["formats"]))})
