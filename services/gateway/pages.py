"""``/v1/pages`` and ``/v1/stats``: reading the page store."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.gateway.jobs import page_in_formats
from services.gateway.problems import invalid, problem
from services.gateway.state import CACHE, STORE, json_response, path_int
from shared.pages import decode_cursor
from shared.queues import Format

ALL_FORMATS = {f.value for f in Format}


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=8192)
    domain: str | None = Field(None, min_length=1, max_length=255)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(50, ge=1, le=1000)
    cursor: str | None = Field(None, max_length=200)
    formats: str | None = None


async def list_pages(request: web.Request) -> web.Response:
    """``?url=`` gives the latest page of a URL (from the hot cache when it can); otherwise a listing, newest
    first, filtered by domain and time, ``limit`` at a time with ``next_cursor``."""
    try:
        query = PageQuery.model_validate(dict(request.query))
    except ValidationError as exc:
        return invalid(exc)
    if query.url is not None:
        page = await request.app[CACHE].latest(query.url)
        if page is None:
            return problem(404, "No such page", f"no stored page for {query.url}")
        formats = set(query.formats.split(",")) if query.formats else ALL_FORMATS - {"html", "raw_html"}
        return json_response(await page_in_formats(request, page, formats))
    cursor = None
    if query.cursor is not None:
        try:
            decode_cursor(query.cursor)
        except ValueError:
            return problem(
                422, "Invalid request", "invalid value for: cursor",
                errors=[{"field": "cursor", "message": "not a cursor from a previous page"}],
            )  # fmt: skip
        cursor = query.cursor
    items, next_cursor = await request.app[STORE].list_pages(
        domain=query.domain.lower() if query.domain else None,
        since=query.since, until=query.until, limit=query.limit, cursor=cursor,
    )  # fmt: skip
    return json_response({"items": items, "next_cursor": next_cursor})


async def get_page(request: web.Request) -> web.Response:
    page_id = path_int(request)
    page = await request.app[STORE].get(page_id) if page_id is not None else None
    if page is None:
        return problem(404, "No such page", f"no page with id {request.match_info['id']}")
    formats = set(request.query["formats"].split(",")) if "formats" in request.query else ALL_FORMATS - {"html"}
    return json_response(await page_in_formats(request, page, formats))


async def get_capture(request: web.Request) -> web.Response:
    """A page's screenshot or PDF, as the bytes themselves."""
    kind = request.match_info["kind"]
    page_id = path_int(request)
    found = await request.app[STORE].capture(page_id, kind) if page_id is not None else None
    if found is None:
        return problem(404, f"No {kind}", f"page {request.match_info['id']} has no {kind}")
    content_type, data = found
    return web.Response(body=data, content_type=content_type)


async def stats(request: web.Request) -> web.Response:
    return json_response(await request.app[STORE].stats())
