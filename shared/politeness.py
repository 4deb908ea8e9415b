"""Cluster-wide politeness: a per-domain concurrency limit and minimum delay between request starts, kept in Redis
so they hold across every scraper process on every host, and the robots.txt check (cached in Redis and in-process).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import Counter, Histogram
from protego import Protego
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.errors import certificate_problem, parser_message

log = logging.getLogger(__name__)

POLITE_WAIT_SECONDS = Histogram(
    "trawl_polite_wait_seconds",
    "Time spent waiting for a per-domain politeness slot",
    buckets=(0.001, 0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
ROBOTS_FETCHES = Counter(
    "trawl_robots_fetches_total", "robots.txt fetches by outcome", ["result"]
)  # result: ok (2xx), missing (4xx: all allowed), error (5xx, 429 or unreachable: all disallowed for a while)

SLOTS_PREFIX: Final = "trawl:polite:slots:"
NEXT_PREFIX: Final = "trawl:polite:next:"
WAITERS_PREFIX: Final = "trawl:polite:waiters:"
ROBOTS_PREFIX: Final = "trawl:robots:"

ROBOTS_MAX_BYTES: Final = 512 * 1024
# A failed robots.txt fetch disallows the whole host, so it is retried soon rather than after the full TTL.
ROBOTS_ERROR_TTL_S: Final = 60
_DISALLOW_ALL: Final = "User-agent: *\nDisallow: /\n"
# A robots.txt that could not be read is cached as "disallow all" with this comment on top, so that every process
# that reads it from Redis can also say why.
_UNREADABLE: Final = "# unreadable: "


def _unreadable(why: str) -> str:
    return _UNREADABLE + " ".join(why.split()) + "\n" + _DISALLOW_ALL


# Parsing half a megabyte of rules takes ~0.2 s, too long to block the event loop for.
_PARSE_IN_THREAD_BYTES: Final = 64 * 1024
_LOCAL_MAX_HOSTS: Final = 1024
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# KEYS: slots zset, next-start key, waiters zset. ARGV: token, max holders, min delay ms, lease ms, waiter ms.
# Returns 0 once the token holds a slot, else how many ms to wait before asking again (1 when only the limit is
# in the way: a holder may leave at any moment, so the caller polls). Callers turned away by the limit are kept in
# the waiters set (scored by their last ask, dropped when they stop asking), and a newcomer does not take a freed
# slot ahead of them: without that, a process whose pages ask again the moment they release would always win
# over another process's pages polling every few tens of milliseconds.
_ACQUIRE_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[2])
local delay = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local waiter_ms = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - waiter_ms)
local wait = 0
local nxt = tonumber(redis.call('GET', KEYS[2]) or '0')
if nxt > now then
  wait = nxt - now
end
local free = limit - redis.call('ZCARD', KEYS[1])
local waiting = redis.call('ZSCORE', KEYS[3], ARGV[1])
local ahead = redis.call('ZCARD', KEYS[3])
if waiting then
  ahead = 0
end
if (free <= 0 or ahead >= free) and wait < 1 then
  redis.call('ZADD', KEYS[3], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[3], waiter_ms)
  wait = 1
end
if wait > 0 then
  return wait
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
if delay > 0 then
  redis.call('SET', KEYS[2], now + delay, 'PX', delay)
end
return 0
"""

