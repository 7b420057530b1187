"""Only the browser that asked for a code may watch it or collect its login, and nothing is granted
for a scene past ``expires_at`` even while its document is still stored (TTL deletion lags)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient
from structlog.testing import capture_logs

from services.qrcode import errors
from services.qrcode.handlers import SceneHandlers, SceneSettings
from services.qrcode.metrics import SceneMetrics
from services.qrcode.pool import new_scene_id
from services.qrcode.store import SCENES, Scene, SceneStore
from shared.clients import Client
from shared.messages import ConfirmScene, RedeemScene, ScanScene, ScenePurpose
from shared.mongo import EmbeddedMongo, make_client
from shared.runtime import Database
from sim.phone import Phone, PhoneError
from tests.integration.conftest import Stack
from tests.scenes import (
    RELAXED_LIMITS,
    RecordingPublisher,
    StaticCodes,
    new_ticket,
    scene_database,
    scene_handlers,
    start_stack_with,
    stop_stack,
    ticket_hash,
)
from tests.support import ORIGIN, Browser

ATTEMPTS = 1000


@pytest.fixture(params=["amqp", "memory"])
async def relaxed_stack(
    request: pytest.FixtureRequest, mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> AsyncIterator[Stack]:
    """All four services with per-IP limits out of the way (the attacker is 127.0.0.1 too)."""
    stack = await start_stack_with(request.param, mongo_server, amqp_base_url, unique, **RELAXED_LIMITS)
    try:
        yield stack
    finally:
        await stop_stack(stack)


async def test_a_thousand_subscribes_polls_and_completes_without_the_right_ticket_are_all_refused(
    relaxed_stack: Stack,
) -> None:
    stack = relaxed_stack
    owner = Browser(stack.http, stack.gateway)
    await owner.issue()
    bystander = Browser(stack.http, stack.gateway)  # a real ticket, of another scene
    await bystander.issue()
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.scan(owner.scene)
    await phone.confirm(owner.scene)  # from here on, the right ticket would be granted the login

    wrong_tickets: list[str | None] = [
        None,
        "",
        bystander.ticket,
        owner.ticket[:-1] + ("B" if owner.ticket.endswith("A") else "A"),  # one character off
        owner.ticket.upper(),
    ]
    rng = random.Random(5)
    kinds = ("subscribe", "status", "complete")
    plans = [(kinds[i % 3], rng.choice([*wrong_tickets, new_ticket()])) for i in range(ATTEMPTS)]
    gate = asyncio.Semaphore(10)  # attempts in flight: enough to interleave, not a load test

    async def attempt(kind: str, ticket: str | None) -> tuple[str, Any]:
        async with gate:
            if ticket == owner.ticket:
                raise AssertionError("the plan must never use the owner's ticket")
            if kind == "subscribe":
                return kind, await _subscribe(stack, owner.scene, ticket)
            if kind == "status":
                return kind, await _status(stack, owner.scene, ticket)
            return kind, await _complete(stack, owner.scene, ticket)

    outcomes = await asyncio.gather(*(attempt(kind, ticket) for kind, ticket in plans))
    assert Counter(kind for kind, _ in outcomes) == {"subscribe": 334, "status": 333, "complete": 333}
    refusals = Counter(f"{kind} {result}" for kind, result in outcomes)
    assert set(refusals) <= {
        "subscribe ws:ticket_invalid",
        "subscribe ws:invalid_request",
        "status 401:ticket_required",
        "status 400:invalid_request",
        "status 403:ticket_invalid",
        "complete 400:invalid_request",
        "complete 403:ticket_invalid",
    }, refusals

    status, tokens = await owner.complete()  # the browser that asked still gets its login, once
    assert status == 200, tokens


async def _subscribe(stack: Stack, scene: str, ticket: str | None) -> str:
    async with stack.http.ws_connect(f"{stack.gateway}/api/login/ws", headers={"Origin": ORIGIN}) as ws:
        frame: dict[str, Any] = {"type": "subscribe", "scene": scene}
        if ticket is not None:
            frame["ticket"] = ticket
        await ws.send_json(frame)
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = msg.json()
        assert data["type"] == "error", data  # never a state
        return f"ws:{data['code']}"


async def _status(stack: Stack, scene: str, ticket: str | None) -> str:
    headers = {} if ticket is None else {"X-Login-Ticket": ticket}
    async with stack.http.get(
        f"{stack.gateway}/api/login/status", params={"scene": scene}, headers=headers
    ) as resp:
        body = await resp.json()
        assert "state" not in body, body  # a refused poll reveals nothing about the scene
        return f"{resp.status}:{body['error']['code']}"


async def _complete(stack: Stack, scene: str, ticket: str | None) -> str:
    payload: dict[str, Any] = {"scene": scene}
    if ticket is not None:
        payload["ticket"] = ticket
    async with stack.http.post(f"{stack.gateway}/api/login/complete", json=payload) as resp:
        body = await resp.json()
        assert "access_token" not in body, body
        return f"{resp.status}:{body['error']['code']}"


# --- past expires_at, document still there --------------------------------------------------------


def _stored(state: str, *, expired_seconds_ago: float, ticket: str) -> Scene:
    now = time.time()
    return Scene(
        id=new_scene_id(),
        state=state,  # type: ignore[arg-type]
        ticket_hash=ticket_hash(ticket),
        ip="203.0.113.9",
        user_agent="",
        requested_at=now - 300,
        expires_at=now - expired_seconds_ago,
        user_id="user-1" if state == "confirmed" else None,
        updated_at=now - 300,
    )


async def test_handlers_refuse_scan_confirm_and_redeem_once_expires_at_has_passed(
    mongo_server: EmbeddedMongo,
) -> None:
    async with scene_database(mongo_server) as db:
        store = SceneStore(db)
        handlers = scene_handlers(db, time.time, RecordingPublisher())  # no sweeper runs here
        ticket = new_ticket()
        pending = _stored("pending", expired_seconds_ago=0.5, ticket=ticket)
        scanned = _stored("scanned", expired_seconds_ago=0.5, ticket=ticket)
        confirmed = _stored("confirmed", expired_seconds_ago=0.5, ticket=ticket)
        for scene in (pending, scanned, confirmed):
            await store.insert(scene)

        attempts = [
            handlers.scan(ScanScene(scene=pending.id, scan_hash=ticket_hash(new_ticket()))),
            handlers.confirm(
                ConfirmScene(scene=scanned.id, scan_hash=ticket_hash(new_ticket()), user_id="user-2")
            ),
            handlers.redeem(RedeemScene(scene=confirmed.id, ticket_hash=ticket_hash(ticket))),
        ]
        for attempt in attempts:
            with pytest.raises(errors.SceneExpired):
                await attempt
        for scene in (pending, scanned, confirmed):  # refused, not moved: still there, unchanged
            stored = await store.get(scene.id)
            assert stored is not None and stored.state == scene.state


async def test_the_api_refuses_a_stored_scene_past_expires_at_as_expired_not_unknown(
    relaxed_stack: Stack,
) -> None:
    stack = relaxed_stack
    ticket = new_ticket()
    scenes = {
        state: _stored(state, expired_seconds_ago=1, ticket=ticket)
        for state in ("pending", "scanned", "confirmed")
    }
    client: AsyncMongoClient[dict[str, Any]] = make_client(stack.settings.mongo_url)
    try:
        store = SceneStore(client[stack.settings.mongo_db])
        for scene in scenes.values():
            await store.insert(scene)
    finally:
        await client.close()

    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    with pytest.raises(PhoneError) as scan:
        await phone.scan(scenes["pending"].id)
    with pytest.raises(PhoneError) as confirm:
        await phone.confirm(scenes["scanned"].id, scan_token=new_ticket())
    assert (scan.value.status, scan.value.code) == (410, "scene_expired")
    assert (confirm.value.status, confirm.value.code) == (410, "scene_expired")

    browser = Browser(stack.http, stack.gateway)
    browser.scene, browser.ticket = scenes["confirmed"].id, ticket
    status, body = await browser.complete()
    assert (status, body["error"]["code"]) == (410, "scene_expired")


# --- qrcode.redeem: one conditional update; a refusal read and explained as before --------------------


class CountingScenes(SceneStore):
    """The real scene store, counting reads and conditional updates (each one Mongo operation)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.reads = 0
        self.updates = 0

    async def get(self, scene_id: str) -> Scene | None:
        self.reads += 1
        return await super().get(scene_id)

    async def transition(self, scene_id: str, **kwargs: Any) -> Scene | None:
        self.updates += 1
        return await super().transition(scene_id, **kwargs)


