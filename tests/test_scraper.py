"""The scraper engine on real Chromium, Valkey and PostgreSQL against the local test site: render modes, formats,
retries, robots, hostile pages, isolation, and a browser pool that survives crashes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import psutil
import pytest
import trustme
from aiohttp import web
from PIL import Image
from prometheus_client import REGISTRY

from services.scraper.fetch import refresh_delay
from services.scraper.worker import Deps, open_deps, scrape_one
from shared.browser import HEADLESS_SHELLS, BrowserPool, PageOptions, find_browser
from shared.errors import BrowserCrashed, BrowserUnavailable
from shared.queues import ScrapeRequest, ScrapeResult, create_queue_pool
from shared.settings import Settings
from tests.site import LocalSite


@pytest.fixture(scope="module")
async def deps(settings: Settings) -> AsyncIterator[Deps]:
    tuned = settings.model_copy(
        update={"browser_concurrency": 2, "browser_call_timeout_s": 5, "domain_concurrency": 8, "http_concurrency": 8}
    )
    async with AsyncExitStack() as stack:
        queue = await create_queue_pool(tuned)
        stack.push_async_callback(queue.aclose)
        yield await open_deps(stack, tuned, queue, "scraper-tests")


async def scrape(deps: Deps, url: str, **options: Any) -> ScrapeResult:
    return await scrape_one(deps, ScrapeRequest.model_validate({"url": url, **options}))


async def test_auto_uses_http_when_the_html_has_the_content(deps: Deps, site: LocalSite) -> None:
    result = await scrape(deps, site.url("/flaky?key=auto-static&fail=0"))
    assert result.outcome == "succeeded", result.error
    assert result.render_used == "http" and result.render_reason == "the HTML has the content"


async def test_auto_renders_pages_whose_content_javascript_writes(deps: Deps, site: LocalSite) -> None:
    result = await scrape(deps, site.url("/spa"), formats=["text"])
    assert result.outcome == "succeeded", result.error
    assert result.render_used == "browser" and "application root" in (result.render_reason or "")
    assert "Rendered by the app" in (result.text or "")


async def test_pages_that_send_the_browser_on_are_read_where_they_land(deps: Deps, site: LocalSite) -> None:
    # A meta refresh due in a second is waited for; auto sees it in the HTML and takes the browser.
    for render in ("browser", "auto"):
        moved = await scrape(deps, site.url("/meta-refresh"), render=render, formats=["text"])
        assert moved.outcome == "succeeded", moved.error
        assert moved.final_url == site.url("/page/after-refresh") and moved.title == "Page after-refresh"
        assert moved.render_used == "browser" and moved.status_code == 200
        # the landing page's own headers, not those of the page that sent the tab on
        assert {k.lower(): v for k, v in (moved.headers or {}).items()}.get("x-page") == "after-refresh"
    assert "meta refresh" in (moved.render_reason or "")
    # A script that sends the tab on as the page loads: the page read is the one it went to.
    # (Reading it had failed every time: "Execution context was destroyed".)
    for _ in range(5):
        hopped = await scrape(deps, site.url("/script-hop"), render="browser", formats=["text"])
        assert hopped.outcome == "succeeded", hopped.error
        assert hopped.final_url == site.url("/page/after-hop") and hopped.title == "Page after-hop"
        assert (hopped.headers or {}).get("x-page") == "after-hop"
    # Sent on to an error page: the job fails with the status of the page it landed on.
    lost = await scrape(deps, site.url("/meta-refresh?to=/status/404"), render="browser", formats=["text"])
    assert lost.outcome == "failed" and f"HTTP 404 from {site.url('/status/404')}" in (lost.error or ""), lost.error
    # A refresh due after the job's budget is spent is not waited for: the page is read as it stands.
    late = await scrape(deps, site.url("/meta-refresh?delay=4"), render="browser", timeout_s=3, formats=["text"])
    assert late.outcome == "succeeded" and late.title == "moved", late.error
    # Over plain HTTP a meta refresh is not followed: the page is what the server sent.
    plain = await scrape(deps, site.url("/meta-refresh"), render="http", formats=["text"])
    assert plain.outcome == "succeeded" and plain.title == "moved"


@pytest.mark.parametrize(
    ("head", "delay"),
    [
        ("<meta http-equiv='refresh' content='0; url=/next'>", 0.0),
        ('<meta content="2.5;URL=\'https://example.com/\'" http-equiv="Refresh">', 2.5),
        ("<META HTTP-EQUIV=refresh CONTENT='10, url=/later'>", 10.0),
        ("<meta http-equiv='refresh' content='30'>", None),  # reloads itself: it goes nowhere else
        ("<meta name='description' content='0; url=/not-a-refresh'>", None),
    ],
)
def test_meta_refresh_delay_is_read_from_the_tag(head: str, delay: float | None) -> None:
    assert refresh_delay(f"<html><head>{head}</head><body></body></html>") == delay


async def test_http_mode_never_runs_javascript(deps: Deps, site: LocalSite) -> None:
    result = await scrape(deps, site.url("/spa"), render="http", formats=["text"])
    assert result.outcome == "succeeded" and result.render_used == "http"
    assert "Rendered by the app" not in (result.text or "")


async def test_screenshot_fits_its_target_and_pdf_is_a_pdf(deps: Deps, site: LocalSite) -> None:
    result = await scrape(
        deps, site.url("/page/shot"), formats=["screenshot", "pdf", "text"], screenshot_target_kb=30, full_page=True
    )
    assert result.outcome == "succeeded", result.error
    assert result.render_used == "browser" and result.screenshot_type == "image/webp"
    shot = result.screenshot or b""
    assert 0 < len(shot) <= 30 * 1024
    assert Image.open(io.BytesIO(shot)).format == "WEBP"
    assert (result.pdf or b"").startswith(b"%PDF")


async def test_wait_for_a_selector_and_its_timeout(deps: Deps, site: LocalSite) -> None:
    ok = await scrape(deps, site.url("/spa"), render="browser", wait_for="h1", formats=["text"])
    assert ok.outcome == "succeeded" and "Rendered by the app" in (ok.text or "")
    missing = await scrape(deps, site.url("/spa"), render="browser", wait_for="#never", timeout_s=2)
    assert missing.outcome == "failed" and "'#never' did not appear" in (missing.error or "")


async def test_transient_failures_are_retried_and_retry_after_is_honoured(deps: Deps, site: LocalSite) -> None:
    result = await scrape(deps, site.url("/flaky?key=retry-503&fail=2"), render="http")
    assert result.outcome == "succeeded" and result.retries == 2 and result.title == "ok after 2"

    t0 = time.monotonic()
    result = await scrape(deps, site.url("/flaky?key=retry-429&fail=1&status=429&after=1"), render="http")
    assert result.outcome == "succeeded" and result.retries == 1
    assert time.monotonic() - t0 >= 1.0

    gave_up = await scrape(deps, site.url("/flaky?key=retry-forever&fail=99"), render="http", max_retries=2)
    assert gave_up.outcome == "failed" and gave_up.retries == 2
    assert "HTTP 503" in (gave_up.error or "") and "after 3 attempts" in (gave_up.error or "")


async def test_client_errors_and_robots_fail_at_once(deps: Deps, site: LocalSite) -> None:
    not_found = await scrape(deps, site.url("/status/404"))
    assert not_found.outcome == "failed" and not_found.retries == 0 and "HTTP 404" in (not_found.error or "")
    private = await scrape(deps, site.url("/private/secret"))
    assert private.outcome == "failed" and "robots.txt" in (private.error or "")
    ignored = await scrape(deps, site.url("/private/secret"), respect_robots=False, render="http")
    assert ignored.outcome == "succeeded"


@pytest.mark.parametrize(
    ("path", "options", "reason"),
    [
        ("/slow?s=60", {"timeout_s": 2}, "within 2 s"),
        ("/jsloop", {"render": "browser", "timeout_s": 3}, "did not load within 3 s"),
        ("/loop", {"render": "http"}, "too many redirects"),
        ("/loop", {"render": "browser"}, "too many redirects"),
        ("/huge", {"render": "http"}, "over the"),
        ("/binary", {"render": "http"}, "not text in any known charset"),
        ("/download", {"render": "browser"}, "is a file to download, not a page"),
        ("/download", {"render": "auto"}, "not a text page: Content-Type application/pdf"),
    ],
)
async def test_hostile_pages_fail_with_a_reason_within_their_timeout(
    deps: Deps, site: LocalSite, path: str, options: dict[str, Any], reason: str
) -> None:
    t0 = time.monotonic()
    result = await scrape(deps, site.url(path), **options)
    assert result.outcome == "failed"
    assert reason in (result.error or "")
    assert time.monotonic() - t0 < options.get("timeout_s", 30) + 6
    # The worker keeps serving at full speed afterwards.
    after = await scrape(deps, site.url("/page/after-hostile"), render="browser")
    assert after.outcome == "succeeded", after.error


async def test_other_jobs_are_served_while_hostile_pages_hang(deps: Deps, site: LocalSite) -> None:
    # A tab spinning in a JavaScript loop and a server that never answers, both in flight for 6 s...
    spinning = asyncio.create_task(scrape(deps, site.url("/jsloop"), render="browser", timeout_s=6))
    silent = asyncio.create_task(scrape(deps, site.url("/slow?s=60"), render="http", timeout_s=6))
    await asyncio.sleep(0.5)
    # ...while pages of both kinds are scraped beside them, on the browser slot and domain slots still free.
    others = await asyncio.gather(
        *(scrape(deps, site.url(f"/page/beside-{n}"), render="browser" if n % 4 == 0 else "http") for n in range(12))
    )
    assert [o.error for o in others if o.outcome != "succeeded"] == []
    assert not spinning.done() and not silent.done(), "the others were not served until the hostile pages ended"
    assert "did not load within 6 s" in ((await spinning).error or "")
    assert "within 6 s" in ((await silent).error or "")


@pytest.fixture(scope="module")
async def untrusted_https() -> AsyncIterator[str]:
    """A page over HTTPS on 127.0.0.1 whose certificate no scraper trusts (issued by a CA made up for the test)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1", "localhost").configure_cert(context)

    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<title>Secret</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    yield f"https://127.0.0.1:{runner.addresses[0][1]}/page"
    await runner.cleanup()


