"""Politeness on a real Valkey and real HTTP: the per-domain slot limit and start delay across two gates (two
processes' worth of Redis clients), releases on errors and cancellation, crashed holders, and robots.txt rules,
caching and failure handling against a local server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from itertools import pairwise

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from shared.politeness import (
    HANDOFF_S,
    NEXT_PREFIX,
    ROBOTS_ERROR_TTL_S,
    ROBOTS_MAX_BYTES,
    ROBOTS_PREFIX,
    SLOTS_PREFIX,
    DomainGate,
    RobotsRules,
    robots_origin,
)
from tests.conftest import free_port

USER_AGENT = "Mozilla/5.0 (compatible; trawlbot/1.0)"


def unique_domain() -> str:
    return f"polite-{uuid.uuid4().hex[:12]}.test"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def other_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A second connection pool, standing in for another scraper process."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def timed_entry(gate: DomainGate, domain: str, *, min_delay_s: float | None = None) -> float:
    """Seconds it took to get a slot on ``domain`` (released at once)."""
    started = time.monotonic()
    async with gate.slot(domain, min_delay_s=min_delay_s):
        return time.monotonic() - started


async def assert_free(gate: DomainGate, domain: str) -> None:
    """A slot that was not freed blocks for its whole lease (120 s), so getting one within a second proves it was."""
    async with asyncio.timeout(1):
        await timed_entry(gate, domain)


# --- DomainGate ---------------------------------------------------------------------------------------------------


async def test_concurrency_limit_holds_across_gates(redis: Redis, other_redis: Redis) -> None:
    gates = [DomainGate(redis, max_per_domain=2, poll_s=0.01), DomainGate(other_redis, max_per_domain=2, poll_s=0.01)]
    domain = unique_domain()
    holding = 0
    most = 0
    finished = 0

    async def hold(gate: DomainGate) -> None:
        nonlocal holding, most, finished
        async with gate.slot(domain):
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(0.1)
            holding -= 1
        finished += 1

    async with asyncio.timeout(5):
        await asyncio.gather(*(hold(gates[i % 2]) for i in range(6)))
    assert most == 2
    assert finished == 6
    assert await redis.exists(SLOTS_PREFIX + domain) == 0


async def test_min_delay_spaces_starts_across_gates(redis: Redis, other_redis: Redis) -> None:
    gates = [DomainGate(redis, min_delay_s=0.1, poll_s=0.01), DomainGate(other_redis, min_delay_s=0.1, poll_s=0.01)]
    domain = unique_domain()
    starts: list[float] = []

    async def start(gate: DomainGate) -> None:
        async with gate.slot(domain):
            starts.append(time.monotonic())

    async with asyncio.timeout(5):
        await asyncio.gather(*(start(gates[i % 2]) for i in range(4)))
    starts.sort()
    gaps = [b - a for a, b in pairwise(starts)]
    assert len(gaps) == 3
    assert all(gap >= 0.09 for gap in gaps), gaps
    # The next-start key only lives as long as the delay it enforces (-2: already gone).
    pttl = await redis.pttl(NEXT_PREFIX + domain)
    assert pttl == -2 or 0 < pttl <= 100


async def test_per_call_limits_override_defaults(redis: Redis) -> None:
    gate = DomainGate(redis, max_per_domain=1, poll_s=0.01)
    domain = unique_domain()
    async with gate.slot(domain), gate.slot(domain, max_per_domain=2):
        assert await redis.zcard(SLOTS_PREFIX + domain) == 2
    started = time.monotonic()
    await timed_entry(gate, domain, min_delay_s=0.2)
    await timed_entry(gate, domain)  # asks for no delay, but honours the one the previous start set
    assert time.monotonic() - started >= 0.19


async def test_slot_keys_expire(redis: Redis) -> None:
    gate = DomainGate(redis, lease_s=30.0, min_delay_s=5.0)
    domain = unique_domain()
    async with gate.slot(domain):
        # The lease covers the longest request, plus the time a slot may be handed on within the process.
        assert 29_000 + HANDOFF_S * 1000 < await redis.pttl(SLOTS_PREFIX + domain) <= 30_000 + HANDOFF_S * 1000
        assert 4_000 < await redis.pttl(NEXT_PREFIX + domain) <= 5_000
    assert await redis.exists(SLOTS_PREFIX + domain) == 0


async def test_slot_released_when_body_raises(redis: Redis) -> None:
    gate = DomainGate(redis, max_per_domain=1, poll_s=0.01)
    domain = unique_domain()
    with pytest.raises(RuntimeError, match="boom"):
        async with gate.slot(domain):
            raise RuntimeError("boom")
    assert await redis.zcard(SLOTS_PREFIX + domain) == 0
    await assert_free(gate, domain)


async def test_slot_released_when_holder_cancelled(redis: Redis) -> None:
    gate = DomainGate(redis, max_per_domain=1, poll_s=0.01)
    domain = unique_domain()
    entered = asyncio.Event()

    async def hold() -> None:
        async with gate.slot(domain):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(hold())
    await asyncio.wait_for(entered.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await redis.zcard(SLOTS_PREFIX + domain) == 0
    await assert_free(gate, domain)


async def test_cancelled_waiter_leaves_no_slot_behind(redis: Redis) -> None:
    gate = DomainGate(redis, max_per_domain=1, poll_s=0.01)
    domain = unique_domain()
    async with gate.slot(domain):
        waiting = asyncio.create_task(timed_entry(gate, domain))
        await asyncio.sleep(0.05)  # the waiter polls a few times
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await redis.zcard(SLOTS_PREFIX + domain) == 1
    assert await redis.zcard(SLOTS_PREFIX + domain) == 0
    await assert_free(gate, domain)


async def test_cancellation_mid_acquire_frees_the_slot(redis: Redis) -> None:
    """Cancelled while the acquire script's reply is on its way: the server may have given the slot, so it is freed."""
    gate = DomainGate(redis, max_per_domain=1, poll_s=0.01)
    domain = unique_domain()
    await timed_entry(gate, domain)  # the script is loaded, so each acquire below is a single EVALSHA
    # Cancel after more and more event-loop turns, so some cancellations land between sending the command and
    # reading its reply (the rest land before the send or once the slot is held).
    for turns in range(60):
        task = asyncio.create_task(timed_entry(gate, domain))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    assert await redis.zcard(SLOTS_PREFIX + domain) == 0
    await assert_free(gate, domain)


