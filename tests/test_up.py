"""``trawl up`` from nothing: embedded PostgreSQL and Valkey, five services, and a clean stop on Ctrl-C."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.cluster import cluster_env, start_trawl_up, stop_trawl_up, submit, wait_for_job, wait_until_up
from tests.conftest import free_port
from tests.site import LocalSite

SERVICES = ("gateway", "scraper", "storage", "archival", "metrics")


def _processes_of(data_dir: Path, root_pid: int) -> list[psutil.Process]:
    """Everything trawl up started: its descendants, and servers that mention its data dir (PostgreSQL detaches)."""
    found: dict[int, psutil.Process] = {}
    try:
        for child in psutil.Process(root_pid).children(recursive=True):
            found[child.pid] = child
    except psutil.NoSuchProcess:
        pass
    for proc in psutil.process_iter(["cmdline"]):
        if str(data_dir) in " ".join(proc.info["cmdline"] or []):
            found[proc.pid] = proc
    return list(found.values())


@pytest.mark.timeout(180)
async def test_trawl_up_runs_from_nothing_and_stops_cleanly_on_sigint(tmp_path: Path, site: LocalSite) -> None:
    ports = {name: free_port() for name in SERVICES}
    data_dir = tmp_path / "data"
    log = tmp_path / "trawl-up.log"
    proc = start_trawl_up(cluster_env(ports, data_dir), log)
    try:
        wait_until_up(proc, log)
        assert (data_dir / "postgres").is_dir() and (data_dir / "valkey").is_dir()
        started = _processes_of(data_dir, proc.pid)
        # Five services, PostgreSQL and Valkey at least.
        assert len(started) >= 7, [p.cmdline() for p in started]

        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{ports['gateway']}") as gateway:
            job_id = await submit(gateway, url=site.url("/page/up"), render="browser")
            job = await wait_for_job(gateway, job_id)
        assert job["status"] == "succeeded", job
        # Chromium was launched under the scraper; it must go too.
        assert any("chrom" in p.name().lower() for p in _processes_of(data_dir, proc.pid))
        started = _processes_of(data_dir, proc.pid)
    finally:
        code = stop_trawl_up(proc)

    assert code == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "trawl: stopped" in text
    assert "Traceback" not in text, text[-3000:]
    _, left = await asyncio.to_thread(psutil.wait_procs, started, timeout=5)
    left = [p for p in left if p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]