async def test_an_invalid_tls_certificate_fails_at_once_with_the_reason(deps: Deps, untrusted_https: str) -> None:
    for render in ("http", "browser"):
        result = await scrape(deps, untrusted_https, render=render, respect_robots=False)
        assert result.outcome == "failed" and result.retries == 0, (render, result.error)
        assert f"the TLS certificate of {untrusted_https} is not valid" in (result.error or ""), result.error
    plain = await scrape(deps, untrusted_https, render="http", respect_robots=False)
    assert "unable to get local issuer certificate" in (plain.error or ""), plain.error
    # Its robots.txt cannot be read for the same reason, and a job that obeys robots.txt says so.
    polite = await scrape(deps, untrusted_https, render="http")
    assert polite.outcome == "failed" and "its TLS certificate is not valid" in (polite.error or ""), polite.error


# Answers no HTTP library should accept, written straight to the socket (the test site, being aiohttp, cannot).
_HTML_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
_BROKEN_ANSWERS = {
    "/not-http": b"HELLO THIS IS NOT HTTP\r\n\r\n",
    "/bad-chunks": _HTML_OK + b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\nhi\r\n0\r\n\r\n",
    "/bad-gzip": _HTML_OK + b"Content-Encoding: gzip\r\nContent-Length: 8\r\n\r\nnot gzip",
    "/cut-short": _HTML_OK + b"Content-Length: 1000\r\n\r\n<title>Cut</title><p>Cut short",
    "/to-ftp": b"HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1/file\r\nContent-Length: 0\r\n\r\n",
    "/robots.txt": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Broken header\r\n\r\nhi",
}


