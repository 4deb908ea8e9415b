"""The page store: month partitions, the batched write path that closes jobs and stores pages, and the reads.

Both the storage service (writes) and the gateway (reads) use it; the SQL lives here and nowhere else.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shared.codecs import decompress
from shared.queues import BODY_FORMATS, ScrapeResult

log = logging.getLogger(__name__)

_PARTITION_LOCK = 0x7472_6177_6D  # any fixed number shared by every storage process

# Rows PostgreSQL refuses (a NUL byte in text, an out-of-range value, a broken constraint): the batch is retried
# row by row so that only the bad rows fail.
ROW_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
# The database went away: the whole batch is retried later, nothing is dropped.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError)

PAGE_COLUMNS = (
    "id", "job_id", "url", "domain", "final_url", "status_code", "headers", "title", "text_packed", "markdown_packed",
    "links", "metadata", "content_hash", "render", "render_reason", "fetched_at", "formats",
)  # fmt: skip
CAPTURE_COLUMNS = ("page_id", "fetched_at", "kind", "content_type", "data")
_HASH_AT = PAGE_COLUMNS.index("content_hash")


# Closing a job is guarded by its state, so a replayed store job (arq re-runs jobs after a crash) changes nothing
# and stores no second page. An UPDATE, not an upsert: every job normally has its ledger row already (the gateway
# or the scraper wrote it), and an upsert pays for a speculative insert on every row.
_CLOSE_JOBS = """
UPDATE jobs AS j SET status = v.status, error = v.error, started_at = coalesce(j.started_at, v.started_at),
    finished_at = v.finished_at, fetch_ms = v.fetch_ms, page_id = v.page_id, page_fetched_at = v.page_fetched_at,
    attempts = j.attempts + v.retries
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::int[], $7::bigint[],
            $8::timestamptz[], $9::int[])
     AS v(id, status, error, started_at, finished_at, fetch_ms, page_id, page_fetched_at, retries)
WHERE j.id = v.id AND j.status IN ('queued', 'running')
RETURNING j.id
"""

# The rare job with no ledger row at all (its scraper could not record it): created closed.
_CREATE_CLOSED_JOBS = """
INSERT INTO jobs (id, url, render, formats, status, attempts, error, started_at, finished_at, fetch_ms,
                  page_id, page_fetched_at, batch_id)
SELECT v.id, v.url, v.render, string_to_array(v.formats, ','), v.status, 1 + v.retries, v.error, v.started_at,
       v.finished_at, v.fetch_ms, v.page_id, v.page_fetched_at, v.batch_id
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
            $8::timestamptz[], $9::int[], $10::bigint[], $11::timestamptz[], $12::int[], $13::uuid[])
     AS v(id, url, render, formats, status, error, started_at, finished_at, fetch_ms, page_id, page_fetched_at,
          retries, batch_id)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# COPY cannot skip rows that already exist, and deduplicated bodies do; an array insert can.
_INSERT_BODIES = """
INSERT INTO bodies (content_hash, html_packed, size)
SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int[])
ON CONFLICT (content_hash) DO NOTHING
"""

_FAIL_JOBS = """
INSERT INTO jobs AS j (id, url, render, formats, status, error, finished_at)
SELECT v.id, v.url, v.render, string_to_array(v.formats, ','), 'failed', v.error, now()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) AS v(id, url, render, formats, error)
ON CONFLICT (id) DO UPDATE SET status = 'failed', error = excluded.error, finished_at = excluded.finished_at
WHERE j.status IN ('queued', 'running')
"""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A result that cannot be stored; its job ends ``failed`` with the reason."""

    job_id: Any
    url: str
    render: str
    formats: str
    reason: str


@dataclass(slots=True)
class BatchOutcome:
    closed: set[Any] = field(default_factory=set)
    replays: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    stored_urls: list[str] = field(default_factory=list)


def month_start(ts: datetime) -> datetime:
    ts = ts.astimezone(UTC)
    return datetime(ts.year, ts.month, 1, tzinfo=UTC)


def _next_month(m: datetime) -> datetime:
    return datetime(m.year + (m.month == 12), m.month % 12 + 1, 1, tzinfo=UTC)


def partition_name(month: datetime, table: str = "pages") -> str:
    return f"{table}_{month:%Y_%m}"


def domain_of(url: str) -> str:
    """The URL's host, lower case, without port or credentials (urlsplit costs 6 us a row on the write path)."""
    _, sep, rest = url.partition("://")
    if not sep:
        return ""
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    if host.startswith("["):
        return host[1 : host.find("]")].lower()
    return host.partition(":")[0].lower()


