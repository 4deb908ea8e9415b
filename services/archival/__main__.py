"""``python -m services.archival``: run the archival service."""

from aiohttp import web

from services.archival.app import create_app
from shared.runtime import start_service

if __name__ == "__main__":
    settings = start_service()
    web.run_app(create_app(settings), host=settings.host, port=settings.archival_port, print=None)
