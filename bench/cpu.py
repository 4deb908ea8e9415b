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
        # Children's times too: Chromium's renderers come and go with browser contexts, and the time of one that
        # exited is added to its parent's when the parent reaps it.
        out[proc.pid] = (group, times.user + times.system + times.children_user + times.children_system)
    return out


def _machine_busy() -> float:
    times = psutil.cpu_times()
    busy: float = times.user + times.nice + times.system + times.irq + times.softirq + getattr(times, "steal", 0.0)
    return busy


class CpuLedger:
    """CPU seconds spent by each group of processes between ``start()`` and ``stop()``. A process that exits in
    between is lost (its time cannot be read after it is gone), which is why benchmarks stop services afterwards."""

    def __init__(self) -> None:
        self._before: dict[int, tuple[str, float]] = {}
        self._busy_before = 0.0
        self.seconds: dict[str, float] = {}
        self.machine_seconds = 0.0

    def start(self) -> None:
        self._before = _snapshot()
        self._busy_before = _machine_busy()

    def stop(self) -> dict[str, float]:
        spent: dict[str, float] = defaultdict(float)
        for pid, (group, cpu) in _snapshot().items():
            spent[group] += cpu - self._before.get(pid, (group, 0.0))[1]
        self.seconds = dict(sorted(spent.items(), key=lambda kv: -kv[1]))
        self.machine_seconds = _machine_busy() - self._busy_before
        return self.seconds

    def per_page_ms(self, pages: int) -> str:
        """One line: milliseconds of CPU per page by group, largest first."""
        parts = [f"{g} {s * 1000 / pages:.2f}" for g, s in self.seconds.items() if s * 1000 / pages >= 0.01]
        return f"{self.machine_seconds * 1000 / pages:.2f} ms CPU/page on the machine: " + ", ".join(parts)