# KEYS: slots zset, waiters zset. ARGV: token. Removing a token that is not there (never acquired, or its lease
# lapsed) is a no-op; a caller that gives up waiting is removed from the waiters too.
_RELEASE_LUA: Final = """
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# A slot a process no longer needs is handed straight to the next page of the same domain waiting in that process,
# with no Redis round trip either way, for at most this long after it was taken from Redis; then it goes back, so
# other processes waiting on the domain get their turn. Saves two round trips per page on a busy domain.
HANDOFF_S: Final = 2.0


@dataclass(slots=True)
class _Lease:
    token: str
    taken: float  # monotonic time the slot was taken in Redis


@dataclass(slots=True)
class _Line:
    """One domain's in-process waiting line (per limit): at most ``limit`` tasks hold a turn, and slots left by
    a finished turn wait in ``spare`` for the next."""

    turns: asyncio.Semaphore
    users: int = 0  # tasks in the line, waiting or holding a turn
    active: int = 0  # tasks holding a turn
    spare: list[_Lease] = field(default_factory=list)


class DomainGate:
    """A per-domain concurrency limit and minimum delay between request starts, shared by every process through Redis.

    Each domain has a sorted set of holder tokens scored by lease expiry (ms, Redis server time) and a key with the
    earliest ms the next request may start. A process that dies while holding a slot frees it when its lease runs
    out, so ``lease_s`` must exceed the longest request. Waiters poll; one turned away by the limit is registered as
    waiting, and a newcomer does not take a freed slot ahead of the registered waiters (among them, whoever asks
    first after a release wins). Where no delay is asked for, a slot is handed from one page to the next page
    waiting for the domain in the same process (for ``HANDOFF_S`` at most) without going back to Redis: the number
    of holders is what the limit counts, and a hand-off does not change it.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        max_per_domain: int = 5,
        min_delay_s: float = 0.0,
        lease_s: float = 120.0,
        poll_s: float = 0.05,
    ) -> None:
        _check_limits(max_per_domain, min_delay_s)
        if lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        self.redis = redis
        self.max_per_domain = max_per_domain
        self.min_delay_s = min_delay_s
        self.lease_s = lease_s
        self.poll_s = poll_s
        # A handed-on slot may start its last request up to HANDOFF_S after it was taken.
        self._lease_ms = math.ceil((lease_s + HANDOFF_S) * 1000)
        # A waiter turned away by the limit asks again every poll_s; it counts as waiting for a few of those.
        self._waiter_ms = max(200, math.ceil(3000 * poll_s))
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        # Releases still running after their caller was cancelled again; kept so they are not garbage-collected.
        self._releasing: set[asyncio.Task[None]] = set()
        # In-process waiting lines, keyed by (domain, limit): a process never has more tasks asking Redis for a
        # domain's slot than the domain allows, so hundreds of queued pages wait here for free instead of polling
        # Redis. Keyed by the limit too: a caller with a larger per-call limit must not queue behind a smaller one.
        self._lines: dict[tuple[str, int], _Line] = {}

    @asynccontextmanager
    async def slot(
        self, domain: str, *, max_per_domain: int | None = None, min_delay_s: float | None = None
    ) -> AsyncIterator[None]:
        """Wait until ``domain`` has fewer than ``max_per_domain`` holders and ``min_delay_s`` has passed since the
        last start on it (in any process), then hold a slot until the block exits, however it exits.

        The per-call limits override the gate's defaults for this acquisition; the delay a start sets is the one
        its caller asked for, and every later caller on the domain honours it.
        """
        limit = self.max_per_domain if max_per_domain is None else max_per_domain
        delay_s = self.min_delay_s if min_delay_s is None else min_delay_s
        _check_limits(limit, delay_s)
        domain = domain.lower()
        slots_key = SLOTS_PREFIX + domain
        key = (domain, limit)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line(asyncio.Semaphore(limit))
        line.users += 1
        started = time.monotonic()
        try:
            async with line.turns:
                line.active += 1
                try:
                    lease = self._spare(line, slots_key) if delay_s == 0 else None
                    if lease is None:
                        lease = await self._take(domain, limit, delay_s)
                    POLITE_WAIT_SECONDS.observe(time.monotonic() - started)
                    try:
                        yield
                    finally:
                        waiting = line.users - line.active
                        if delay_s == 0 and waiting > 0 and time.monotonic() - lease.taken < HANDOFF_S:
                            line.spare.append(lease)
                        else:
                            await self._give_back(slots_key, lease.token)
                finally:
                    line.active -= 1
        finally:
            line.users -= 1
            if line.users == line.active and line.spare:
                # Nobody is waiting any more (a waiter was cancelled, say): spare slots go back to Redis.
                for spare in line.spare:
                    self._release_later(slots_key, spare.token)
                line.spare.clear()
            if line.users == 0:
                del self._lines[key]

    def _spare(self, line: _Line, slots_key: str) -> _Lease | None:
        """A slot another page of this process left for the next, if one is still fresh enough to use."""
        while line.spare:
            lease = line.spare.pop()
            if time.monotonic() - lease.taken < HANDOFF_S:
                return lease
            self._release_later(slots_key, lease.token)
        return None

    async def _take(self, domain: str, limit: int, delay_s: float) -> _Lease:
        """A slot from Redis, polling until there is one."""
        slots_key = SLOTS_PREFIX + domain
        keys = [slots_key, NEXT_PREFIX + domain, WAITERS_PREFIX + domain]
        token = os.urandom(12).hex()
        args: list[str | int] = [token, limit, math.ceil(delay_s * 1000), self._lease_ms, self._waiter_ms]
        try:
            while True:
                wait_ms = int(await self._acquire(keys=keys, args=args))
                if wait_ms == 0:
                    break
                await asyncio.sleep(min(max(wait_ms / 1000, self.poll_s), 1.0))
        except BaseException:
            # Cut short by cancellation or a lost connection: the server may have given us the slot without us
            # seeing the reply, and may count us among the waiters, so the token is removed from both.
            await self._give_back(slots_key, token)
            raise
        return _Lease(token, time.monotonic())

    def _release_later(self, slots_key: str, token: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._release_token(slots_key, token))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        return task

    async def _give_back(self, slots_key: str, token: str) -> None:
        # Shielded so that a second cancellation cannot leave the slot taken until its lease runs out.
        await asyncio.shield(self._release_later(slots_key, token))

    async def _release_token(self, slots_key: str, token: str) -> None:
        waiters_key = WAITERS_PREFIX + slots_key.removeprefix(SLOTS_PREFIX)
        try:
            await self._release(keys=[slots_key, waiters_key], args=[token])
        except RedisError as exc:
            # Not raised: it would hide the block's own exception, and the lease frees the slot anyway.
            log.warning(
                "could not release politeness slot %s (it frees itself within %.0f s): %r", slots_key, self.lease_s, exc
            )


