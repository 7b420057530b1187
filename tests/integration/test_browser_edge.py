"""The browser-facing edge of the gateway: Origin allow-list, size caps, no WebSocket compression, and
clear 4xx answers to malformed input."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from shared.mongo import EmbeddedMongo
from tests.integration.conftest import Stack
from tests.scenes import start_stack_with, stop_stack
from tests.support import Browser

SITE = "https://site.example.com"
DEV = "http://127.0.0.1:8080"

HOSTILE_ORIGINS = [
    "null",
    "",
    "http://site.example.com",  # scheme downgrade
    "https://site.example.com.",  # trailing dot
    "https://site.example.com:443",  # default port spelled out: not how a browser serialises it
    "https://site.example.com:8443",  # another port
    "https://SITE.example.com",  # case tricks
    "HTTPS://site.example.com",
    "https://site.example.com.evil.com",  # look-alike suffix
    "https://evil-site.example.com",
    "https://evilsite.example.com",
    "https://site.example.co",
    "https://site-example.com",
    "https://xn--sie-8ma.example.com",  # punycode look-alike
    "https://site.example.com/",  # a path
    "https://site.example.com/login",
    "https://user@site.example.com",  # userinfo
    "https://site.example.com@evil.com",
    "https://evil.com#https://site.example.com",
    "https://evil.com?https://site.example.com",
    "https://site.example.com,https://evil.com",  # two origins in one value
    "https://site.example.com%2eevil.com",
    "wss://site.example.com",
    "ws://site.example.com",
    "file://",
    "http://127.0.0.1:8081",  # the allowed dev origin on another port
    "http://localhost:8080",  # not configured in this test
    "http://127.0.0.1",
]


@pytest.fixture
async def site_stack(mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str) -> AsyncIterator[Stack]:
    """A gateway that allows exactly one production origin and one dev origin."""
    stack = await start_stack_with(
        "memory", mongo_server, amqp_base_url, unique, allowed_origins=f"{SITE},{DEV}", code_pool_size=2
    )
    try:
        yield stack
    finally:
        await stop_stack(stack)


async def test_at_least_twenty_hostile_origins_are_refused_a_websocket(site_stack: Stack) -> None:
    assert len(HOSTILE_ORIGINS) >= 20
    statuses = {}
    for origin in HOSTILE_ORIGINS:
        async with site_stack.http.get(
            f"{site_stack.gateway}/api/login/ws",
            headers={
                "Origin": origin,
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ) as resp:
            statuses[origin] = (resp.status, (await resp.json())["error"]["code"])
    assert statuses == dict.fromkeys(HOSTILE_ORIGINS, (403, "origin_not_allowed"))


async def test_the_allowed_origins_get_their_websocket(site_stack: Stack) -> None:
    for origin in (SITE, DEV):
        async with site_stack.http.ws_connect(
            f"{site_stack.gateway}/api/login/ws", headers={"Origin": origin}
        ) as ws:
            assert not ws.closed


async def test_a_websocket_without_origin_or_with_two_origins_is_refused(site_stack: Stack) -> None:
    base = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with site_stack.http.get(f"{site_stack.gateway}/api/login/ws", headers=base) as resp:
        assert resp.status == 403
    two = [*base.items(), ("Origin", SITE), ("Origin", "https://evil.com")]
    async with site_stack.http.get(f"{site_stack.gateway}/api/login/ws", headers=two) as resp:
        assert resp.status == 403


async def test_hostile_origins_cannot_issue_codes_and_can_read_only_the_refusal(site_stack: Stack) -> None:
    for origin in HOSTILE_ORIGINS:
        async with site_stack.http.post(
            f"{site_stack.gateway}/api/login/qrcode", headers={"Origin": origin}
        ) as resp:
            assert resp.status == 403, origin
            body = await resp.json()
            assert body["error"]["code"] == "origin_not_allowed"
            if not origin:
                continue  # an empty Origin names no page to answer
            assert "WXLOGIN_ALLOWED_ORIGINS" in body["error"]["message"]
            # Readable by that page, so the SDK can name the setting instead of "Failed to fetch".
            assert resp.headers["Access-Control-Allow-Origin"] == origin
        async with site_stack.http.options(
            f"{site_stack.gateway}/api/login/complete",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        ) as resp:
            assert resp.status == 204  # the preflight passes so the page sees the refusal above
        async with site_stack.http.get(
            f"{site_stack.gateway}/.well-known/jwks.json", headers={"Origin": origin}
        ) as resp:
            assert resp.status == 403  # no handler runs for a refused origin
    async with site_stack.http.post(
        f"{site_stack.gateway}/api/login/qrcode", headers={"Origin": SITE}
    ) as resp:
        assert resp.status == 201
        assert resp.headers["Access-Control-Allow-Origin"] == SITE


async def test_an_error_answer_to_an_allowed_origin_is_readable_by_that_page_with_its_retry_hint(
    site_stack: Stack,
) -> None:
    async with site_stack.http.post(
        f"{site_stack.gateway}/api/login/complete", json={"scene": "bad"}, headers={"Origin": SITE}
    ) as resp:
        assert resp.status == 400
        assert resp.headers["Access-Control-Allow-Origin"] == SITE
        assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
        assert (await resp.json())["error"]["code"] == "invalid_request"


async def test_websocket_compression_offered_by_the_browser_is_declined(site_stack: Stack) -> None:
    async with site_stack.http.ws_connect(
        f"{site_stack.gateway}/api/login/ws", headers={"Origin": SITE}, compress=15
    ) as ws:
        assert ws.compress == 0


async def test_an_oversized_websocket_frame_closes_the_socket_with_1009(site_stack: Stack) -> None:
    async with site_stack.http.ws_connect(
        f"{site_stack.gateway}/api/login/ws", headers={"Origin": SITE}
    ) as ws:
        await ws.send_str('{"type":"subscribe","pad":"' + "x" * 2000 + '"}')
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_an_oversized_body_is_a_413_json_error(site_stack: Stack) -> None:
    big = {"scene": "a" * 32, "ticket": "b" * 43, "pad": "x" * 20_000}
    for path in ("/api/login/complete", "/api/mp/scan", "/api/mp/confirm"):
        async with site_stack.http.post(f"{site_stack.gateway}{path}", json=big) as resp:
            assert resp.status == 413, path
            assert (await resp.json())["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/login/complete", b"not json"),
        ("/api/login/complete", b"[1, 2]"),
        ("/api/login/complete", b'{"scene": "short", "ticket": "x"}'),
        ("/api/login/complete", b'{"scene": "' + b"a" * 32 + b'"}'),
        ("/api/mp/scan", b'{"scene": "../../etc/passwd................"}'),
        ("/api/mp/scan", b'{"scene": null}'),
        ("/api/mp/confirm", b'{"scene": "' + b"a" * 32 + b'", "code": ""}'),
        ("/api/mp/cancel", b"{}"),
    ],
)
async def test_malformed_bodies_get_400_invalid_request(site_stack: Stack, path: str, body: bytes) -> None:
    async with site_stack.http.post(
        f"{site_stack.gateway}{path}", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_request"


async def test_a_page_gets_a_new_code_with_one_call_after_its_code_expired(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    from tests.scenes import FakeClock

    clock = FakeClock(follow_real_time=True)
    stack = await start_stack_with(
        "memory",
        mongo_server,
        amqp_base_url,
        unique,
        clock=clock,
        limit_issue_per_ip_burst=2,
        limit_issue_per_ip_per_minute=2,
    )
    try:
        browser = Browser(stack.http, stack.gateway)
        first = await browser.issue()
        assert (await browser.subscribe())["state"] == "pending"
        clock.advance(stack.settings.scene_ttl_seconds + 1)
        assert (await browser.next_message(timeout=5))["state"] == "expired"
        await browser.close()

        second = await browser.issue()  # the refresh button: one call, within the per-IP burst
        assert second["scene"] != first["scene"]
        assert (await browser.subscribe())["state"] == "pending"
    finally:
        await stop_stack(stack)
