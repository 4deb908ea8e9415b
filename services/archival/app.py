"""The archival service. For now it holds its own pool and reports what an archive run would move: the pages
stored per month of fetch time. Moving months to compressed archives comes with its own issue."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import Gauge

from shared.backends import PG, SETTINGS, backend_checks, pg_ctx, redis_ctx
from shared.observability import add_ops_routes
from shared.settings import Settings

PAGES_BY_MONTH = Gauge("trawl_archival_pages_by_month", "Pages in the live store by month fetched", ["month"])


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([pg_ctx("archival"), redis_ctx])

    async def refresh() -> None:
        rows = await app[PG].fetch(
            "SELECT to_char(date_trunc('month', fetched_at), 'YYYY-MM') AS month, count(*) AS n FROM pages GROUP BY 1"
        )
        PAGES_BY_MONTH.clear()
        for row in rows:
            PAGES_BY_MONTH.labels(row["month"]).set(row["n"])

    add_ops_routes(
        app,
        "archival",
        backend_checks(app),
        before_scrape=refresh,
    )
    return app
