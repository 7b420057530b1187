"""TokenCache, the consumer side, with a hand-written bus: start-up, bounded waits, invalidation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from shared.errors import RemoteError
from shared.messages import CurrentToken, Event, TokenInvalidated, TokenRefreshed, encode
from shared.sealing import Sealer, generate_key
from shared.tokens import TokenCache, TokenUnavailable, fingerprint

NOW = 1_800_000_000.0
TOKEN = "86_first_" + "a" * 40
NEXT = "86_second_" + "b" * 40


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class FakeBus:
    """Records publishes and subscriptions; ``token.current`` answers ``current`` (None: no token)."""

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.subscribed: list[tuple[Sequence[type[Event]], Callable[[Any], Any]]] = []
        self.current: tuple[str, float] | None = None
        self.calls = 0
        self.reconnect_hooks: list[Callable[[], Any]] = []

    async def publish(self, event: Event, *, ttl: float | None = None, must_arrive: bool = False) -> None:
        self.published.append(event)

    async def call(self, request: Any, *, timeout: float | None = None) -> CurrentToken:
        self.calls += 1
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


async def test_invalidation_reports_only_the_fingerprint_and_returns_the_next_token() -> None:
    bus = FakeBus()
    tokens = cache(bus, wait_seconds=5)
    await tokens.on_refreshed(refreshed(TOKEN))
    replaced = asyncio.create_task(tokens.invalidated(TOKEN, 40001))
    await asyncio.sleep(0.01)
    await tokens.on_refreshed(refreshed(NEXT))
    assert await asyncio.wait_for(replaced, 1) == NEXT
    [event] = bus.published
    assert isinstance(event, TokenInvalidated)
    assert (event.fingerprint, event.errcode) == (fingerprint(TOKEN), 40001)
    # The broadcast is the only bus message that may carry the access_token (DESIGN §8).
    assert set(TokenInvalidated.model_fields) == {"fingerprint", "errcode"}
    assert TOKEN.encode() not in encode(event, Sealer.from_text(generate_key()))


async def test_invalidation_gives_up_when_no_other_token_arrives_in_time() -> None:
    bus = FakeBus()
    bus.current = (TOKEN, NOW + 7000)  # the token service still hands out the rejected token
    tokens = cache(bus)
    await tokens.on_refreshed(refreshed(TOKEN))
    with pytest.raises(TokenUnavailable):
        await tokens.invalidated(TOKEN, 40001)
