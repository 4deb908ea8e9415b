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
        n = request.match_info["n"]
        return web.Response(text=PAGE.format(title=f"Page {n}"), content_type="text/html", headers={"X-Page": n})

    async def page_private(request: web.Request) -> web.Response:
        return web.Response(text="<title>private</title>", content_type="text/html")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "30")))
        return web.Response(text="<title>late</title>", content_type="text/html")

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"<title>{code}</title>", content_type="text/html")

    async def redirect_loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /private\n")

    async def html(body: str, status: int = 200, **headers: str) -> web.Response:
        return web.Response(text=body, status=status, content_type="text/html", headers=headers)

    async def spa(request: web.Request) -> web.Response:
        return await html(
            '<html><head><title>SPA</title></head><body><div id="root"></div><script>'
            "document.getElementById('root').innerHTML ="
            " '<h1>Rendered by the app</h1><p>' + 'word '.repeat(80) + '</p>'"
            "</script></body></html>"
        )

    async def js_loop(request: web.Request) -> web.Response:
        return await html("<html><title>loop</title><body>before<script>while (true) {}</script></body></html>")

    async def huge(request: web.Request) -> web.StreamResponse:
        # 100 MB of HTML, streamed without a Content-Length, as a page that never stops would be.
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        await resp.prepare(request)
        chunk = b"<p>" + b"x" * (1 << 20) + b"</p>"
        try:
            for _ in range(100):
                await resp.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client gave up, as it should
        return resp

    async def binary(request: web.Request) -> web.Response:
        noise = bytes((i * 7919 + 13) % 256 for i in range(64 * 1024))
        return web.Response(body=noise, headers={"Content-Type": "text/html; charset=utf-8"})

    async def odd_charset(request: web.Request) -> web.Response:
        body = (
            "<html><title>Größe</title><body>Grüße aus Köln, a page in UTF-8 with a charset nobody knows</body></html>"
        )
        return web.Response(body=body.encode(), headers={"Content-Type": "text/html; charset=x-nonsense"})

    async def latin1(request: web.Request) -> web.Response:
        body = (
            '<html><head><meta charset="iso-8859-1"><title>Caf\xe9</title></head>'
            "<body>cr\xe8me br\xfbl\xe9e</body></html>"
        )
        return web.Response(body=body.encode("latin-1"), headers={"Content-Type": "text/html"})

    async def flaky(request: web.Request) -> web.Response:
        """Fails the first ``fail`` times for each ``key`` (with a Retry-After when ``after`` is given)."""
        key = request.query["key"]
        failures[key] += 1
        if failures[key] <= int(request.query.get("fail", "2")):
            status = int(request.query.get("status", "503"))
            extra = {"Retry-After": request.query["after"]} if "after" in request.query else {}
            return await html("<title>busy</title>", status=status, **extra)
        return await html(f"<html><title>ok after {failures[key] - 1}</title><body>{'fine ' * 60}</body></html>")

    async def state(request: web.Request) -> web.Response:
        """Reports the cookies and storage a page can see, then leaves some behind for the next job."""
        return await html(
            "<html><title>state</title><body><pre id=seen></pre><script>"
            "document.getElementById('seen').textContent = 'cookie=[' + document.cookie + '] local=[' +"
            " (localStorage.getItem('k') || '') + '] session=[' + (sessionStorage.getItem('k') || '') + '] name=[' +"
            " window.name + '] webdriver=[' + navigator.webdriver + '] platform=[' + navigator.platform + ']';"
            "document.cookie = 'k=left-behind; path=/'; localStorage.setItem('k', 'left-behind');"
            "sessionStorage.setItem('k', 'left-behind'); window.name = 'left-behind';"
            "</script></body></html>"
        )

    async def installs_worker(request: web.Request) -> web.Response:
        """Installs a service worker that answers /state itself, for as long as it stays registered."""
        return await html(
            "<html><title>worker</title><body><p id=w>installing</p><script>"
            "navigator.serviceWorker.register('/worker.js').then(() => navigator.serviceWorker.ready)"
            ".then(() => { document.getElementById('w').textContent = 'worker ready'; });"
            "</script></body></html>"
        )

    async def worker_js(request: web.Request) -> web.Response:
        script = (
            "self.addEventListener('install', () => self.skipWaiting());"
            "self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));"
            "self.addEventListener('fetch', (e) => { if (new URL(e.request.url).pathname === '/state')"
            " e.respondWith(new Response('<title>state</title><p>cookie=[from-a-worker]</p>',"
            " {headers: {'Content-Type': 'text/html'}})); });"
        )
        return web.Response(text=script, content_type="application/javascript")

    async def download(request: web.Request) -> web.Response:
        return web.Response(
            body=b"%PDF-1.4 not really", content_type="application/pdf",
            headers={"Content-Disposition": "attachment; filename=report.pdf"},
        )  # fmt: skip

    async def meta_refresh(request: web.Request) -> web.Response:
        """Sends the browser on to another page (``?to=``) with a meta refresh, after a pause (``?delay=``, 1 s), as
        old redirects do."""
        to = request.query.get("to", "/page/after-refresh")
        delay = request.query.get("delay", "1")
        return await html(
            f"<html><head><title>moved</title><meta content='{delay}; url={to}' http-equiv='refresh'>"
            "</head><body><p>This page has moved.</p></body></html>"
        )

    async def script_hop(request: web.Request) -> web.Response:
        """Sends the browser on with a script as soon as it has loaded."""
        return await html(
            "<html><title>hop</title><body><p>one moment</p><script>"
            "addEventListener('load', () => location.replace('/page/after-hop'));</script></body></html>"
        )

    async def popups(request: web.Request) -> web.Response:
        """Opens windows that, a moment later (after the job has ended), leave a cookie and local storage behind."""
        return await html(
            "<html><title>popups</title><body><p>opening windows</p><script>"
            "for (let i = 0; i < 3; i++) window.open('/popup-left?n=' + i);"
            "</script></body></html>"
        )

    async def lingers(request: web.Request) -> web.Response:
        """Leaves a cookie and storage behind after its job has ended: from a timer that keeps running while the
        page is open, and from its pagehide handler as it is left."""
        leave = (
            "document.cookie = 'k=' + why + '; path=/'; localStorage.setItem('k', why);"
            "sessionStorage.setItem('k', why); window.name = why;"
        )
        return await html(
            "<html><title>lingering</title><body><p>still here</p><script>"
            f"setInterval(() => {{ const why = 'timer'; {leave} }}, 20);"
            f"addEventListener('pagehide', () => {{ const why = 'pagehide'; {leave} }});"
            "</script></body></html>"
        )

    async def traps_leaving(request: web.Request) -> web.Response:
        """A page whose pagehide handler never returns: the tab cannot leave it."""
        return await html(
            f"<html><title>trap</title><body><p>{'text ' * 60}</p><script>"
            "addEventListener('pagehide', () => { for (;;) {} });</script></body></html>"
        )

    async def popup_left(request: web.Request) -> web.Response:
        return await html(
            "<html><title>popup</title><body><script>setTimeout(() => {"
            "document.cookie = 'k=from-a-popup; path=/'; localStorage.setItem('k', 'from-a-popup');"
            "}, 300);</script></body></html>"
        )

    async def cookies_seen(request: web.Request) -> web.Response:
        """Says which cookies the request carried, and sets one for whoever comes next (over plain HTTP)."""
        seen = ";".join(f"{k}={v}" for k, v in sorted(request.cookies.items()))
        resp = await html(f"<html><title>cookies</title><body><p>cookies=[{seen}]</p>{'text ' * 60}</body></html>")
        resp.set_cookie("left", "behind", path="/")
        return resp

    async def cookie_hop(request: web.Request) -> web.Response:
        """Sets a cookie and redirects to /cookies, as a login or consent hop does."""
        resp = web.HTTPFound("/cookies")
        resp.set_cookie("hop", "1", path="/")
        raise resp

    failures: Counter[str] = Counter()
    app.router.add_get("/cookies", cookies_seen)
    app.router.add_get("/cookie-hop", cookie_hop)
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/private/{tail:.*}", page_private)
    app.router.add_get("/spa", spa)
    app.router.add_get("/jsloop", js_loop)
    app.router.add_get("/huge", huge)
    app.router.add_get("/binary", binary)
    app.router.add_get("/odd-charset", odd_charset)
    app.router.add_get("/latin1", latin1)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/state", state)
    app.router.add_get("/popups", popups)
    app.router.add_get("/meta-refresh", meta_refresh)
    app.router.add_get("/download", download)
    app.router.add_get("/installs-worker", installs_worker)
    app.router.add_get("/worker.js", worker_js)
    app.router.add_get("/script-hop", script_hop)
    app.router.add_get("/lingers", lingers)
    app.router.add_get("/popup-left", popup_left)
    app.router.add_get("/traps-leaving", traps_leaving)
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
        # A handler whose client hung up is cancelled, as a /slow page sleeping for a minute is once its scraper
        # gives up; stopping the site would otherwise wait for it.
        runner = web.AppRunner(build_app(self.hits), access_log=None, handler_cancellation=True, shutdown_timeout=1)
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
