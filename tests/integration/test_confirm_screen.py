"""What the phone's confirm screen is told, through the whole stack (security review M4, L2): where the
browser and the phone are (coarse places from the offline IP database, never the browser's address),
whether those differ, how the page was opened (a code image is warned about, a share card refused),
and a 不是我 that reaches the browser with its reason, over the WebSocket and the long-poll.

The gateway believes X-Forwarded-For from 127.0.0.0/8 here, so the browser and the phone (both on
127.0.0.1) can come from real public addresses, placed by the real database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.mongo import EmbeddedMongo, make_client
from sim.phone import Phone, PhoneError
from tests.integration.conftest import Stack
from tests.scenes import start_stack_with, stop_stack
from tests.support import Browser

SHENZHEN_BROADBAND = "113.108.81.189"  # 广东省深圳市 · 电信
FOSHAN_MOBILE = "117.136.12.1"  # 广东省佛山市 · 移动: the same province
BEIJING_MOBILE = "39.156.66.10"  # 北京市 · 移动: another province
CHROME_ON_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


@pytest.fixture
async def stack(mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str) -> AsyncIterator[Stack]:
    running = await start_stack_with(
        "amqp", mongo_server, amqp_base_url, unique, code_pool_size=2, trusted_proxies="127.0.0.0/8"
    )
    try:
        yield running
    finally:
        await stop_stack(running)


async def browser_at(stack: Stack, ip: str | None = None) -> Browser:
    """A browser that asks for a code from ``ip`` (through our trusted proxy), or from 127.0.0.1."""
    browser = Browser(stack.http, stack.gateway)
    headers = {"User-Agent": CHROME_ON_WINDOWS, **({"X-Forwarded-For": ip} if ip else {})}
    async with stack.http.post(f"{stack.gateway}/api/login/qrcode", headers=headers) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 201, body
    browser.scene, browser.ticket = body["scene"], body["ticket"]
    return browser


def phone_at(stack: Stack, ip: str | None = None, *, launch_scene: int | None = 1047) -> Phone:
    return Phone(stack.http, stack.gateway, stack.sim.url, launch_scene=launch_scene, forwarded_for=ip)


async def test_the_phone_sees_where_the_browser_and_itself_are_never_the_browsers_address(
    stack: Stack,
) -> None:
    browser = await browser_at(stack, SHENZHEN_BROADBAND)
    shown = await phone_at(stack, FOSHAN_MOBILE).scan(browser.scene)

    requester = shown["requester"]
    assert "ip" not in requester and SHENZHEN_BROADBAND not in str(shown)  # L2: no address at all
    assert (requester["browser"], requester["os"]) == ("Chrome 126", "Windows")
    assert requester["location"] == {
        "kind": "public",
        "label": "广东省深圳市 · 电信",
        "country": "中国",
        "province": "广东省",
        "city": "深圳市",
        "isp": "电信",
    }
    assert shown["phone"]["location"]["label"] == "广东省佛山市 · 移动"
    assert shown["location_mismatch"] is False  # one province: a phone on 4G is placed loosely
    assert shown["launch"] == "camera"

    # The operator still has the addresses (and how the page was opened).
    client = make_client(stack.settings.mongo_url)
    try:
        doc = await client[stack.settings.mongo_db]["scenes"].find_one({"_id": browser.scene})
    finally:
        await client.close()
    assert doc is not None
    assert (doc["ip"], doc["scanned_ip"], doc["launch_scene"]) == (SHENZHEN_BROADBAND, FOSHAN_MOBILE, 1047)


async def test_a_browser_in_another_province_than_the_phone_is_flagged(stack: Stack) -> None:
    browser = await browser_at(stack, BEIJING_MOBILE)
    shown = await phone_at(stack, SHENZHEN_BROADBAND).scan(browser.scene)
    assert shown["requester"]["location"]["label"] == "北京市 · 移动"
    assert shown["phone"]["location"]["label"] == "广东省深圳市 · 电信"
    assert shown["location_mismatch"] is True


async def test_this_machine_is_the_local_network_and_is_compared_with_nothing(stack: Stack) -> None:
    browser = await browser_at(stack)
    shown = await phone_at(stack, BEIJING_MOBILE).scan(browser.scene)
    assert shown["requester"]["location"] == {
        "kind": "local",
        "label": "本机/内网 (local network)",
        "country": "",
        "province": "",
        "city": "",
        "isp": "",
    }
    assert shown["location_mismatch"] is False


async def test_a_code_recognised_in_a_chat_image_is_warned_about_and_a_share_card_is_refused(
    stack: Stack,
) -> None:
    browser = await browser_at(stack, SHENZHEN_BROADBAND)
    # Sent round as a chat card: refused before the scene moves, so it is not spent.
    with pytest.raises(PhoneError) as refused:
        await phone_at(stack, launch_scene=1007).scan(browser.scene)
    assert (refused.value.status, refused.value.code) == (403, "launch_scene_refused")
    assert "share card" in refused.value.body["error"]["message"]
    with pytest.raises(PhoneError) as other_app:
        await phone_at(stack, launch_scene=1037).scan(browser.scene)
    assert other_app.value.code == "launch_scene_refused"
    assert await browser.state() == "pending"

    # Long-pressed in a chat ("长按识别领红包"): allowed, with the strong warning.
    shown = await phone_at(stack, launch_scene=1048).scan(browser.scene)
    assert shown["launch"] == "image"
    assert await browser.state() == "scanned"

    # A mini-program that predates the check says nothing: let through, nothing to warn about.
    older = await browser_at(stack)
    assert (await phone_at(stack, launch_scene=None).scan(older.scene))["launch"] == "unknown"


async def test_not_me_reaches_the_browser_with_its_reason_over_the_websocket_and_the_long_poll(
    stack: Stack,
) -> None:
    watching = await browser_at(stack)
    assert (await watching.subscribe())["state"] == "pending"
    phone = phone_at(stack)
    await phone.scan(watching.scene)
    assert (await watching.next_message())["state"] == "scanned"
    assert await phone.cancel(watching.scene, reason="not_me") == {"state": "cancelled"}
    assert await watching.next_message() == {
        "type": "state",
        "scene": watching.scene,
        "state": "cancelled",
        "reason": "not_me",
    }
    # A socket that subscribes afterwards reads the reason from the stored scene.
    again = Browser(stack.http, stack.gateway)
    again.scene, again.ticket = watching.scene, watching.ticket
    assert (await again.subscribe())["reason"] == "not_me"
    await again.close()
    await watching.close()

    polling = await browser_at(stack)
    await phone.scan(polling.scene)
    await phone.cancel(polling.scene, reason="not_me")
    params = {"scene": polling.scene, "wait": "5", "since": "scanned"}
    async with stack.http.get(
        f"{stack.gateway}/api/login/status", params=params, headers={"X-Login-Ticket": polling.ticket}
    ) as resp:
        status, body = resp.status, await resp.json()
    assert (status, body["state"], body["reason"]) == (410, "cancelled", "not_me")
    assert body["error"]["code"] == "scene_cancelled" and "不是我" in body["error"]["message"]

    # A plain 取消 says so too.
    declined = await browser_at(stack)
    await phone.scan(declined.scene)
    await phone.cancel(declined.scene)
    assert await declined.subscribe() == {
        "type": "state",
        "scene": declined.scene,
        "state": "cancelled",
        "reason": "declined",
    }
    await declined.close()


async def test_an_unknown_cancel_reason_is_a_clear_400(stack: Stack) -> None:
    browser = await browser_at(stack)
    phone = phone_at(stack)
    await phone.scan(browser.scene)
    with pytest.raises(PhoneError) as refused:
        await phone.cancel(browser.scene, reason="because")
    assert (refused.value.status, refused.value.code) == (400, "invalid_request")
    assert await browser.state() == "scanned"