def _check_limits(max_per_domain: int, min_delay_s: float) -> None:
    if max_per_domain <= 0:
        raise ValueError(f"max_per_domain must be at least 1, got {max_per_domain}")
    if min_delay_s < 0:
        raise ValueError(f"min_delay_s must not be negative, got {min_delay_s}")


class RobotsRules:
    """Whether robots.txt lets ``user_agent`` fetch a URL.

    Each host's robots.txt is fetched at most once per ``ttl_s`` across the cluster: its text is cached in Redis, and
    the parsed rules in-process until the Redis entry expires, so the hot path makes no network call at all. Following
    Google's practice, a 4xx (bar 429) means no rules, while a 5xx, a 429 or an unreachable host means "disallow
    everything", cached for only ``ROBOTS_ERROR_TTL_S`` so the host is retried soon.
    """

    def __init__(
        self,
        redis: Redis,
        session: aiohttp.ClientSession,
        user_agent: str,
        *,
        ttl_s: int = 3600,
        timeout_s: float = 10.0,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.redis = redis
        self.session = session
        self.user_agent = user_agent
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._local: dict[str, tuple[float, Protego]] = {}  # origin -> (monotonic expiry, rules)
        self._why_unreadable: dict[str, str] = {}
        # One load per origin at a time, shared by every concurrent caller.
        self._loading: dict[str, asyncio.Task[Protego]] = {}

    async def verdict(self, url: str) -> tuple[bool, str]:
        """Whether robots.txt allows ``url``, and if not, a sentence saying why (for the job's error)."""
        if await self.allowed(url):
            return True, ""
        origin = robots_origin(url)
        if why := self._why_unreadable.get(origin or ""):
            return False, (
                f"{origin}/robots.txt could not be read ({why}); the site counts as disallowed for "
                f"{ROBOTS_ERROR_TTL_S} s"
            )
        return False, f"{origin}/robots.txt disallows {url} for {self.user_agent}"

    async def allowed(self, url: str) -> bool:
        """True if robots.txt allows ``url``. URLs robots.txt does not govern (not http or https, or without a host)
        are allowed: the fetcher rejects them itself."""
        origin = robots_origin(url)
        if origin is None:
            return True
        entry = self._local.get(origin)
        if entry is not None and entry[0] > time.monotonic():
            rules = entry[1]
        else:
            rules = await self._rules(origin)
        return rules.can_fetch(url, self.user_agent)

    async def _rules(self, origin: str) -> Protego:
        task = self._loading.get(origin)
        if task is None:
            task = asyncio.create_task(self._load(origin))
            self._loading[origin] = task
            task.add_done_callback(lambda done: self._load_done(origin, done))
        # Shielded: one caller's cancellation must not cancel the load the others are waiting for.
        return await asyncio.shield(task)

    def _load_done(self, origin: str, task: asyncio.Task[Protego]) -> None:
        self._loading.pop(origin, None)
        # Marks a failure as seen even when every caller was cancelled; the callers that waited got it raised.
        if not task.cancelled():
            task.exception()

    async def _load(self, origin: str) -> Protego:
        key = ROBOTS_PREFIX + origin
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            cached, pttl = await pipe.execute()
        if cached is not None:
            text = cached.decode() if isinstance(cached, bytes) else str(cached)
            ttl_s = pttl / 1000 if pttl > 0 else float(self.ttl_s)
        else:
            text, fetched_ttl_s = await self._fetch(origin)
            await self.redis.set(key, text, ex=fetched_ttl_s)
            ttl_s = float(fetched_ttl_s)
        if text.startswith(_UNREADABLE):
            self._why_unreadable[origin] = text[len(_UNREADABLE) :].split("\n", 1)[0]
        else:
            self._why_unreadable.pop(origin, None)
        if len(text) > _PARSE_IN_THREAD_BYTES:
            rules = await asyncio.to_thread(Protego.parse, text)
        else:
            rules = Protego.parse(text)
        self._remember(origin, time.monotonic() + ttl_s, rules)
        return rules

    async def _fetch(self, origin: str) -> tuple[str, int]:
        """The robots.txt text to apply to ``origin`` and how long to keep it, in seconds."""
        url = origin + "/robots.txt"
        try:
            async with self.session.get(
                url,
                headers={"User-Agent": self.user_agent},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                raise_for_status=False,
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    body = await _read_capped(response, ROBOTS_MAX_BYTES)
                    ROBOTS_FETCHES.labels("ok").inc()
                    return body.decode("utf-8", errors="replace").removeprefix("\ufeff"), self.ttl_s
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("robots.txt at %s unreachable, disallowing the host for %d s: %r", url, ROBOTS_ERROR_TTL_S, exc)
            ROBOTS_FETCHES.labels("error").inc()
            if isinstance(exc, aiohttp.ClientConnectorCertificateError):
                why = f"its TLS certificate is not valid: {certificate_problem(exc)}"
            elif isinstance(exc, aiohttp.ClientConnectorError | OSError):
                why = f"cannot connect: {exc}"
            elif isinstance(exc, aiohttp.ClientResponseError) and not isinstance(exc, aiohttp.TooManyRedirects):
                why = f"it did not answer in valid HTTP: {parser_message(exc.message)}"
            else:
                why = repr(exc)
            return _unreadable(why), ROBOTS_ERROR_TTL_S
        # 429 asks us to slow down, so it counts as a server error rather than as "no robots.txt".
        if status >= 500 or status == 429:
            log.info("robots.txt at %s answered %d, disallowing the host for %d s", url, status, ROBOTS_ERROR_TTL_S)
            ROBOTS_FETCHES.labels("error").inc()
            return _unreadable(f"it answered HTTP {status}"), ROBOTS_ERROR_TTL_S
        ROBOTS_FETCHES.labels("missing").inc()
        return "", self.ttl_s

    def _remember(self, origin: str, expires: float, rules: Protego) -> None:
        if origin not in self._local and len(self._local) >= _LOCAL_MAX_HOSTS:
            now = time.monotonic()
            for stale in [o for o, (exp, _) in self._local.items() if exp <= now]:
                del self._local[stale]
            if len(self._local) >= _LOCAL_MAX_HOSTS:
                # Oldest entry first (dicts keep insertion order); Redis still has it, so this costs one GET.
                del self._local[next(iter(self._local))]
        self._local[origin] = (expires, rules)


def robots_origin(url: str) -> str | None:
    """``scheme://host[:port]`` whose /robots.txt governs ``url`` (default port and userinfo dropped, lower case),
    or None for URLs robots.txt does not apply to."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The first ``limit`` bytes of the body; the rest is never read."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]
