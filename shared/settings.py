"""The one typed settings object every trawl service is built from.

Settings are read from the environment once, in a service's ``__main__`` (or built directly by a test), and passed
down; no other module reads the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAWL_", extra="ignore", frozen=True, populate_by_name=True)

    # The two shared backends. ``DATABASE_URL`` and ``REDIS_URL`` are the names every platform sets.
    database_url: str = Field(
        "postgresql://postgres@localhost:5432/postgres",
        validation_alias=AliasChoices("DATABASE_URL", "TRAWL_DATABASE_URL"),
    )
    redis_url: str = Field("redis://localhost:6379/0", validation_alias=AliasChoices("REDIS_URL", "TRAWL_REDIS_URL"))

    # Where each service listens. Every service serves /metrics and /healthz on its own port.
    host: str = "127.0.0.1"
    gateway_port: int = Field(8080, ge=0, le=65535)
    scraper_port: int = Field(8081, ge=0, le=65535)
    storage_port: int = Field(8082, ge=0, le=65535)
    archival_port: int = Field(8083, ge=0, le=65535)
    metrics_port: int = Field(9090, ge=0, le=65535)

    # asyncpg pool, one per service process.
    pg_pool_min: int = Field(1, ge=0, le=100)
    pg_pool_max: int = Field(5, ge=1, le=200)
    pg_command_timeout_s: float = Field(30.0, gt=0)
    # Queries slower than these are logged as a warning / an error, and counted.
    slow_query_warn_s: float = Field(1.0, gt=0)
    slow_query_error_s: float = Field(5.0, gt=0)

    # Scraper.
    scraper_max_jobs: int = Field(8, ge=1, le=1000)
    # Pages fetched over HTTP at once by one scraper process, across all its jobs.
    http_concurrency: int = Field(32, ge=1, le=1000)
    # Pages rendered at once by one scraper process: one browser context each.
    browser_concurrency: int = Field(4, ge=1, le=64)
    browser_processes: int = Field(1, ge=1, le=16)
    # A reused renderer grows by about 3.5 MB a page (headless shell, benchmark site): retiring a context after 20
    # jobs kept 4 renderers at 358 MB PSS against 540 MB after 40, at the same rate (a new context and page cost
    # little next to 20 pages).
    browser_context_max_jobs: int = Field(20, ge=1)
    browser_max_jobs: int = Field(2000, ge=1)
    browser_max_rss_mb: int = Field(1536, ge=128)
    browser_idle_s: float = Field(300.0, gt=0)
    browser_call_timeout_s: float = Field(15.0, gt=0, le=120)
    browser_path: str | None = None
    browser_headless: bool = True
    # Politeness, cluster-wide (kept in Redis): concurrent requests per domain and the gap between their starts.
    domain_concurrency: int = Field(5, ge=1, le=1000)
    domain_delay_s: float = Field(0.0, ge=0, le=60)
    robots_ttl_s: int = Field(3600, ge=60)
    http_max_connections: int = Field(100, ge=1, le=10_000)
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    default_timeout_s: float = Field(30.0, gt=0, le=600)
    user_agent: str = "trawl/0.1 (+https://github.com/trawl)"

    # Storage: results are written in batches of up to this many rows, or after this long, whichever is first.
    storage_max_jobs: int = Field(1000, ge=1, le=10_000)
    storage_batch_rows: int = Field(500, ge=1, le=10_000)
    storage_batch_ms: int = Field(50, ge=1, le=10_000)
    # A compressed body larger than this is refused (the job fails with the reason).
    max_stored_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Finished jobs older than this are removed from the ledger by the storage service's hourly clean-up.
    job_retention_days: int = Field(30, ge=1)

    # The hot cache of latest pages in Redis.
    cache_ttl_s: int = Field(300, ge=1, le=7 * 86400)

    # arq queue behaviour. Workers look for new jobs this often when they have room for them (arq has no push); a
    # job waits for two such looks, a scraper's then storage's. A one-page job took 175 ms from POST to stored at
    # 0.1 s (median, local page), 67 ms at 0.05 and 29-42 ms at 0.02. But each look also re-checks every job the
    # worker is running (arq keeps them on the queue until they end), a Redis round trip each: at 0.02 s that cost
    # a browser batch 7% of its rate, at 0.05 s about 2%.
    queue_poll_delay_s: float = Field(0.05, gt=0, le=5)
    # A running job's claim on the queue, renewed while its worker lives: a job whose worker died (killed, out of
    # memory, host lost) is run again by another worker after at most this long.
    job_lease_s: float = Field(30.0, ge=1, le=600)

    # ``trawl up``: where embedded PostgreSQL and Valkey keep their data.
    data_dir: Path = Path(".trawl")
    log_level: str = "INFO"
