"""The least-privilege RabbitMQ definitions (deploy/rabbitmq) against the names the bus really uses.

Names come from :class:`AmqpBus` itself (one method per kind of broker object); the regexes are
checked to allow exactly each service's own names, plus what it must read and the default exchange.
Then the rendered definitions go into a real broker, which must refuse what they forbid. (That the
services run on these users at all is shown by tests/integration/test_processes.py.)

What the definitions cannot forbid: every service writes to the default exchange (RPC requests and
direct-reply-to answers go through it), and the default exchange routes to any queue by name. So every
message carries the sender's broker user in ``user_id``, which RabbitMQ validates, and the receiving
service checks it against the table of shared/bus/acl.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed

from services.gateway.handlers import PUSHED_EVENTS
from services.webhook.events import CONSUMED as WEBHOOK_CONSUMED
from shared.bus import AmqpBus
from shared.errors import RemoteError
from shared.messages import ConfirmScene, Event, SceneStatus, TokenInvalidated, TokenRefreshed
from shared.sealing import Sealer, generate_key
from tests.integration.broker import (
    RABBITMQ_DIR,
    SERVICES,
    BrokerUsers,
    load_service_users,
    new_passwords,
    rabbitmqctl,
    render_definitions,
)

PREFIX = "t1.x-"  # a dot and a dash: the prefix must be matched literally
# Events each service consumes (DESIGN §3); their publishers' exchanges are what it may read.
CONSUMES: dict[str, set[type[Event]]] = {
    "token": {TokenInvalidated},
    "qrcode": {TokenRefreshed},
    "session": {TokenRefreshed},
    "gateway": set(PUSHED_EVENTS),
    "webhook": set(WEBHOOK_CONSUMED),
}


def all_events() -> list[type[Event]]:
    found: list[type[Event]] = []
    stack = list(Event.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.TYPE:
            found.append(cls)
    return found


def names_of(service: str, prefix: str = PREFIX) -> dict[str, str]:
    """Every broker object name an instance of ``service`` can create or use as its own."""
    bus = AmqpBus("amqp://unused", service, Sealer(bytes(32)), prefix=prefix)
    names = {
        "exchange": bus.exchange_name(service),
        "rpc queue": bus.rpc_queue_name(service),
        "dead letters": bus.dead_letter_name(),
        "broadcast queue": bus.broadcast_queue_name(),
    }
    names.update({f"queue {e.TYPE}": bus.event_queue_name(e) for e in all_events()})
    return names


def exchange_of(service: str, prefix: str = PREFIX) -> str:
    return AmqpBus("amqp://unused", service, Sealer(bytes(32)), prefix=prefix).exchange_name(service)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return render_definitions(PREFIX, new_passwords(), tmp_path_factory.mktemp("defs") / "definitions.json")


def permissions(rendered: dict[str, Any], service: str) -> dict[str, str]:
    entry = next(p for p in rendered["permissions"] if p["user"] == f"wxlogin-{service}")
    return {k: entry[k] for k in ("configure", "write", "read")}


def allows(regex: str, name: str) -> bool:
    return re.search(regex, name) is not None  # RabbitMQ searches, it does not anchor for you


# --- the file --------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_may_configure_and_write_its_own_names_and_no_one_elses(
    rendered: dict[str, Any], service: str
) -> None:
    perms = permissions(rendered, service)
    for kind, name in names_of(service).items():
        assert allows(perms["configure"], name), f"{service} cannot configure its {kind} {name}"
        assert allows(perms["write"], name), f"{service} cannot write its {kind} {name}"
    for other in set(SERVICES) - {service}:
        for kind, name in names_of(other).items():
            assert not allows(perms["configure"], name), f"{service} may configure {other}'s {kind}"
            assert not allows(perms["write"], name), f"{service} may write {other}'s {kind}"


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_may_read_its_own_queues_and_the_exchanges_of_the_events_it_consumes(
    rendered: dict[str, Any], service: str
) -> None:
    read = permissions(rendered, service)["read"]
    sources = {exchange_of(p) for e in CONSUMES[service] for p in e.PUBLISHERS}
    for name in sources:
        assert allows(read, name), f"{service} cannot bind to {name}"
    for other in set(SERVICES) - {service}:
        for kind, name in names_of(other).items():
            if name not in sources:
                assert not allows(read, name), f"{service} may read {other}'s {kind} {name}"


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_may_write_the_default_exchange_and_nothing_else_outside_its_names(
    rendered: dict[str, Any], service: str
) -> None:
    write = permissions(rendered, service)["write"]
    assert allows(write, "amq.default")  # RPC requests and direct replies
    for name in ("amq.topic", "amq.direct", "amq.fanout", "amq.rabbitmq.trace", "amqXdefault"):
        assert not allows(write, name), name


def test_the_prefix_is_matched_literally(rendered: dict[str, Any]) -> None:
    perms = permissions(rendered, "qrcode")
    assert allows(perms["configure"], "t1.x-qrcode.rpc")
    assert not allows(perms["configure"], "t1Xx-qrcode.rpc")
    assert not allows(perms["configure"], "qrcode.rpc")


def test_there_is_no_guest_and_only_the_admin_administers(rendered: dict[str, Any]) -> None:
    users = {u["name"]: u for u in rendered["users"]}
    assert "guest" not in users
    assert set(users) == {"wxlogin-admin", *(f"wxlogin-{s}" for s in SERVICES)}
    assert [n for n, u in users.items() if u["tags"]] == ["wxlogin-admin"]
    assert {p["user"] for p in rendered["permissions"]} == set(users)


def test_the_template_holds_placeholders_and_the_rendered_file_the_passwords(tmp_path: Path) -> None:
    template = json.loads((RABBITMQ_DIR / "definitions.json").read_text())
    assert all(u["password"].startswith("${RABBITMQ_") for u in template["users"])
    passwords = new_passwords()
    out = render_definitions("", passwords, tmp_path / "d.json")
    assert {u["name"]: u["password"] for u in out["users"]} == {
        f"wxlogin-{name}": pw for name, pw in passwords.items()
    }
    assert oct(os.stat(tmp_path / "d.json").st_mode & 0o777) == "0o600"


def test_the_definitions_declare_each_services_exchange_as_the_bus_declares_it(
    rendered: dict[str, Any],
) -> None:
    exchanges = {e["name"]: e for e in rendered["exchanges"]}
    assert set(exchanges) == {exchange_of(s) for s in SERVICES}
    for exchange in exchanges.values():
        # AmqpBus: declare_exchange(name, TOPIC, durable=True) with no arguments.
        assert (exchange["type"], exchange["durable"], exchange["auto_delete"]) == ("topic", True, False)
        assert (exchange["internal"], exchange["arguments"], exchange["vhost"]) == (False, {}, "wxlogin")


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("RABBITMQ_TOKEN_PASSWORD", "", "set RABBITMQ_TOKEN_PASSWORD"),
        ("RABBITMQ_GATEWAY_PASSWORD", "short", "at least 16"),
        ("RABBITMQ_QRCODE_PASSWORD", "a|b&c" + "x" * 20, "may only contain"),
        ("WXLOGIN_BUS_PREFIX", "a/b", "may only contain"),
    ],
)
def test_the_entrypoint_refuses_to_start_with_a_missing_or_unsafe_value(
    tmp_path: Path, variable: str, value: str, complaint: str
) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DEFINITIONS_TEMPLATE": str(RABBITMQ_DIR / "definitions.json"),
        "DEFINITIONS_OUT": str(tmp_path / "d.json"),
        **{f"RABBITMQ_{n.upper()}_PASSWORD": pw for n, pw in new_passwords().items()},
        variable: value,
    }
    done = subprocess.run(
        ["sh", str(RABBITMQ_DIR / "entrypoint.sh"), "echo", "started"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 64
    assert complaint in done.stderr
    assert "started" not in done.stdout


# --- a real broker ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker_users(amqp_base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerUsers]:
    if rabbitmqctl() is None or not amqp_base_url.rstrip("/").rsplit("/", 1)[-1].startswith("wxlogin-test"):
        pytest.skip("needs rabbitmqctl and a vhost of this run")
    tag = os.urandom(4).hex()
    users = load_service_users(amqp_base_url, f"lp{tag}.", f"lp{tag}", tmp_path_factory.mktemp("broker"))
    try:
        yield users
    finally:
        users.delete()


async def refused(url: str, action: Any, refusal: type[Exception] = ChannelAccessRefused) -> bool:
    """Run ``action(channel)``; True when the broker refused it (``refusal``: ACCESS_REFUSED by default)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        try:
            await action(channel)
            await asyncio.sleep(0.2)  # a refused publish closes the channel asynchronously
            await channel.get_exchange("amq.direct", ensure=True)  # passive: fails only on a closed channel
        except refusal:
            return True
        return False
    finally:
        await connection.close()