class TwoSites:
    """The registry of two clients: the default one (``wxlogin-default``) and ``site-a``."""

    def __init__(self) -> None:
        self.default = Client(client_id="wxlogin-default", site_name="Default Site")
        self._clients = {None: self.default, "wxlogin-default": self.default}
        self._clients["site-a"] = Client(client_id="site-a", site_name="Site A")

    def get(self, client_id: str | None) -> Client | None:
        return self._clients.get(client_id)


async def _store_confirmed(
    db: Database,
    ticket: str,
    *,
    client_id: str | None = None,
    client_field: bool = True,
    purpose: ScenePurpose = "login",
) -> Scene:
    """A confirmed scene of ``user-1``, stored as qrcode stores it (without ``client_field``: as stored
    before clients existed, with no ``client_id`` at all)."""
    now = time.time()
    scene = Scene.new(
        new_scene_id(),
        ticket_hash=ticket_hash(ticket),
        ip="203.0.113.9",
        user_agent="",
        now=now,
        ttl=60.0,
        client_id=client_id,
        purpose=purpose,
        account_hint="account-1" if purpose == "link" else None,
    )
    scene = dataclasses.replace(scene, state="confirmed", user_id="user-1", confirmed_at=now)
    doc = scene.to_doc()
    if not client_field:
        del doc["client_id"]
    await db[SCENES].insert_one(doc)
    return scene