@pytest.fixture(scope="module")
async def broken_http() -> AsyncIterator[str]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = (await reader.readline()).split()[1].decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(_BROKEN_ANSWERS[path])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize(
    ("render", "path", "reason"),
    [
        ("http", "/not-http", "did not answer in valid HTTP: Bad status line: Expected HTTP/"),
        ("http", "/bad-chunks", "did not answer in valid HTTP: Invalid character in chunk size: b'ZZZ'"),
        ("http", "/bad-gzip", "is not valid gzip (its Content-Encoding)"),
        ("http", "/to-ftp", "redirects to ftp://127.0.0.1/file, which is not an http or https URL"),
        ("browser", "/not-http", "did not answer in valid HTTP: net::ERR_INVALID_HTTP_RESPONSE"),
        # The tab gets these documents' headers, then never fires their load event: they must not wait it out.
        ("browser", "/bad-chunks", "cannot be read: net::ERR_INVALID_CHUNKED_ENCODING"),
        ("browser", "/bad-gzip", "cannot be read: net::ERR_CONTENT_DECODING_FAILED"),
    ],
)
async def test_answers_in_broken_http_fail_at_once_with_what_was_wrong(
    deps: Deps, site: LocalSite, broken_http: str, render: str, path: str, reason: str
) -> None:
    t0 = time.monotonic()
    result = await scrape(deps, broken_http + path, render=render, respect_robots=False, timeout_s=20)
    assert result.outcome == "failed" and result.retries == 0, result.error
    assert reason in (result.error or ""), result.error
    assert "\n" not in (result.error or "")
    assert time.monotonic() - t0 < 10, "failed by its timeout, not by what was wrong"
    # The tab left mid-load serves the next job.
    after = await scrape(deps, site.url(f"/page/after-broken-{render}"), render=render)
    assert after.outcome == "succeeded", after.error


