"""How every service process starts: its settings, its logging, its event loop and its garbage collector."""

from __future__ import annotations

import asyncio
import gc

import uvloop

from shared.observability import configure_logging
from shared.settings import Settings

# CPython collects its youngest generation every 700 net container allocations; a scraper makes ~26 a page, so it
# collected every ~27 pages, and now and then walked the whole heap. Measured in the scraper on the http benchmark:
# 11-22 us of collection a page by default, 3 us with the heap frozen and this threshold. Cyclic garbage (an
# exception and its traceback, mostly) waits a little longer to be freed; it is still freed.
GC_THRESHOLDS = (10_000, 10, 10)


def start_service() -> Settings:
    """Settings from the environment, logging configured, uvloop as the event loop of whatever runs next (arq's
    worker and aiohttp's ``run_app`` both make their loop through the policy), and the garbage collector tuned.

    uvloop cut the scraper's CPU per page by about 7% and the storage worker's by about 10% on the http benchmark;
    it runs Playwright's driver pipes, asyncpg and redis-py unchanged. Called once every module of the service is
    imported, so that freezing the heap here moves what lives as long as the process (modules, classes, pydantic's
    validators: ~100,000 objects in a scraper) out of the collector's way for good."""
    settings = Settings()
    configure_logging(settings.log_level)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return settings
