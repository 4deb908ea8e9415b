"""The benchmark website: N deterministic pages at ``/p/{i}`` built from precomputed pieces, served by a process of
its own (``python -m bench.site --port 0 --pages N`` prints its port; ``site_process(pages)`` runs it for you)."""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web
from PIL import Image, ImageDraw

VARIANTS = 256  # distinct page bodies; page i uses variant _variant(i)
LINKS_PER_PAGE = 20
IMAGES = 10
IMAGES_PER_PAGE = 3
MIN_BODY, MAX_BODY = 9_000, 55_000  # body bytes; header, links and footer bring pages to 10-60 KB
REPO = Path(__file__).resolve().parent.parent
WORDS = (
    "harbour net trawl catch tide vessel crew deck winch cable sonar shoal herring cod mackerel haddock plaice "
    "storm swell gale calm dawn dusk lantern buoy anchor keel hull mast sail rope knot chart compass bearing "
    "north south east west quay market auction ice crate salt brine smoke kipper skipper mate engine diesel "
    "radio forecast pressure front squall drizzle fog horn lighthouse beacon reef sandbank current eddy"
).split()
CSS = "\n".join(
    [
        "body { font-family: Georgia, serif; margin: 0 auto; max-width: 52rem; line-height: 1.5; color: #222; }",
        "header, footer { background: #f4f1ea; padding: 1rem 2rem; }",
        "nav a { margin-right: .5rem; color: #14507a; text-decoration: none; }",
        "nav a:hover { text-decoration: underline; }",
        "main { padding: 1rem 2rem; } main img { float: right; margin: 0 0 1rem 1rem; width: 48px; height: 48px; }",
        "h1 { font-size: 2rem; } h2 { font-size: 1.3rem; border-bottom: 1px solid #ddd; }",
        "#ready { font-weight: bold; color: #0a6b2d; }",
    ]
    + [f".c{n} {{ color: #{(n * 2654435761) % 0xFFFFFF:06x}; margin-left: {n % 7}px; }}" for n in range(120)]
).encode()
ROBOTS = b"User-agent: *\nAllow: /\n"
HTML = {"Content-Type": "text/html; charset=utf-8"}
# Static files may be cached by browsers, so the cache-on and cache-off isolation designs really differ.
CSS_HEADERS = {"Content-Type": "text/css", "Cache-Control": "public, max-age=3600"}
PNG_HEADERS = {"Content-Type": "image/png", "Cache-Control": "public, max-age=3600"}
TEXT_HEADERS = {"Content-Type": "text/plain"}


def _variant(i: int) -> int:
    # A multiplicative hash spreads neighbouring pages over the variants without any per-request randomness.
    return ((i * 2654435761) >> 7) % VARIANTS


def _paragraphs(rng: random.Random, size: int) -> list[str]:
    out: list[str] = []
    total = 0
    while total < size:
        para = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120)))
        out.append(para.capitalize() + ".")
        total += len(para) + 20
    return out


def _body(v: int) -> tuple[bytes, bytes]:
    """Variant ``v``: its static HTML body, and the paragraphs the script writes on script-rendered pages (as the
    inside of a JavaScript string literal)."""
    rng = random.Random(10_000 + v)
    paras = _paragraphs(rng, rng.randint(MIN_BODY, MAX_BODY))
    html = []
    for n, para in enumerate(paras):
        if n % 6 == 0:
            html.append(f'<h2 class="c{rng.randrange(120)}">{" ".join(para.split()[:4])}</h2>')
        html.append(f'<p class="c{rng.randrange(120)}">{para}</p>')
    scripted = "".join(f"<p>{p}</p>" for p in _paragraphs(rng, 1500))  # words only: safe inside '...'
    return "\n".join(html).encode(), scripted.encode()


