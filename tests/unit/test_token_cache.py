"""TokenCache, the consumer side, with a hand-written bus: start-up, bounded waits, rejected tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from shared.errors import RemoteError, RpcTimeout
from shared.messages import CurrentToken, Event, GetCurrentToken, TokenInvalidated, TokenRefreshed, encode
from shared.sealing import Sealer, generate_key
from shared.tokens import TokenCache, TokenUnavailable, fingerprint

NOW = 1_800_000_000.0
TOKEN = "86_first_" + "a" * 40
NEXT = "86_second_" + "b" * 40


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class FakeBus:
    """Records publishes, subscriptions and calls; ``token.current`` answers ``current`` (None: no
    token), and a renewal (``rejected`` set) answers ``renewal`` when a test sets it."""

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.subscribed: list[tuple[Sequence[type[Event]], Callable[[Any], Any]]] = []
        self.current: tuple[str, float] | None = None
        self.renewal: Callable[[GetCurrentToken, float], Awaitable[CurrentToken]] | None = None
        self.requests: list[tuple[GetCurrentToken, float | None]] = []
        self.calls = 0
        self.reconnect_hooks: list[Callable[[], Any]] = []

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        self.published.append(event)

    async def call(self, request: Any, *, timeout: float | None = None) -> CurrentToken:
        self.calls += 1
        self.requests.append((request, timeout))
        if request.rejected is not None and self.renewal is not None:
            return await self.renewal(request, timeout or 3.0)
        if self.current is None:
            raise RemoteError("token_unavailable", "no valid access token yet", retry_after=2)
        token, expires_at = self.current
        return CurrentToken(access_token=SecretStr(token), expires_at=at(expires_at))

    async def subscribe_broadcast(self, events: Sequence[type[Event]], handler: Callable[[Any], Any]) -> None:
        self.subscribed.append((events, handler))

    def on_reconnected(self, hook: Callable[[], Any]) -> None:
        self.reconnect_hooks.append(hook)

    async def reconnect(self) -> None:
        """What the real bus does once it is back after an outage."""
        for hook in self.reconnect_hooks:
            await hook()


def cache(bus: FakeBus, **kwargs: Any) -> TokenCache:
    return TokenCache(bus, clock=lambda: NOW, **{"wait_seconds": 0.3, "poll_seconds": 0.05, **kwargs})  # type: ignore[arg-type]


def refreshed(token: str, expires_at: float = NOW + 7000) -> TokenRefreshed:
    return TokenRefreshed(access_token=SecretStr(token), expires_at=at(expires_at))


async def test_start_subscribes_to_the_broadcast_and_asks_for_the_current_token() -> None:
    bus = FakeBus()
    bus.current = (TOKEN, NOW + 7000)
    tokens = cache(bus)
    assert await tokens.start()
    assert [events for events, _ in bus.subscribed] == [[TokenRefreshed]]
    assert await tokens.get() == TOKEN
    assert bus.calls == 1  # no second question: the token is held in memory


async def test_a_refresh_broadcast_missed_while_the_bus_was_down_is_caught_up_on_reconnect() -> None:
    bus = FakeBus()
    bus.current = (TOKEN, NOW + 7000)
    tokens = cache(bus)
    assert await tokens.start()
    bus.current = (NEXT, NOW + 7200)  # refreshed while this instance's broadcast queue was gone
    await bus.reconnect()
    assert await tokens.get() == NEXT


async def test_start_without_a_token_service_token_is_not_an_error_and_get_waits_then_gives_up() -> None:
    bus = FakeBus()
    tokens = cache(bus)
    assert not await tokens.start()
    started = asyncio.get_running_loop().time()
    with pytest.raises(TokenUnavailable):
        await tokens.get()
    assert asyncio.get_running_loop().time() - started >= 0.3


async def test_a_token_broadcast_while_waiting_is_returned_at_once() -> None:
    bus = FakeBus()
    tokens = cache(bus, wait_seconds=5)
    waiting = asyncio.create_task(tokens.get())
    await asyncio.sleep(0.01)
    await tokens.on_refreshed(refreshed(TOKEN))
    assert await asyncio.wait_for(waiting, 1) == TOKEN


async def test_an_expired_token_is_not_served() -> None:
    bus = FakeBus()
    tokens = cache(bus)
    await tokens.on_refreshed(refreshed(TOKEN, expires_at=NOW - 1))
    assert not tokens.valid
    with pytest.raises(TokenUnavailable):
        await tokens.get()


async def test_a_rejected_token_is_reported_by_fingerprint_in_token_current_and_its_answer_is_returned() -> (
    None
):
    bus = FakeBus()
    bus.current = (NEXT, NOW + 7000)  # what the token service stores now
    tokens = cache(bus, renew_seconds=1.0)
    await tokens.on_refreshed(refreshed(TOKEN))
    assert await tokens.invalidated(TOKEN, 40001) == NEXT
    assert await tokens.get() == NEXT  # held from now on
    [(request, timeout)] = bus.requests
    assert (request.rejected, request.errcode) == (fingerprint(TOKEN), 40001)
    assert request.wait_seconds is not None and timeout is not None
    assert 0.9 < request.wait_seconds <= 1.0 and 0.9 < timeout <= 1.0
    assert bus.published == []  # the call is the report (no separate token.invalidated)
    # The broadcast is the only bus message that may carry the access_token (DESIGN §8).
    assert TOKEN.encode() not in encode(request, Sealer.from_text(generate_key()))
    assert set(TokenInvalidated.model_fields) == {"fingerprint", "errcode"}


async def test_a_newer_token_already_held_is_returned_at_once_without_asking() -> None:
    bus = FakeBus()
    tokens = cache(bus)
    await tokens.on_refreshed(refreshed(NEXT))  # the broadcast came before the 40001 of the old token
    assert await tokens.invalidated(TOKEN, 40001) == NEXT
    assert bus.calls == 0


async def test_the_rejected_token_comes_back_when_the_token_service_says_it_is_the_newest() -> None:
    bus = FakeBus()
    bus.current = (TOKEN, NOW + 7000)  # forced under 30 s ago: no newer token may exist yet
    tokens = cache(bus)
    await tokens.on_refreshed(refreshed(TOKEN))
    assert await tokens.invalidated(TOKEN, 40001) == TOKEN


async def test_a_renewal_never_waits_past_the_callers_deadline_and_fails_with_a_retryable_error() -> None:
    bus = FakeBus()

    async def silent(request: GetCurrentToken, timeout: float) -> CurrentToken:
        await asyncio.sleep(timeout)
        raise RpcTimeout(GetCurrentToken.TYPE, timeout)

    bus.renewal = silent
    tokens = cache(bus, renew_seconds=10.0)
    await tokens.on_refreshed(refreshed(TOKEN))
    started = time.monotonic()
    with pytest.raises(TokenUnavailable) as failed:
        await tokens.invalidated(TOKEN, 42001, deadline=started + 0.3)
    assert time.monotonic() - started < 0.5
    assert failed.value.error_code == "token_unavailable" and failed.value.retry_after
    [(request, timeout)] = bus.requests
    assert timeout is not None and timeout <= 0.3
    assert request.wait_seconds is not None and request.wait_seconds <= 0.3


async def test_a_token_service_refusal_becomes_token_unavailable_with_its_retry_after() -> None:
    bus = FakeBus()

    async def refuse(request: GetCurrentToken, timeout: float) -> CurrentToken:
        raise RemoteError("token_unavailable", "a force refresh is under way", retry_after=7)

    bus.renewal = refuse
    tokens = cache(bus)
    await tokens.on_refreshed(refreshed(TOKEN))
    with pytest.raises(TokenUnavailable) as failed:
        await tokens.invalidated(TOKEN, 40001)
    assert failed.value.retry_after == 7


async def test_a_broadcast_that_arrives_while_the_renewal_fails_is_used() -> None:
    bus = FakeBus()
    tokens = cache(bus)

    async def broadcast_then_time_out(request: GetCurrentToken, timeout: float) -> CurrentToken:
        await tokens.on_refreshed(refreshed(NEXT))
        raise RpcTimeout(GetCurrentToken.TYPE, timeout)

    bus.renewal = broadcast_then_time_out
    await tokens.on_refreshed(refreshed(TOKEN))
    assert await tokens.invalidated(TOKEN, 40001) == NEXT


async def test_with_the_deadline_already_passed_nothing_is_asked() -> None:
    bus = FakeBus()
    tokens = cache(bus)
    await tokens.on_refreshed(refreshed(TOKEN))
    with pytest.raises(TokenUnavailable):
        await tokens.invalidated(TOKEN, 40001, deadline=time.monotonic() - 0.01)
    assert bus.calls == 0
