"""The queue contract between trawl's services and outside producers: queue names, job names, payload models.

Services never import each other; they meet here. Payloads travel as JSON (orjson), never pickle (arq's default),
because outside producers push jobs too and unpickling whatever sits in Redis would run whatever sits in Redis.
Store jobs, which carry compressed pages from the scrapers to storage, travel as msgpack (data, like JSON, never
code), so their bytes need no base64; ``loads`` reads either.

An outside producer in Python enqueues a page like this::

    pool = await create_queue_pool(settings)
    await enqueue_scrape(pool, ScrapeRequest(url="https://example.com/"))

Any other language writes what arq writes: the JSON job ``{"t": 1, "f": "scrape_page", "a": [<ScrapeRequest>],
"k": {}, "et": <enqueue ms>}`` under ``arq:job:<id>`` and adds ``<id>`` to the sorted set ``trawl:scrape`` with
the enqueue time in ms as its score.
"""

from __future__ import annotations

import binascii
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import msgpack
import orjson
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from shared.codecs import decompress
from shared.settings import Settings

SCRAPE_QUEUE = "trawl:scrape"
STORE_QUEUE = "trawl:store"
ARCHIVE_QUEUE = "trawl:archive"
ALL_QUEUES = (SCRAPE_QUEUE, STORE_QUEUE, ARCHIVE_QUEUE)

SCRAPE_PAGE = "scrape_page"
SCRAPE_PAGES = "scrape_pages"
STORE_RESULTS = "store_results"


class Format(StrEnum):
    """What a job asks to get back, named as users of other scraping APIs know them."""

    HTML = "html"
    RAW_HTML = "raw_html"
    TEXT = "text"
    MARKDOWN = "markdown"
    LINKS = "links"
    METADATA = "metadata"
    SCREENSHOT = "screenshot"
    PDF = "pdf"


class Render(StrEnum):
    HTTP = "http"
    BROWSER = "browser"
    # HTTP first; the browser only when the page needs JavaScript to show its content.
    AUTO = "auto"


class WaitUntil(StrEnum):
    LOAD = "load"
    DOMCONTENTLOADED = "domcontentloaded"
    NETWORKIDLE = "networkidle"


DEFAULT_FORMATS = (Format.HTML, Format.TEXT, Format.LINKS, Format.METADATA)
# A page's HTML body is kept (compressed, deduplicated) only when one of these is asked for.
BODY_FORMATS = frozenset({Format.HTML, Format.RAW_HTML})


def keeps_body(formats: Iterable[str]) -> bool:
    """Whether a page read for ``formats`` keeps its HTML body."""
    return not BODY_FORMATS.isdisjoint(formats)


BROWSER_FORMATS = frozenset({Format.SCREENSHOT, Format.PDF})


class Viewport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(ge=200, le=3840)
    height: int = Field(ge=200, le=2160)


class ScrapeOptions(BaseModel):
    """How to scrape a page: everything a job says besides its URL. Shared by single jobs and batches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    render: Render = Render.AUTO
    formats: tuple[Format, ...] = DEFAULT_FORMATS
    # The whole job's budget, retries included: a page that never answers fails once this has passed.
    timeout_s: float = Field(30.0, gt=0, le=120)
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    max_retries: int = Field(3, ge=0, le=10)
    respect_robots: bool = True
    # Browser only.
    wait_until: WaitUntil = WaitUntil.LOAD
    wait_for: str | None = Field(None, min_length=1, max_length=500)
    wait_ms: int = Field(0, ge=0, le=30_000)
    # Images, fonts and media are not fetched unless asked (or a screenshot or PDF needs them).
    block_resources: bool | None = None
    viewport: Viewport | None = None
    full_page: bool = False
    screenshot_format: Literal["webp", "jpeg"] = "webp"
    screenshot_target_kb: int = Field(200, ge=10, le=5000)

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: tuple[Format, ...], info: ValidationInfo) -> tuple[Format, ...]:
        if not v:
            raise ValueError("at least one format is required")
        if info.data.get("render") is Render.HTTP and BROWSER_FORMATS & set(v):
            raise ValueError("screenshot and pdf need render 'browser' or 'auto'")
        return tuple(dict.fromkeys(v))

    @field_validator("wait_for", "wait_ms", "viewport")
    @classmethod
    def _browser_only(cls, v: Any, info: ValidationInfo) -> Any:
        if v and info.data.get("render") is Render.HTTP:
            raise ValueError(f"{info.field_name} needs render 'browser' or 'auto'")
        return v

    @property
    def blocks_resources(self) -> bool:
        if self.block_resources is not None:
            return self.block_resources
        return not (BROWSER_FORMATS & set(self.formats))

    @property
    def needs_browser(self) -> bool:
        """Options that only a browser can honour make ``auto`` go straight to the browser."""
        return self.render is Render.BROWSER or bool(
            BROWSER_FORMATS & set(self.formats) or self.wait_for or self.wait_ms or self.viewport
        )


class ScrapeRequest(ScrapeOptions):
    """One page to scrape: the payload of a ``scrape_page`` job, and each item of a ``scrape_pages`` job."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    url: AnyHttpUrl
    batch_id: uuid.UUID | None = None


