"""The local test website every scrape test visits, served on 127.0.0.1 from a thread of its own.

It records what it was asked for, so tests can assert on what reached it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from aiohttp import web

PAGE = """<!doctype html>
<html lang="en"><head><title>{title}</title>
<meta name="description" content="A page of the trawl test site">
<meta property="og:title" content="OG {title}">
<link rel="canonical" href="/canonical/{title}"></head>
<body><h1>{title}</h1><p>Plain text that any fetcher sees.</p>
<a href="/page/2">two</a> <a href="/page/2#frag">two again</a> <a href="https://example.org/x">away</a>
<a href="mailto:someone@example.org">mail</a>
<div id="dynamic"></div>
<script>document.getElementById('dynamic').textContent = 'Written by JavaScript ' + (6 * 7);</script>
</body></html>"""


def build_app(hits: Counter[str]) -> web.Application:
    async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
        hits[request.path] += 1
        return await handler(request)

    app = web.Application(middlewares=[web.middleware(count)])

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE.format(title=f"Page {request.match_info['n']}"), content_type="text/html")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "30")))
        return web.Response(text="<title>late</title>", content_type="text/html")

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"<title>{code}</title>", content_type="text/html")

    async def redirect_loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app.router.add_get("/page/{n}", page)
    app.router.add_get("/slow", slow)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/loop", redirect_loop)
    return app


class LocalSite:
    """Serves the test site until ``stop()``; ``url(path)`` gives an absolute address on it."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-site", daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(build_app(self.hits), access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def start(self) -> LocalSite:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"
