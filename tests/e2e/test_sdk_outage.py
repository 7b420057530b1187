"""The SDK through an outage behind the gateway: the qrcode service is stopped, so the gateway answers
503 ``service_unavailable`` with ``Retry-After`` (and refuses a subscribe with ``retry_after``). The box
shows "reconnecting", never an error, and the login completes once the service is back."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from playwright.async_api import Browser, Page, Response, Route, WebSocket, WebSocketRoute, expect

from tests.e2e.conftest import Demo, demo_url, expect_state, open_demo, scene_on_screen
from tests.e2e.test_embed import MODULE_PAGE, site

# Every state and transport the box shows, in order, and what reached onError (the demo page passes
# no onError of its own, so the SDK's mount is wrapped as the page loads it).
WATCH = """
(() => {
  window.__wxlSeen = [];
  window.__wxlErrors = [];
  new MutationObserver((changes) => {
    for (const c of changes) {
      if (c.target.classList && c.target.classList.contains('wxl')) {
        window.__wxlSeen.push(c.attributeName + '=' + c.target.getAttribute(c.attributeName));
      }
    }
  }).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-state', 'data-transport']});
  let sdk;
  Object.defineProperty(window, 'WxLogin', {
    configurable: true,
    get: () => sdk,
    set: (value) => {
      const mount = value.mount;
      value.mount = (target, options) => mount(target, Object.assign({}, options, {
        onError: (err) => {
          window.__wxlErrors.push({code: err.code, lost: !!err.lost});
          if (options && options.onError) options.onError(err);
        },
      }));
      sdk = value;
    },
  });
})();
"""


async def seen(page: Page) -> list[str]:
    """The ``data-state=…`` / ``data-transport=…`` values the box went through."""
    result: list[str] = await page.evaluate("() => window.__wxlSeen")
    return result


async def errors_reported(page: Page) -> list[dict[str, Any]]:
    """What reached the SDK's onError."""
    result: list[dict[str, Any]] = await page.evaluate("() => window.__wxlErrors")
    return result


async def open_watched(browser: Browser, demo: Demo) -> Page:
    page = await open_demo(browser, demo, navigate=False)
    await page.add_init_script(WATCH)
    return page


async def stop_qrcode(demo: Demo) -> None:
    """The outage: the service behind issue, status and redeem is gone (its RPCs answer 503)."""
    await demo.system.stop_one("qrcode")


async def start_qrcode(demo: Demo) -> None:
    """The service is back, on the same bus, clock and database."""
    await demo.system.start(["qrcode"], broker=demo.broker, clock=demo.clock)


def record_503s(page: Page, path: str) -> list[Response]:
    """The page's requests to ``path`` answered 503 (the gateway's answer during the outage)."""
    answers: list[Response] = []
    page.on("response", lambda r: answers.append(r) if path in r.url and r.status == 503 else None)
    return answers