async def test_expired_lease_does_not_block(redis: Redis) -> None:
    gate = DomainGate(redis, max_per_domain=1, poll_s=0.01)
    domain = unique_domain()
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros // 1000
    await redis.zadd(SLOTS_PREFIX + domain, {"crashed-holder": now_ms - 1000})
    async with asyncio.timeout(1):
        await assert_free(gate, domain)
    assert await redis.zscore(SLOTS_PREFIX + domain, "crashed-holder") is None

    # A live lease, by contrast, does block.
    await redis.zadd(SLOTS_PREFIX + domain, {"live-holder": now_ms + 60_000})
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await timed_entry(gate, domain)
    await redis.delete(SLOTS_PREFIX + domain)


async def _evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_busy_domain_hands_slots_on_without_redis(redis: Redis) -> None:
    """Pages of one domain queued in one process pass slots to each other: the limit still holds in Redis and in
    the process, but Redis is asked for a slot a few times, not once per page."""
    gate = DomainGate(redis, max_per_domain=2, poll_s=0.01)
    domain = unique_domain()
    await timed_entry(gate, domain)  # loads the scripts
    holding = most = most_in_redis = 0

    async def page() -> None:
        nonlocal holding, most, most_in_redis
        async with gate.slot(domain):
            holding += 1
            most = max(most, holding)
            most_in_redis = max(most_in_redis, await redis.zcard(SLOTS_PREFIX + domain))
            await asyncio.sleep(0.005)
            holding -= 1

    before = await _evalsha_calls(redis)
    async with asyncio.timeout(10):
        await asyncio.gather(*(page() for _ in range(40)))
    acquires_and_releases = await _evalsha_calls(redis) - before
    assert most == 2
    assert most_in_redis == 2
    assert acquires_and_releases <= 8, acquires_and_releases  # 2 slots taken and given back, not 80 calls
    assert await redis.zcard(SLOTS_PREFIX + domain) == 0


async def test_handed_on_slot_goes_back_to_redis_in_time(redis: Redis, other_redis: Redis) -> None:
    """A process with a long queue for a domain does not keep its slot for ever: another process gets it once
    the slot has been handed on for HANDOFF_S."""
    busy = DomainGate(redis, max_per_domain=1, poll_s=0.01)
    other = DomainGate(other_redis, max_per_domain=1, poll_s=0.01)
    domain = unique_domain()
    stop = asyncio.Event()

    async def page() -> None:
        async with busy.slot(domain):
            await asyncio.sleep(0.02)

    async def queue_forever() -> None:
        while not stop.is_set():
            await asyncio.gather(page(), page(), page())  # always somebody waiting in the busy process

    busy_task = asyncio.create_task(queue_forever())
    await asyncio.sleep(0.1)
    try:
        waited = await asyncio.wait_for(timed_entry(other, domain), HANDOFF_S + 2)
    finally:
        stop.set()
        await busy_task
    assert waited < HANDOFF_S + 1
    assert await redis.zcard(SLOTS_PREFIX + domain) == 0


