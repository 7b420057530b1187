"""The bus over real RabbitMQ: RPC, errors and timeouts, shared vs broadcast queues, dead letters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aio_pika
import pytest
from pydantic import SecretStr

from shared.bus import AmqpBus
from shared.errors import RemoteError, RpcTimeout, RpcUnavailable, ServiceError
from shared.messages import (
    ConfirmLogin,
    ConfirmResult,
    GetSceneStatus,
    InvalidMessage,
    SceneExpired,
    SceneScanned,
    SceneStatus,
    decode_as,
)
from shared.sealing import Sealer, generate_key
from tests.support import eventually

SCENE = "Q" * 32


class NotThere(ServiceError):
    code = "scene_not_found"


@pytest.fixture
async def make_bus(amqp_base_url: str, unique: str) -> AsyncIterator[Callable[[str], AmqpBus]]:
    sealer = Sealer.from_text(generate_key())
    made: list[AmqpBus] = []

    def make(service: str) -> AmqpBus:
        bus = AmqpBus(amqp_base_url, service, sealer, prefix=f"t{unique}.", rpc_timeout=2.0)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close()


async def started(bus: AmqpBus) -> AmqpBus:
    await bus.start()
    return bus


async def test_rpc_round_trip_and_error_codes_over_rabbitmq(make_bus: Callable[[str], AmqpBus]) -> None:
    server, client = await started(make_bus("qrcode")), await started(make_bus("gateway"))

    async def status(request: GetSceneStatus) -> SceneStatus:
        if request.scene != SCENE:
            raise NotThere("unknown login code")
        return SceneStatus(scene=SCENE, state="pending", expires_at=datetime.now(UTC))

    await server.serve({GetSceneStatus: status})
    assert (await client.call(GetSceneStatus(scene=SCENE))).state == "pending"
    with pytest.raises(RemoteError) as caught:
        await client.call(GetSceneStatus(scene="X" * 32))
    assert caught.value.error_code == "scene_not_found"


async def test_rpc_to_a_missing_queue_fails_fast_as_unavailable(make_bus: Callable[[str], AmqpBus]) -> None:
    client = await started(make_bus("gateway"))
    started_at = asyncio.get_running_loop().time()
    with pytest.raises(RpcUnavailable):
        await client.call(GetSceneStatus(scene=SCENE))
    assert asyncio.get_running_loop().time() - started_at < 1.0


async def test_a_slow_server_times_out_the_caller_and_its_late_reply_is_dropped(
    make_bus: Callable[[str], AmqpBus],
) -> None:
    server, client = await started(make_bus("qrcode")), await started(make_bus("gateway"))
    release = asyncio.Event()

    async def status(request: GetSceneStatus) -> SceneStatus:
        await release.wait()
        return SceneStatus(scene=SCENE, state="pending", expires_at=datetime.now(UTC))

    await server.serve({GetSceneStatus: status})
    with pytest.raises(RpcTimeout):
        await client.call(GetSceneStatus(scene=SCENE), timeout=0.3)
    release.set()
    await asyncio.sleep(0.2)  # the late reply arrives and must not break the next call
    assert (await client.call(GetSceneStatus(scene=SCENE))).state == "pending"


async def test_a_request_nobody_consumes_expires_with_the_callers_timeout(
    make_bus: Callable[[str], AmqpBus], amqp_base_url: str, unique: str
) -> None:
    server, client = await started(make_bus("qrcode")), await started(make_bus("gateway"))

    async def status(request: GetSceneStatus) -> SceneStatus:
        return SceneStatus(scene=SCENE, state="pending", expires_at=datetime.now(UTC))

    await server.serve({GetSceneStatus: status})
    await server.close()  # the queue stays, nobody consumes
    with pytest.raises(RpcTimeout):
        await client.call(GetSceneStatus(scene=SCENE), timeout=0.3)
    connection = await aio_pika.connect(amqp_base_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"t{unique}.qrcode.rpc", durable=True, passive=True)
        await eventually(lambda: _empty(queue), timeout=3)  # expired by the broker, not left to pile up
    finally:
        await connection.close()


async def _empty(queue: aio_pika.abc.AbstractQueue) -> bool:
    declared = await queue.channel.declare_queue(queue.name, durable=True, passive=True)
    return declared.declaration_result.message_count == 0


async def test_replicas_share_work_while_broadcast_queues_each_get_every_event(
    make_bus: Callable[[str], AmqpBus],
) -> None:
    publisher = await started(make_bus("qrcode"))
    workers = [await started(make_bus("session")) for _ in range(2)]
    gateways = [await started(make_bus("gateway")) for _ in range(2)]
    per_worker: list[list[str]] = [[], []]
    per_gateway: list[list[str]] = [[], []]
    for i, worker in enumerate(workers):

        async def work(event: SceneScanned, i: int = i) -> None:
            per_worker[i].append(event.scene)

        await worker.subscribe(SceneScanned, work)
    for i, gateway in enumerate(gateways):

        async def push(event: SceneScanned, i: int = i) -> None:
            per_gateway[i].append(event.scene)

        await gateway.subscribe_broadcast([SceneScanned], push)

    scenes = [f"{i:032d}" for i in range(10)]
    for scene in scenes:
        await publisher.publish(SceneScanned(scene=scene))
    await eventually(lambda: sum(map(len, per_worker)) == 10 and all(len(g) == 10 for g in per_gateway))
    assert sorted(per_worker[0] + per_worker[1]) == scenes  # each event handled once among replicas
    assert per_gateway[0] == per_gateway[1] == scenes  # every gateway sees every event, in order


async def test_messages_carry_type_version_ids_timestamp_and_sealed_secrets(
    make_bus: Callable[[str], AmqpBus], amqp_base_url: str, unique: str
) -> None:
    client = await started(make_bus("gateway"))
    connection = await aio_pika.connect(amqp_base_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"t{unique}.session.rpc", durable=True)
        code = "0716AVll20uHk94SLDml27etM946AVlq"
        call = asyncio.create_task(
            client.call(ConfirmLogin(scene=SCENE, scan_hash="ab" * 32, code=SecretStr(code)), timeout=2)
        )
        message = await _get_one(queue)
        assert message.type == "session.confirm"
        assert message.headers["v"] == 1
        assert message.app_id == "gateway"
        assert message.message_id and message.correlation_id and message.timestamp
        assert message.content_type == "application/json"
        assert code.encode() not in message.body
        assert json.loads(message.body)["code"].startswith("v2.")  # sealed, with the key's id
        assert message.user_id == "guest"  # the sender's broker user, validated by RabbitMQ
        # The sealed code opens only in this message: replayed under another message id, it does not.
        sealer = client._adapter.sealer
        assert decode_as(ConfirmLogin, message.body, sealer, message_id=message.message_id).code
        with pytest.raises(InvalidMessage):
            decode_as(ConfirmLogin, message.body, sealer, message_id="another-message")
        # Answer by hand to prove replies are matched by the request's message_id.
        reply = ConfirmResult(scene=SCENE, state="confirmed")
        await channel.default_exchange.publish(
            aio_pika.Message(
                reply.model_dump_json().encode(),
                type=reply.TYPE,
                headers={"v": 1},
                correlation_id=message.message_id,
            ),
            routing_key=str(message.reply_to),
            mandatory=False,
        )
        assert (await call).state == "confirmed"
    finally:
        await connection.close()


async def _get_one(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    for _ in range(100):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.02)
    raise AssertionError("no message arrived")


async def test_garbage_and_twice_failing_events_end_in_the_dead_letter_queue(
    make_bus: Callable[[str], AmqpBus], amqp_base_url: str, unique: str
) -> None:
    publisher, consumer = await started(make_bus("qrcode")), await started(make_bus("session"))
    attempts: list[str] = []

    async def flaky(event: SceneExpired) -> None:
        attempts.append(event.scene)
        raise RuntimeError("database hiccup")

    await consumer.subscribe(SceneExpired, flaky)
    await publisher.publish(SceneExpired(scene=SCENE))
    connection = await aio_pika.connect(amqp_base_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"t{unique}.qrcode.events")
        await exchange.publish(
            aio_pika.Message(b"{not json", type="scene.expired", headers={"v": 1}),
            routing_key="scene.expired",
        )
        dead = await channel.declare_queue(f"t{unique}.session.dead", durable=True, passive=True)
        first = await _get_one(dead)
        second = await _get_one(dead)
    finally:
        await connection.close()
    assert attempts == [SCENE, SCENE]  # delivered, requeued once, then dead-lettered
    assert {first.body, second.body} >= {b"{not json"}


async def test_frames_queued_together_share_a_socket_write_and_arrive_whole_and_in_order(
    make_bus: Callable[[str], AmqpBus],
) -> None:
    server, client = await started(make_bus("qrcode")), await started(make_bus("gateway"))
    watcher = await started(make_bus("gateway"))
    seen: list[str] = []

    async def status(request: GetSceneStatus) -> SceneStatus:
        await server.publish(SceneScanned(scene=request.scene))  # a hint, then the reply: two frames
        return SceneStatus(scene=request.scene, state="scanned", expires_at=datetime.now(UTC))

    async def watch(event: SceneScanned) -> None:
        seen.append(event.scene)

    await watcher.subscribe_broadcast([SceneScanned], watch)
    await server.serve({GetSceneStatus: status})
    writer = server._link.writer if server._link is not None else None
    assert writer is not None
    before = (writer.frames, writer.writes)

    scenes = [f"{i:032d}" for i in range(64)]
    for start in range(0, len(scenes), 16):  # sixteen calls at a time
        batch = scenes[start : start + 16]
        answers = await asyncio.gather(*(client.call(GetSceneStatus(scene=scene)) for scene in batch))
        assert [answer.scene for answer in answers] == batch
    await eventually(lambda: len(seen) == len(scenes))

    assert sorted(seen) == scenes  # every hint arrived once and whole
    frames, writes = writer.frames - before[0], writer.writes - before[1]
    assert frames >= 3 * len(scenes)  # a hint, a reply and an ack for each request
    assert writes < frames * 0.8, (frames, writes)  # the frames of concurrent requests shared sends