@pytest.mark.parametrize(
    ("render", "reason"),
    [("http", "broke: ClientPayloadError"), ("browser", "broke: net::ERR_CONTENT_LENGTH_MISMATCH")],
)
async def test_a_body_cut_short_is_retried(deps: Deps, broken_http: str, render: str, reason: str) -> None:
    result = await scrape(deps, broken_http + "/cut-short", render=render, respect_robots=False, max_retries=1)
    assert result.outcome == "failed" and result.retries == 1, result.error
    assert reason in (result.error or ""), result.error


async def test_a_robots_txt_in_broken_http_says_so(deps: Deps, broken_http: str) -> None:
    result = await scrape(deps, broken_http + "/not-http", render="http")
    assert result.outcome == "failed"
    assert "robots.txt could not be read (it did not answer in valid HTTP: Invalid header" in (result.error or "")


async def test_odd_and_legacy_charsets_are_decoded(deps: Deps, site: LocalSite) -> None:
    odd = await scrape(deps, site.url("/odd-charset"), render="http", formats=["text"])
    assert odd.outcome == "succeeded" and odd.title == "Größe" and "Köln" in (odd.text or "")
    latin = await scrape(deps, site.url("/latin1"), render="http", formats=["text"])
    assert latin.outcome == "succeeded" and latin.title == "Café" and "crème brûlée" in (latin.text or "")


async def test_jobs_are_isolated_and_look_like_a_plain_browser(deps: Deps, site: LocalSite) -> None:
    # /state shows what a page can see, then leaves a cookie and local storage behind. With two contexts in the pool,
    # four jobs in a row reuse each context at least once: none may see what an earlier job left.
    for _ in range(4):
        result = await scrape(deps, site.url("/state"), render="browser", formats=["text"])
        assert result.outcome == "succeeded", result.error
        text = result.text or ""
        assert "cookie=[] local=[] session=[] name=[]" in text, text
        assert "webdriver=[false]" in text or "webdriver=[undefined]" in text
        assert "platform=[Linux x86_64]" in text or "platform=[Win32]" in text or "platform=[MacIntel]" in text
    headers = result.headers
    assert "Headless" not in str(headers)


async def assert_later_jobs_see_nothing(deps: Deps, site: LocalSite, jobs: int = 4) -> None:
    """``jobs`` browser jobs in a row on /state, which shows what a page can see: with two contexts in the pool, four
    reuse each at least once, and none may see anything an earlier job left."""
    for _ in range(jobs):
        result = await scrape(deps, site.url("/state"), render="browser", formats=["text"])
        assert "cookie=[] local=[] session=[] name=[]" in (result.text or ""), result.text


async def test_windows_a_page_opens_do_not_outlive_its_job(deps: Deps, site: LocalSite) -> None:
    # /popups opens windows that would leave a cookie and local storage behind after its job ended and its state
    # was cleared; once on each of the pool's two contexts.
    for _ in range(2):
        opener = await scrape(deps, site.url("/popups"), render="browser", formats=["text"])
        assert opener.outcome == "succeeded", opener.error
    await asyncio.sleep(0.8)
    await assert_later_jobs_see_nothing(deps, site)
    assert site.hits["/popup-left"] == 0  # the windows were never opened


