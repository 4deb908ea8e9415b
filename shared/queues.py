"""The queue contract between trawl's services and outside producers: queue names, job names, payload models.

Services never import each other; they meet here. Payloads travel as JSON (orjson), never pickle (arq's default),
because outside producers push jobs too and unpickling whatever sits in Redis would run whatever sits in Redis.

An outside producer in Python enqueues a page like this::

    pool = await create_queue_pool(settings)
    await enqueue_scrape(pool, ScrapeRequest(url="https://example.com/"))

Any other language writes what arq writes: the JSON job ``{"t": 1, "f": "scrape_page", "a": [<ScrapeRequest>],
"k": {}, "et": <enqueue ms>}`` under ``arq:job:<id>`` and adds ``<id>`` to the sorted set ``trawl:scrape`` with
the enqueue time in ms as its score.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import orjson
from arq.connections import ArqRedis, RedisSettings, create_pool
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from shared.settings import Settings

SCRAPE_QUEUE = "trawl:scrape"
STORE_QUEUE = "trawl:store"
ARCHIVE_QUEUE = "trawl:archive"
ALL_QUEUES = (SCRAPE_QUEUE, STORE_QUEUE, ARCHIVE_QUEUE)

SCRAPE_PAGE = "scrape_page"
STORE_RESULTS = "store_results"


class Format(StrEnum):
    """What a job asks to get back, named as users of other scraping APIs know them."""

    HTML = "html"
    RAW_HTML = "raw_html"
    TEXT = "text"
    MARKDOWN = "markdown"
    LINKS = "links"
    METADATA = "metadata"


class Render(StrEnum):
    HTTP = "http"
    BROWSER = "browser"


DEFAULT_FORMATS = (Format.HTML, Format.TEXT, Format.LINKS, Format.METADATA)


class ScrapeRequest(BaseModel):
    """One page to scrape: the payload of a ``scrape_page`` job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    url: AnyHttpUrl
    render: Render = Render.HTTP
    formats: tuple[Format, ...] = DEFAULT_FORMATS
    timeout_s: float = Field(30.0, gt=0, le=120)
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)

    @field_validator("formats")
    @classmethod
    def _formats_not_empty(cls, v: tuple[Format, ...]) -> tuple[Format, ...]:
        if not v:
            raise ValueError("at least one format is required")
        return tuple(dict.fromkeys(v))


class ScrapeResult(BaseModel):
    """What a scraper hands to storage for one job: the page it fetched, or why it could not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: uuid.UUID
    url: str
    render: Render
    formats: tuple[Format, ...]
    outcome: Literal["succeeded", "failed"]
    error: str | None = None
    started_at: datetime
    finished_at: datetime
    fetch_ms: int = Field(ge=0)
    final_url: str | None = None
    status_code: int | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    title: str | None = None
    text: str | None = None
    markdown: str | None = None
    links: list[str] | None = None
    metadata: dict[str, Any] | None = None
    # The HTML body, brotli-compressed and base64-encoded: JSON has no bytes, and bodies are large.
    html_br_b64: str | None = None
    # blake2b-128 of the raw HTML, hex: byte-identical bodies are stored once.
    content_hash: str | None = Field(None, pattern="^[0-9a-f]{32}$")


class StoreBatch(BaseModel):
    """The payload of a ``store_results`` job: one or more results, validated one by one so that a malformed
    result fails alone."""

    results: list[dict[str, Any]] = Field(min_length=1)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(data: bytes) -> Any:
    return orjson.loads(data)


def redis_settings(settings: Settings) -> RedisSettings:
    return RedisSettings.from_dsn(settings.redis_url)


async def create_queue_pool(settings: Settings) -> ArqRedis:
    """An arq Redis pool that speaks trawl's JSON job format. Close it with ``await pool.aclose()``."""
    return await create_pool(redis_settings(settings), job_serializer=dumps, job_deserializer=loads)


async def enqueue_scrape(pool: ArqRedis, request: ScrapeRequest) -> bool:
    """Put one page on the scrape queue; the job id is the request id, so a repeat enqueue is a no-op.

    Returns False when a job with that id is already queued or running.
    """
    job = await pool.enqueue_job(
        SCRAPE_PAGE, request.model_dump(mode="json"), _job_id=str(request.id), _queue_name=SCRAPE_QUEUE
    )
    return job is not None


async def enqueue_store(pool: ArqRedis, results: list[ScrapeResult]) -> None:
    """Hand results to storage. A one-result job's arq id names its scrape job and outcome, so a replayed scrape
    enqueues it at most once; storage also ignores results for jobs it has already closed."""
    job_id = f"store:{results[0].job_id}:{results[0].outcome}" if len(results) == 1 else None
    await pool.enqueue_job(
        STORE_RESULTS,
        {"results": [r.model_dump(mode="json") for r in results]},
        _job_id=job_id,
        _queue_name=STORE_QUEUE,
    )