def page_row(r: ScrapeResult, page_id: int) -> tuple[Any, ...]:
    """A succeeded result as its ``pages`` row, in ``PAGE_COLUMNS`` order."""
    return (
        page_id, r.job_id, r.url, domain_of(r.final_url or r.url), r.final_url, r.status_code, r.headers, r.title,
        r.text_packed, r.markdown_packed, r.links, r.metadata, bytes.fromhex(r.content_hash or ""),
        (r.render_used or r.render).value, r.render_reason, r.finished_at, [f.value for f in r.formats],
    )  # fmt: skip


async def fail_jobs(db: asyncpg.Pool | asyncpg.Connection, rejected: Sequence[Rejection]) -> None:
    """End these jobs ``failed`` with their reasons (unless the ledger has already closed them); jobs the ledger
    has never seen are created, so an outside producer's bad payload still leaves a trace."""
    await db.execute(
        _FAIL_JOBS,
        [r.job_id for r in rejected],
        [r.url for r in rejected],
        [r.render for r in rejected],
        [r.formats for r in rejected],
        [r.reason for r in rejected],
    )


def rejection_from_payload(payload: Any, id_key: str, reason: str, default_render: str) -> Rejection | None:
    """What to record for a queue payload that failed validation, or None when it names no job to record it on."""
    if not isinstance(payload, dict):
        return None
    try:
        job_id = uuid.UUID(str(payload.get(id_key)))
    except ValueError:
        return None
    given = payload.get("render")
    render = given if isinstance(given, str) and given in ("http", "browser", "auto") else default_render
    return Rejection(job_id, str(payload.get("url") or "")[:2048], render, "", reason)


async def jobs_by_state(db: asyncpg.Pool | asyncpg.Connection) -> dict[str, int]:
    """Jobs in the ledger by state, in one pass over ``jobs_status_idx``."""
    row = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'queued') AS queued,"
        " count(*) FILTER (WHERE status = 'running') AS running,"
        " count(*) FILTER (WHERE status = 'succeeded') AS succeeded,"
        " count(*) FILTER (WHERE status = 'failed') AS failed FROM jobs"
    )
    return dict(row)


def rejection(result: ScrapeResult, reason: str) -> Rejection:
    return Rejection(result.job_id, result.url, result.render.value, ",".join(f.value for f in result.formats), reason)


