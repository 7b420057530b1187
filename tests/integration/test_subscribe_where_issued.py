"""A browser that subscribes on the gateway that issued its code is answered from what that gateway
knows (the ticket it minted, the events since), without a ``qrcode.status`` RPC; anything it cannot
vouch for still goes to qrcode."""

from __future__ import annotations

import asyncio
import time

from services.gateway.routes import ISSUED
from services.gateway.ws import ticket_hash
from shared.runtime import REGISTRY
from sim.phone import Phone
from tests.integration.conftest import Stack
from tests.support import Browser


def status_calls(stack: Stack) -> float:
    """``qrcode.status`` calls the gateway has made so far (any outcome)."""
    registry = stack.system.apps["gateway"][REGISTRY]
    return sum(
        registry.get_sample_value(
            "wxlogin_bus_rpc_calls_total",
            {"service": "gateway", "method": "qrcode.status", "outcome": outcome},
        )
        or 0.0
        for outcome in ("ok", "error", "timeout", "unavailable")
    )


async def test_the_issuing_gateway_answers_a_subscribe_without_asking_qrcode(stack: Stack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    before = status_calls(stack)

    assert (await browser.subscribe())["state"] == "pending"
    assert status_calls(stack) == before

    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.register()
    await phone.scan(browser.scene)
    assert (await browser.next_message())["state"] == "scanned"

    # A second tab (or a reconnect) after the scan hears the scan first: the gateway saw its event.
    again = Browser(stack.http, stack.gateway)
    again.scene, again.ticket = browser.scene, browser.ticket
    assert (await again.subscribe())["state"] == "scanned"
    assert status_calls(stack) == before
    await browser.close()
    await again.close()


async def test_a_wrong_ticket_is_still_refused_by_qrcode(stack: Stack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    before = status_calls(stack)

    refused = await browser.subscribe(ticket="x" * 43)

    assert refused == {"type": "error", "code": "ticket_invalid"}
    assert status_calls(stack) == before + 1  # the refusal is qrcode's, as before
    await browser.close()


async def test_a_scene_issued_before_the_bus_reconnected_is_read_from_qrcode(stack: Stack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    issued = stack.system.apps["gateway"][ISSUED]
    before = status_calls(stack)
    # What a reconnect does to the entry: it was issued under another bus session than the current one.
    issued.add(browser.scene, ticket_hash(browser.ticket), time.time() + 300, -1)

    assert (await browser.subscribe())["state"] == "pending"
    assert status_calls(stack) == before + 1
    await browser.close()


async def poll(stack: Stack, browser: Browser, *, wait: float = 0, since: str = "") -> tuple[int, str]:
    """``GET /api/login/status`` as a long-polling browser: the HTTP status and the state."""
    params = {"scene": browser.scene, "wait": str(wait), **({"since": since} if since else {})}
    async with stack.http.get(
        f"{stack.gateway}/api/login/status", params=params, headers={"X-Login-Ticket": browser.ticket}
    ) as resp:
        return resp.status, str((await resp.json())["state"])


async def test_the_issuing_gateway_answers_a_long_poll_without_asking_qrcode(stack: Stack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    before = status_calls(stack)
    assert await poll(stack, browser) == (202, "pending")
    assert status_calls(stack) == before

    # A poll that waits hears the scan from the gateway's own event feed.
    waiting = asyncio.ensure_future(poll(stack, browser, wait=5, since="pending"))
    await asyncio.sleep(0.2)
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.register()
    await phone.scan(browser.scene)
    assert await waiting == (202, "scanned")
    await phone.confirm(browser.scene)
    assert await poll(stack, browser) == (200, "confirmed")  # a final state is qrcode's to tell
    assert status_calls(stack) == before + 1


async def test_a_long_poll_with_a_wrong_ticket_is_still_refused_by_qrcode(stack: Stack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    before = status_calls(stack)
    browser.ticket = "x" * 43
    async with stack.http.get(
        f"{stack.gateway}/api/login/status",
        params={"scene": browser.scene, "wait": "0"},
        headers={"X-Login-Ticket": browser.ticket},
    ) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "ticket_invalid"
    assert status_calls(stack) == before + 1