class ScrapeBatch(BaseModel):
    """The payload of a ``scrape_pages`` job: many pages in one queue job, so the queue's cost per page is
    amortised. Items are validated one by one, so a malformed item fails alone."""

    requests: list[dict[str, Any]] = Field(min_length=1, max_length=1000)


class ScrapeResult(BaseModel):
    """What a scraper hands to storage for one job: the page it fetched, or why it could not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: uuid.UUID
    url: str
    render: Render
    formats: tuple[Format, ...]
    batch_id: uuid.UUID | None = None
    outcome: Literal["succeeded", "failed"]
    error: str | None = None
    started_at: datetime
    finished_at: datetime
    fetch_ms: int = Field(ge=0)
    # Fetch attempts beyond the first within this run (network errors, 429, 5xx, browser crashes).
    retries: int = Field(0, ge=0)
    # Which way the page was fetched (auto picks one) and why.
    render_used: Render | None = None
    render_reason: str | None = None
    final_url: str | None = None
    status_code: int | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    title: str | None = None
    # Main text and markdown, compressed like the body (shared.codecs): the scrapers compress, so PostgreSQL (one
    # for the whole cluster) does not have to.
    text_packed: bytes | None = None
    markdown_packed: bytes | None = None
    links: list[str] | None = None
    metadata: dict[str, Any] | None = None
    # The HTML body, compressed (shared.codecs), when the formats keep it (``keeps_body``).
    html_packed: bytes | None = None
    # The raw HTML's content hash (shared.codecs), hex, kept with every page: byte-identical bodies are stored
    # once, and a page's changes show without its body.
    content_hash: str | None = Field(None, pattern="^[0-9a-f]{32}$")
    screenshot: bytes | None = None
    screenshot_type: str | None = None
    pdf: bytes | None = None

    @field_validator("text_packed", "markdown_packed", "html_packed", "screenshot", "pdf", mode="before")
    @classmethod
    def _bytes_or_base64(cls, v: Any) -> Any:
        # Scrapers send bytes (store jobs travel as msgpack); a JSON payload can only carry them as base64.
        if isinstance(v, str):
            try:
                return binascii.a2b_base64(v, strict_mode=True)
            except binascii.Error as exc:
                raise ValueError(f"not bytes, nor base64 ({exc})") from None
        return v

    @property
    def keeps_body(self) -> bool:
        return keeps_body(self.formats)

    @property
    def text(self) -> str | None:
        return None if self.text_packed is None else decompress(self.text_packed).decode()

    @property
    def markdown(self) -> str | None:
        return None if self.markdown_packed is None else decompress(self.markdown_packed).decode()


class StoreBatch(BaseModel):
    """The payload of a ``store_results`` job: one or more results, validated one by one so that a malformed
    result fails alone."""

    results: list[dict[str, Any]] = Field(min_length=1)


def describe(exc: ValidationError) -> str:
    """A validation failure as one line naming each field, for a job's recorded error."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors())


def dumps(obj: Any) -> bytes:
    """A job as it goes on the queue: JSON, which outside producers also write; store jobs, which only trawl's
    scrapers write and which carry compressed pages, as msgpack, so bytes travel as bytes (base64 in JSON cost the
    scraper, Valkey and the storage worker a third more bytes to move, encode and decode)."""
    if isinstance(obj, dict) and obj.get("f") == STORE_RESULTS:
        return msgpack.packb(obj, default=_msgpack_default)  # type: ignore[no-any-return]
    return orjson.dumps(obj)


def _msgpack_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot put {type(value).__name__} on the queue")


