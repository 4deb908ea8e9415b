"""``python -m services.archival``: run the archival service."""

from aiohttp import web

from services.archival.app import create_app
from shared.observability import configure_logging
from shared.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    configure_logging(settings.log_level)
    web.run_app(create_app(settings), host=settings.host, port=settings.archival_port, print=None)
