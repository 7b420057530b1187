"""Draining the bus on real RabbitMQ: two replicas of a service, one stopping.

A stopping replica takes no new work, finishes what it is handling within the deadline, and hands
back (requeues) what it cannot finish, so the other replica does it. Nothing is acked unhandled.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest
from pydantic import SecretStr

from shared.bus import AmqpBus
from shared.messages import CurrentToken, GetCurrentToken, TokenInvalidated
from shared.sealing import Sealer, generate_key
from tests.support import eventually

BusFactory = Callable[[str], Awaitable[AmqpBus]]


@pytest.fixture
async def make_bus(amqp_base_url: str, unique: str) -> AsyncIterator[BusFactory]:
    sealer = Sealer.from_text(generate_key())
    buses: list[AmqpBus] = []

    async def make(service: str) -> AmqpBus:
        bus = AmqpBus(amqp_base_url, service, sealer, prefix=f"d{unique}.", rpc_timeout=5.0)
        await bus.start()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


def invalidated() -> TokenInvalidated:
    return TokenInvalidated(fingerprint=secrets.token_hex(8), errcode=40001)


async def dead_letters(bus: AmqpBus) -> int:
    async with await aio_pika.connect(bus.urls[0]) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(bus.dead_letter_name(), passive=True)
        return int(queue.declaration_result.message_count or 0)


async def test_a_message_still_being_handled_at_the_deadline_is_requeued_to_the_other_replica(
    make_bus: BusFactory,
) -> None:
    stopping, staying, publisher = await make_bus("token"), await make_bus("token"), await make_bus("qrcode")
    started, cancelled = asyncio.Event(), asyncio.Event()
    handled_by_staying: list[TokenInvalidated] = []

    async def never_finishes(event: TokenInvalidated) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def finishes(event: TokenInvalidated) -> None:
        handled_by_staying.append(event)

    await stopping.subscribe(TokenInvalidated, never_finishes)
    sent = invalidated()
    await publisher.publish(sent, must_arrive=True)
    await asyncio.wait_for(started.wait(), 5)
    await staying.subscribe(TokenInvalidated, finishes)  # only now, so the message went to `stopping`

    assert await stopping.drain(timeout=0.3) == 1
    assert cancelled.is_set()
    await eventually(lambda: handled_by_staying, timeout=5)
    assert handled_by_staying == [sent]
    assert await dead_letters(staying) == 0


async def test_a_request_in_flight_is_answered_before_the_replica_lets_go(make_bus: BusFactory) -> None:
    server, caller = await make_bus("token"), await make_bus("qrcode")
    started, release = asyncio.Event(), asyncio.Event()
    expires = datetime.now(UTC) + timedelta(hours=1)

    async def current(request: GetCurrentToken) -> CurrentToken:
        started.set()
        await release.wait()
        return CurrentToken(access_token=SecretStr("tok-" + secrets.token_hex(8)), expires_at=expires)

    await server.serve({GetCurrentToken: current})
    call = asyncio.create_task(caller.call(GetCurrentToken()))
    await asyncio.wait_for(started.wait(), 5)
    drain = asyncio.create_task(server.drain(timeout=5.0))
    await asyncio.sleep(0.3)
    assert not drain.done(), "drain must wait for the request in flight"
    release.set()
    assert await asyncio.wait_for(drain, 5) == 0
    reply = await asyncio.wait_for(call, 5)
    assert reply.expires_at == expires


async def test_a_replica_that_stopped_consuming_gets_no_new_work(make_bus: BusFactory) -> None:
    stopping, staying, publisher = await make_bus("token"), await make_bus("token"), await make_bus("session")
    seen: dict[str, list[TokenInvalidated]] = {"stopping": [], "staying": []}

    def recorder(name: str) -> Callable[[TokenInvalidated], Awaitable[None]]:
        async def handle(event: TokenInvalidated) -> None:
            seen[name].append(event)

        return handle

    await stopping.subscribe(TokenInvalidated, recorder("stopping"))
    await staying.subscribe(TokenInvalidated, recorder("staying"))
    await stopping.stop_consuming()
    sent = [invalidated() for _ in range(6)]
    for event in sent:
        await publisher.publish(event, must_arrive=True)
    await eventually(lambda: len(seen["staying"]) == len(sent), timeout=5)
    assert seen["stopping"] == []
    assert sorted(e.fingerprint for e in seen["staying"]) == sorted(e.fingerprint for e in sent)
