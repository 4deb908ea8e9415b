"""Errors as HTTP answers: RFC 9457 problem+json bodies that name the field at fault."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

PROBLEM_JSON = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return web.Response(status=status, body=orjson.dumps(body), content_type=PROBLEM_JSON)


def invalid(exc: ValidationError) -> web.Response:
    errors = [{"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]} for e in exc.errors()]
    fields = ", ".join(dict.fromkeys(e["field"] for e in errors))
    return problem(422, "Invalid request", f"invalid value for: {fields}", errors=errors)
