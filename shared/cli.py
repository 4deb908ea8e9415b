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
            path = find_browser(settings.browser_path, own)
        except BrowserUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(path or own)


def _gateway_url() -> str:
    settings = Settings()
    return f"http://{settings.host}:{settings.gateway_port}"


@main.command()
@click.argument("urls", nargs=-1, required=True)
@click.option("--render", type=click.Choice(["http", "browser"]), default="http", show_default=True)
@click.option("--format", "formats", multiple=True, help="html, raw_html, text, markdown, links, metadata")
@click.option("--wait", is_flag=True, help="Show progress until every job ends, then a summary.")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds --wait waits at most.")
@click.option("--gateway", envvar="TRAWL_GATEWAY_URL", default=_gateway_url, show_default="from settings")
def submit(
    urls: tuple[str, ...], render: str, formats: tuple[str, ...], wait: bool, timeout: float, gateway: str
) -> None:
    """Submit URLS to the gateway as scrape jobs."""
    code = asyncio.run(_submit(gateway.rstrip("/"), urls, render, formats, wait, timeout))
    sys.exit(code)


async def _submit(
    gateway: str, urls: tuple[str, ...], render: str, formats: tuple[str, ...], wait: bool, wait_s: float
) -> int:
    async with aiohttp.ClientSession(base_url=gateway) as session:
        jobs: list[dict[str, Any]] = []
        rejected = 0
        for url in urls:
            body: dict[str, Any] = {"url": url, "render": render}
            if formats:
                body["formats"] = list(formats)
            try:
                async with session.post("/v1/jobs", json=body) as resp:
                    answer = await resp.json(content_type=None)
            except aiohttp.ClientConnectionError as exc:
                raise click.ClickException(f"cannot reach the gateway at {gateway}: {exc}") from exc
            if resp.status != 202:
                rejected += 1
                click.echo(f"rejected {url}: {answer.get('detail', answer)}", err=True)
                continue
            jobs.append(answer)
            click.echo(f"queued   {answer['id']}  {url}")
        if not wait or not jobs:
            return 1 if rejected else 0

        states: dict[str, dict[str, Any]] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        with tqdm(total=len(jobs), unit="job", desc="scraping") as bar:
            while len(states) < len(jobs) and loop.time() < deadline:
                for job in jobs:
                    if job["id"] in states:
                        continue
                    async with session.get(f"/v1/jobs/{job['id']}") as resp:
                        state = await resp.json()
                    if state["status"] in _TERMINAL:
                        states[job["id"]] = state
                        bar.update(1)
                await asyncio.sleep(0.25)

        succeeded = sum(1 for s in states.values() if s["status"] == "succeeded")
        failed = [s for s in states.values() if s["status"] == "failed"]
        unfinished = len(jobs) - len(states)
        for state in states.values():
            timing = state["timings"]["total_ms"]
            line = f"{state['status']:<9} {state['id']}  {state['url']}  {timing} ms"
            click.echo(line + (f"  {state['error']}" if state["error"] else ""))
        click.echo(
            f"{succeeded} succeeded, {len(failed)} failed, {unfinished} unfinished, {rejected} rejected"
            + (f"; results at {gateway}/v1/jobs/<id>/result" if succeeded else "")
        )
        return 0 if not failed and not unfinished and not rejected else 1
