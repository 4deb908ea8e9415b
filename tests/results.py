"""Building scrape results the way a scraper would, for storage tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from shared.codecs import compress, content_hash
from shared.queues import Render, ScrapeResult


def make_result(
    url: str, html: str = "<html><title>t</title><body>hello</body></html>", *, fetched_at: datetime | None = None,
    outcome: str = "succeeded", **fields: Any,
) -> ScrapeResult:  # fmt: skip
    when = fetched_at or datetime.now(UTC)
    raw = html.encode()
    base: dict[str, Any] = {
        "job_id": uuid.uuid4(),
        "url": url,
        "render": Render.HTTP,
        "formats": ("html", "text"),
        "outcome": outcome,
        "started_at": when,
        "finished_at": when,
        "fetch_ms": 5,
    }
    if outcome == "succeeded":
        base |= {
            "final_url": url,
            "status_code": 200,
            "headers": {"Content-Type": "text/html"},
            "title": "t",
            "text_packed": compress(b"hello"),
            "links": [],
            "metadata": {"title": "t"},
            "html_packed": compress(raw),
            "content_hash": content_hash(raw).hex(),
        }
    else:
        base["error"] = "HTTP 500 from " + url
    return ScrapeResult.model_validate(base | fields)