class _Payload(dict[str, Any]):
    """A job's payload as arq logs it: arq writes ``repr`` of every job's arguments to its log before running it,
    and the repr of a store job carrying 25 pages costs milliseconds (a third of the storage worker's CPU, measured),
    so this one names the keys and sizes instead of printing the values."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}: {_short(v)}" for k, v in list(self.items())[:4])
        return "{" + shown + (", …}" if len(self) > 4 else "}")


def _short(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else f"<{len(value)} chars>"
    if isinstance(value, list | dict):
        return f"<{len(value)} items>"
    return repr(value)


_JSON_STARTS = frozenset((b"{", b"[", b" ", b"\n", b"\r", b"\t"))


def loads(data: bytes) -> Any:
    # JSON starts with "{" (orjson, json.dumps); a msgpack map starts with a byte of 0x80 or more.
    job = orjson.loads(data) if data[:1] in _JSON_STARTS else msgpack.unpackb(data)
    if isinstance(job, dict) and isinstance(args := job.get("a"), list):
        job["a"] = [_Payload(a) if isinstance(a, dict) else a for a in args]
    return job


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


async def enqueue_scrape_batch(pool: ArqRedis, requests: list[ScrapeRequest], job_id: str | None = None) -> bool:
    """Put many pages on the scrape queue as one job (one queue job for all of them), as an outside producer would.
    With ``job_id``, a repeat enqueue under that id is refused: returns False when that job is already queued or
    running."""
    job = await pool.enqueue_job(
        SCRAPE_PAGES,
        {"requests": [r.model_dump(mode="json", exclude_defaults=True) | {"id": str(r.id), "url": str(r.url)}
                      for r in requests]},
        _job_id=job_id,
        _queue_name=SCRAPE_QUEUE,
    )  # fmt: skip
    return job is not None


def batch_items(
    options: ScrapeOptions, pages: Sequence[tuple[uuid.UUID, str]], batch_id: uuid.UUID
) -> list[dict[str, Any]]:
    """The pages of a batch as ``scrape_pages`` items: each is what ``ScrapeRequest(**options, id=…, url=…,
    batch_id=…)`` dumps to, with the options (validated once, for the whole batch; only ScrapeOptions' own fields
    are read) dumped once and shared. Building and dumping a ScrapeRequest per page cost the gateway 16 us a page,
    160 ms for 10,000 URLs."""
    shared = options.model_dump(mode="json", exclude_defaults=True, include=set(ScrapeOptions.model_fields))
    common = shared | {"batch_id": str(batch_id)}
    return [common | {"id": str(job_id), "url": url} for job_id, url in pages]


async def enqueue_scrape_batches(pool: ArqRedis, chunks: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
    """Put ``scrape_pages`` jobs on the scrape queue, each ``(job id, items)``, in one round trip. The ids must be
    new (a batch's ids carry its fresh batch id); arq's guard against enqueuing a caller's id twice is skipped."""
    await _enqueue_new(pool, SCRAPE_PAGES, [(job_id, {"requests": items}) for job_id, items in chunks], SCRAPE_QUEUE)


async def enqueue_store(pool: ArqRedis, results: list[ScrapeResult]) -> None:
    """Hand results to storage. A one-result job's arq id names its scrape job and outcome, so a replayed scrape
    enqueues it at most once; storage also ignores results for jobs it has already closed."""
    payload = {"results": [r.model_dump() for r in results]}
    if len(results) == 1:
        await pool.enqueue_job(
            STORE_RESULTS, payload, _job_id=f"store:{results[0].job_id}:{results[0].outcome}", _queue_name=STORE_QUEUE
        )
    else:
        await _enqueue_new(pool, STORE_RESULTS, [(uuid.uuid4().hex, payload)], STORE_QUEUE)


async def _enqueue_new(pool: ArqRedis, function: str, jobs: Sequence[tuple[str, Any]], queue_name: str) -> None:
    """arq's ``enqueue_job`` for jobs under new ids ``(job id, payload)``, all in one round trip (MULTI/EXEC: all
    or none). arq first WATCHes each id and checks that neither the job nor its result exists, to refuse a second
    enqueue under a caller's id; a new id cannot meet that, and skipping it saves three round trips a job. Written
    exactly as arq writes it."""
    now = timestamp_ms()
    async with pool.pipeline(transaction=True) as pipe:
        for job_id, payload in jobs:
            job = serialize_job(function, (payload,), {}, None, now, serializer=pool.job_serializer)
            pipe.psetex(job_key_prefix + job_id, pool.expires_extra_ms, job)
            pipe.zadd(queue_name, {job_id: now})
        await pipe.execute()
