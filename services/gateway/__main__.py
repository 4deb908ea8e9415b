"""``python -m services.gateway``: serve the HTTP API."""

from aiohttp import web

from services.gateway.app import create_app
from shared.runtime import start_service

if __name__ == "__main__":
    settings = start_service()
    web.run_app(create_app(settings), host=settings.host, port=settings.gateway_port, print=None)
