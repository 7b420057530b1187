"""The bus heals itself on the shared broker, touching only this run's vhost: its connections are
closed by ``rabbitmqctl close_all_connections -p <vhost>``, or one of its channels is broken by a
channel error. Whole-broker faults (restarts, a node down for a minute, a cluster losing a node)
need private RabbitMQ nodes: tests/chaos."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import aio_pika
import pytest
from prometheus_client import CollectorRegistry

from shared.bus import AmqpBus, BusMetrics, amqp
from shared.errors import BusUnavailable
from shared.messages import GetSceneStatus, SceneScanned, SceneStatus
from shared.sealing import Sealer, generate_key
from tests.support import eventually

SCENE = "H" * 32

pytestmark = pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")


async def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl against the shared broker (never a command that stops or restarts it)."""
    done = await asyncio.to_thread(
        subprocess.run, ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return str(done.stdout)


async def close_vhost_connections(amqp_url: str) -> None:
    """Close every connection of this run's vhost (and only those), as an operator or a proxy would."""
    vhost = unquote(urlsplit(amqp_url).path.lstrip("/")) or "/"
    await rabbitmqctl("close_all_connections", "-p", vhost, "test closes connections")


async def declare_queue(amqp_url: str, name: str, arguments: dict[str, object] | None = None) -> None:
    """Declare a durable queue on a connection of its own, as another program would have."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments=arguments)
    finally:
        await connection.close()


@pytest.fixture
async def make_bus(amqp_base_url: str, unique: str) -> AsyncIterator[Callable[..., AmqpBus]]:
    sealer = Sealer.from_text(generate_key())
    made: list[AmqpBus] = []

    def make(service: str, metrics: BusMetrics | None = None) -> AmqpBus:
        bus = AmqpBus(amqp_base_url, service, sealer, prefix=f"h{unique}.", rpc_timeout=2.0, metrics=metrics)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close()


def reconnects_of(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("wxlogin_bus_reconnects_total", {"service": "gateway"})


def status_handler(calls: list[str]) -> Callable[[GetSceneStatus], asyncio.Future[SceneStatus]]:
    async def status(request: GetSceneStatus) -> SceneStatus:
        calls.append(request.scene)
        return SceneStatus(scene=request.scene, state="pending", expires_at=datetime.now(UTC))

    return status  # type: ignore[return-value]


async def test_after_its_connections_are_closed_every_part_of_the_bus_works_again_without_a_restart(
    make_bus: Callable[..., AmqpBus], amqp_base_url: str
) -> None:
    registry = CollectorRegistry()
    server, client = make_bus("qrcode"), make_bus("gateway", BusMetrics(registry, "gateway"))
    worker = make_bus("session")
    for bus in (server, client, worker):
        await bus.start()
    served: list[str] = []
    await server.serve({GetSceneStatus: status_handler(served)})
    shared: list[str] = []
    pushed: list[str] = []

    async def on_shared(event: SceneScanned) -> None:
        shared.append(event.scene)

    async def on_push(event: SceneScanned) -> None:
        pushed.append(event.scene)

    await worker.subscribe(SceneScanned, on_shared)
    await client.subscribe_broadcast([SceneScanned], on_push)
    caught_up = asyncio.Event()

    async def catch_up() -> None:
        caught_up.set()

    client.on_reconnected(catch_up)

    for round_ in range(3):  # the issue saw it break for good after the first close
        await close_vhost_connections(amqp_base_url)
        # The link can be back within 10 ms of the close, quicker than a poll sees it down: count the
        # reconnects instead (each one follows a loss of the link).
        await eventually(lambda round_=round_: reconnects_of(registry) == round_ + 1, timeout=5)
        await eventually(lambda: all(b.connected for b in (server, client, worker)), timeout=5)
        scene = f"{round_:032d}"
        assert (await client.call(GetSceneStatus(scene=scene))).scene == scene  # RPC over direct reply-to
        await server.publish(SceneScanned(scene=scene))
        await eventually(lambda scene=scene: scene in shared and scene in pushed, timeout=5)
    assert caught_up.is_set()
    assert registry.get_sample_value("wxlogin_bus_connected", {"service": "gateway"}) == 1
    assert registry.get_sample_value("wxlogin_bus_reconnects_total", {"service": "gateway"}) == 3


async def test_a_call_waiting_on_a_lost_connection_fails_at_once_and_calls_while_down_fail_fast(
    make_bus: Callable[..., AmqpBus], amqp_base_url: str
) -> None:
    server, client = make_bus("qrcode"), make_bus("gateway")
    await server.start()
    await client.start()
    release = asyncio.Event()

    async def slow(request: GetSceneStatus) -> SceneStatus:
        await release.wait()
        return SceneStatus(scene=request.scene, state="pending", expires_at=datetime.now(UTC))

    await server.serve({GetSceneStatus: slow})
    call = asyncio.ensure_future(client.call(GetSceneStatus(scene=SCENE), timeout=10))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await close_vhost_connections(amqp_base_url)
    with pytest.raises(BusUnavailable) as caught:
        await call
    # rabbitmqctl itself takes about a second to boot; the call did not wait out its 10 s timeout.
    assert time.monotonic() - started < 5
    assert caught.value.error_code == "bus_unavailable"
    assert caught.value.retry_after is not None
    release.set()


async def test_a_channel_error_replaces_the_whole_link_and_the_reply_path_comes_back(
    make_bus: Callable[..., AmqpBus],
) -> None:
    server, client = make_bus("qrcode"), make_bus("gateway")
    await server.start()
    await client.start()
    served: list[str] = []
    await server.serve({GetSceneStatus: status_handler(served)})
    link = client._link
    assert link is not None
    # A channel error: passively declaring a queue that does not exist closes the channel with 404.
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await link.rpc.declare_queue("no-such-queue-anywhere", passive=True)
    await eventually(lambda: client._link is not None and client._link is not link and client.connected)
    assert (await client.call(GetSceneStatus(scene=SCENE))).scene == SCENE
    assert served == [SCENE]


async def test_service_queues_are_quorum_queues_with_a_delivery_limit_and_dead_letters_are_bounded(
    make_bus: Callable[..., AmqpBus], amqp_base_url: str, unique: str
) -> None:
    server = make_bus("session")
    await server.start()
    await server.serve({GetSceneStatus: status_handler([])})

    async def ignore(event: SceneScanned) -> None:
        return None

    await server.subscribe(SceneScanned, ignore)
    vhost = unquote(urlsplit(amqp_base_url).path.lstrip("/"))
    listed = await rabbitmqctl(
        "list_queues", "-p", vhost, "--quiet", "--no-table-headers", "name", "type", "arguments"
    )
    rows = {line.split("\t")[0]: line for line in listed.splitlines() if line.startswith(f"h{unique}.")}
    for name in (f"h{unique}.session.rpc", f"h{unique}.session.scene.scanned"):
        assert "quorum" in rows[name], rows[name]
        assert "x-delivery-limit" in rows[name]
    dead = rows[f"h{unique}.session.dead"]
    assert "x-max-length" in dead and "x-message-ttl" in dead


async def test_a_classic_queue_left_by_an_older_version_is_used_as_it_is_until_migrated(
    make_bus: Callable[..., AmqpBus], amqp_base_url: str, unique: str
) -> None:
    await declare_queue(amqp_base_url, f"h{unique}.qrcode.rpc")  # what version 1 declared
    server, client = make_bus("qrcode"), make_bus("gateway")
    await server.start()
    await client.start()
    served: list[str] = []
    await server.serve({GetSceneStatus: status_handler(served)})
    assert (await client.call(GetSceneStatus(scene=SCENE))).scene == SCENE
    assert server.connected  # the refused redeclare did not take the link down
    vhost = unquote(urlsplit(amqp_base_url).path.lstrip("/"))
    listed = await rabbitmqctl("list_queues", "-p", vhost, "--quiet", "--no-table-headers", "name", "type")
    assert f"h{unique}.qrcode.rpc\tclassic" in listed


async def test_a_handler_in_flight_when_the_connection_drops_finishes_instead_of_being_cancelled(
    make_bus: Callable[..., AmqpBus], amqp_base_url: str
) -> None:
    # Cut off halfway, a handler may have spent a wx.login code at WeChat and not stored the result.
    server, client = make_bus("qrcode"), make_bus("gateway")
    await server.start()
    await client.start()
    release, finished, cancelled = asyncio.Event(), [], []

    async def slow(request: GetSceneStatus) -> SceneStatus:
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(request.scene)
            raise
        finished.append(request.scene)
        return SceneStatus(scene=request.scene, state="pending", expires_at=datetime.now(UTC))

    await server.serve({GetSceneStatus: slow})
    call = asyncio.ensure_future(client.call(GetSceneStatus(scene=SCENE), timeout=10))
    await eventually(lambda: server.inflight == 1)
    await close_vhost_connections(amqp_base_url)
    with pytest.raises(BusUnavailable):
        await call
    release.set()
    # The first delivery's handler finishes; the broker redelivers the unacked request, which is
    # answered again once the server is back.
    await eventually(lambda: finished[:1] == [SCENE])
    await eventually(lambda: server.connected and client.connected)
    assert (await client.call(GetSceneStatus(scene=SCENE))).scene == SCENE
    assert cancelled == []


async def test_a_link_whose_publishes_to_a_queue_are_refused_for_two_seconds_is_replaced(
    make_bus: Callable[..., AmqpBus], amqp_base_url: str, unique: str
) -> None:
    # A queue that refuses every message (basic.nack): it stands in for the channel RabbitMQ 3.10 left
    # failing every request to a quorum queue after the node holding its leader stopped (docs/chaos.md).
    refuse_all = {"x-max-length": 0, "x-overflow": "reject-publish"}
    await declare_queue(amqp_base_url, f"h{unique}.qrcode.rpc", refuse_all)
    client = make_bus("gateway")
    await client.start()
    first = client._link
    assert first is not None

    async def refused() -> str:
        with pytest.raises(BusUnavailable) as caught:
            await client.call(GetSceneStatus(scene=SCENE))
        return caught.value.message

    started = time.monotonic()
    assert "refused" in await refused()
    while time.monotonic() - started < amqp.REFUSED_FOR_SECONDS - 0.3:
        await refused()
        await asyncio.sleep(0.1)
    assert client._link is first and client.connected  # refusals borne for less than the window
    await asyncio.sleep(0.4)
    with contextlib.suppress(BusUnavailable):  # this one gives the link up
        await client.call(GetSceneStatus(scene=SCENE))
    await eventually(lambda: client._link is not None and client._link is not first and client.connected)
    # The queue still refuses on the new link: it is borne twice as long before the next replacement.
    assert client._link.refused_for == 2 * amqp.REFUSED_FOR_SECONDS
