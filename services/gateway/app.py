"""The gateway: trawl's HTTP API for submitting scrape jobs and reading their state, results and pages."""

from __future__ import annotations

from aiohttp import web

from services.gateway import batches, jobs, pages
from services.gateway.state import QUEUE, queue_ctx, store_ctx
from shared.backends import SETTINGS, backend_checks, pg_ctx
from shared.observability import add_ops_routes
from shared.settings import Settings


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([pg_ctx("gateway"), queue_ctx, store_ctx])
    app.router.add_post("/v1/jobs", jobs.submit_job)
    app.router.add_get("/v1/jobs/{id}", jobs.get_job)
    app.router.add_get("/v1/jobs/{id}/result", jobs.get_result)
    app.router.add_get("/v1/pages", pages.list_pages)
    app.router.add_get("/v1/pages/{id}", pages.get_page)
    app.router.add_get("/v1/pages/{id}/{kind:screenshot|pdf}", pages.get_capture)
    app.router.add_post("/v1/batches", batches.submit_batch)
    app.router.add_get("/v1/batches/{id}", batches.get_batch)
    app.router.add_get("/v1/batches/{id}/jobs", batches.list_batch_jobs)
    app.router.add_get("/v1/stats", pages.stats)
    add_ops_routes(app, "gateway", backend_checks(app, QUEUE))
    return app
