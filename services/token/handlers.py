"""Keeping the one access_token fresh across replicas; answering ``token.current`` and ``token.invalidated``.

How the replicas share the work (docs/token.md has the whole story and the numbers):

* every replica holds the stored token in memory and serves it; it re-reads it every tick, when the
  ``token.refreshed`` broadcast announces another one, and for every ``token.current``;
* only the holder of the lease calls WeChat in normal mode, once the token is within the refresh
  margin of its end; it saves the result with a compare-and-set on the document's version and
  broadcasts ``token.refreshed`` when the token changed;
* any replica may receive a ``token.invalidated``; it force-refreshes only after winning the claim in
  Mongo (the rejected token is still the stored one, 30 s since the last claim, under 20 today);
* ``token.current {rejected}`` is the consumers' way to report a rejected token: the same claim, and
  the answer is the token to retry with, within the caller's wait (see :meth:`TokenKeeper.renew`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import SecretStr
from pymongo.errors import PyMongoError

from services.token.errors import NoToken
from services.token.store import ForceDecision, StoredToken
from shared.bus import Publisher
from shared.config import Settings
from shared.logging import get_logger, register_secret
from shared.messages import CurrentToken, GetCurrentToken, TokenInvalidated, TokenRefreshed
from shared.wechat import (
    AccessToken,
    WeChatBadRequest,
    WeChatError,
    WeChatRateLimited,
    seconds_to_beijing_midnight,
)

log = get_logger(__name__)

# WeChat's limits on stable_token force_refresh (wechat-api.md §3).
FORCE_REFRESH_MIN_INTERVAL = 30.0
FORCE_REFRESH_PER_DAY = 20

# After a failed normal refresh, when to try again (the last good token is served meanwhile).
RETRY_FIRST_DELAY = 2.0  # -1, timeouts, garbage: doubled after each failure...
RETRY_MAX_DELAY = 60.0  # ...up to this
RATE_LIMIT_MAX_DELAY = 300.0  # 45011 says a minute; 45009 says midnight, but a few calls an hour cost nothing
BAD_REQUEST_DELAY = 60.0  # 40125 wrong secret, 40164 IP not whitelisted...: an operator must act
SAME_TOKEN_DELAY = 30.0  # WeChat handed back the same token: it renews only in the last 300 s

# Renewing a rejected token (token.current {rejected}).
RENEW_DEFAULT_WAIT = 1.5  # when the request names no wait (seconds)
RENEW_SLACK = 0.1  # answer this long before the caller gives up, so the answer arrives in time
RENEW_POLL = 0.25  # while another replica force-refreshes, re-read the store this often
DAILY_CAP_RETRY_AFTER = 300.0

# expires_in is rounded by WeChat and counted from when it answered; counting from before the request
# and one second less never overestimates the token's life.
EXPIRY_SAFETY = 1.0


class TokenSource(Protocol):
    """Where tokens come from: :class:`shared.wechat.WeChatClient` (a fake in unit tests)."""

    async def stable_token(self, *, force_refresh: bool = False) -> AccessToken: ...


class TokenRecords(Protocol):
    """The stored token: :class:`services.token.store.TokenStore` (a fake in unit tests)."""

    async def load(self) -> StoredToken | None: ...

    async def save(self, token: StoredToken, *, expected_version: int | None) -> StoredToken | None: ...

    async def save_forced(self, token: StoredToken) -> StoredToken: ...

    async def claim_force(
        self, token_fingerprint: str, now: float, *, min_interval: float, per_day: int
    ) -> ForceDecision: ...

    async def force_finished(self, now: float) -> None: ...


class Lease(Protocol):
    """The refresh lease: :class:`services.token.store.LeaseStore` (a fake in unit tests)."""

    async def acquire(self, owner: str, now: float, duration: float) -> bool: ...

    async def release(self, owner: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to refresh and how replicas share the work (seconds; see ``shared.config``)."""

    margin: float = 240.0
    lease: float = 30.0
    tick: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RefreshPolicy:
        """The policy configured by ``WXLOGIN_TOKEN_*``."""
        return cls(
            margin=settings.token_refresh_margin_seconds,
            lease=settings.token_lease_seconds,
            tick=settings.token_tick_seconds,
        )


