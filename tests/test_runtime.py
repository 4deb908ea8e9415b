"""How a service process starts: the heap it has once its modules are imported is frozen out of the collector's way."""

from __future__ import annotations

import subprocess
import sys

from shared.runtime import GC_THRESHOLDS

_PROBE = """
import gc
from services.scraper.worker import create_worker  # what python -m services.scraper imports before starting
from shared.runtime import start_service
before = gc.get_freeze_count()
start_service()
print(before, gc.get_freeze_count(), *gc.get_threshold())
"""


def test_a_service_starts_with_its_import_time_heap_frozen_and_fewer_young_collections() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
    before, frozen, *thresholds = map(int, out.stdout.split())
    assert before == 0
    # modules, classes and pydantic's validators: about 100,000 objects in a scraper
    assert frozen > 20_000
    assert tuple(thresholds) == GC_THRESHOLDS
