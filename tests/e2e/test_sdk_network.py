"""The SDK on a bad network: WebSockets blocked, the gateway restarted mid-login; and what it leaves
behind: the ticket nowhere but in memory, no traffic once the login box has reached a final state."""

from __future__ import annotations

import time
from typing import Any

from playwright.async_api import Browser, Page, Request, WebSocket, WebSocketRoute, expect

from tests.e2e.conftest import (
    STEP,
    Demo,
    activity,
    demo_url,
    expect_state,
    open_demo,
    scene_on_screen,
    screenshot,
)


async def wait_quiet(page: Page, timeout: float = STEP / 1000) -> dict[str, int]:
    """Wait (bounded) until nothing in the page can make traffic any more; return the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        now = await activity(page)
        if now["timeouts"] == 0 and now["intervals"] == 0 and now["sockets"] == 0:
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"the page is still active: {now}")
        await page.wait_for_timeout(100)


async def test_with_websockets_blocked_the_sdk_long_polls_and_still_logs_in(
    browser: Browser, demo: Demo
) -> None:
    errors: list[str] = []
    page = await open_demo(browser, demo, errors=errors, navigate=False)
    attempts: list[str] = []

    async def refuse(ws: WebSocketRoute) -> None:  # a proxy that drops every WebSocket
        attempts.append(ws.url)
        await ws.close(code=1011)

    await page.route_web_socket("**/api/login/ws", refuse)
    polls: list[Request] = []
    page.on("request", lambda r: polls.append(r) if "/api/login/status" in r.url else None)
    await page.goto(demo_url(demo, "?lang=en"))

    await expect_state(page, "pending")
    box = page.locator(".wxl")
    await expect(box).to_have_attribute("data-transport", "longpoll")
    assert len(attempts) >= 2  # it tried (and retried) the socket first
    scene = await scene_on_screen(page)
    phone = demo.phone()
    await phone.scan(scene)
    await expect_state(page, "scanned")
    await phone.confirm(scene)
    await expect(page.locator("#account")).to_be_visible()
    await expect_state(page, "done")

    # The ticket went in a header, never in the URL.
    assert polls
    ticket = polls[0].headers.get("x-login-ticket", "")
    assert len(ticket) >= 16
    assert all(ticket not in r.url for r in polls)
    assert errors == []


async def test_a_gateway_restart_mid_login_is_survived_and_the_page_reaches_the_final_state(
    browser: Browser, demo: Demo
) -> None:
    page = await open_demo(browser, demo)
    await expect_state(page, "pending")
    box = page.locator(".wxl")
    await expect(box).to_have_attribute("data-transport", "websocket")
    scene = await scene_on_screen(page)

    # The page's gateway goes away; a second gateway keeps serving the phone meanwhile.
    other = await demo.start_gateway(same_port=False)
    await demo.stop_gateway()
    await expect(box).to_have_attribute("data-transport", "reconnecting")
    await expect(page.locator(".wxl-net")).to_have_text("连接中断，正在重连…")  # noqa: RUF001
    await screenshot(page, "6-reconnecting")
    phone = demo.phone(demo.system.urls[other])
    await phone.scan(scene)
    await phone.confirm(scene)  # confirmed while the page could not hear about it

    await demo.start_gateway()  # back on the page's port
    # On reconnecting the SDK is told the current state first: confirmed, so it completes the login.
    await expect(page.locator("#account")).to_be_visible()
    await expect_state(page, "done")
    await expect(page.locator(".wxl-net")).to_be_hidden()


async def test_a_push_after_a_reconnect_still_moves_the_page(browser: Browser, demo: Demo) -> None:
    page = await open_demo(browser, demo)
    await expect_state(page, "pending")
    box = page.locator(".wxl")
    await expect(box).to_have_attribute("data-transport", "websocket")
    scene = await scene_on_screen(page)
    await demo.stop_gateway()
    await expect(box).to_have_attribute("data-transport", "reconnecting")
    await demo.start_gateway()
    await expect(box).not_to_have_attribute("data-transport", "reconnecting")
    phone = demo.phone()
    await phone.scan(scene)
    await expect_state(page, "scanned")
    await phone.cancel(scene)
    await expect_state(page, "cancelled")


async def test_the_ticket_is_never_stored_or_put_in_a_url(browser: Browser, demo: Demo) -> None:
    page = await open_demo(browser, demo, navigate=False)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    async with page.expect_response("**/api/login/qrcode") as issued:
        await page.goto(demo_url(demo))
    ticket = (await (await issued.value).json())["ticket"]
    assert len(ticket) >= 16

    async def assert_nowhere() -> None:
        where = await page.evaluate(
            """() => JSON.stringify({
                local: Object.entries(localStorage), session: Object.entries(sessionStorage),
                cookie: document.cookie, url: location.href, dom: document.documentElement.outerHTML,
            })"""
        )
        assert ticket not in where
        assert all(ticket not in c["value"] for c in await page.context.cookies())
        assert all(ticket not in u for u in urls)

    await expect_state(page, "pending")
    await assert_nowhere()
    scene = await scene_on_screen(page)
    phone = demo.phone()
    await phone.scan(scene)
    await expect_state(page, "scanned")
    await assert_nowhere()
    await phone.confirm(scene)
    await expect(page.locator("#account")).to_be_visible()
    await assert_nowhere()


async def record_traffic(page: Page) -> list[str]:
    """Every request and WebSocket frame the page makes from now on."""
    seen: list[str] = []
    page.on("request", lambda r: seen.append(f"{r.method} {r.url}"))

    def on_socket(ws: WebSocket) -> None:
        seen.append(f"WS {ws.url}")
        ws.on("framesent", lambda payload: seen.append(f"frame {payload!r}"))

    page.on("websocket", on_socket)
    return seen


async def assert_silent_after_final_state(page: Page, seen: list[str]) -> dict[str, Any]:
    quiet = await wait_quiet(page)
    before = list(seen)
    # Longer than a countdown tick and the first reconnect backoff: anything still alive would show.
    await page.wait_for_timeout(1500)
    assert seen == before, seen[len(before) :]
    assert (await activity(page))["sockets"] == 0
    return quiet


async def test_after_logging_in_the_box_makes_no_more_traffic(browser: Browser, demo: Demo) -> None:
    page = await open_demo(browser, demo)
    seen = await record_traffic(page)
    await expect_state(page, "pending")
    scene = await scene_on_screen(page)
    phone = demo.phone()
    await phone.scan(scene)
    await phone.confirm(scene)
    await expect(page.locator("#account")).to_be_visible()
    quiet = await assert_silent_after_final_state(page, seen)
    assert quiet["socketsEver"] >= 1


async def test_after_a_cancel_or_an_expiry_the_box_makes_no_more_traffic(
    browser: Browser, demo: Demo
) -> None:
    page = await open_demo(browser, demo)
    seen = await record_traffic(page)
    await expect_state(page, "pending")
    scene = await scene_on_screen(page)
    phone = demo.phone()
    await phone.scan(scene)
    await phone.cancel(scene)
    await expect_state(page, "cancelled")
    await assert_silent_after_final_state(page, seen)

    await page.locator(".wxl-refresh").click()
    await expect_state(page, "pending")
    demo.clock.advance(demo.settings.scene_ttl_seconds + 1)
    await expect_state(page, "expired")
    await assert_silent_after_final_state(page, seen)
