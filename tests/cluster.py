"""Running ``trawl up`` as a user would, in a subprocess, and talking to it over HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

TRAWL = str(Path(sys.executable).parent / "trawl")


def cluster_env(ports: dict[str, int], data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({f"TRAWL_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env["TRAWL_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def start_trawl_up(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen([TRAWL, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_until_up(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "trawl is up" in log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"trawl up did not come up:\n{log_path.read_text(errors='replace')[-5000:]}")


def stop_trawl_up(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


async def submit(session: aiohttp.ClientSession, **body: Any) -> str:
    async with session.post("/v1/jobs", json=body) as resp:
        answer = await resp.json()
        assert resp.status == 202, answer
    return str(answer["id"])


async def wait_for_job(session: aiohttp.ClientSession, job_id: str, within_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        async with session.get(f"/v1/jobs/{job_id}") as resp:
            if resp.status == 200:
                job: dict[str, Any] = await resp.json()
                if job["status"] in ("succeeded", "failed"):
                    return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end within {within_s} s")
