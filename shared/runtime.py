"""How every service process starts: its settings, its logging, and its event loop."""

from __future__ import annotations

import asyncio

import uvloop

from shared.observability import configure_logging
from shared.settings import Settings


def start_service() -> Settings:
    """Settings from the environment, logging configured, and uvloop as the event loop of whatever runs next
    (arq's worker and aiohttp's ``run_app`` both make their loop through the policy). uvloop cut the scraper's CPU
    per page by about 7% and the storage worker's by about 10% on the http benchmark; it runs Playwright's driver
    pipes, asyncpg and redis-py unchanged."""
    settings = Settings()
    configure_logging(settings.log_level)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return settings