def _redeem_handlers(db: Database) -> tuple[SceneHandlers, CountingScenes, CollectorRegistry]:
    store, registry = CountingScenes(db), CollectorRegistry()
    handlers = SceneHandlers(
        store,
        StaticCodes(),
        RecordingPublisher(),
        SceneSettings(scene_ttl=120.0, site_name="Test Site"),
        clients=TwoSites(),
        metrics=SceneMetrics(registry),
    )
    return handlers, store, registry


async def test_a_redeem_is_one_conditional_update_for_the_default_client_and_for_a_named_one(
    mongo_server: EmbeddedMongo,
) -> None:
    async with scene_database(mongo_server) as db:
        handlers, store, registry = _redeem_handlers(db)
        ticket = new_ticket()
        cases = [  # (scene as stored, the client that redeems it)
            (await _store_confirmed(db, ticket, client_field=False), None),  # stored before clients
            (await _store_confirmed(db, ticket, client_field=False), "wxlogin-default"),
            (await _store_confirmed(db, ticket), None),  # client_id: null
            (await _store_confirmed(db, ticket), "wxlogin-default"),  # the default client, by name
            (await _store_confirmed(db, ticket, client_id="site-a"), "site-a"),
            (await _store_confirmed(db, ticket, purpose="link"), None),
        ]
        for scene, client_id in cases:
            store.reads = store.updates = 0
            redeemed = await handlers.redeem(
                RedeemScene(
                    scene=scene.id,
                    ticket_hash=ticket_hash(ticket),
                    client_id=client_id,
                    purpose=scene.purpose,
                )
            )
            assert (redeemed.user_id, redeemed.client_id) == ("user-1", scene.client_id)
            assert (store.updates, store.reads) == (1, 0), (scene.client_id, client_id)  # nothing read
            stored = await SceneStore(db).get(scene.id)
            assert stored is not None and stored.state == "redeemed"
        assert registry.get_sample_value("wxlogin_scenes_redeemed_total") == len(cases)