class PageStore:
    """The page store on one service's pool. Remembers which month partitions exist, so only new months cost a
    round trip."""

    def __init__(self, pool: asyncpg.Pool, max_body_bytes: int) -> None:
        self.pool = pool
        self.max_body_bytes = max_body_bytes
        self._months: set[datetime] = set()

    # -- writes ------------------------------------------------------------------------------------------------

    async def ensure_partitions(self, months: set[datetime]) -> None:
        missing = months - self._months
        if not missing:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialised across processes: two CREATE ... PARTITION OF for one month would race.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK)
            for month in sorted(missing):
                for table in ("pages", "captures"):
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {partition_name(month, table)} PARTITION OF {table} "
                        f"FOR VALUES FROM ('{month.isoformat()}') TO ('{_next_month(month).isoformat()}')"
                    )
        self._months |= missing

    def _check(self, result: ScrapeResult) -> str | None:
        if result.outcome != "succeeded":
            return None
        if result.html_packed is None and result.keeps_body:
            return "result has no body"
        if result.html_packed is not None and len(result.html_packed) > self.max_body_bytes:
            return f"compressed body is over the {self.max_body_bytes}-byte storage cap"
        return None

    async def write_batch(self, results: Sequence[ScrapeResult]) -> BatchOutcome:
        """Close the jobs of ``results`` and store their pages, in one transaction.

        Rows PostgreSQL refuses are retried one by one and rejected alone; the rest of the batch still lands.
        Connection errors propagate (nothing is written), for the caller to retry the whole batch.
        """
        outcome = BatchOutcome()
        batch: list[ScrapeResult] = []
        seen: set[Any] = set()
        for result in results:
            if result.job_id in seen:
                outcome.replays += 1  # the same job twice in one batch: a replay, keep the first
                continue
            seen.add(result.job_id)
            reason = self._check(result)
            if reason:
                outcome.rejected.append(rejection(result, reason))
            else:
                batch.append(result)

        await self.ensure_partitions({month_start(r.finished_at) for r in batch if r.outcome == "succeeded"})
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await self._write(conn, batch, outcome)
            except ROW_ERRORS:
                outcome.closed.clear()
                outcome.stored_urls.clear()
                for result in batch:
                    try:
                        async with conn.transaction():
                            await self._write(conn, [result], outcome)
                    except ROW_ERRORS as exc:
                        outcome.rejected.append(rejection(result, f"refused by the database: {exc}"))
            if outcome.rejected:
                await fail_jobs(conn, outcome.rejected)
        rejected = {r.job_id for r in outcome.rejected}
        outcome.replays += sum(1 for r in batch if r.job_id not in outcome.closed and r.job_id not in rejected)
        return outcome

    async def _write(self, conn: asyncpg.Connection, batch: list[ScrapeResult], outcome: BatchOutcome) -> None:
        if not batch:
            return
        succeeded = [r for r in batch if r.outcome == "succeeded"]
        ids = [
            r[0]
            for r in await conn.fetch(
                "SELECT nextval(pg_get_serial_sequence('pages', 'id')) FROM generate_series(1, $1)", len(succeeded)
            )
        ]
        page_of = {r.job_id: (pid, r.finished_at) for r, pid in zip(succeeded, ids, strict=True)}
        pages = [page_of.get(r.job_id, (None, None)) for r in batch]
        closed = {
            row[0]
            for row in await conn.fetch(
                _CLOSE_JOBS,
                [r.job_id for r in batch],
                [r.outcome for r in batch],
                [r.error for r in batch],
                [r.started_at for r in batch],
                [r.finished_at for r in batch],
                [r.fetch_ms for r in batch],
                [p[0] for p in pages],
                [p[1] for p in pages],
                [r.retries for r in batch],
            )
        }
        if len(closed) < len(batch):
            unclosed = [(r, p) for r, p in zip(batch, pages, strict=True) if r.job_id not in closed]
            closed |= {
                row[0]
                for row in await conn.fetch(
                    _CREATE_CLOSED_JOBS,
                    [r.job_id for r, _ in unclosed],
                    [r.url for r, _ in unclosed],
                    [r.render.value for r, _ in unclosed],
                    [",".join(f.value for f in r.formats) for r, _ in unclosed],
                    [r.outcome for r, _ in unclosed],
                    [r.error for r, _ in unclosed],
                    [r.started_at for r, _ in unclosed],
                    [r.finished_at for r, _ in unclosed],
                    [r.fetch_ms for r, _ in unclosed],
                    [p[0] for _, p in unclosed],
                    [p[1] for _, p in unclosed],
                    [r.retries for r, _ in unclosed],
                    [r.batch_id for r, _ in unclosed],
                )
            }
        to_store = [r for r in succeeded if r.job_id in closed]
        if to_store:
            bodies: dict[bytes, bytes] = {}
            rows = []
            for r in to_store:
                row = page_row(r, page_of[r.job_id][0])
                if r.html_packed is not None:  # kept when its job asked for html or raw_html
                    bodies.setdefault(row[_HASH_AT], r.html_packed)
                rows.append(row)
            if bodies:
                await conn.execute(
                    _INSERT_BODIES, list(bodies), list(bodies.values()), [len(b) for b in bodies.values()]
                )
            await conn.copy_records_to_table("pages", records=rows, columns=PAGE_COLUMNS)
            captures = [
                (page_of[r.job_id][0], page_of[r.job_id][1], kind, content_type, data)
                for r in to_store
                for kind, content_type, data in (
                    ("screenshot", r.screenshot_type, r.screenshot),
                    ("pdf", "application/pdf", r.pdf),
                )
                if data
            ]
            if captures:
                await conn.copy_records_to_table("captures", records=captures, columns=CAPTURE_COLUMNS)
            outcome.stored_urls.extend(r.url for r in to_store)
        outcome.closed |= closed

    # -- reads -------------------------------------------------------------------------------------------------

    async def latest(self, url: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow("SELECT * FROM pages WHERE url = $1 ORDER BY fetched_at DESC LIMIT 1", url)
        return page_record(row) if row else None

    async def get(self, page_id: int, fetched_at: datetime | None = None) -> dict[str, Any] | None:
        if fetched_at is not None:
            row = await self.pool.fetchrow("SELECT * FROM pages WHERE id = $1 AND fetched_at = $2", page_id, fetched_at)
        else:
            row = await self.pool.fetchrow("SELECT * FROM pages WHERE id = $1", page_id)
        return page_record(row) if row else None

    async def capture(self, page_id: int, kind: str) -> tuple[str, bytes] | None:
        row = await self.pool.fetchrow(
            "SELECT content_type, data FROM captures WHERE page_id = $1 AND kind = $2", page_id, kind
        )
        return (row["content_type"], row["data"]) if row else None

    async def body(self, content_hash_hex: str) -> bytes | None:
        data: bytes | None = await self.pool.fetchval(
            "SELECT html_packed FROM bodies WHERE content_hash = $1", bytes.fromhex(content_hash_hex)
        )
        return data

    async def list_pages(
        self,
        *,
        domain: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Pages newest first, ``limit`` at a time; the cursor names the last row seen (keyset pagination)."""
        after_ts, after_id = decode_cursor(cursor) if cursor else (None, None)
        rows = await self.pool.fetch(
            "SELECT id, url, domain, final_url, status_code, title, render, fetched_at FROM pages"
            " WHERE ($1::text IS NULL OR domain = $1)"
            " AND ($2::timestamptz IS NULL OR fetched_at >= $2)"
            " AND ($3::timestamptz IS NULL OR fetched_at < $3)"
            " AND ($4::timestamptz IS NULL OR (fetched_at, id) < ($4, $5))"
            " ORDER BY fetched_at DESC, id DESC LIMIT $6",
            domain, since, until, after_ts, after_id, limit + 1,
        )  # fmt: skip
        more = len(rows) > limit
        rows = rows[:limit]
        items = [{**dict(r), "id": str(r["id"]), "fetched_at": r["fetched_at"].isoformat()} for r in rows]
        next_cursor = encode_cursor(rows[-1]["fetched_at"], rows[-1]["id"]) if more else None
        return items, next_cursor

    async def stats(self, top_domains: int = 100) -> dict[str, Any]:
        jobs = await jobs_by_state(self.pool)
        domains = await self.pool.fetch(
            "SELECT domain, count(*) AS pages, max(fetched_at) AS last_fetched_at FROM pages"
            " GROUP BY domain ORDER BY count(*) DESC, domain LIMIT $1",
            top_domains,
        )
        return {
            "jobs": jobs,
            "domains": [
                {"domain": d["domain"], "pages": d["pages"], "last_fetched_at": d["last_fetched_at"].isoformat()}
                for d in domains
            ],
        }

    # -- retention ---------------------------------------------------------------------------------------------

    async def clean_up(self, job_retention_days: int) -> dict[str, int]:
        """Remove finished jobs past retention and bodies no page refers to any more."""
        async with self.pool.acquire() as conn:
            jobs = await conn.execute(
                "DELETE FROM jobs WHERE finished_at < now() - make_interval(days => $1)", job_retention_days
            )
            bodies = await conn.execute(
                "DELETE FROM bodies b WHERE NOT EXISTS (SELECT 1 FROM pages p WHERE p.content_hash = b.content_hash)"
            )
        return {"jobs": int(jobs.split()[-1]), "bodies": int(bodies.split()[-1])}


def page_formats(page: dict[str, Any]) -> set[str]:
    """The formats a stored page (a ``page_record``) can answer."""
    body = {f.value for f in BODY_FORMATS}
    if page.get("formats") is not None:
        kept = set(page["formats"])
        # html and raw_html are both read from the kept body.
        return kept | body if kept & body else kept
    # Stored before pages recorded their formats: the body was always kept, the rest if its job asked for it.
    return body | {name for name in ("text", "markdown", "links", "metadata") if page.get(name) is not None}


def page_record(row: asyncpg.Record) -> dict[str, Any]:
    """A page row as JSON-ready values (ids as strings: JavaScript clients lose precision past 2**53; text and
    markdown decompressed, from the plain columns for rows stored before they were compressed)."""
    record = dict(row)
    for name in ("text", "markdown"):
        packed = record.pop(f"{name}_packed", None)
        if packed is not None:
            record[name] = decompress(packed).decode()
    record["id"] = str(record["id"])
    record["job_id"] = str(record["job_id"])
    record["fetched_at"] = record["fetched_at"].isoformat()
    record["content_hash"] = record["content_hash"].hex()
    return record


def encode_cursor(fetched_at: datetime, page_id: int) -> str:
    return base64.urlsafe_b64encode(f"{fetched_at.isoformat()}|{page_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Raises ValueError on a cursor this module did not make."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    ts, _, page_id = raw.partition("|")
    return datetime.fromisoformat(ts), int(page_id)