async def test_what_a_page_does_after_its_job_stays_with_its_job(deps: Deps, site: LocalSite) -> None:
    # /lingers writes a cookie, storage and window.name from a timer every 20 ms and from its pagehide handler (when
    # its tab navigates away): both after its job. Once on each of the pool's two contexts, with a pause for the
    # timer, then four jobs that must see nothing.
    for _ in range(2):
        lingering = await scrape(deps, site.url("/lingers"), render="browser", formats=["text"])
        assert lingering.outcome == "succeeded", lingering.error
    await asyncio.sleep(0.3)
    await assert_later_jobs_see_nothing(deps, site)


async def test_a_page_the_tab_cannot_leave_costs_its_context_not_the_next_job(deps: Deps, site: LocalSite) -> None:
    def retired() -> float:
        return REGISTRY.get_sample_value("trawl_browser_context_retirements_total", {"reason": "unhealthy"}) or 0.0

    before = retired()
    trapped = await scrape(deps, site.url("/traps-leaving"), render="browser", formats=["text"])
    assert trapped.outcome == "succeeded", trapped.error  # the page itself was read
    assert retired() == before + 1  # its context could not be cleared, so it was not handed out again
    await assert_later_jobs_see_nothing(deps, site, jobs=3)


async def test_a_service_worker_a_job_installs_does_not_serve_the_next(deps: Deps, site: LocalSite) -> None:
    # The worker would answer /state itself; once on each of the pool's two contexts.
    for _ in range(2):
        installing = await scrape(
            deps, site.url("/installs-worker"), render="browser", wait_for="text=worker ready", formats=["text"]
        )
        assert installing.outcome == "succeeded" and "worker ready" in (installing.text or ""), installing.error
    await assert_later_jobs_see_nothing(deps, site)


async def test_http_jobs_do_not_share_cookies_but_keep_them_across_redirects(deps: Deps, site: LocalSite) -> None:
    # By name, not by IP address: a cookie jar keeps no cookies for IP addresses, which would hide a leak.
    named = site.url("/").replace("127.0.0.1", "localhost").rstrip("/")
    # Every visit to /cookies leaves a cookie behind: no later job, whoever submitted it, may send it back.
    for _ in range(3):
        result = await scrape(deps, named + "/cookies", render="http", formats=["text"])
        assert result.outcome == "succeeded", result.error
        assert "cookies=[]" in (result.text or ""), result.text
    # Within one job a cookie set on a redirect goes with the next hop, as a browser would send it.
    result = await scrape(deps, named + "/cookie-hop", render="http", formats=["text"])
    assert result.outcome == "succeeded", result.error
    assert "cookies=[hop=1]" in (result.text or ""), result.text


@pytest.mark.skipif(not os.access(HEADLESS_SHELLS[0], os.X_OK), reason="Chromium's headless shell is not installed")
async def test_pool_runs_the_headless_shell_without_browser_ui(settings: Settings, site: LocalSite) -> None:
    """Full Chromium keeps browser UI pages (WebUI renderers) for every context, each working on every navigation;
    the headless shell, which the pool prefers, has none."""
    assert find_browser(None, None) == HEADLESS_SHELLS[0]
    try:
        windowed = find_browser(None, None, headless=False)
    except BrowserUnavailable:  # no full Chromium on this machine: fine, the point is not to pick a shell
        windowed = None
    assert windowed not in HEADLESS_SHELLS  # a shell cannot show a window
    async with BrowserPool(settings.model_copy(update={"browser_concurrency": 2})) as pool:
        async with pool.page() as first, pool.page() as second:
            await first.goto(site.url("/page/ui-1"))
            await second.goto(site.url("/page/ui-2"))
            [browser] = pool.chromium_pids()
            tree = [psutil.Process(browser), *psutil.Process(browser).children(recursive=True)]
            cmdlines = [" ".join(p.cmdline()) for p in tree]
    assert "chromium-headless-shell" in cmdlines[0]
    assert sum("--type=renderer" in c for c in cmdlines) >= 2  # one renderer per context at least
    assert not [c for c in cmdlines if "webui" in c], cmdlines