async def test_the_broker_lets_each_service_declare_its_own_exchange_but_not_anothers(
    broker_users: BrokerUsers,
) -> None:
    prefix = broker_users.prefix

    def declare(name: str) -> Any:
        async def action(channel: aio_pika.abc.AbstractChannel) -> None:
            await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)

        return action

    assert not await refused(broker_users.url("qrcode"), declare(f"{prefix}qrcode.events"))
    assert await refused(broker_users.url("gateway"), declare(f"{prefix}qrcode.events"))
    assert await refused(broker_users.url("session"), declare(f"{prefix}token.events"))


async def test_the_broker_refuses_a_gateway_publishing_on_a_services_exchange(
    broker_users: BrokerUsers,
) -> None:
    prefix = broker_users.prefix

    async def publish(channel: aio_pika.abc.AbstractChannel) -> None:
        exchange = await channel.get_exchange(f"{prefix}qrcode.events", ensure=False)
        await exchange.publish(aio_pika.Message(b"{}", type="scene.expired"), routing_key="scene.expired")

    assert await refused(broker_users.url("gateway"), publish)


async def test_the_broker_refuses_consuming_another_services_rpc_queue(broker_users: BrokerUsers) -> None:
    queue_name = f"{broker_users.prefix}session.rpc"

    async def own(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(queue_name, durable=True)

    async def ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        return None

    async def steal(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.get_queue(queue_name, ensure=False)
        await queue.consume(ignore)

    assert not await refused(broker_users.url("session"), own)
    assert await refused(broker_users.url("gateway"), steal)
    assert await refused(broker_users.url("qrcode"), steal)


async def test_the_broker_refuses_binding_to_an_exchange_a_service_does_not_consume(
    broker_users: BrokerUsers,
) -> None:
    prefix = broker_users.prefix

    def bind(source: str) -> Any:
        async def action(channel: aio_pika.abc.AbstractChannel) -> None:
            queue = await channel.declare_queue(f"{prefix}qrcode.probe", auto_delete=True)
            await queue.bind(source, routing_key="#")

        return action

    assert not await refused(broker_users.url("qrcode"), bind(f"{prefix}token.events"))
    assert await refused(broker_users.url("qrcode"), bind(f"{prefix}session.events"))


async def test_only_the_session_service_may_confirm_a_scene_and_a_sender_cannot_pose_as_another(
    broker_users: BrokerUsers,
) -> None:
    """M1 of the security review: the gateway's broker user sent ``qrcode.confirm`` for a victim."""
    sealer = Sealer.from_text(generate_key())
    prefix = broker_users.prefix
    buses = {name: AmqpBus(broker_users.url(name), name, sealer, prefix=prefix) for name in SERVICES}
    confirmed: list[str | None] = []

    async def confirm(request: ConfirmScene) -> SceneStatus:
        confirmed.append(request.user_id)
        return SceneStatus(scene=request.scene, state="confirmed", expires_at=datetime.now(UTC))

    try:
        for bus in buses.values():
            await bus.start()
        await buses["qrcode"].serve({ConfirmScene: confirm})
        forged = ConfirmScene(scene="C" * 32, scan_hash="d" * 64, user_id="u_victim")
        with pytest.raises(RemoteError) as caught:
            await buses["gateway"].call(forged)
        assert caught.value.error_code == "caller_not_allowed"
        assert confirmed == []
        assert (await buses["session"].call(forged)).state == "confirmed"
        assert confirmed == ["u_victim"]
    finally:
        for bus in buses.values():
            await bus.close()

    async def pose_as_session(channel: aio_pika.abc.AbstractChannel) -> None:
        message = aio_pika.Message(b"{}", type="qrcode.confirm", user_id=broker_users.users["session"][0])
        await channel.default_exchange.publish(message, routing_key=f"{prefix}qrcode.rpc")

    # RabbitMQ validates user_id against the connection's user: the claim cannot be forged.
    assert await refused(broker_users.url("gateway"), pose_as_session, refusal=ChannelPreconditionFailed)
