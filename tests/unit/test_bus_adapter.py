"""The bus adapter through the in-memory transport: RPC errors and timeouts, the ack policy."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from shared.bus import Delivery, EventUndeliverable, MemoryBroker, MemoryBus
from shared.errors import RemoteError, RpcTimeout, RpcUnavailable, ServiceError
from shared.messages import (
    GetSceneStatus,
    SceneCancelled,
    SceneExpired,
    SceneScanned,
    SceneStatus,
    TokenInvalidated,
    encode,
)
from shared.sealing import Sealer, generate_key

SCENE = "S" * 32


class SceneGone(ServiceError):
    code = "scene_expired"
    default_message = "gone"


@pytest.fixture
def sealer() -> Sealer:
    return Sealer.from_text(generate_key())


@pytest.fixture
async def buses(sealer: Sealer) -> tuple[MemoryBroker, MemoryBus, MemoryBus]:
    broker = MemoryBroker()
    qrcode = MemoryBus(broker, "qrcode", sealer, rpc_timeout=0.2)
    gateway = MemoryBus(broker, "gateway", sealer, rpc_timeout=0.2)
    await qrcode.start()
    await gateway.start()
    return broker, qrcode, gateway


def _status(state: str = "pending") -> SceneStatus:
    return SceneStatus(scene=SCENE, state=state, expires_at=datetime.now(UTC))  # type: ignore[arg-type]


async def test_rpc_reply_is_decoded_into_the_reply_type(
    buses: tuple[MemoryBroker, MemoryBus, MemoryBus],
) -> None:
    _, qrcode, gateway = buses

    async def status(request: GetSceneStatus) -> SceneStatus:
        return _status("scanned")

    await qrcode.serve({GetSceneStatus: status})
    reply = await gateway.call(GetSceneStatus(scene=SCENE))
    assert isinstance(reply, SceneStatus) and reply.state == "scanned"


async def test_a_domain_error_arrives_as_remote_error_with_its_code(
    buses: tuple[MemoryBroker, MemoryBus, MemoryBus],
) -> None:
    _, qrcode, gateway = buses

    async def status(request: GetSceneStatus) -> SceneStatus:
        raise SceneGone("the login code has expired", retry_after=3)

    await qrcode.serve({GetSceneStatus: status})
    with pytest.raises(RemoteError) as caught:
        await gateway.call(GetSceneStatus(scene=SCENE))
    assert caught.value.error_code == "scene_expired"
    assert caught.value.message == "the login code has expired"
    assert caught.value.retry_after == 3


async def test_an_unexpected_handler_crash_is_reported_as_internal_without_details(
    buses: tuple[MemoryBroker, MemoryBus, MemoryBus],
) -> None:
    _, qrcode, gateway = buses

    async def status(request: GetSceneStatus) -> SceneStatus:
        raise KeyError("db password is hunter2")

    await qrcode.serve({GetSceneStatus: status})
    with pytest.raises(RemoteError) as caught:
        await gateway.call(GetSceneStatus(scene=SCENE))
    assert caught.value.error_code == "internal"
    assert "hunter2" not in caught.value.message


async def test_a_slow_handler_makes_the_caller_time_out(
    buses: tuple[MemoryBroker, MemoryBus, MemoryBus],
) -> None:
    _, qrcode, gateway = buses

    async def status(request: GetSceneStatus) -> SceneStatus:
        await asyncio.sleep(5)
        return _status()

    await qrcode.serve({GetSceneStatus: status})
    started = asyncio.get_running_loop().time()
    with pytest.raises(RpcTimeout) as caught:
        await gateway.call(GetSceneStatus(scene=SCENE), timeout=0.1)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert caught.value.error_code == "rpc_timeout"


async def test_calling_a_service_nobody_serves_is_unavailable(
    buses: tuple[MemoryBroker, MemoryBus, MemoryBus],
) -> None:
    _, _, gateway = buses
    with pytest.raises(RpcUnavailable):
        await gateway.call(GetSceneStatus(scene=SCENE))


async def test_a_request_for_an_unserved_method_is_an_invalid_request(
    buses: tuple[MemoryBroker, MemoryBus, MemoryBus], sealer: Sealer
) -> None:
    broker, qrcode, _ = buses
    await qrcode.serve({})
    server = broker.server_for("qrcode")
    assert server is not None
    type_, _, body = await server(Delivery("qrcode.teleport", 1, b"{}"))
    assert type_ == "error" and b"invalid_request" in body


async def test_events_reach_each_subscribed_service_once_and_every_broadcast_instance(
    sealer: Sealer,
) -> None:
    broker = MemoryBroker()
    publisher = MemoryBus(broker, "qrcode", sealer)
    workers = [MemoryBus(broker, "session", sealer) for _ in range(2)]
    gateways = [MemoryBus(broker, "gateway", sealer) for _ in range(2)]
    seen: dict[str, list[str]] = {"session": [], "gateway-0": [], "gateway-1": []}
    for bus in [publisher, *workers, *gateways]:
        await bus.start()

    async def work(event: SceneScanned) -> None:
        seen["session"].append(event.scene)

    for worker in workers:
        await worker.subscribe(SceneScanned, work)
    for i, gateway in enumerate(gateways):
        name = f"gateway-{i}"

        async def push(event: SceneScanned, name: str = name) -> None:
            seen[name].append(event.scene)

        await gateway.subscribe_broadcast([SceneScanned], push)

    for i in range(4):
        await publisher.publish(SceneScanned(scene=f"{i}" * 32))
    await broker.drain()
    assert len(seen["session"]) == 4  # shared queue: each event handled by one replica
    assert len(seen["gateway-0"]) == len(seen["gateway-1"]) == 4  # broadcast: every instance


async def test_a_failing_event_handler_gets_the_event_again_once_then_it_is_dead_lettered(
    sealer: Sealer,
) -> None:
    broker = MemoryBroker()
    publisher, consumer = MemoryBus(broker, "qrcode", sealer), MemoryBus(broker, "session", sealer)
    await publisher.start()
    await consumer.start()
    attempts: list[bool] = []

    async def flaky(event: SceneExpired) -> None:
        attempts.append(True)
        raise RuntimeError("database hiccup")

    await consumer.subscribe(SceneExpired, flaky)
    await publisher.publish(SceneExpired(scene=SCENE))
    await broker.drain()
    assert len(attempts) == 2
    assert len(broker.queue("session.scene.expired").dead) == 1


async def test_a_refused_event_counts_as_handled(sealer: Sealer) -> None:
    broker = MemoryBroker()
    publisher, consumer = MemoryBus(broker, "qrcode", sealer), MemoryBus(broker, "session", sealer)
    await publisher.start()
    await consumer.start()
    attempts: list[bool] = []

    async def refuse(event: SceneCancelled) -> None:
        attempts.append(True)
        raise SceneGone()

    await consumer.subscribe(SceneCancelled, refuse)
    await publisher.publish(SceneCancelled(scene=SCENE))
    await broker.drain()
    assert len(attempts) == 1
    assert broker.queue("session.scene.cancelled").dead == []


async def test_undecodable_and_unknown_events_are_dead_lettered_without_reaching_the_handler(
    sealer: Sealer,
) -> None:
    broker = MemoryBroker()
    consumer = MemoryBus(broker, "session", sealer)
    await consumer.start()
    handled: list[object] = []

    async def handler(event: SceneScanned) -> None:
        handled.append(event)

    await consumer.subscribe(SceneScanned, handler)
    good = encode(SceneScanned(scene=SCENE), sealer)
    broker.route("qrcode.events", Delivery("scene.scanned", 1, b"{not json"))
    broker.route("qrcode.events", Delivery("scene.scanned", 9, good))
    broker.route("qrcode.events", Delivery("scene.scanned", 1, good, user_id="wxlogin-qrcode"))
    await broker.drain()
    assert len(handled) == 1
    assert len(broker.queue("session.scene.scanned").dead) == 2


async def test_a_service_may_only_publish_its_own_events(
    buses: tuple[MemoryBroker, MemoryBus, MemoryBus],
) -> None:
    _, _, gateway = buses
    with pytest.raises(ValueError, match="does not publish"):
        await gateway.publish(SceneScanned(scene=SCENE))


async def test_an_event_that_must_arrive_fails_loudly_when_nobody_listens(
    buses: tuple[MemoryBroker, MemoryBus, MemoryBus],
) -> None:
    _, qrcode, _ = buses
    with pytest.raises(EventUndeliverable):
        await qrcode.publish(TokenInvalidated(fingerprint="0" * 16, errcode=40001), must_arrive=True)
    await qrcode.publish(TokenInvalidated(fingerprint="0" * 16, errcode=40001))  # dropped quietly


async def test_an_event_handler_sees_the_message_id_and_again_on_a_redelivery(sealer: Sealer) -> None:
    from shared.bus import current_message_id
    from shared.bus.adapter import Adapter, Outcome

    adapter = Adapter("gateway", sealer)
    seen: list[str | None] = []

    async def handler(event: SceneScanned) -> None:
        seen.append(current_message_id())
        if len(seen) == 1:
            raise RuntimeError("first try fails: redelivered")

    body = encode(SceneScanned(scene=SCENE), sealer, message_id="m-1")
    first = Delivery("scene.scanned", 1, body, message_id="m-1")
    again = Delivery("scene.scanned", 1, body, message_id="m-1", redelivered=True)
    assert await adapter.handle_event(first, handler) is Outcome.REQUEUE
    assert await adapter.handle_event(again, handler) is Outcome.ACK
    assert seen == ["m-1", "m-1"]
    assert current_message_id() is None  # only while the handler runs
