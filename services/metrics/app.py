"""The metrics service: the cluster-wide Prometheus view, read from Redis and the ledger at scrape time."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Gauge

from shared.backends import PG, REDIS, SETTINGS, backend_checks, pg_ctx, redis_ctx
from shared.observability import add_ops_routes
from shared.pages import jobs_by_state
from shared.queues import ALL_QUEUES
from shared.settings import Settings

QUEUE_DEPTH = Gauge("trawl_queue_depth", "Jobs waiting in each queue (queued and deferred)", ["queue"])
JOBS = Gauge("trawl_jobs", "Jobs in the ledger by state", ["state"])
PAGES = Gauge("trawl_pages_stored", "Pages in the page store")


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([pg_ctx("metrics"), redis_ctx])

    async def refresh() -> None:
        async with app[REDIS].pipeline(transaction=False) as pipe:
            for queue in ALL_QUEUES:
                pipe.zcard(queue)
            depths = await pipe.execute()
        for queue, depth in zip(ALL_QUEUES, depths, strict=True):
            QUEUE_DEPTH.labels(queue).set(depth)
        for state, count in (await jobs_by_state(app[PG])).items():
            JOBS.labels(state).set(count)
        PAGES.set(await app[PG].fetchval("SELECT count(*) FROM pages"))

    add_ops_routes(
        app,
        "metrics",
        backend_checks(app),
        before_scrape=refresh,
    )
    return app