class TokenMetrics:
    """Counters and gauges of the token service (gauges follow the keeper they are bound to)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refreshes = Counter(
            "wxlogin_token_refreshes",
            "Successful stable_token calls by mode (normal, force)",
            ["mode"],
            registry=registry,
        )
        self.wechat_errors = Counter(
            "wxlogin_token_wechat_errors",
            "Failed stable_token attempts by errcode (negative: timeout, unreachable, malformed)",
            ["errcode"],
            registry=registry,
        )
        self.invalidations = Counter(
            "wxlogin_token_invalidations",
            "token.invalidated events handled, by outcome (claimed, stale, throttled, daily_cap)",
            ["outcome"],
            registry=registry,
        )
        self.remaining = Gauge(
            "wxlogin_token_remaining_seconds",
            "Remaining life of the token this replica serves",
            registry=registry,
        )
        self.age = Gauge(
            "wxlogin_token_age_seconds",
            "Time since the token this replica serves was obtained",
            registry=registry,
        )
        self.lease_held = Gauge(
            "wxlogin_token_lease_held", "1 while this replica holds the refresh lease", registry=registry
        )
        self.renewals = Counter(
            "wxlogin_token_renewals",
            "Rejected tokens reported with token.current, by answer (newer, forced, same, unavailable)",
            ["answer"],
            registry=registry,
        )

    def wechat_error(self, _endpoint: str, errcode: int) -> None:
        """``on_error`` hook of the WeChat client: count every failed attempt, retried ones too."""
        self.wechat_errors.labels(str(errcode)).inc()


class TokenKeeper:
    """One replica's share of owning the access_token (see the module docstring).

    ``owner`` names this replica in the lease document (host, pid, bus instance). ``clock`` gives
    epoch seconds; tests pass the simulator's clock.
    """

    def __init__(
        self,
        store: TokenRecords,
        lease: Lease,
        wechat: TokenSource,
        publisher: Publisher,
        metrics: TokenMetrics,
        *,
        owner: str,
        policy: RefreshPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._lease = lease
        self._wechat = wechat
        self._publisher = publisher
        self._metrics = metrics
        self.owner = owner
        self.policy = policy or RefreshPolicy()
        self._clock = clock
        self._current: StoredToken | None = None
        self._holds_lease = False
        self._held_until = 0.0  # this replica's own idea of its lease's end
        # One WeChat call (and the save that follows it) at a time in this replica.
        self._refreshing = asyncio.Lock()
        self._retry_at = 0.0
        self._failures = 0
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # set (and replaced) whenever another token is adopted
        # The document's version when the token held was first seen: a higher version with the same
        # token means a force claim was made since (its refresh is under way, or failed).
        self._since_version = 0
        self._forcing: set[asyncio.Task[StoredToken | None]] = set()
        self._step_waiters: list[asyncio.Future[None]] = []
        metrics.remaining.set_function(self._remaining)
        metrics.age.set_function(self._age)

    # -- state --

    @property
    def token(self) -> StoredToken | None:
        """The token this replica serves (valid or not)."""
        return self._current

    @property
    def valid(self) -> bool:
        """True while the token held has not expired (``/readyz``)."""
        return self._current is not None and self._current.expires_at > self._clock()

    @property
    def holds_lease(self) -> bool:
        """True when the last attempt to take or renew the lease succeeded."""
        return self._holds_lease

    def _remaining(self) -> float:
        return max(0.0, self._current.remaining(self._clock())) if self._current else 0.0

    def _age(self) -> float:
        return max(0.0, self._clock() - self._current.fetched_at) if self._current else 0.0

    def _adopt(self, token: StoredToken) -> None:
        current = self._current
        # Mongo is the truth, but a slow read may return an older version than one just written here.
        if current is not None and token.version < current.version and token.expires_at <= current.expires_at:
            return
        if current is None or current.access_token != token.access_token:
            register_secret(token.access_token)
            log.info(
                "token_adopted",
                fingerprint=token.fingerprint,
                version=token.version,
                expires_in=round(token.remaining(self._clock())),
            )
            self._current = token
            self._since_version = token.version
            self._changed.set()
            self._changed = asyncio.Event()
            return
        self._current = token

    # -- start-up and the loop --

    async def load(self) -> None:
        """Adopt the stored token (a restart with a valid one makes no WeChat call)."""
        stored = await self._store.load()
        if stored is not None:
            self._adopt(stored)

    async def step(self) -> None:
        """One round: take or renew the lease, re-read the stored token, refresh it if due and ours."""
        asked_at = self._clock()
        held = await self._lease.acquire(self.owner, asked_at, self.policy.lease)
        if held:
            self._held_until = asked_at + self.policy.lease
        self._set_held(held)
        await self.load()
        if held:
            await self._refresh_if_due()

    def _set_held(self, held: bool) -> None:
        if held != self._holds_lease:
            log.info("token_lease_acquired" if held else "token_lease_lost", owner=self.owner)
        self._holds_lease = held
        self._metrics.lease_held.set(1 if held else 0)

    async def run(self) -> None:
        """Run :meth:`step` at once, then every tick (or sooner when woken), for ever."""
        while True:
            self._wake.clear()
            waiters, self._step_waiters = self._step_waiters, []
            try:
                await self.step()
            except PyMongoError as exc:
                # No lease renewal without Mongo: after ``lease`` seconds another replica may take over,
                # and this one calls WeChat again only after renewing.
                log.warning("token_step_failed", error=type(exc).__name__, detail=str(exc)[:200])
                if self._clock() >= self._held_until:
                    self._set_held(False)
            except Exception:  # the loop must outlive any one failure; the next tick tries again
                log.exception("token_step_crashed")
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.policy.tick)

    def wake(self) -> None:
        """Run the next step now instead of at the next tick."""
        self._wake.set()

    async def poke(self) -> None:
        """Wake the loop and return once a step that started after this call has finished.

        Lets tests move the simulator's clock and wait for the replicas to react, without sleeping.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._step_waiters.append(waiter)
        self.wake()
        await waiter

    async def release(self) -> None:
        """Give up the lease on a graceful stop, so another replica takes over at its next tick."""
        if self._holds_lease:
            self._holds_lease = False
            self._metrics.lease_held.set(0)
            try:
                await self._lease.release(self.owner)
            except PyMongoError as exc:  # it lapses by itself after ``lease`` seconds
                log.warning("token_lease_release_failed", error=type(exc).__name__)
            log.info("token_lease_released", owner=self.owner)

    # -- normal refresh --

    async def _refresh_if_due(self) -> None:
        async with self._refreshing:
            now = self._clock()
            token = self._current
            if token is not None and token.remaining(now) > self.policy.margin:
                return
            if now < self._retry_at:
                return
            if now > self._held_until - self.policy.lease / 2:
                # Waited too long for a force refresh to finish: the lease may not outlast the call.
                # The next step renews it first.
                return
            await self._refresh_normal(token)

    async def _refresh_normal(self, previous: StoredToken | None) -> None:
        sent_at = self._clock()
        try:
            got = await self._wechat.stable_token()
        except WeChatError as exc:
            self._back_off(sent_at, exc)
            return
        self._failures = 0
        self._metrics.refreshes.labels("normal").inc()
        same = previous is not None and got.access_token == previous.access_token
        token = StoredToken(
            got.access_token,
            expires_at=sent_at + got.expires_in - EXPIRY_SAFETY,
            fetched_at=previous.fetched_at if same and previous is not None else sent_at,
        )
        saved = await self._store.save(token, expected_version=previous.version if previous else None)
        if saved is None:
            # Another write came first (a force refresh, or a replica that held the lease before us):
            # that one is newer than what this call started from.
            log.info("token_save_superseded", fingerprint=token.fingerprint)
            await self.load()
            return
        self._adopt(saved)
        if same:
            if saved.remaining(self._clock()) <= self.policy.margin:
                # WeChat renews only in the last 300 s; with a margin under that, this means our idea
                # of the expiry is off. Ask again a little later rather than in a tight loop.
                self._retry_at = self._clock() + SAME_TOKEN_DELAY
                log.warning("token_not_renewed", expires_in=got.expires_in, margin=self.policy.margin)
            return
        log.info(
            "token_refreshed",
            mode="normal",
            fingerprint=saved.fingerprint,
            previous=previous.fingerprint if previous else None,
            expires_in=got.expires_in,
            version=saved.version,
        )
        await self._broadcast(saved)

    def _back_off(self, now: float, exc: WeChatError) -> None:
        self._failures += 1
        if isinstance(exc, WeChatRateLimited):
            delay = min(max(exc.retry_after, RETRY_FIRST_DELAY), RATE_LIMIT_MAX_DELAY)
        elif isinstance(exc, WeChatBadRequest):
            delay = BAD_REQUEST_DELAY
        else:
            delay = min(RETRY_FIRST_DELAY * 2 ** (self._failures - 1), RETRY_MAX_DELAY)
        self._retry_at = now + delay
        current = self._current
        log.warning(
            "token_refresh_failed",
            errcode=exc.errcode,
            errmsg=exc.errmsg[:120],
            failures=self._failures,
            retry_in=round(delay, 1),
            serving_for=round(current.remaining(now)) if current else None,
        )

    async def _broadcast(self, token: StoredToken) -> None:
        remaining = token.remaining(self._clock())
        if remaining <= 0:
            return
        try:
            # The message dies with the token: a consumer that connects late must not get a dead one.
            await self._publisher.publish(
                TokenRefreshed(
                    access_token=SecretStr(token.access_token),
                    expires_at=datetime.fromtimestamp(token.expires_at, UTC),
                ),
                ttl=remaining,
            )
        except Exception:  # the token is saved; consumers that miss it ask token.current when needed
            log.warning("token_broadcast_failed", fingerprint=token.fingerprint, exc_info=True)

    # -- bus handlers --

    async def current(self, request: GetCurrentToken) -> CurrentToken:
        """RPC ``token.current``: the stored token (read now, so every replica answers the same).

        With ``rejected``, the token to retry with instead (:meth:`renew`).
        """
        if request.rejected is not None:
            wait = RENEW_DEFAULT_WAIT if request.wait_seconds is None else request.wait_seconds
            return self._reply(await self.renew(request.rejected, request.errcode or 0, wait=wait))
        try:
            await self.load()
        except PyMongoError as exc:  # the token held in memory is still the best answer
            log.warning("token_store_unavailable", error=type(exc).__name__)
        token = self._current
        if token is None or token.expires_at <= self._clock():
            raise NoToken(retry_after=2)
        return self._reply(token)

    def _reply(self, token: StoredToken) -> CurrentToken:
        return CurrentToken(
            access_token=SecretStr(token.access_token),
            expires_at=datetime.fromtimestamp(token.expires_at, UTC),
        )

    async def renew(self, rejected: str, errcode: int, *, wait: float) -> StoredToken:
        """The token a consumer whose token (fingerprint ``rejected``) WeChat refused retries with.

        Answers within ``wait`` seconds (less a little slack), in this order: the stored token if it
        is not the rejected one; the result of the force refresh this request claims (the claim of
        :meth:`on_invalidated`); the rejected token itself when the claim was refused and no claim
        was made since that token was stored (the force refresh that produced it is under 30 s old,
        or today's 20 are spent): no newer token can exist yet; a token another replica's force
        refresh stores while this one waits. Otherwise :class:`NoToken` with ``retry_after``: a
        retryable 503 for the consumer's caller, before its RPC times out.
        """
        deadline = time.monotonic() + max(0.0, wait - RENEW_SLACK)
        try:
            await self.load()
            newer = self._newer_than(rejected)
            if newer is not None:
                self._metrics.invalidations.labels("stale").inc()
                return self._renewed("newer", newer)
            decision = await self._store.claim_force(
                rejected,
                self._clock(),
                min_interval=FORCE_REFRESH_MIN_INTERVAL,
                per_day=FORCE_REFRESH_PER_DAY,
            )
        except PyMongoError as exc:
            log.warning("token_store_unavailable", error=type(exc).__name__)
            newer = self._newer_than(rejected)
            if newer is not None:
                return self._renewed("newer", newer)
            raise self._unavailable("the token store is unavailable", 2) from None
        self._metrics.invalidations.labels(decision.outcome).inc()
        if decision.claimed:
            log.info(
                "token_force_refresh_claimed",
                fingerprint=rejected,
                errcode=errcode,
                today=decision.count_today,
            )
            # Shielded: the refresh (and its broadcast) completes even when this request gives up.
            task = asyncio.ensure_future(self._force_refresh(rejected))
            self._forcing.add(task)
            task.add_done_callback(self._force_done)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
            newer = self._newer_than(rejected)
            if newer is not None:
                return self._renewed("forced", newer)
            raise self._unavailable("the force refresh did not finish in time", 1)
        if decision.refusal == "stale":  # stored since our read
            await self._reload_quietly()
            newer = self._newer_than(rejected)
            if newer is not None:
                return self._renewed("newer", newer)
        await self._reload_quietly()  # a claim made by another replica since our read shows now
        held = self._current
        if held is not None and held.fingerprint == rejected and self._no_claim_since(held):
            # Throttled by the very claim whose refresh produced this token (WeChat allows no newer
            # one for 30 s), or capped for the day: the newest there is, the caller's one retry uses it.
            log.info("token_rejected_but_newest", fingerprint=rejected, errcode=errcode, why=decision.refusal)
            return self._renewed("same", held)
        if decision.refusal == "daily_cap":
            log.error("token_force_refresh_daily_cap", fingerprint=rejected, errcode=errcode)
            retry_after = min(seconds_to_beijing_midnight(self._clock()), DAILY_CAP_RETRY_AFTER)
            raise self._unavailable("WeChat's daily force-refresh limit is reached", retry_after)
        # Throttled by a claim under 30 s old whose refresh has not been stored yet (it runs here or
        # on another replica): wait for it, up to the deadline.
        while (remaining := deadline - time.monotonic()) > 0:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(RENEW_POLL, remaining))
            if not changed.is_set():
                await self._reload_quietly()
            newer = self._newer_than(rejected)
            if newer is not None:
                return self._renewed("forced", newer)
        raise self._unavailable("a force refresh is under way or failed; try again shortly", 2)

    def _force_done(self, task: asyncio.Task[StoredToken | None]) -> None:
        self._forcing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Mongo failed around the refresh; consumers report the token again and a later claim
            # (30 s on) refreshes once more.
            log.warning("token_force_refresh_crashed", error=type(exc).__name__, detail=str(exc)[:200])

    def _no_claim_since(self, token: StoredToken) -> bool:
        """True when no force claim was made after ``token`` was stored (its version is unchanged)."""
        return token.expires_at > self._clock() and token.version <= self._since_version

    def _newer_than(self, rejected: str) -> StoredToken | None:
        held = self._current
        if held is None or held.fingerprint == rejected or held.expires_at <= self._clock():
            return None
        return held

    def _renewed(self, answer: str, token: StoredToken) -> StoredToken:
        self._metrics.renewals.labels(answer).inc()
        return token

    def _unavailable(self, why: str, retry_after: float) -> NoToken:
        self._metrics.renewals.labels("unavailable").inc()
        log.warning("token_renewal_unavailable", why=why, retry_after=round(retry_after))
        return NoToken(f"no usable access token yet: {why}", retry_after=retry_after)

    async def _reload_quietly(self) -> None:
        try:
            await self.load()
        except PyMongoError as exc:
            log.warning("token_store_unavailable", error=type(exc).__name__)

    async def on_refreshed(self, event: TokenRefreshed) -> None:
        """Broadcast handler: another replica refreshed; serve the new token now, not at the next tick."""
        held = self._current
        if held is None or held.access_token != event.access_token.get_secret_value():
            await self.load()

    async def on_invalidated(self, event: TokenInvalidated) -> None:
        """Force a refresh if the rejected token is still the stored one and the limits allow it.

        The claim in Mongo decides, whichever replica got the event: a storm causes one refresh. A
        failed force refresh is not retried: its claim is spent, and consumers report the token again.
        """
        decision = await self._store.claim_force(
            event.fingerprint,
            self._clock(),
            min_interval=FORCE_REFRESH_MIN_INTERVAL,
            per_day=FORCE_REFRESH_PER_DAY,
        )
        self._metrics.invalidations.labels(decision.outcome).inc()
        if not decision.claimed:
            log.info(
                "token_invalidation_ignored",
                fingerprint=event.fingerprint,
                errcode=event.errcode,
                reason=decision.refusal,
            )
            return
        log.info(
            "token_force_refresh_claimed",
            fingerprint=event.fingerprint,
            errcode=event.errcode,
            today=decision.count_today,
        )
        await self._force_refresh(event.fingerprint)

    async def _force_refresh(self, rejected: str) -> StoredToken | None:
        """The one force refresh a won claim allows: call WeChat, save, broadcast (None on failure)."""
        async with self._refreshing:
            sent_at = self._clock()
            try:
                got = await self._wechat.stable_token(force_refresh=True)
            except WeChatError as exc:
                log.error("token_force_refresh_failed", errcode=exc.errcode, errmsg=exc.errmsg[:120])
                return None
            finally:
                await self._store.force_finished(self._clock())
            self._metrics.refreshes.labels("force").inc()
            expires_at = sent_at + got.expires_in - EXPIRY_SAFETY
            saved = await self._store.save_forced(StoredToken(got.access_token, expires_at, sent_at))
            self._adopt(saved)
            log.info(
                "token_refreshed",
                mode="force",
                fingerprint=saved.fingerprint,
                previous=rejected,
                expires_in=got.expires_in,
                version=saved.version,
            )
        await self._broadcast(saved)
        return saved
