"""Who may send what: the callers table covers every RPC method, a service's broker user names it,
and a request or event from a sender the table does not allow never reaches a handler."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.bus import Delivery, MemoryBroker, MemoryBus
from shared.bus.acl import CALLERS, Gate, service_of_user
from shared.errors import RemoteError
from shared.messages import (
    ConfirmScene,
    GetSceneStatus,
    Request,
    SceneScanned,
    SceneStatus,
    TokenRefreshed,
    encode,
)
from shared.sealing import Sealer, generate_key

SCENE = "A" * 32


def all_request_types() -> set[str]:
    found: set[str] = set()
    todo: list[type] = [Request]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if getattr(sub, "TYPE", ""):
                found.add(sub.TYPE)
    return found


def test_every_rpc_method_has_its_callers_in_the_one_table() -> None:
    assert all_request_types() == set(CALLERS)
    for method, callers in CALLERS.items():
        assert callers, method
        assert method.split(".")[0] not in callers or method == "qrcode.status", method


@pytest.mark.parametrize(
    ("user", "service"),
    [
        ("wxlogin-qrcode", "qrcode"),
        ("wxlogin-3f9a-session", "session"),  # the per-run users of the tests
        ("guest", None),
        ("qrcode", None),  # a bare name is not a service user
        ("wxlogin-admin", None),
        (None, None),
    ],
)
def test_a_broker_user_belongs_to_the_service_its_name_ends_with(
    user: str | None, service: str | None
) -> None:
    assert service_of_user(user) == service


def test_a_service_running_as_its_own_user_refuses_senders_that_are_no_service() -> None:
    gate = Gate("wxlogin-qrcode")
    assert gate.enforced
    assert gate.may_call("qrcode.confirm", "wxlogin-session")
    assert not gate.may_call("qrcode.confirm", "wxlogin-gateway")
    assert not gate.may_call("qrcode.confirm", "guest")
    assert not gate.may_publish(TokenRefreshed, "wxlogin-gateway")
    assert gate.may_publish(TokenRefreshed, "wxlogin-token")


def test_on_a_shared_development_user_nobody_can_be_told_apart_and_the_check_is_off() -> None:
    gate = Gate("guest")
    assert not gate.enforced
    assert gate.may_call("qrcode.confirm", "guest")


@pytest.fixture
def sealer() -> Sealer:
    return Sealer.from_text(generate_key())


async def test_a_gateway_cannot_confirm_a_scene_for_a_user_of_its_choosing(sealer: Sealer) -> None:
    broker = MemoryBroker()
    qrcode, gateway, session = (MemoryBus(broker, name, sealer) for name in ("qrcode", "gateway", "session"))
    confirmed: list[str] = []

    async def confirm(request: ConfirmScene) -> SceneStatus:
        confirmed.append(request.scene)
        return SceneStatus(scene=request.scene, state="confirmed", expires_at=datetime.now(UTC))

    for bus in (qrcode, gateway, session):
        await bus.start()
    await qrcode.serve({ConfirmScene: confirm})
    request = ConfirmScene(scene=SCENE, scan_hash="b" * 64, user_id="u_victim")
    with pytest.raises(RemoteError) as caught:
        await gateway.call(request)
    assert caught.value.error_code == "caller_not_allowed"
    assert confirmed == []
    assert (await session.call(request)).state == "confirmed"
    assert confirmed == [SCENE]


async def test_an_event_from_a_service_that_does_not_publish_it_is_dead_lettered(sealer: Sealer) -> None:
    broker = MemoryBroker()
    consumer = MemoryBus(broker, "gateway", sealer)
    await consumer.start()
    handled: list[object] = []

    async def handler(event: SceneScanned) -> None:
        handled.append(event)

    await consumer.subscribe(SceneScanned, handler)
    body = encode(SceneScanned(scene=SCENE), sealer)
    broker.route("qrcode.events", Delivery("scene.scanned", 1, body, user_id="wxlogin-session"))
    broker.route("qrcode.events", Delivery("scene.scanned", 1, body, user_id="wxlogin-qrcode"))
    await broker.drain()
    assert len(handled) == 1
    assert len(broker.queue("gateway.scene.scanned").dead) == 1


def test_get_scene_status_is_open_to_the_gateway_and_the_session_only() -> None:
    assert CALLERS[GetSceneStatus.TYPE] == {"gateway", "session"}
