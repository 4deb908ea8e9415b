"""``python -m services.storage``: run one storage worker."""

from services.storage.worker import create_worker
from shared.observability import configure_logging
from shared.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    configure_logging(settings.log_level)
    create_worker(settings).run()
