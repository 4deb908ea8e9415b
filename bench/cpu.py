"""Where the CPU goes during a benchmark: CPU seconds of every process on the machine, grouped by what it is
(trawl's services, Chromium, PostgreSQL, Valkey, the benchmark site, the benchmark itself), between two snapshots."""

from __future__ import annotations

import os
from collections import defaultdict

import psutil

_SERVICES = ("gateway", "scraper", "storage", "archival", "metrics")


def _group(proc: psutil.Process, me: int) -> str | None:
    try:
        name = proc.name()
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if proc.pid == me:
        return "benchmark (client, baselines)"
    if "chrom" in name:
        return "Chromium"
    if "playwright" in cmdline and "node" in name:
        return "Playwright driver (node)"
    if "postgres" in name or "postgres" in cmdline.split(" ")[0]:
        return "PostgreSQL"
    if "valkey" in name or "redis" in name:
        return "Valkey"
    if "bench.site" in cmdline:
        return "benchmark site"
    for service in _SERVICES:
        if f"services.{service}" in cmdline:
            return f"trawl {service}"
    return None


def _snapshot() -> dict[int, tuple[str, float]]:
    me = os.getpid()
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter():
        group = _group(proc, me)
        if group is None:
            continue
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out[proc.pid] = (group, times.user + times.system)
    return out


class CpuLedger:
    """CPU seconds spent by each group of processes between ``start()`` and ``stop()``. A process that exits in
    between is lost (its time cannot be read after it is gone), which is why benchmarks stop services afterwards."""

    def __init__(self) -> None:
        self._before: dict[int, tuple[str, float]] = {}
        self.seconds: dict[str, float] = {}

    def start(self) -> None:
        self._before = _snapshot()

    def stop(self) -> dict[str, float]:
        spent: dict[str, float] = defaultdict(float)
        for pid, (group, cpu) in _snapshot().items():
            spent[group] += cpu - self._before.get(pid, (group, 0.0))[1]
        self.seconds = dict(sorted(spent.items(), key=lambda kv: -kv[1]))
        return self.seconds

    def per_page_ms(self, pages: int) -> str:
        """One line: milliseconds of CPU per page by group, largest first."""
        total = sum(self.seconds.values())
        parts = [f"{g} {s * 1000 / pages:.2f}" for g, s in self.seconds.items() if s * 1000 / pages >= 0.01]
        return f"{total * 1000 / pages:.2f} ms CPU/page: " + ", ".join(parts)
