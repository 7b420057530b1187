"""``GET /api/login/status``: the long-poll fallback answers at the first change, with DESIGN §2's
status codes, and only to the holder of the ticket (sent as a header, never in the URL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.gateway.app import HUB
from shared.mongo import EmbeddedMongo
from sim.phone import Phone
from tests.integration.conftest import Stack
from tests.scenes import FakeClock, start_stack_with, stop_stack
from tests.support import Browser

CLOCK = FakeClock(follow_real_time=True)


@pytest.fixture(params=["amqp", "memory"])
async def poll_stack(
    request: pytest.FixtureRequest, mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> AsyncIterator[Stack]:
    """All four services on a clock the test can move, long-polls capped at 3 s."""
    stack = await start_stack_with(
        request.param, mongo_server, amqp_base_url, unique, clock=CLOCK, status_max_wait_seconds=3
    )
    try:
        yield stack
    finally:
        await stop_stack(stack)


async def poll(
    stack: Stack, browser: Browser, *, wait: int = 0, since: str | None = None, ticket: str | None = None
) -> tuple[int, dict[str, Any]]:
    params: dict[str, Any] = {"scene": browser.scene, "wait": wait}
    if since:
        params["since"] = since
    headers = {"X-Login-Ticket": ticket or browser.ticket}
    async with stack.http.get(f"{stack.gateway}/api/login/status", params=params, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_each_state_has_its_status_code(poll_stack: Stack) -> None:
    stack = poll_stack
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    assert await poll(stack, browser) == (202, {"scene": browser.scene, "state": "pending"})
    await phone.scan(browser.scene)
    assert await poll(stack, browser) == (202, {"scene": browser.scene, "state": "scanned"})
    await phone.confirm(browser.scene)
    assert await poll(stack, browser) == (200, {"scene": browser.scene, "state": "confirmed"})
    assert (await browser.complete())[0] == 200
    assert await poll(stack, browser) == (200, {"scene": browser.scene, "state": "confirmed"})

    cancelled = Browser(stack.http, stack.gateway)
    await cancelled.issue()
    await phone.scan(cancelled.scene)
    await phone.cancel(cancelled.scene)
    status, body = await poll(stack, cancelled)
    assert (status, body["state"], body["error"]["code"]) == (410, "cancelled", "scene_cancelled")

    expired = Browser(stack.http, stack.gateway)
    await expired.issue()
    CLOCK.advance(stack.settings.scene_ttl_seconds + 1)
    status, body = await poll(stack, expired)
    assert (status, body["state"], body["error"]["code"]) == (408, "expired", "scene_expired")


async def test_an_unknown_scene_is_404_unknown_not_expired(poll_stack: Stack) -> None:
    stranger = Browser(poll_stack.http, poll_stack.gateway)
    stranger.scene, stranger.ticket = "U" * 32, "t" * 43
    status, body = await poll(poll_stack, stranger)
    assert (status, body["state"], body["error"]["code"]) == (404, "unknown", "scene_not_found")


async def test_a_waiting_poll_answers_at_the_first_change(poll_stack: Stack) -> None:
    stack = poll_stack
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    waiting = asyncio.create_task(poll(stack, browser, wait=3))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # nothing happened: it holds
    await Phone(stack.http, stack.gateway, stack.sim.url).scan(browser.scene)
    done, _ = await asyncio.wait({waiting}, timeout=2.5)  # before its 3 s are up
    assert done, "the poll did not answer at the change"
    assert waiting.result() == (202, {"scene": browser.scene, "state": "scanned"})
    assert len(stack.system.apps["gateway"][HUB].store) == 0  # the poll unregistered itself


async def test_a_poll_with_nothing_new_answers_when_its_wait_runs_out(poll_stack: Stack) -> None:
    stack = poll_stack
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    # 3600 s asked, 3 s granted (WXLOGIN_STATUS_MAX_WAIT_SECONDS in this stack).
    status, body = await asyncio.wait_for(poll(stack, browser, wait=3600), timeout=6)
    assert (status, body["state"]) == (202, "pending")


async def test_a_poll_behind_the_news_answers_at_once(poll_stack: Stack) -> None:
    stack = poll_stack
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    await Phone(stack.http, stack.gateway, stack.sim.url).scan(browser.scene)
    # The browser last saw "pending": the scan happened between its polls, so it hears of it now.
    status, body = await asyncio.wait_for(poll(stack, browser, wait=3, since="pending"), timeout=1.5)
    assert (status, body["state"]) == (202, "scanned")


async def test_a_poll_refuses_tickets_in_the_url_and_polls_without_one(poll_stack: Stack) -> None:
    stack = poll_stack
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    url = f"{stack.gateway}/api/login/status"
    params = {"scene": browser.scene, "ticket": browser.ticket}
    async with stack.http.get(url, params=params, headers={"X-Login-Ticket": browser.ticket}) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, "ticket_in_url")
    async with stack.http.get(url, params={"scene": browser.scene}) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (401, "ticket_required")


@pytest.mark.parametrize(
    "params",
    [
        {"wait": "-1"},
        {"wait": "soon"},
        {"wait": "1e9"},
        {"since": "redeemed"},
        {"since": "<script>"},
        {"scene": "short"},
        {"scene": None},
    ],
)
async def test_a_malformed_poll_is_a_400(poll_stack: Stack, params: dict[str, str | None]) -> None:
    browser = Browser(poll_stack.http, poll_stack.gateway)
    await browser.issue()
    query = {k: v for k, v in ({"scene": browser.scene, "wait": "0"} | params).items() if v is not None}
    async with poll_stack.http.get(
        f"{poll_stack.gateway}/api/login/status", params=query, headers={"X-Login-Ticket": browser.ticket}
    ) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_request")
