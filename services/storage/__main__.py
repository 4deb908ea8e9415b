"""``python -m services.storage``: run one storage worker."""

from services.storage.worker import create_worker
from shared.runtime import start_service

if __name__ == "__main__":
    settings = start_service()
    create_worker(settings).run()
