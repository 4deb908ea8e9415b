"""Coalesces the results of many concurrent store jobs into one database write.

Each arq job hands its results to ``BatchWriter.submit`` and waits until the batch holding them has committed, so
arq acknowledges a job only once its rows are in PostgreSQL: a crash before that leaves the job in Redis to run
again, and the ledger's state guard makes the re-run harmless.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from shared.cache import invalidate
from shared.pages import CONNECTION_ERRORS, BatchOutcome, PageStore
from shared.queues import ScrapeResult

log = logging.getLogger(__name__)

BATCH_ROWS = Histogram(
    "trawl_store_batch_rows", "Results per database batch", buckets=(1, 5, 10, 25, 50, 100, 200, 500, 1000)
)
BATCH_SECONDS = Histogram("trawl_store_batch_seconds", "Time to write one batch")
STORED = Counter("trawl_store_results_total", "Results handled by storage, by what became of them", ["result"])


@dataclass
class _Pending:
    results: Sequence[ScrapeResult]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class BatchWriter:
    """Writes results in batches of up to ``max_rows``, at most ``max_wait_s`` after the first one arrived; results
    that reach an idle writer (nothing written in the last ``max_wait_s``) are written at once."""

    def __init__(
        self, store: PageStore, redis: Redis, *, max_rows: int, max_wait_s: float, retry_for_s: float = 30
    ) -> None:
        self.store = store
        self.redis = redis
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.retry_for_s = retry_for_s
        self._pending: list[_Pending] = []
        self._rows = 0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writing: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(2)
        self._last_written = -math.inf  # monotonic time the last batch finished
        self.batches_written = 0

    async def __aenter__(self) -> BatchWriter:
        self._task = asyncio.create_task(self._run(), name="batch-writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._writing, return_exceptions=True)
        # Anything still waiting is written now rather than dropped.
        while taken := self._take():
            await self._write_taken(taken)

    async def submit(self, results: Sequence[ScrapeResult]) -> None:
        """Returns once ``results`` are committed; raises if the database stayed away for ``retry_for_s``."""
        pending = _Pending(results)
        self._pending.append(pending)
        self._rows += len(results)
        self._arrived.set()
        if self._rows >= self.max_rows:
            self._full.set()
        await pending.done

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            if self._writing or time.monotonic() - self._last_written < self.max_wait_s:
                # Busy: let a fuller batch gather. Results that find the writer idle go at once (a single job's,
                # a batch's first): waiting for more that may never come would only delay them.
                try:
                    await asyncio.wait_for(self._full.wait(), timeout=self.max_wait_s)
                except TimeoutError:
                    pass
            # Two batches in flight: one is prepared in Python while PostgreSQL writes the other.
            await self._slots.acquire()
            taken = self._take()
            if not taken:
                self._slots.release()
                continue
            task = asyncio.create_task(self._write_taken(taken))
            self._writing.add(task)
            task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing.discard(task)
        self._last_written = time.monotonic()
        self._slots.release()

    def _take(self) -> list[_Pending]:
        taken: list[_Pending] = []
        rows = 0
        while self._pending and (not taken or rows + len(self._pending[0].results) <= self.max_rows):
            item = self._pending.pop(0)
            taken.append(item)
            rows += len(item.results)
        self._rows -= rows
        if not self._pending:
            self._arrived.clear()
        if self._rows < self.max_rows:
            self._full.clear()
        return taken

    async def _write_taken(self, taken: list[_Pending]) -> None:
        results = [r for item in taken for r in item.results]
        try:
            outcome = await self._write(results)
        except asyncio.CancelledError:
            for item in taken:
                if not item.done.done():
                    item.done.set_exception(RuntimeError("storage stopped before the batch was written"))
            raise
        except Exception as exc:  # handed to every waiting job, which retries through arq
            for item in taken:
                if not item.done.done():
                    item.done.set_exception(exc)
            return
        self.batches_written += 1
        for item in taken:
            if not item.done.done():
                item.done.set_result(None)
        STORED.labels("closed").inc(len(outcome.closed))
        STORED.labels("replay").inc(outcome.replays)
        STORED.labels("rejected").inc(len(outcome.rejected))
        for rejected in outcome.rejected:
            log.warning("job %s failed at storage: %s", rejected.job_id, rejected.reason)

    async def _write(self, results: list[ScrapeResult]) -> BatchOutcome:
        BATCH_ROWS.observe(len(results))
        with BATCH_SECONDS.time():
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(CONNECTION_ERRORS),
                wait=wait_exponential_jitter(multiplier=0.1, jitter=0.1, max=5),
                stop=stop_after_delay(self.retry_for_s),
                reraise=True,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        log.warning(
                            "retrying a batch of %d results (attempt %d)",
                            len(results),
                            attempt.retry_state.attempt_number,
                        )
                    outcome = await self.store.write_batch(results)
        try:
            await invalidate(self.redis, outcome.stored_urls)
        except RedisError as exc:
            # The entries expire by TTL anyway; a stale hot entry is only ever older than max_age allows.
            log.warning("could not invalidate %d hot entries: %s", len(outcome.stored_urls), exc)
        return outcome
