"""Recording and delivering webhooks with hand-written fakes (no MongoDB, no HTTP): once per event,
in order per endpoint, the retry schedule, 410, Retry-After, a disabled endpoint, enabling it again."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import pytest

from services.webhook.handlers import Deliverer, Directory, EventRecorder, RetryPolicy, WebhookAdmin
from services.webhook.metrics import WebhookMetrics
from services.webhook.sender import Attempt
from services.webhook.store import DeliveryRecord, EndpointState, OutboxItem
from shared.clients import Client, ClientRegistry, WebhookEndpoint
from shared.messages import LoginConfirmed, SceneCancelled, SessionRevoked
from tests.support import ManualClock

SCENE = "S" * 32
SECRET = "whsec_" + "A" * 43 + "="


class FakeOutbox:
    """``OutboxStore`` over a dict, with the same conditions."""

    def __init__(self) -> None:
        self.items: dict[str, OutboxItem] = {}

    async def enqueue(self, item: OutboxItem) -> bool:
        if item.id in self.items:
            return False
        self.items[item.id] = item
        return True

    async def get(self, message_id: str) -> OutboxItem | None:
        return self.items.get(message_id)

    async def queue(self, endpoint: str, *, limit: int) -> list[OutboxItem]:
        pending = [i for i in self.items.values() if i.endpoint == endpoint and i.state == "pending"]
        return sorted(pending, key=lambda i: (i.seq, i.id))[:limit]

    async def claim(self, message_id: str, *, owner: str, now: float, lease: float) -> OutboxItem | None:
        item = self.items.get(message_id)
        if item is None or item.state != "pending" or item.next_at > now or item.lease_until > now:
            return None
        item = dataclasses.replace(
            item, lease_until=now + lease, lease_owner=owner, attempts=item.attempts + 1
        )
        self.items[message_id] = item
        return item

    def _set(self, message_id: str, **fields: object) -> None:
        item = self.items[message_id]
        if item.state == "pending":
            self.items[message_id] = dataclasses.replace(item, **fields)  # type: ignore[arg-type]

    async def delivered(self, message_id: str, *, now: float, status: int | None) -> None:
        self._set(message_id, state="delivered", delivered_at=now, last_status=status, lease_until=0.0)

    async def retry_at(self, message_id: str, *, at: float, status: int | None, error: str | None) -> None:
        self._set(message_id, next_at=at, lease_until=0.0, last_status=status, last_error=error)

    async def failed(self, message_id: str, *, status: int | None, error: str | None) -> None:
        self._set(message_id, state="failed", lease_until=0.0, last_status=status, last_error=error)

    async def resume(self, endpoint: str, *, now: float) -> int:
        ids = [i.id for i in self.items.values() if i.endpoint == endpoint and i.state == "pending"]
        for message_id in ids:
            self._set(message_id, next_at=now, attempts=0, lease_until=0.0)
        return len(ids)

    async def replay(self, items: Sequence[OutboxItem], *, now: float) -> int:
        count = 0
        for index, item in enumerate(items):
            stored = self.items[item.id]
            if stored.state in ("delivered", "failed"):
                self.items[item.id] = dataclasses.replace(
                    stored,
                    state="pending",
                    seq=now + index * 1e-6,
                    next_at=now,
                    attempts=0,
                    replays=stored.replays + 1,
                )
                count += 1
        return count

    async def in_range(self, endpoint: str, *, since: float, until: float, limit: int) -> list[OutboxItem]:
        found = [i for i in self.items.values() if i.endpoint == endpoint and since <= i.created_at < until]
        return sorted(found, key=lambda i: i.seq)[:limit]

    async def oldest_due(self, now: float, *, skip: Collection[str] = ()) -> OutboxItem | None:
        due = [
            i
            for i in self.items.values()
            if i.state == "pending" and i.next_at <= now and i.endpoint not in skip
        ]
        return min(due, key=lambda i: i.created_at, default=None)

    async def pending(self) -> int:
        return sum(1 for i in self.items.values() if i.state == "pending")


class FakeLog:
    def __init__(self) -> None:
        self.records: list[DeliveryRecord] = []

    async def record(self, record: DeliveryRecord) -> None:
        self.records.append(record)

    async def list(self, **_: object) -> list[DeliveryRecord]:
        return list(reversed(self.records))


class FakeStates:
    def __init__(self) -> None:
        self.states: dict[str, EndpointState] = {}

    async def get(self, key: str) -> EndpointState:
        return self.states.get(key, EndpointState(key))

    async def all(self) -> dict[str, EndpointState]:
        return dict(self.states)

    async def set(self, key: str, *, disabled: bool, reason: str | None, now: float) -> bool:
        if self.states.get(key, EndpointState(key)).disabled == disabled and key in self.states:
            return False
        self.states[key] = EndpointState(key, disabled, reason, now)
        return True


class ScriptedSender:
    """Answers each attempt from a script (then 2xx); records what was sent."""

    def __init__(self, *script: Attempt) -> None:
        self.script = list(script)
        self.sent: list[tuple[str, str, bytes, list[str]]] = []

    async def send(self, url: str, message_id: str, body: bytes, secrets: Sequence[str]) -> Attempt:
        self.sent.append((url, message_id, body, list(secrets)))
        return self.script.pop(0) if self.script else Attempt("delivered", 204, 0.001)


def registry(*endpoints: WebhookEndpoint, client_id: str = "shop") -> ClientRegistry:
    default = Client(client_id="wxlogin-site", site_name="Default")
    return ClientRegistry(default, [Client(client_id=client_id, site_name="Shop", webhooks=list(endpoints))])


def endpoint(id_: str = "main", **fields: object) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=id_, url=f"https://hooks.example.com/{id_}", secret_envs=["HOOK_SECRET"], **fields
    )  # type: ignore[arg-type]


class World:
    """The recorder, the deliverer and the admin over one set of fakes."""

    def __init__(self, *endpoints: WebhookEndpoint, sender: ScriptedSender | None = None) -> None:
        self.clock = ManualClock(1_000_000.0)
        self.outbox, self.log, self.states = FakeOutbox(), FakeLog(), FakeStates()
        self.directory = Directory(registry(*endpoints), {"HOOK_SECRET": SECRET})
        self.metrics = WebhookMetrics()
        self.sender = sender or ScriptedSender()
        self.bus_id = "bus-1"
        self.recorder = EventRecorder(
            self.outbox,  # type: ignore[arg-type]
            self.directory,
            self.metrics,
            subject_key=lambda: b"k" * 32,
            clock=self.clock,
            bus_message_id=lambda: self.bus_id,
        )
        self.deliverer = Deliverer(
            self.outbox,  # type: ignore[arg-type]
            self.log,  # type: ignore[arg-type]
            self.states,  # type: ignore[arg-type]
            self.directory,
            self.sender,
            RetryPolicy(),
            self.metrics,
            owner="replica-a",
            lease=10.0,
            clock=self.clock,
            rng=lambda: 0.5,  # no jitter
        )
        self.admin = WebhookAdmin(self.outbox, self.log, self.states, self.directory, clock=self.clock)  # type: ignore[arg-type]

    async def login(self, n: int, client_id: str = "shop") -> None:
        await self.recorder.on_event(LoginConfirmed(scene=f"{n:032d}", user_id=f"u_{n}", client_id=client_id))
        self.clock.now += 0.001

    def sent_scenes(self) -> list[str]:
        import json

        return [json.loads(body)["data"]["scene"] for _, _, body, _ in self.sender.sent]

    def outcomes(self) -> list[str]:
        return [r.outcome for r in self.log.records]


# --- recording -------------------------------------------------------------------------------------


async def test_an_event_is_recorded_once_per_interested_endpoint_and_a_redelivery_adds_nothing() -> None:
    world = World(
        endpoint("main"), endpoint("audit", events=["session.revoked"]), endpoint("off", enabled=False)
    )
    await world.login(1)
    await world.login(1)  # the same bus event again (a redelivery, or announced twice)
    assert [(i.endpoint_id, i.type) for i in world.outbox.items.values()] == [("main", "login.succeeded")]
    await world.recorder.on_event(
        SessionRevoked(user_id="u_1", sid="fam-0001", client_id="shop", reason="logout")
    )
    world.bus_id = "bus-2"
    await world.recorder.on_event(
        SessionRevoked(user_id="u_1", sid="fam-0001", client_id="shop", reason="logout")
    )
    revoked = sorted(i.endpoint_id for i in world.outbox.items.values() if i.type == "session.revoked")
    assert revoked == ["audit", "audit", "main", "main"]  # two bus messages: two events


async def test_events_of_no_client_belong_to_the_default_client_and_unknown_clients_are_dropped() -> None:
    world = World(endpoint("main"))
    await world.recorder.on_event(SceneCancelled(scene=SCENE))  # the default client has no endpoint
    await world.login(2, client_id="gone-client")
    assert world.outbox.items == {}


# --- delivering ------------------------------------------------------------------------------------


async def test_messages_go_out_in_order_signed_with_the_endpoints_secrets() -> None:
    world = World(endpoint("main"))
    for n in range(5):
        await world.login(n)
    assert await world.deliverer.step("shop/main") == 0.0
    assert world.sent_scenes() == [f"{n:032d}" for n in range(5)]
    assert all(secrets == [SECRET] for _, _, _, secrets in world.sender.sent)
    assert {i.state for i in world.outbox.items.values()} == {"delivered"}
    assert world.outcomes() == ["delivered"] * 5


async def test_a_failing_head_holds_back_the_messages_behind_it_until_it_is_delivered() -> None:
    world = World(endpoint("main"), sender=ScriptedSender(Attempt("failed", 500, 0.01, "HTTP 500")))
    for n in range(3):
        await world.login(n)
    wait = await world.deliverer.step("shop/main")
    assert world.sent_scenes() == [f"{0:032d}"]  # nothing after the failed head
    assert wait == 0.0
    assert await world.deliverer.step("shop/main") == pytest.approx(1.0)  # polls; the retry is due in 5 s
    world.clock.now += 5.0
    await world.deliverer.step("shop/main")
    assert world.sent_scenes() == [f"{n:032d}" for n in (0, 0, 1, 2)]
    ids = [message_id for _, message_id, _, _ in world.sender.sent]
    assert ids[0] == ids[1]  # the retry carries the same webhook-id
    assert world.outcomes() == ["failed", "delivered", "delivered", "delivered"]


async def test_retries_follow_the_schedule_then_the_message_fails_and_the_endpoint_is_disabled() -> None:
    failing = [Attempt("failed", None, 15.0, "timeout") for _ in range(8)]
    world = World(endpoint("main"), sender=ScriptedSender(*failing))
    await world.login(1)
    waited = []
    for _ in range(8):
        before = world.clock.now
        await world.deliverer.step("shop/main")
        item = next(iter(world.outbox.items.values()))
        if item.state == "pending":
            waited.append(round(item.next_at - before))
            world.clock.now = item.next_at
    assert waited == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert next(iter(world.outbox.items.values())).state == "failed"
    assert world.outcomes() == ["failed"] * 7 + ["failed_final"]
    assert (await world.states.get("shop/main")).reason == "failing"


async def test_retry_after_on_429_and_503_is_honoured() -> None:
    world = World(
        endpoint("main"), sender=ScriptedSender(Attempt("failed", 429, 0.01, "HTTP 429", retry_after=42.0))
    )
    await world.login(1)
    await world.deliverer.step("shop/main")
    item = next(iter(world.outbox.items.values()))
    assert item.next_at == pytest.approx(world.clock.now + 42.0)


async def test_410_disables_the_endpoint_keeps_the_message_and_enabling_sends_it() -> None:
    world = World(endpoint("main"), sender=ScriptedSender(Attempt("gone", 410, 0.01, "410 Gone")))
    await world.login(1)
    await world.login(2)
    await world.deliverer.step("shop/main")
    assert (await world.states.get("shop/main")).reason == "gone"
    assert world.outcomes() == ["gone"]
    world.clock.now += 3600
    assert await world.deliverer.step("shop/main") == 1.0  # disabled: nothing is sent
    assert len(world.sender.sent) == 1
    [listed] = await world.admin.endpoints("shop")
    assert (listed["enabled"], listed["disabled_reason"]) == (False, "gone")
    assert (await world.admin.enable("shop", "main"))["pending"] == 2
    await world.deliverer.step("shop/main")
    assert world.sent_scenes() == [f"{1:032d}", f"{1:032d}", f"{2:032d}"]
    assert {i.state for i in world.outbox.items.values()} == {"delivered"}


async def test_a_message_another_replica_holds_is_not_sent_again_until_its_lease_lapses() -> None:
    world = World(endpoint("main"))
    await world.login(1)
    [item] = world.outbox.items.values()
    assert await world.outbox.claim(item.id, owner="replica-b", now=world.clock.now, lease=10.0)
    assert await world.deliverer.step("shop/main") == pytest.approx(1.0)
    assert world.sender.sent == []
    world.clock.now += 10.0  # replica-b died mid-attempt
    await world.deliverer.step("shop/main")
    assert len(world.sender.sent) == 1
    assert world.log.records[0].attempt == 2  # its lost attempt counted


async def test_a_refused_endpoint_counts_as_a_failed_attempt_and_is_retried() -> None:
    world = World(endpoint("main"), sender=ScriptedSender(Attempt("refused", error="loopback: 127.0.0.1")))
    await world.login(1)
    await world.deliverer.step("shop/main")
    assert world.outcomes() == ["refused"]
    assert world.log.records[0].error == "loopback: 127.0.0.1"
    assert next(iter(world.outbox.items.values())).next_at == pytest.approx(world.clock.now + 5.0)


async def test_a_replay_sends_the_message_again_with_its_webhook_id_behind_what_is_pending() -> None:
    world = World(endpoint("main"))
    await world.login(1)
    await world.deliverer.step("shop/main")
    first = world.sender.sent[0][1]
    await world.login(2)
    assert (await world.admin.replay_message("shop", first))["replayed"] == 1
    await world.deliverer.step("shop/main")
    assert world.sent_scenes() == [f"{1:032d}", f"{2:032d}", f"{1:032d}"]
    assert world.sender.sent[2][1] == first


async def test_a_client_sees_and_replays_only_its_own_endpoints_and_messages() -> None:
    world = World(endpoint("main"))
    await world.login(1)
    [item] = world.outbox.items.values()
    from services.webhook.errors import EndpointUnknown, MessageUnknown

    with pytest.raises(MessageUnknown):
        await world.admin.replay_message("wxlogin-site", item.id)
    with pytest.raises(EndpointUnknown):
        await world.admin.enable("wxlogin-site", "main")
    assert await world.admin.endpoints("wxlogin-site") == []
    assert len(await world.admin.endpoints(None)) == 1  # the operator (CLI) sees every client's