async def test_spare_slot_is_given_back_when_its_waiter_is_cancelled(redis: Redis) -> None:
    gate = DomainGate(redis, max_per_domain=1, poll_s=0.01)
    domain = unique_domain()
    async with gate.slot(domain):
        waiter = asyncio.create_task(timed_entry(gate, domain))
        await asyncio.sleep(0.02)
    # The slot was left for the waiter; it is cancelled before it runs, so the slot must go back to Redis.
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0.05)
    assert await redis.zcard(SLOTS_PREFIX + domain) == 0
    await assert_free(gate, domain)


async def test_delayed_domain_never_hands_slots_on(redis: Redis) -> None:
    """With a start delay every start must go through Redis, which keeps the time of the last one."""
    gate = DomainGate(redis, max_per_domain=2, min_delay_s=0.05, poll_s=0.01)
    domain = unique_domain()
    starts: list[float] = []

    async def page() -> None:
        async with gate.slot(domain):
            starts.append(time.monotonic())

    async with asyncio.timeout(5):
        await asyncio.gather(*(page() for _ in range(5)))
    gaps = [b - a for a, b in pairwise(sorted(starts))]
    assert all(gap >= 0.045 for gap in gaps), gaps


async def test_wait_is_measured(redis: Redis) -> None:
    gate = DomainGate(redis)
    before = REGISTRY.get_sample_value("trawl_polite_wait_seconds_count") or 0.0
    await timed_entry(gate, unique_domain())
    assert REGISTRY.get_sample_value("trawl_polite_wait_seconds_count") == before + 1


@pytest.mark.parametrize("limit", [0, -1])
async def test_non_positive_limit_is_refused(redis: Redis, limit: int) -> None:
    with pytest.raises(ValueError, match="max_per_domain"):
        DomainGate(redis, max_per_domain=limit)
    gate = DomainGate(redis)
    with pytest.raises(ValueError, match="max_per_domain"):
        async with gate.slot(unique_domain(), max_per_domain=limit):
            pass


# --- RobotsRules --------------------------------------------------------------------------------------------------


@dataclass
class RobotsServer:
    """What the local server answers for /robots.txt, and how often it was asked."""

    status: int = 200
    body: str = ""
    delay_s: float = 0.0
    redirect: bool = False
    hits: int = 0
    port: int = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path


@pytest.fixture
async def robots_server(redis: Redis) -> AsyncIterator[RobotsServer]:
    server = RobotsServer()

    async def robots(request: web.Request) -> web.Response:
        server.hits += 1
        if server.delay_s:
            await asyncio.sleep(server.delay_s)
        if server.redirect:
            raise web.HTTPMovedPermanently("/real/robots.txt")
        return web.Response(status=server.status, text=server.body)

    async def real_robots(request: web.Request) -> web.Response:
        return web.Response(text=server.body)

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/real/robots.txt", real_robots)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    # The Redis is shared across tests and ports get reused: drop what an earlier test cached for this origin.
    await redis.delete(ROBOTS_PREFIX + server.origin)
    yield server
    await redis.delete(ROBOTS_PREFIX + server.origin)
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def make_rules(redis: Redis, session: aiohttp.ClientSession) -> Callable[..., RobotsRules]:
    def make(*, ttl_s: int = 3600, timeout_s: float = 10.0) -> RobotsRules:
        return RobotsRules(redis, session, USER_AGENT, ttl_s=ttl_s, timeout_s=timeout_s)

    return make


def fetches(result: str) -> float:
    return REGISTRY.get_sample_value("trawl_robots_fetches_total", {"result": result}) or 0.0


ROBOTS = """User-agent: otherbot
Disallow: /

User-agent: trawlbot
Disallow: /private/
Allow: /private/open

User-agent: *
Disallow: /
"""


async def test_robots_rules_apply_to_our_agent(
    robots_server: RobotsServer, make_rules: Callable[..., RobotsRules]
) -> None:
    robots_server.body = ROBOTS
    rules = make_rules()
    assert await rules.allowed(robots_server.url("/private/secret")) is False
    assert await rules.allowed(robots_server.url("/private/open")) is True
    assert await rules.allowed(robots_server.url("/public/page?x=1")) is True
    assert await rules.allowed(robots_server.url("/")) is True


