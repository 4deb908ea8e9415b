"""The ``trawl`` command: run the cluster on this machine, submit pages to it, check the browser."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
import click
from tqdm import tqdm

from shared.settings import Settings

_TERMINAL = ("succeeded", "failed")


@click.group()
def main() -> None:
    """trawl: a scraping cluster."""


@main.command()
def up() -> None:
    """Start the whole cluster here (embedded PostgreSQL and Valkey unless DATABASE_URL / REDIS_URL are set)."""
    from shared.cluster import up as run_up

    try:
        code = run_up(Settings())
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


@main.command()
def browser() -> None:
    """Say which Chromium trawl will use, or how to get one."""
    from playwright.sync_api import sync_playwright

    from shared.browser import find_browser
    from shared.errors import BrowserUnavailable

    settings = Settings()
    with sync_playwright() as pw:
        own = pw.chromium.executable_path
        try:
            path = find_browser(settings.browser_path, own, headless=settings.browser_headless)
        except BrowserUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(path or own)


def _gateway_url() -> str:
    settings = Settings()
    return f"http://{settings.host}:{settings.gateway_port}"


@main.command()
@click.argument("urls", nargs=-1, required=True)
@click.option(
    "--render",
    type=click.Choice(["auto", "http", "browser"]),
    default="auto",
    show_default=True,
    help="auto: plain HTTP, and the browser only for pages that need JavaScript.",
)
@click.option(
    "--format",
    "formats",
    multiple=True,
    help="html, raw_html, text, markdown, links, metadata, screenshot, pdf (repeat for several)",
)
@click.option("--wait", is_flag=True, help="Show progress until every job ends, then a summary.")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds --wait waits at most.")
@click.option("--gateway", envvar="TRAWL_GATEWAY_URL", default=_gateway_url, show_default="from settings")
def submit(
    urls: tuple[str, ...], render: str, formats: tuple[str, ...], wait: bool, timeout: float, gateway: str
) -> None:
    """Submit URLS to the gateway: one URL as a job, several as a batch."""
    body: dict[str, Any] = {"render": render} | ({"formats": list(formats)} if formats else {})
    sys.exit(asyncio.run(_submit(gateway.rstrip("/"), list(urls), body, wait, timeout)))


async def _post(session: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    try:
        async with session.post(path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)
    except aiohttp.ClientConnectionError as exc:
        raise click.ClickException(f"cannot reach the gateway: {exc}") from exc


def _problem(answer: dict[str, Any]) -> str:
    errors = answer.get("errors") or []
    details = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors)
    return f"{answer.get('detail', answer)}" + (f" ({details})" if details else "")


async def _submit(gateway: str, urls: list[str], body: dict[str, Any], wait: bool, wait_s: float) -> int:
    async with aiohttp.ClientSession(base_url=gateway) as session:
        if len(urls) == 1:
            status, answer = await _post(session, "/v1/jobs", {"url": urls[0], **body})
        else:
            status, answer = await _post(session, "/v1/batches", {"urls": urls, **body})
        if status not in (200, 202):
            raise click.ClickException(f"rejected: {_problem(answer)}")
        kind = "job" if len(urls) == 1 else f"batch of {answer['total']}"
        click.echo(f"{answer['status']:<9} {kind} {answer['id']}")
        if not wait:
            return 0
        jobs = await (_wait_job(session, answer["id"], wait_s) if len(urls) == 1
                      else _wait_batch(session, answer["id"], len(urls), wait_s))  # fmt: skip

    finished = [j for j in jobs if j["status"] in _TERMINAL]
    failed = [j for j in finished if j["status"] == "failed"]
    for job in failed[:50]:
        click.echo(f"failed    {job['id']}  {job['url']}  {job['error']}")
    if len(failed) > 50:
        click.echo(f"… and {len(failed) - 50} more failed")
    unfinished = len(urls) - len(finished)
    succeeded = len(finished) - len(failed)
    click.echo(f"{succeeded} succeeded, {len(failed)} failed, {unfinished} unfinished")
    if succeeded and len(urls) == 1:
        click.echo(f"result: {gateway}/v1/jobs/{jobs[0]['id']}/result")
    return 0 if not failed and not unfinished else 1


async def _wait_job(session: aiohttp.ClientSession, job_id: str, wait_s: float) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    with tqdm(total=1, unit="job", desc="scraping") as bar:
        while True:
            async with session.get(f"/v1/jobs/{job_id}") as resp:
                job: dict[str, Any] = await resp.json()
            if job["status"] in _TERMINAL or loop.time() > deadline:
                bar.update(1 if job["status"] in _TERMINAL else 0)
                return [job]
            await asyncio.sleep(0.25)


async def _wait_batch(session: aiohttp.ClientSession, batch_id: str, total: int, wait_s: float) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    with tqdm(total=total, unit="page", desc="scraping") as bar:
        while loop.time() < deadline:
            async with session.get(f"/v1/batches/{batch_id}") as resp:
                batch = await resp.json()
            done = batch["counts"]["succeeded"] + batch["counts"]["failed"]
            bar.update(done - bar.n)
            if batch["status"] == "done":
                break
            await asyncio.sleep(0.5)
    jobs: list[dict[str, Any]] = []
    after = ""
    while True:
        async with session.get(
            f"/v1/batches/{batch_id}/jobs", params={"limit": "1000", **({"after": after} if after else {})}
        ) as resp:
            page = await resp.json()
        jobs += page["items"]
        if not page["next_after"]:
            return jobs
        after = page["next_after"]