def _png(k: int) -> bytes:
    image = Image.new("RGB", (48, 48), ((k * 70) % 256, (k * 130) % 256, (k * 200) % 256))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 40, 40), fill=(255 - (k * 25) % 256, 200, 40 + k * 20))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class Site:
    """The precomputed pieces of an ``pages``-page site, and the request handler that joins them."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        bodies = [_body(v) for v in range(VARIANTS)]
        self._bodies = [b for b, _ in bodies]
        self._scripted = [s for _, s in bodies]
        self._images = [
            "".join(
                f'<img src="/img/{(k + 3 * n) % IMAGES}.png" alt="figure {n}">' for n in range(IMAGES_PER_PAGE)
            ).encode()
            for k in range(IMAGES)
        ]
        self._static: dict[str, tuple[bytes, dict[str, str]]] = {
            "/static/site.css": (CSS, CSS_HEADERS),
            "/robots.txt": (ROBOTS, TEXT_HEADERS),
            **{f"/img/{k}.png": (_png(k), PNG_HEADERS) for k in range(IMAGES)},
        }

    def page(self, i: int) -> bytes:
        """Page ``i``'s HTML: a join of precomputed bytes and a few short strings."""
        v = _variant(i)
        links = " ".join(
            f'<a href="/p/{j}">Page {j}</a>'
            for j in ((i * 17 + k * 7919 + 1) % self.pages for k in range(LINKS_PER_PAGE))
        )
        if i % 4:
            ready = f'<p id="ready">Page {i} ready</p>'.encode()
            tail = b""
        else:
            # The ready text is assembled by the script, so it is nowhere in the HTML that plain HTTP gets.
            ready = b'<div id="app"></div>'
            script = (
                f"<script>var n = {i};\n"
                "window.addEventListener('load', function () {\n"
                "  document.getElementById('app').innerHTML = '<p id=\"ready\">Page ' + n + ' ready</p>' + '"
            )
            tail = b"".join((script.encode(), self._scripted[v], b"';\n});\n</script>"))
        head = (
            f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Page {i}</title>'
            f'<link rel="stylesheet" href="/static/site.css"></head>\n<body><header><h1>Page {i}</h1>'
            f"<nav>{links}</nav></header>\n<main>"
        ).encode()
        return b"".join(
            (
                head,
                ready,
                self._images[i % IMAGES],
                self._bodies[v],
                b"</main>\n<footer>trawl benchmark site</footer>",
                tail,
                b"</body></html>\n",
            )
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/p/"):
            number = path[3:]
            if number.isdigit() and (i := int(number)) < self.pages:
                return web.Response(body=self.page(i), headers=HTML)
        elif (static := self._static.get(path)) is not None:
            return web.Response(body=static[0], headers=static[1])
        return web.Response(status=404, body=b"not found", headers=TEXT_HEADERS)


def make_app(pages: int) -> web.Application:
    """The site as an ``aiohttp`` application, for use in-process (tests); the benchmark process uses ``serve``."""
    app = web.Application()
    app.router.add_get("/{path:.*}", Site(pages).handle)
    return app


async def serve(port: int, pages: int) -> None:
    """Serve the site on 127.0.0.1:``port`` (0: any free port), print the bound port, and run until killed."""
    site = Site(pages)
    # The low-level server skips the application's router and middleware chain: less CPU per request.
    server = web.Server(site.handle, access_log=None)
    runner = web.ServerRunner(server, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    await web.SockSite(runner, sock, backlog=1024).start()
    print(sock.getsockname()[1], flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def start_site(pages: int, timeout: float = 30.0) -> tuple[str, subprocess.Popen[bytes]]:
    """Start the site in a separate process; return its base URL (no trailing slash) once it answers, and the
    process (the caller terminates it; ``site_process`` does that for you)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.site", "--port", "0", "--pages", str(pages)], stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"benchmark site did not start (exit code {proc.poll()})")
        base = f"http://127.0.0.1:{int(line)}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy: 127.0.0.1 only
        deadline = time.monotonic() + timeout
        while True:
            try:
                with opener.open(f"{base}/robots.txt", timeout=2) as resp:
                    resp.read()
                return base, proc
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


@contextmanager
def site_process(pages: int) -> Iterator[str]:
    """The site's base URL for the duration of the block; the process is terminated on exit."""
    base, proc = start_site(pages)
    try:
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def page_urls(base: str, count: int, first: int = 0) -> list[str]:
    """The URLs of pages ``first`` .. ``first + count - 1`` of the site at ``base``."""
    return [f"{base}/p/{i}" for i in range(first, first + count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--pages", type=int, default=20_000, help="number of pages, /p/0 .. /p/N-1")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.pages))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