def test_a_configured_browser_must_be_executable(tmp_path: Path) -> None:
    script = tmp_path / "my-chromium"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(BrowserUnavailable, match="not an executable"):
        find_browser(str(script), None)
    script.chmod(0o755)
    assert find_browser(str(script), None) == str(script)


async def test_a_crashed_tab_fails_its_job_and_the_pool_goes_on(settings: Settings, site: LocalSite) -> None:
    async with BrowserPool(settings.model_copy(update={"browser_concurrency": 1})) as pool:
        with pytest.raises(BrowserCrashed):
            async with pool.page(PageOptions()) as page:
                await page.goto(site.url("/page/crash"))
                cdp = await page.context.new_cdp_session(page)
                # Page.crash never answers: the tab is gone before it could.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cdp.send("Page.crash"), timeout=2)
                await page.evaluate("1 + 1")
        async with pool.page() as page:
            await page.goto(site.url("/page/after-crash"))
            assert await page.title() == "Page after-crash"


async def test_a_killed_browser_is_relaunched_and_leaves_no_process(settings: Settings, site: LocalSite) -> None:
    async with BrowserPool(settings.model_copy(update={"browser_concurrency": 1})) as pool:
        async with pool.page() as page:
            await page.goto(site.url("/page/before-kill"))
        [first] = pool.chromium_pids()
        # Killed while a job is in flight (a page that never answers): that job fails as a crash, to be retried.
        with pytest.raises(BrowserCrashed):
            async with pool.page() as page:
                loading = asyncio.create_task(page.goto(site.url("/slow")))
                await asyncio.sleep(0.3)
                os.kill(first, signal.SIGKILL)
                await loading
        async with pool.page() as page:
            await page.goto(site.url("/page/after-kill"))
            assert await page.title() == "Page after-kill"
        [second] = pool.chromium_pids()
        assert second != first
        tree = [psutil.Process(second), *psutil.Process(second).children(recursive=True)]
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive, [p.cmdline() for p in alive]


async def test_contexts_retire_and_browsers_relaunch_after_their_job_limits(
    settings: Settings, site: LocalSite
) -> None:
    tuned = settings.model_copy(update={"browser_concurrency": 1, "browser_context_max_jobs": 2, "browser_max_jobs": 5})
    async with BrowserPool(tuned) as pool:
        pids = set()
        for n in range(7):
            async with pool.page() as page:
                await page.goto(site.url(f"/page/limit-{n}"))
            await asyncio.sleep(0.05)  # a relaunch happens between jobs
            pids.update(pool.chromium_pids())
        assert len(pids) >= 2


async def test_an_idle_browser_is_closed_and_comes_back_on_demand(settings: Settings, site: LocalSite) -> None:
    async with BrowserPool(settings.model_copy(update={"browser_concurrency": 1, "browser_idle_s": 1})) as pool:
        async with pool.page() as page:
            await page.goto(site.url("/page/idle-1"))
        [first] = pool.chromium_pids()
        chromium = psutil.Process(first)
        for _ in range(50):
            if not pool.chromium_pids():
                break
            await asyncio.sleep(0.1)
        assert pool.chromium_pids() == []
        gone, _ = psutil.wait_procs([chromium], timeout=15)
        assert gone
        async with pool.page() as page:
            await page.goto(site.url("/page/idle-2"))
            assert await page.title() == "Page idle-2"


async def test_a_browser_over_its_memory_limit_is_relaunched(settings: Settings, site: LocalSite) -> None:
    # Any real Chromium is over 128 MB; the pool checks every 50 jobs.
    tuned = settings.model_copy(update={"browser_concurrency": 1, "browser_max_rss_mb": 128})
    async with BrowserPool(tuned) as pool:
        pids = set()
        for n in range(52):
            async with pool.page() as page:
                await page.goto(site.url(f"/page/rss-{n}"))
            pids.update(pool.chromium_pids())
        await asyncio.sleep(0.5)
        async with pool.page() as page:
            await page.goto(site.url("/page/rss-after"))
        pids.update(pool.chromium_pids())
        assert len(pids) == 2
