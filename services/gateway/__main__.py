"""``python -m services.gateway``: serve the HTTP API."""

from aiohttp import web

from services.gateway.app import create_app
from shared.observability import configure_logging
from shared.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    configure_logging(settings.log_level)
    web.run_app(create_app(settings), host=settings.host, port=settings.gateway_port, print=None)
