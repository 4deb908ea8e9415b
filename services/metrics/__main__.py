"""``python -m services.metrics``: serve the cluster-wide Prometheus metrics."""

from aiohttp import web

from services.metrics.app import create_app
from shared.runtime import start_service

if __name__ == "__main__":
    settings = start_service()
    web.run_app(create_app(settings), host=settings.host, port=settings.metrics_port, print=None)
