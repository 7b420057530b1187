"""The scan login of DESIGN §2 end to end: four services, a browser over WebSocket, a simulated phone."""

from __future__ import annotations

import aiohttp
import jwt
import pytest

from sim.phone import Phone, PhoneError, decode_scene
from tests.integration.conftest import Stack
from tests.support import Browser


async def test_browser_sees_pending_scanned_confirmed_then_gets_a_verifiable_token(stack: Stack) -> None:
    browser = Browser(stack.http, stack.gateway)
    issued = await browser.issue()
    assert issued["image"].startswith("data:image/")
    assert 100 <= issued["expires_in"] <= 120
    scene = decode_scene(issued["image"])  # the phone reads the scene out of the picture
    assert scene == browser.scene

    assert await browser.subscribe() == {"type": "state", "scene": scene, "state": "pending"}
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    openid = await phone.register()

    scan = await phone.scan(scene)
    assert scan["site"] == stack.settings.site_name
    assert scan["requester"]["location"]["label"] == "本机/内网 (local network)"  # never the address
    assert "ip" not in scan["requester"]
    assert (await browser.next_message())["state"] == "scanned"

    assert await phone.confirm(scene) == {"state": "confirmed"}
    assert (await browser.next_message())["state"] == "confirmed"
    assert (await browser.next_message())["type"] == "closed"  # the server closes after a final state

    status, tokens = await browser.complete()
    assert status == 200, tokens
    assert tokens["token_type"] == "Bearer"
    assert tokens["user"]["openid"] == openid
    assert tokens["refresh_token"] and tokens["refresh_token"] != tokens["access_token"]

    async with stack.http.get(f"{stack.gateway}/.well-known/jwks.json") as resp:
        keys = (await resp.json())["keys"]
    header = jwt.get_unverified_header(tokens["access_token"])
    jwk = next(k for k in keys if k["kid"] == header["kid"])
    claims = jwt.decode(
        tokens["access_token"],
        key=jwt.PyJWK(jwk).key,
        algorithms=["EdDSA"],
        audience=stack.settings.jwt_audience,
        issuer=stack.settings.jwt_issuer,
    )
    assert claims["sub"] == tokens["user"]["id"]
    assert claims["exp"] - claims["iat"] == stack.settings.access_token_ttl_seconds

    async with stack.http.get(
        f"{stack.gateway}/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": tokens["user"]["id"], "openid": openid}


async def test_a_complete_retried_after_a_lost_answer_gets_the_same_session_not_a_second_one(
    stack: Stack,
) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.scan(browser.scene)
    await phone.confirm(browser.scene)

    first, lost = await browser.complete()  # say this answer never reached the browser
    second, again = await browser.complete()
    assert (first, second) == (200, 200)
    assert again["refresh_token"] == lost["refresh_token"]
    sids = {jwt.decode(t["access_token"], options={"verify_signature": False})["sid"] for t in (lost, again)}
    assert len(sids) == 1  # one login, one session
    refreshed = await refresh(stack, again["refresh_token"])
    assert refreshed.status == 200
    stolen, _ = await browser.complete(ticket="x" * 43)
    assert stolen == 403


async def refresh(stack: Stack, token: str) -> aiohttp.ClientResponse:
    async with stack.http.post(f"{stack.gateway}/api/token/refresh", json={"refresh_token": token}) as resp:
        await resp.read()
        return resp


async def test_subscribe_with_a_wrong_ticket_gets_nothing_but_a_refusal(stack: Stack) -> None:
    owner = Browser(stack.http, stack.gateway)
    await owner.issue()
    thief = Browser(stack.http, stack.gateway)
    thief.scene = owner.scene

    refused = await thief.subscribe(ticket="x" * 43)
    assert refused == {"type": "error", "code": "ticket_invalid"}
    assert (await thief.next_message())["type"] == "closed"

    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.scan(owner.scene)
    await phone.confirm(owner.scene)

    status, body = await thief.complete(ticket="x" * 43)
    assert status == 403 and body["error"]["code"] == "ticket_invalid"
    status, _ = await owner.complete()
    assert status == 200


async def test_phone_cancel_is_pushed_and_the_login_cannot_complete(stack: Stack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    assert (await browser.subscribe())["state"] == "pending"
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.scan(browser.scene)
    assert (await browser.next_message())["state"] == "scanned"
    assert await phone.cancel(browser.scene) == {"state": "cancelled"}
    assert (await browser.next_message())["state"] == "cancelled"

    status, body = await browser.complete()
    assert status == 410 and body["error"]["code"] == "scene_cancelled"


async def test_a_second_phone_scanning_gets_already_scanned(stack: Stack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    first = Phone(stack.http, stack.gateway, stack.sim.url)
    second = Phone(stack.http, stack.gateway, stack.sim.url)
    await first.scan(browser.scene)
    with pytest.raises(PhoneError) as refused:
        await second.scan(browser.scene)
    assert (refused.value.status, refused.value.code) == (409, "already_scanned")


async def test_late_subscriber_sees_confirmed_for_a_redeemed_scene(stack: Stack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.scan(browser.scene)
    await phone.confirm(browser.scene)
    assert (await browser.complete())[0] == 200

    late = await browser.subscribe()
    assert late["state"] == "confirmed"


async def test_only_the_phone_that_scanned_can_confirm_so_a_stranger_cannot_log_the_browser_into_his_account(
    stack: Stack,
) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    victim = Phone(stack.http, stack.gateway, stack.sim.url)
    victim_openid = await victim.register()
    await victim.scan(browser.scene)

    stranger = Phone(stack.http, stack.gateway, stack.sim.url)  # saw the code over a shoulder
    await stranger.register()
    calls_before = stack.sim.state.counters["sns/jscode2session"]
    with pytest.raises(PhoneError) as refused:
        await stranger.confirm(browser.scene, scan_token="s" * 43)
    assert (refused.value.status, refused.value.code) == (403, "scan_token_invalid")
    assert stack.sim.state.counters["sns/jscode2session"] == calls_before  # his code never reached WeChat

    await victim.confirm(browser.scene)
    status, tokens = await browser.complete()
    assert status == 200 and tokens["user"]["openid"] == victim_openid


async def test_a_stranger_cannot_cancel_a_login_another_phone_is_approving(stack: Stack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    owner = Phone(stack.http, stack.gateway, stack.sim.url)
    await owner.scan(browser.scene)
    stranger = Phone(stack.http, stack.gateway, stack.sim.url)
    with pytest.raises(PhoneError) as refused:
        await stranger.cancel(browser.scene, scan_token="s" * 43)
    assert (refused.value.status, refused.value.code) == (403, "scan_token_invalid")
    assert await owner.confirm(browser.scene) == {"state": "confirmed"}


@pytest.mark.parametrize("path", ["/api/mp/confirm", "/api/mp/cancel"])
async def test_confirm_and_cancel_without_a_scan_token_are_refused_as_invalid(
    stack: Stack, path: str
) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.scan(browser.scene)
    body = {"scene": browser.scene, "code": await phone.wx_login()}
    async with stack.http.post(f"{stack.gateway}{path}", json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_request"
