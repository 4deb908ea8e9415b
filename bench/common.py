"""What every benchmark needs: real backends for the run, and percentiles."""

from __future__ import annotations

import platform
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil

from shared.cluster import embedded_postgres, embedded_valkey
from shared.settings import Settings


@contextmanager
def backends(**settings: object) -> Iterator[Settings]:
    """Fresh embedded PostgreSQL and Valkey in a temporary folder, for one benchmark run."""
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trawl-bench-")))
        pg = stack.enter_context(embedded_postgres(folder / "pg"))
        redis = stack.enter_context(embedded_valkey(folder / "valkey"))
        yield Settings(database_url=pg, redis_url=redis, **settings)  # type: ignore[arg-type]


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=1000, method="inclusive")[round(q * 1000) - 1]


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {psutil.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"