async def test_robots_fetched_once_for_many_checks(
    robots_server: RobotsServer, make_rules: Callable[..., RobotsRules], redis: Redis
) -> None:
    robots_server.body = ROBOTS
    robots_server.delay_s = 0.05  # concurrent first checks must share one fetch
    ok_before = fetches("ok")
    rules = make_rules(ttl_s=600)
    urls = [robots_server.url(f"/private/{i}") for i in range(10)] + [robots_server.url(f"/pub/{i}") for i in range(10)]
    answers = await asyncio.gather(*(rules.allowed(u) for u in urls))
    assert answers == [False] * 10 + [True] * 10
    for u in urls:
        assert await rules.allowed(u) is u.startswith(robots_server.url("/pub/"))
    assert robots_server.hits == 1
    assert fetches("ok") == ok_before + 1
    assert 590 < await redis.ttl(ROBOTS_PREFIX + robots_server.origin) <= 600

    # Another process (a fresh instance, empty in-process cache) reads the text from Redis instead of fetching.
    assert await make_rules().allowed(robots_server.url("/private/x")) is False
    assert robots_server.hits == 1


async def test_robots_404_allows_everything(
    robots_server: RobotsServer, make_rules: Callable[..., RobotsRules]
) -> None:
    robots_server.status = 404
    robots_server.body = "User-agent: *\nDisallow: /\n"  # an error page's body is not robots.txt
    missing_before = fetches("missing")
    rules = make_rules()
    assert await rules.allowed(robots_server.url("/anything")) is True
    assert await rules.allowed(robots_server.url("/private/x")) is True
    assert robots_server.hits == 1
    assert fetches("missing") == missing_before + 1


async def test_robots_500_disallows_briefly(
    robots_server: RobotsServer, make_rules: Callable[..., RobotsRules], redis: Redis
) -> None:
    robots_server.status = 500
    error_before = fetches("error")
    rules = make_rules(ttl_s=3600)
    assert await rules.allowed(robots_server.url("/anything")) is False
    assert await rules.allowed(robots_server.url("/")) is False
    assert robots_server.hits == 1
    assert fetches("error") == error_before + 1
    assert 0 < await redis.ttl(ROBOTS_PREFIX + robots_server.origin) <= ROBOTS_ERROR_TTL_S


async def test_robots_unreachable_host_disallows(make_rules: Callable[..., RobotsRules], redis: Redis) -> None:
    origin = f"http://127.0.0.1:{free_port()}"
    await redis.delete(ROBOTS_PREFIX + origin)
    error_before = fetches("error")
    try:
        assert await make_rules().allowed(origin + "/page") is False
        assert fetches("error") == error_before + 1
        assert 0 < await redis.ttl(ROBOTS_PREFIX + origin) <= ROBOTS_ERROR_TTL_S
    finally:
        await redis.delete(ROBOTS_PREFIX + origin)


async def test_robots_timeout_disallows(robots_server: RobotsServer, make_rules: Callable[..., RobotsRules]) -> None:
    robots_server.delay_s = 1.0
    started = time.monotonic()
    assert await make_rules(timeout_s=0.2).allowed(robots_server.url("/page")) is False
    assert time.monotonic() - started < 0.8


async def test_robots_redirect_followed(robots_server: RobotsServer, make_rules: Callable[..., RobotsRules]) -> None:
    robots_server.redirect = True
    robots_server.body = "User-agent: *\nDisallow: /moved-rule\n"
    rules = make_rules()
    assert await rules.allowed(robots_server.url("/moved-rule")) is False
    assert await rules.allowed(robots_server.url("/other")) is True


async def test_robots_body_truncated(robots_server: RobotsServer, make_rules: Callable[..., RobotsRules]) -> None:
    padding = "# padding line to push later rules past the size cap\n" * (ROBOTS_MAX_BYTES // 50)
    robots_server.body = "User-agent: *\nDisallow: /early\n" + padding + "Disallow: /late\n"
    assert len(robots_server.body.encode()) > ROBOTS_MAX_BYTES
    rules = make_rules()
    assert await rules.allowed(robots_server.url("/early")) is False
    assert await rules.allowed(robots_server.url("/late")) is True


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://Example.COM/a?b", "http://example.com"),
        ("https://user:pw@example.com:443/a", "https://example.com"),
        ("http://example.com:8080/a", "http://example.com:8080"),
        ("http://[::1]:81/", "http://[::1]:81"),
        ("ftp://example.com/a", None),
        ("/relative/path", None),
        ("http://example.com:notaport/", None),
    ],
)
def test_robots_origin(url: str, origin: str | None) -> None:
    assert robots_origin(url) == origin


async def test_robots_not_http_is_allowed(make_rules: Callable[..., RobotsRules]) -> None:
    assert await make_rules().allowed("mailto:someone@example.org") is True