async def until(check: Any, what: str, timeout: float = 15.0) -> None:
    """Wait (bounded) until ``check()`` is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.05)


async def log_in(page: Page, demo: Demo) -> None:
    """A phone scans the code on screen and confirms; the page logs in."""
    scene = await scene_on_screen(page)
    phone = demo.phone()
    await phone.register()
    await phone.scan(scene)
    await expect_state(page, "scanned")
    await phone.confirm(scene)
    await expect(page.locator("#account")).to_be_visible()
    await expect_state(page, "done")
    await expect(page.locator(".wxl-net")).to_be_hidden()


async def test_while_no_code_can_be_issued_the_box_shows_reconnecting_then_the_code(
    browser: Browser, demo: Demo
) -> None:
    await stop_qrcode(demo)
    page = await open_watched(browser, demo)
    refused = record_503s(page, "/api/login/qrcode")
    await page.goto(demo_url(demo))

    box = page.locator(".wxl")
    await expect(box).to_have_attribute("data-transport", "reconnecting")
    await expect(page.locator(".wxl-net")).to_have_text("连接中断，正在重连…")  # noqa: RUF001
    await until(lambda: len(refused) >= 2, "the issue was asked again")
    assert refused[0].headers.get("retry-after") == "1"
    assert (await refused[0].json())["error"]["code"] == "service_unavailable"
    await expect_state(page, "loading")

    await start_qrcode(demo)
    await expect_state(page, "pending")
    await expect(box).not_to_have_attribute("data-transport", "reconnecting")
    await log_in(page, demo)
    assert "data-state=error" not in await seen(page)
    assert await errors_reported(page) == []


async def test_a_subscribe_refused_for_now_is_made_again_after_retry_after(
    browser: Browser, demo: Demo
) -> None:
    page = await open_watched(browser, demo)
    frames: list[dict[str, Any]] = []

    def on_socket(ws: WebSocket) -> None:
        ws.on("framereceived", lambda payload: frames.append(json.loads(payload)))

    page.on("websocket", on_socket)
    await page.goto(demo_url(demo))
    await expect_state(page, "pending")
    box = page.locator(".wxl")
    await expect(box).to_have_attribute("data-transport", "websocket")

    # The qrcode service goes down, and the page's gateway restarts meanwhile: the page reconnects,
    # and its subscribe cannot read the scene.
    await stop_qrcode(demo)
    await demo.stop_gateway()
    await demo.start_gateway()
    refusals = lambda: [f for f in frames if f.get("type") == "error"]  # noqa: E731
    await until(lambda: len(refusals()) >= 2, "the subscribe was refused twice")
    assert refusals()[0] == {"type": "error", "code": "service_unavailable", "retry_after": 1}
    await expect(box).to_have_attribute("data-transport", "reconnecting")
    await expect_state(page, "pending")

    await start_qrcode(demo)
    await expect(box).to_have_attribute("data-transport", "websocket")
    await log_in(page, demo)
    assert "data-state=error" not in await seen(page)
    assert await errors_reported(page) == []


async def test_a_confirmed_login_whose_complete_gets_503_is_completed_when_the_service_is_back(
    browser: Browser, demo: Demo
) -> None:
    page = await open_watched(browser, demo)
    refused = record_503s(page, "/api/login/complete")
    outage = asyncio.Event()

    async def after_the_outage_began(route: Route) -> None:  # the complete leaves once qrcode is down
        await outage.wait()
        await route.continue_()

    await page.route("**/api/login/complete", after_the_outage_began)
    await page.goto(demo_url(demo))
    await expect_state(page, "pending")
    scene = await scene_on_screen(page)
    phone = demo.phone()
    openid = await phone.register()
    await phone.scan(scene)
    await expect_state(page, "scanned")
    async with page.expect_request("**/api/login/complete"):
        await phone.confirm(scene)
    await stop_qrcode(demo)
    outage.set()

    await until(lambda: len(refused) >= 2, "the complete was asked again")
    assert refused[0].headers.get("retry-after") == "1"
    await expect_state(page, "confirmed")
    await expect(page.locator(".wxl")).to_have_attribute("data-transport", "reconnecting")
    await expect(page.locator(".wxl-net")).to_be_visible()

    async with page.expect_response(lambda r: "/api/login/complete" in r.url and r.ok) as completed:
        await start_qrcode(demo)
    assert (await (await completed.value).json())["user"]["openid"] == openid
    await expect(page.locator("#account")).to_be_visible()
    await expect_state(page, "done")
    assert "data-state=error" not in await seen(page)
    assert await errors_reported(page) == []


async def test_a_complete_that_landed_but_whose_answer_was_lost_is_retried_and_logs_in_once(
    browser: Browser, demo: Demo
) -> None:
    # The server hands the ticket holder the same session again within the redeem window, so the
    # SDK's retry of a complete whose answer was lost finishes the login, and it stays one login.
    page = await open_watched(browser, demo)
    answers: list[int] = []

    async def first_answer_lost(route: Route) -> None:
        response = await route.fetch()  # it reaches the gateway: the login is redeemed
        answers.append(response.status)
        if len(answers) == 1:
            await route.abort("connectionreset")
        else:
            await route.fulfill(response=response)

    await page.route("**/api/login/complete", first_answer_lost)
    await page.goto(demo_url(demo, "?lang=en"))
    await expect_state(page, "pending")
    scene = await scene_on_screen(page)
    phone = demo.phone()
    await phone.register()
    await phone.scan(scene)
    await phone.confirm(scene)

    await expect(page.locator("#account")).to_be_visible()
    await expect_state(page, "done")
    assert answers == [200, 200]
    assert "data-state=error" not in await seen(page)
    assert await errors_reported(page) == []


async def test_an_embed_on_another_origin_rides_out_an_outage_without_reading_retry_after(
    browser: Browser, demo: Demo
) -> None:
    # Today the gateway's error answers carry no CORS headers (its error middleware runs outside the
    # CORS one), so another origin's page cannot read them at all: to the SDK they are requests that
    # got no answer, which it backs off and asks again, as it would without a readable Retry-After.
    await stop_qrcode(demo)
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.method) if "/api/login/qrcode" in r.url else None)
    async with site(demo.site_port, MODULE_PAGE.format(gateway=demo.url)) as url:
        await page.goto(url)
        await expect(page.locator(".wxl")).to_have_attribute("data-transport", "reconnecting")
        await until(lambda: asked.count("POST") >= 2, "the issue was asked again")
        await expect_state(page, "loading")
        await start_qrcode(demo)
        await expect_state(page, "pending")
        scene = await scene_on_screen(page)
        phone = demo.phone()
        openid = await phone.register()
        await phone.scan(scene)
        await phone.confirm(scene)
        await expect(page.locator("#me")).to_have_text(openid)
        await expect_state(page, "done")
    assert errors == []


async def test_the_long_poll_fallback_waits_out_the_outage_too(browser: Browser, demo: Demo) -> None:
    page = await open_watched(browser, demo)

    async def refuse(ws: WebSocketRoute) -> None:  # a proxy that drops every WebSocket
        await ws.close(code=1011)

    await page.route_web_socket("**/api/login/ws", refuse)
    refused = record_503s(page, "/api/login/status")
    await page.goto(demo_url(demo))
    box = page.locator(".wxl")
    await expect(box).to_have_attribute("data-transport", "longpoll")
    await expect_state(page, "pending")

    # The qrcode service goes down and the gateway restarts (its long-poll in flight answers at once
    # as it stops): the next long-polls meet the outage.
    await stop_qrcode(demo)
    await demo.stop_gateway()
    await demo.start_gateway()
    await until(lambda: len(refused) >= 2, "the long-poll was asked again")
    assert refused[0].headers.get("retry-after") == "1"
    await expect(box).to_have_attribute("data-transport", "reconnecting")
    await expect_state(page, "pending")

    await start_qrcode(demo)
    await expect(box).to_have_attribute("data-transport", "longpoll")
    await log_in(page, demo)
    assert "data-state=error" not in await seen(page)
    assert await errors_reported(page) == []
