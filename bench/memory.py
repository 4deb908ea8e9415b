"""Memory of a process tree over time: total RSS and PSS of a process and all its descendants, sampled by a thread."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import psutil


class TreeSampler:
    """Samples ``pid`` and its descendants every ``interval_s`` seconds while in use as a (sync) context manager.

    RSS counts shared pages (Chromium's shared libraries, shared memory) once per process; PSS splits each shared
    page between the processes that map it, so summing PSS over a tree does not overcount. PSS needs root.
    ``include_root=False`` leaves ``pid`` itself out (e.g. to measure what a driver process launched, not the
    driver). After use: ``peak_rss``, ``peak_pss`` (bytes), ``samples`` of (monotonic time, rss, pss), and
    ``marks`` of (monotonic time, label) recorded by ``mark``.
    """

    def __init__(self, pid: int, interval_s: float = 0.25, *, include_root: bool = True) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.include_root = include_root
        self.peak_rss = 0
        self.peak_pss = 0
        self.samples: list[tuple[float, int, int]] = []
        self.marks: list[tuple[float, str]] = []
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> tuple[int, int]:
        """One sample now: (total RSS, total PSS) of the tree, in bytes; also recorded in ``samples``."""
        try:
            procs = self._root.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        if self.include_root:
            procs.insert(0, self._root)
        rss = pss = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # exited between listing the tree and reading its memory
            rss += int(info.rss)
            pss += int(info.pss)
        self.samples.append((time.monotonic(), rss, pss))
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        return rss, pss

    def mark(self, label: str) -> None:
        """Record ``label`` at the current time, to relate samples to a caller's phases."""
        self.marks.append((time.monotonic(), label))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self.sample()  # a first sample at once, so even a short block has one
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"tree-sampler-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()
