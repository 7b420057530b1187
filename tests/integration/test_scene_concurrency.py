"""Races on one scene through the whole system: 50 phones confirming, 50 completes, two qrcode replicas
sweeping. Each must have exactly one winner."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from shared.bus import AmqpBus
from shared.messages import Event, IssueScene, SceneExpired
from shared.mongo import EmbeddedMongo
from shared.runtime import bus_sealer
from sim.phone import Phone, PhoneError
from tests.integration.conftest import Stack
from tests.scenes import (
    RELAXED_LIMITS,
    FakeClock,
    fetch_metrics,
    metric_value,
    new_ticket,
    start_stack_with,
    stop_stack,
    ticket_hash,
)
from tests.support import Browser, eventually

RACERS = 50


@pytest.fixture(params=["amqp", "memory"])
async def relaxed_stack(
    request: pytest.FixtureRequest, mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> AsyncIterator[Stack]:
    """All four services with per-IP limits out of the way (every racer is 127.0.0.1)."""
    stack = await start_stack_with(request.param, mongo_server, amqp_base_url, unique, **RELAXED_LIMITS)
    try:
        yield stack
    finally:
        await stop_stack(stack)


async def test_fifty_phones_confirming_one_scene_at_once_log_in_exactly_one_user(
    relaxed_stack: Stack,
) -> None:
    stack = relaxed_stack
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    phones = [Phone(stack.http, stack.gateway, stack.sim.url) for _ in range(RACERS)]
    await phones[0].scan(browser.scene)
    # Every phone presents the scan token (as if they all had seen it): the scene itself, not the
    # binding, has to pick exactly one user.
    scan_token = phones[0].scan_tokens[browser.scene]
    codes = [await phone.wx_login() for phone in phones]

    async def confirm(phone: Phone, code: str) -> str | None:
        try:
            await phone.confirm(browser.scene, code, scan_token=scan_token)
        except PhoneError as exc:
            return exc.code
        return None

    outcomes = await asyncio.gather(*(confirm(p, c) for p, c in zip(phones, codes, strict=True)))
    assert Counter(outcomes) == {None: 1, "already_confirmed": RACERS - 1}
    winner = phones[outcomes.index(None)]

    status, tokens = await browser.complete()
    assert status == 200, tokens
    assert tokens["user"]["openid"] == winner.openid


async def test_fifty_completes_of_one_confirmed_scene_hand_out_one_session(relaxed_stack: Stack) -> None:
    stack = relaxed_stack
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.scan(browser.scene)
    await phone.confirm(browser.scene)

    results = await asyncio.gather(*(browser.complete() for _ in range(RACERS)))
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: RACERS}  # the ticket holder retrying: every answer is the same session
    assert len({body["refresh_token"] for _, body in results}) == 1


async def test_two_qrcode_replicas_announce_each_expired_scene_exactly_once(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    clock = FakeClock(follow_real_time=True)
    stack = await start_stack_with(
        "amqp",
        mongo_server,
        amqp_base_url,
        unique,
        clock=clock,
        names=("token", "qrcode", "qrcode", "session"),
        code_pool_size=0,
    )
    settings = stack.settings
    listener = AmqpBus(settings.amqp_url, "gateway", bus_sealer(settings), prefix=settings.bus_prefix)
    announced: list[str] = []

    async def on_event(event: Event) -> None:
        if isinstance(event, SceneExpired):
            announced.append(event.scene)

    try:
        await listener.start()
        await listener.subscribe_broadcast([SceneExpired], on_event)
        scenes = set()
        for _ in range(30):
            issued = await listener.call(IssueScene(ticket_hash=ticket_hash(new_ticket()), ip="127.0.0.1"))
            scenes.add(issued.scene)
        clock.advance(stack.settings.scene_ttl_seconds + 1)

        await eventually(lambda: set(announced) >= scenes, timeout=15)
        await asyncio.sleep(2.5)  # two more sweeps of each replica: nothing may be announced again
        assert Counter(announced) == dict.fromkeys(scenes, 1)

        expired_by_replica = [
            metric_value(
                await fetch_metrics(stack.http, stack.system.urls[key]), "wxlogin_scenes_expired_total"
            )
            for key in ("qrcode", "qrcode-2")
        ]
        assert sum(expired_by_replica) == len(scenes)
    finally:
        await listener.close()
        await stop_stack(stack)
