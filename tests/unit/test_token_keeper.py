"""TokenKeeper with hand-written fakes: when it calls WeChat, what it serves, how it backs off.

The fakes keep the rules the real parts have (WeChat's stable_token of wechat-api.md §3; the store's
compare-and-set and force claim); the real store is tested against nx-27017 in
``tests/integration/test_token_store.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pymongo.errors import ServerSelectionTimeoutError

from services.token.errors import NoToken
from services.token.handlers import (
    FORCE_REFRESH_PER_DAY,
    RefreshPolicy,
    TokenKeeper,
    TokenMetrics,
)
from services.token.store import ForceDecision, StoredToken, beijing_day
from shared.messages import Event, GetCurrentToken, TokenInvalidated, TokenRefreshed
from shared.sealing import Sealer, generate_key
from shared.tokens import fingerprint
from shared.wechat import AccessToken, WeChatError, classify
from tests.support import ManualClock

START = 1_800_000_000.0  # a fixed epoch second (2027-01-15), far from any Beijing midnight edge cases
DAY = 86400.0
SEALER = Sealer.from_text(generate_key())
PURPOSE = "access-token:test"


class StableWeChat:
    """``cgi-bin/stable_token`` as WeChat documents it, on the fake clock.

    Normal mode hands back the same token with its remaining life until 300 s are left, then a new
    one; force mode always mints. ``failures`` are raised first, one per call.
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, bool]] = []  # (when, force)
        self.failures: list[WeChatError] = []
        self.minted = 0
        self._token: str | None = None
        self._expires = 0.0

    async def stable_token(self, *, force_refresh: bool = False) -> AccessToken:
        now = self.clock()
        self.calls.append((now, force_refresh))
        if self.failures:
            raise self.failures.pop(0)
        if force_refresh or self._token is None or self._expires - now <= 300:
            self.minted += 1
            self._token, self._expires = f"86_token_{self.minted:04d}_" + "x" * 20, now + 7200
        return AccessToken(self._token, round(self._expires - now))

    @property
    def normal_calls(self) -> int:
        return sum(1 for _, force in self.calls if not force)

    @property
    def force_calls(self) -> int:
        return sum(1 for _, force in self.calls if force)