async def test_a_refused_redeem_is_read_and_explained_and_changes_nothing(
    mongo_server: EmbeddedMongo,
) -> None:
    async with scene_database(mongo_server) as db:
        handlers, _, registry = _redeem_handlers(db)
        ticket = new_ticket()
        legacy = await _store_confirmed(db, ticket, client_field=False)
        site_a = await _store_confirmed(db, ticket, client_id="site-a")
        link = await _store_confirmed(db, ticket, purpose="link")

        def redeem(scene: Scene, **fields: Any) -> RedeemScene:
            return RedeemScene(scene=scene.id, **{"ticket_hash": ticket_hash(ticket), **fields})

        with pytest.raises(errors.SceneNotFound):
            await handlers.redeem(RedeemScene(scene=new_scene_id(), ticket_hash=ticket_hash(ticket)))
        with pytest.raises(errors.TicketMismatch):  # another browser's ticket, even naming the client
            await handlers.redeem(redeem(site_a, ticket_hash=ticket_hash(new_ticket()), client_id="site-a"))
        with capture_logs() as logs:
            for scene, client_id in ((site_a, None), (site_a, "wxlogin-default"), (legacy, "site-a")):
                with pytest.raises(errors.ClientMismatch):
                    await handlers.redeem(redeem(scene, client_id=client_id))
        mismatches = [e for e in logs if e["event"] == "redeem_client_mismatch"]
        assert len(mismatches) == 3 and all(e["security"] is True for e in mismatches)
        assert mismatches[0]["scene_client"] == "site-a" and mismatches[0]["client"] is None
        assert (
            registry.get_sample_value(
                "wxlogin_scene_refusals_total", {"action": "redeem", "code": "client_mismatch"}
            )
            == 3
        )
        with pytest.raises(errors.ScenePurposeMismatch):  # a link scene's browser gets no tokens
            await handlers.redeem(redeem(link))
        with pytest.raises(errors.ScenePurposeMismatch):
            await handlers.redeem(redeem(legacy, purpose="link"))
        for scene in (legacy, site_a, link):  # nothing was redeemed by any of these
            stored = await SceneStore(db).get(scene.id)
            assert stored is not None and stored.state == "confirmed"
        assert registry.get_sample_value("wxlogin_scenes_redeemed_total") == 0


async def test_redeeming_again_within_the_window_answers_the_same_user_and_redeems_once(
    mongo_server: EmbeddedMongo,
) -> None:
    async with scene_database(mongo_server) as db:
        handlers, _, registry = _redeem_handlers(db)
        ticket = new_ticket()
        scene = await _store_confirmed(db, ticket, client_id="site-a")
        request = RedeemScene(scene=scene.id, ticket_hash=ticket_hash(ticket), client_id="site-a")
        first, second = await handlers.redeem(request), await handlers.redeem(request)
        assert first == second and first.user_id == "user-1"
        assert registry.get_sample_value("wxlogin_scenes_redeemed_total") == 1
        with pytest.raises(errors.ClientMismatch):  # the retry is still the site's alone
            await handlers.redeem(request.model_copy(update={"client_id": None}))
        twins = await asyncio.gather(*(handlers.redeem(request) for _ in range(5)))
        assert {t.user_id for t in twins} == {"user-1"}

        pending = dataclasses.replace(scene, id=new_scene_id(), state="pending", user_id=None)
        await SceneStore(db).insert(pending)
        with pytest.raises(errors.NotConfirmed):
            await handlers.redeem(request.model_copy(update={"scene": pending.id}))