class MemoryTokens:
    """The token document in a dict, with the store's compare-and-set and force-claim rules."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None
        self.lose_next_save = False

    async def load(self) -> StoredToken | None:
        return StoredToken.from_doc(self.doc, SEALER, PURPOSE) if self.doc else None

    async def save(self, token: StoredToken, *, expected_version: int | None) -> StoredToken | None:
        if self.lose_next_save:  # another replica wrote first
            self.lose_next_save = False
            return None
        if expected_version is None:
            if self.doc is not None:
                return None
            bookkeeping = {"version": 1, "force_last": 0.0, "force_day": 0, "force_count": 0}
            self.doc = {**token.to_doc(SEALER, PURPOSE), **bookkeeping}
            return replace(token, version=1)
        if self.doc is None or self.doc["version"] != expected_version:
            return None
        self.doc.update(token.to_doc(SEALER, PURPOSE), version=expected_version + 1)
        return replace(token, version=expected_version + 1)

    async def save_forced(self, token: StoredToken) -> StoredToken:
        assert self.doc is not None
        self.doc.update(token.to_doc(SEALER, PURPOSE), version=self.doc["version"] + 1)
        return replace(token, version=self.doc["version"])

    async def claim_force(
        self, token_fingerprint: str, now: float, *, min_interval: float, per_day: int
    ) -> ForceDecision:
        doc = self.doc
        if doc is None or doc["fingerprint"] != token_fingerprint:
            return ForceDecision(False, "stale")
        day = beijing_day(now)
        count = doc["force_count"] if doc["force_day"] == day else 0
        if count >= per_day:
            return ForceDecision(False, "daily_cap", count_today=count)
        if doc["force_last"] > now - min_interval:
            return ForceDecision(False, "throttled", count_today=count)
        doc.update(force_last=now, force_day=day, force_count=count + 1, version=doc["version"] + 1)
        return ForceDecision(True, count_today=count + 1)

    async def force_finished(self, now: float) -> None:
        assert self.doc is not None
        self.doc["force_last"] = max(self.doc["force_last"], now)


@dataclass
class MemoryLease:
    """The lease document: owner and until."""

    owner: str | None = None
    until: float = 0.0

    async def acquire(self, owner: str, now: float, duration: float) -> bool:
        if self.owner == owner or self.until < now:
            self.owner, self.until = owner, now + duration
            return True
        return False

    async def release(self, owner: str) -> bool:
        if self.owner != owner:
            return False
        self.until = 0.0
        return True


@dataclass
class RecordingPublisher:
    """Keeps what was published, with its TTL."""

    published: list[tuple[Event, float | None]] = field(default_factory=list)

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        self.published.append((event, ttl))

    @property
    def tokens(self) -> list[str]:
        return [e.access_token.get_secret_value() for e, _ in self.published if isinstance(e, TokenRefreshed)]


@dataclass
class Replica:
    keeper: TokenKeeper
    registry: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@dataclass
class World:
    """One WeChat, one store, one lease, and as many replicas as a test asks for."""

    clock: ManualClock = field(default_factory=lambda: ManualClock(START))
    tokens: MemoryTokens = field(default_factory=MemoryTokens)
    lease: MemoryLease = field(default_factory=MemoryLease)
    publisher: RecordingPublisher = field(default_factory=RecordingPublisher)
    wechat: StableWeChat = field(init=False)

    def __post_init__(self) -> None:
        self.wechat = StableWeChat(self.clock)

    def replica(self, name: str = "a", policy: RefreshPolicy | None = None) -> Replica:
        registry = CollectorRegistry()
        keeper = TokenKeeper(
            self.tokens,
            self.lease,
            self.wechat,
            self.publisher,
            TokenMetrics(registry),
            owner=name,
            policy=policy or RefreshPolicy(),
            clock=self.clock,
        )
        return Replica(keeper, registry)


def busy(errcode: int = -1) -> WeChatError:
    """The error the client raises for ``errcode`` from stable_token."""
    return classify("cgi-bin/stable_token", errcode, "from the test", now=START)


async def test_the_first_owner_fetches_in_normal_mode_and_broadcasts_with_the_tokens_life_as_ttl() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    assert world.wechat.calls == [(START, False)]
    token = a.keeper.token
    assert token is not None and a.keeper.valid
    assert token.expires_at == START + 7200 - 1  # counted from before the call, one second less
    assert world.tokens.doc is not None
    assert SEALER.open(world.tokens.doc["sealed_token"], purpose=PURPOSE) == token.access_token
    [(event, ttl)] = world.publisher.published
    assert isinstance(event, TokenRefreshed)
    assert event.access_token.get_secret_value() == token.access_token
    assert ttl == pytest.approx(7199)
    assert a.sample("wxlogin_token_refreshes_total", mode="normal") == 1
    assert a.sample("wxlogin_token_lease_held") == 1


async def test_no_call_while_more_than_the_margin_is_left_and_one_call_just_inside_it() -> None:
    world = World()
    a = world.replica(policy=RefreshPolicy(margin=240))
    await a.keeper.step()
    world.clock.advance(7199 - 241)
    await a.keeper.step()
    assert len(world.wechat.calls) == 1
    world.clock.advance(2)  # 239 s left
    await a.keeper.step()
    assert len(world.wechat.calls) == 2
    assert len(set(world.publisher.tokens)) == 2  # the call got a new token: WeChat renews in the last 300 s


@pytest.mark.parametrize("margin", [30.0, 240.0, 290.0])
async def test_a_day_costs_thirteen_calls_each_getting_a_new_token(margin: float) -> None:
    world = World()
    a = world.replica(policy=RefreshPolicy(margin=margin, lease=10, tick=5))
    while world.clock() < START + DAY:
        await a.keeper.step()
        world.clock.advance(5)
    # One call per 7200 - margin seconds: 1 + floor(86400 / (7200 - margin)) = 13.
    assert len(world.wechat.calls) == 13
    assert world.wechat.minted == 13


async def test_a_replica_without_the_lease_never_calls_wechat_and_serves_the_stored_token() -> None:
    world = World()
    long_lease = RefreshPolicy(lease=8000)  # the jumps below must not let it lapse
    a, b = world.replica("a", long_lease), world.replica("b", long_lease)
    await a.keeper.step()
    await b.keeper.step()
    assert not b.keeper.holds_lease
    assert b.sample("wxlogin_token_lease_held") == 0
    reply = await b.keeper.current(GetCurrentToken())
    assert a.keeper.token is not None
    assert reply.access_token.get_secret_value() == a.keeper.token.access_token
    world.clock.advance(7000)  # inside the margin: only the owner refreshes
    await b.keeper.step()
    assert len(world.wechat.calls) == 1
    await a.keeper.step()
    await b.keeper.step()
    assert len(world.wechat.calls) == 2
    assert b.keeper.token == a.keeper.token


async def test_a_lapsed_lease_is_taken_over_and_the_new_owner_refreshes() -> None:
    world = World()
    a, b = world.replica("a"), world.replica("b", RefreshPolicy(lease=30))
    await a.keeper.step()
    world.clock.advance(31)  # a died: its lease lapsed
    await b.keeper.step()
    assert b.keeper.holds_lease and world.lease.owner == "b"
    world.clock.advance(7000)
    await b.keeper.step()
    assert len(world.wechat.calls) == 2


async def test_wechat_busy_keeps_the_last_good_token_served_and_backs_off_exponentially() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    old = a.keeper.token
    assert old is not None
    world.clock.advance(7000)  # 199 s left
    world.wechat.failures = [busy(-1), busy(-1), busy(-1)]
    for _ in range(14):
        await a.keeper.step()
        reply = await a.keeper.current(GetCurrentToken())
        assert reply.access_token.get_secret_value() == old.access_token
        world.clock.advance(1)
    await a.keeper.step()
    calls = [when - world.wechat.calls[1][0] for when, _ in world.wechat.calls[1:]]
    assert calls == [0, 2, 6, 14]  # waits of 2, 4 and 8 s, then the fourth attempt succeeds
    assert a.keeper.token is not None and a.keeper.token.access_token != old.access_token


async def test_rate_limited_waits_a_minute_and_serves_the_old_token_until_it_truly_expires() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    world.clock.advance(7199 - 100)  # 100 s left
    world.wechat.failures = [busy(45011), busy(45011)]
    await a.keeper.step()
    world.clock.advance(59)
    await a.keeper.step()
    assert len(world.wechat.calls) == 2  # nothing during the minute
    assert a.keeper.valid
    world.clock.advance(1)
    await a.keeper.step()
    assert len(world.wechat.calls) == 3
    world.clock.advance(40)  # the token's real end
    assert not a.keeper.valid
    with pytest.raises(NoToken):
        await a.keeper.current(GetCurrentToken())
    world.clock.advance(20)
    await a.keeper.step()
    assert a.keeper.valid


async def test_a_wrong_secret_backs_off_a_minute_instead_of_hammering_wechat() -> None:
    world = World()
    a = world.replica()
    world.wechat.failures = [busy(40125)]
    await a.keeper.step()
    for _ in range(11):
        world.clock.advance(5)
        await a.keeper.step()
    assert len(world.wechat.calls) == 1
    assert not a.keeper.valid
    world.clock.advance(5)
    await a.keeper.step()
    assert len(world.wechat.calls) == 2 and a.keeper.valid


class LateRenewingWeChat(StableWeChat):
    """A WeChat that renews only in the last 100 s (so a 240 s margin gets the same token back)."""

    async def stable_token(self, *, force_refresh: bool = False) -> AccessToken:
        now = self.clock()
        if self._token is not None and not force_refresh and self._expires - now > 100:
            self.calls.append((now, force_refresh))
            return AccessToken(self._token, round(self._expires - now))
        return await super().stable_token(force_refresh=force_refresh)


async def test_the_same_token_handed_back_is_asked_again_30_s_later_not_in_a_tight_loop() -> None:
    world = World()
    world.wechat = LateRenewingWeChat(world.clock)
    a = world.replica()
    await a.keeper.step()
    first = a.keeper.token
    world.clock.advance(7000)
    for _ in range(30):
        await a.keeper.step()
        world.clock.advance(1)
    assert len(world.wechat.calls) == 2
    assert a.keeper.token is not None and a.keeper.token.access_token == first.access_token  # type: ignore[union-attr]
    assert a.keeper.token.fetched_at == START  # the token's age, not the last call's
    assert len(world.publisher.published) == 1  # nothing new to announce
    world.clock.advance(70)  # 99 s left: WeChat renews now
    await a.keeper.step()
    assert len(world.publisher.published) == 2


async def test_a_refresh_that_lost_the_race_to_another_write_adopts_the_stored_token() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    world.clock.advance(7000)
    world.tokens.lose_next_save = True
    await a.keeper.step()
    assert len(world.wechat.calls) == 2
    assert world.publisher.tokens == [world.publisher.tokens[0]]  # the lost result is not announced


async def test_invalidation_of_the_current_token_forces_one_refresh_and_broadcasts_it() -> None:
    world = World()
    a, b = world.replica("a"), world.replica("b")
    await a.keeper.step()
    await b.keeper.step()
    old = a.keeper.token
    assert old is not None
    event = TokenInvalidated(fingerprint=fingerprint(old.access_token), errcode=40001)
    await asyncio.gather(*(r.keeper.on_invalidated(event) for r in (a, b, a, b, a)))
    assert world.wechat.force_calls == 1
    assert world.publisher.tokens[-1] != old.access_token
    assert (await a.keeper.current(GetCurrentToken())).access_token.get_secret_value() != old.access_token
    outcomes = {
        outcome: sum(r.sample("wxlogin_token_invalidations_total", outcome=outcome) for r in (a, b))
        for outcome in ("claimed", "stale", "throttled")
    }
    assert outcomes["claimed"] == 1
    assert outcomes["stale"] + outcomes["throttled"] == 4


async def test_invalidation_of_an_old_token_forces_nothing() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    world.clock.advance(7000)
    old = a.keeper.token
    await a.keeper.step()
    assert old is not None and a.keeper.token != old
    world.clock.advance(60)
    await a.keeper.on_invalidated(TokenInvalidated(fingerprint=fingerprint(old.access_token), errcode=40001))
    assert world.wechat.force_calls == 0
    assert a.sample("wxlogin_token_invalidations_total", outcome="stale") == 1


async def test_force_refreshes_are_30_s_apart_and_at_most_20_per_beijing_day() -> None:
    world = World()
    # Start just after a Beijing midnight so that 21 force refreshes fit in one day.
    world.clock.now = (beijing_day(START) + 1) * DAY - 8 * 3600 + 1
    a = world.replica()
    await a.keeper.step()

    async def invalidate() -> None:
        assert a.keeper.token is not None
        await a.keeper.on_invalidated(TokenInvalidated(fingerprint=a.keeper.token.fingerprint, errcode=40001))

    await invalidate()
    world.clock.advance(29)
    await invalidate()
    assert world.wechat.force_calls == 1
    for _ in range(FORCE_REFRESH_PER_DAY):
        world.clock.advance(31)
        await invalidate()
    assert world.wechat.force_calls == FORCE_REFRESH_PER_DAY
    assert a.sample("wxlogin_token_invalidations_total", outcome="daily_cap") == 1
    world.clock.now = (beijing_day(world.clock.now) + 1) * DAY - 8 * 3600 + 1  # the next Beijing day
    await a.keeper.step()
    await invalidate()
    assert world.wechat.force_calls == FORCE_REFRESH_PER_DAY + 1


async def test_a_failed_force_refresh_is_not_retried_and_the_old_token_stays() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    old = a.keeper.token
    assert old is not None
    world.wechat.failures = [busy(-1)]
    await a.keeper.on_invalidated(TokenInvalidated(fingerprint=old.fingerprint, errcode=40001))
    assert world.wechat.calls[-1] == (START, True)
    assert len(world.wechat.calls) == 2
    assert a.keeper.token == old
    assert a.sample("wxlogin_token_refreshes_total", mode="force") == 0


async def test_a_broadcast_of_another_token_makes_a_replica_serve_the_stored_one_at_once() -> None:
    world = World()
    a, b = world.replica("a"), world.replica("b")
    await b.keeper.step()  # b holds the lease and the first token; a has not stepped yet
    assert a.keeper.token is None
    [(event, _)] = world.publisher.published
    assert isinstance(event, TokenRefreshed)
    await a.keeper.on_refreshed(event)
    assert a.keeper.token == b.keeper.token
    assert a.keeper.valid


async def test_release_hands_the_lease_to_the_next_replica_at_once() -> None:
    world = World()
    a, b = world.replica("a"), world.replica("b")
    await a.keeper.step()
    await a.keeper.release()
    assert a.sample("wxlogin_token_lease_held") == 0
    await b.keeper.step()
    assert b.keeper.holds_lease


async def test_poke_returns_after_a_whole_step_of_the_running_loop() -> None:
    world = World()
    a = world.replica(policy=RefreshPolicy(tick=3600, lease=7200, margin=240))
    task = asyncio.create_task(a.keeper.run())
    try:
        await asyncio.wait_for(a.keeper.poke(), 2)
        assert len(world.wechat.calls) == 1  # the first step ran at once
        world.clock.advance(7000)
        await asyncio.wait_for(a.keeper.poke(), 2)  # no waiting for the hour-long tick
        assert len(world.wechat.calls) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclass
class UnreachableLease(MemoryLease):
    """A lease whose database stops answering when ``down`` is set."""

    down: bool = False

    async def acquire(self, owner: str, now: float, duration: float) -> bool:
        if self.down:
            raise ServerSelectionTimeoutError("no server")
        return await super().acquire(owner, now, duration)


async def test_an_owner_cut_off_from_mongo_stops_counting_itself_owner_when_its_lease_runs_out() -> None:
    world = World()
    world.lease = UnreachableLease()
    a = world.replica(policy=RefreshPolicy(tick=3600, lease=30, margin=240))
    task = asyncio.create_task(a.keeper.run())
    try:
        await asyncio.wait_for(a.keeper.poke(), 2)
        assert a.keeper.holds_lease
        world.lease.down = True
        world.clock.advance(20)
        await asyncio.wait_for(a.keeper.poke(), 2)
        assert a.keeper.holds_lease  # still within the lease it took
        world.clock.advance(7000)  # the token is due, but another replica may own the lease by now
        await asyncio.wait_for(a.keeper.poke(), 2)
        assert not a.keeper.holds_lease
        assert a.sample("wxlogin_token_lease_held") == 0
        assert len(world.wechat.calls) == 1
        world.lease.down = False
        await asyncio.wait_for(a.keeper.poke(), 2)
        assert a.keeper.holds_lease and len(world.wechat.calls) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_metrics_show_the_tokens_age_and_remaining_life() -> None:
    world = World()
    a = world.replica()
    assert a.sample("wxlogin_token_remaining_seconds") == 0
    await a.keeper.step()
    world.clock.advance(1000)
    assert a.sample("wxlogin_token_age_seconds") == 1000
    assert a.sample("wxlogin_token_remaining_seconds") == 7199 - 1000


# --- token.current {rejected}: the token a consumer retries with ----------------------------------


class SlowWeChat(StableWeChat):
    """stable_token answering only after ``delay`` real seconds."""

    def __init__(self, clock: ManualClock, delay: float) -> None:
        super().__init__(clock)
        self.delay = delay

    async def stable_token(self, *, force_refresh: bool = False) -> AccessToken:
        if force_refresh:
            await asyncio.sleep(self.delay)
        return await super().stable_token(force_refresh=force_refresh)


def rejected(token: StoredToken | None, wait: float = 1.0) -> GetCurrentToken:
    assert token is not None
    return GetCurrentToken(rejected=token.fingerprint, errcode=40001, wait_seconds=wait)


def answer(reply: Any) -> str:
    return str(reply.access_token.get_secret_value())


async def test_a_rejected_current_token_is_force_refreshed_and_the_new_one_is_the_answer() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    old = a.keeper.token
    new = answer(await a.keeper.current(rejected(old)))
    assert old is not None and new != old.access_token
    assert world.wechat.force_calls == 1
    assert world.publisher.tokens[-1] == new  # the other consumers get it by the broadcast
    assert a.sample("wxlogin_token_renewals_total", answer="forced") == 1
    assert a.sample("wxlogin_token_invalidations_total", outcome="claimed") == 1


async def test_a_storm_of_rejections_on_two_replicas_forces_once_and_every_caller_gets_the_new_token() -> (
    None
):
    world = World()
    a, b = world.replica("a"), world.replica("b")
    await a.keeper.step()
    await b.keeper.step()
    old = a.keeper.token
    answers = await asyncio.gather(*(r.keeper.current(rejected(old)) for r in (a, b) * 10))
    assert world.wechat.force_calls == 1
    assert {answer(reply) for reply in answers} == {world.publisher.tokens[-1]}


async def test_a_rejected_token_forced_under_30_s_ago_comes_back_at_once_without_a_wechat_call() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    forced = answer(await a.keeper.current(rejected(a.keeper.token)))
    world.clock.advance(5)  # WeChat allows the next force refresh 30 s after the last
    started = asyncio.get_running_loop().time()
    again = answer(await a.keeper.current(rejected(a.keeper.token, wait=5.0)))
    assert again == forced  # the newest token there is: the caller's one retry uses it
    assert asyncio.get_running_loop().time() - started < 0.2
    assert world.wechat.force_calls == 1
    assert a.sample("wxlogin_token_renewals_total", answer="same") == 1
    assert a.sample("wxlogin_token_invalidations_total", outcome="throttled") == 1


async def test_a_rejected_old_token_is_answered_with_the_stored_one_without_a_claim() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    old = a.keeper.token
    world.clock.advance(7000)
    await a.keeper.step()  # a normal refresh: the old token is not the stored one any more
    stored = a.keeper.token
    assert stored is not None and stored != old
    assert answer(await a.keeper.current(rejected(old))) == stored.access_token
    assert world.wechat.force_calls == 0
    assert a.sample("wxlogin_token_renewals_total", answer="newer") == 1


async def test_a_failed_force_refresh_answers_token_unavailable_at_once() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    world.wechat.failures = [busy(-1)]
    started = asyncio.get_running_loop().time()
    with pytest.raises(NoToken) as refused:
        await a.keeper.current(rejected(a.keeper.token, wait=5.0))
    assert asyncio.get_running_loop().time() - started < 0.2
    assert refused.value.error_code == "token_unavailable" and refused.value.retry_after


async def test_an_old_rejected_token_whose_refresh_is_throttled_waits_only_until_the_callers_deadline() -> (
    None
):
    world = World()
    a = world.replica()
    await a.keeper.step()
    world.clock.advance(100)  # the token is no longer new
    world.wechat.failures = [busy(-1)]
    with pytest.raises(NoToken):
        await a.keeper.current(rejected(a.keeper.token))  # the claim is spent on a failed refresh
    world.clock.advance(10)
    started = asyncio.get_running_loop().time()
    with pytest.raises(NoToken) as refused:
        await a.keeper.current(rejected(a.keeper.token, wait=0.4))
    elapsed = asyncio.get_running_loop().time() - started
    assert 0.2 < elapsed < 0.4  # answered before the caller's 0.4 s run out
    assert refused.value.retry_after
    assert world.wechat.force_calls == 1


async def test_a_slow_force_refresh_answers_in_time_and_still_completes_and_broadcasts() -> None:
    world = World()
    world.wechat = SlowWeChat(world.clock, delay=0.5)
    a = world.replica()
    await a.keeper.step()
    old = a.keeper.token
    started = asyncio.get_running_loop().time()
    with pytest.raises(NoToken):
        await a.keeper.current(rejected(old, wait=0.2))
    assert asyncio.get_running_loop().time() - started < 0.2
    for _ in range(50):
        await asyncio.sleep(0.02)
        if a.keeper.token != old:
            break
    assert a.keeper.token != old and world.publisher.tokens[-1] == a.keeper.token.access_token  # type: ignore[union-attr]


async def test_at_the_daily_force_cap_the_rejected_token_comes_back_without_a_wechat_call() -> None:
    world = World()
    a = world.replica()
    await a.keeper.step()
    assert world.tokens.doc is not None and a.keeper.token is not None
    world.tokens.doc.update(force_day=beijing_day(START), force_count=FORCE_REFRESH_PER_DAY)
    world.clock.advance(100)
    assert answer(await a.keeper.current(rejected(a.keeper.token))) == a.keeper.token.access_token
    assert world.wechat.force_calls == 0
    assert a.sample("wxlogin_token_invalidations_total", outcome="daily_cap") == 1


async def test_a_capped_rejection_while_another_claim_is_unfinished_is_token_unavailable_for_minutes() -> (
    None
):
    world = World()
    a = world.replica()
    await a.keeper.step()
    assert world.tokens.doc is not None
    world.tokens.doc.update(version=world.tokens.doc["version"] + 1)  # a claim after the token was stored
    world.tokens.doc.update(force_day=beijing_day(START), force_count=FORCE_REFRESH_PER_DAY)
    with pytest.raises(NoToken) as refused:
        await a.keeper.current(rejected(a.keeper.token))
    assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 300
