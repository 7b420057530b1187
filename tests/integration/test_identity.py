"""Identity end to end: mini-program login, refresh rotation, logout, phone binding, decryption, unionid.

Four services, the WeChat simulator over real HTTP, nx-27017; the core flows run over RabbitMQ and
over the in-memory bus, the rest over the in-memory bus to keep the suite fast.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from services.gateway.ws import ticket_hash
from services.session.handlers import MP_LOGIN_RETRY_SECONDS, session_key_purpose
from shared.messages import LoginConfirmed, UserCreated
from shared.mongo import EmbeddedMongo
from shared.sealing import Sealer
from sim.phone import Phone, PhoneError
from tests.integration.identity_stack import OFFICIAL_APPID, IdentityStack, identity_stack
from tests.scenes import FakeClock
from tests.support import Browser

VECTOR = json.loads((Path(__file__).parents[1] / "data" / "encrypteddata_official_vector.json").read_text())


@pytest.fixture(params=["amqp", "memory"])
async def stack(
    request: pytest.FixtureRequest, mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> AsyncIterator[IdentityStack]:
    """The system over RabbitMQ and over the in-memory bus."""
    async with identity_stack(request.param, mongo_server, amqp_base_url, unique) as running:
        yield running


@pytest.fixture
async def mem(mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str) -> AsyncIterator[IdentityStack]:
    """The system over the in-memory bus (its broker records published events)."""
    async with identity_stack("memory", mongo_server, amqp_base_url, unique) as running:
        yield running


async def claims_of(stack: IdentityStack, token: str) -> dict[str, Any]:
    """Verify ``token`` the way a site backend does: with the published JWKS document."""
    status, document = await stack.request("GET", "/.well-known/jwks.json")
    assert status == 200
    keys = {k["kid"]: k for k in document["keys"]}
    header = jwt.get_unverified_header(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key=jwt.PyJWK(keys[header["kid"]]).key,
        algorithms=["EdDSA"],
        audience=stack.settings.jwt_audience,
        issuer=stack.settings.jwt_issuer,
    )
    return claims


def events(stack: IdentityStack, event_type: str) -> list[dict[str, Any]]:
    assert stack.broker is not None
    return [json.loads(d.body) for _, d in stack.broker.published if d.type == event_type]


async def assert_logins_announced(stack: IdentityStack, count: int) -> None:
    """Over the in-memory bus (its broker records what is published): ``count`` ``login.confirmed``."""
    if stack.broker is not None:
        await stack.broker.drain()
        assert len(events(stack, LoginConfirmed.TYPE)) == count


async def user_doc(stack: IdentityStack, user_id: str) -> dict[str, Any]:
    doc: dict[str, Any] | None = await stack.db.users.find_one({"_id": user_id})
    assert doc is not None
    return doc


# --- plain mini-program login ---------------------------------------------------------------------


async def test_mp_login_gives_the_mini_program_tokens_a_site_can_verify(stack: IdentityStack) -> None:
    mp = await stack.phone().register()
    tokens = await mp.login()

    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 900
    claims = await claims_of(stack, tokens["access_token"])
    assert claims["sub"] == tokens["user"]["id"] and claims["openid"] == mp.openid
    assert set(claims) >= {"iss", "aud", "sub", "exp", "iat", "nbf", "jti", "sid"}
    assert claims["exp"] - claims["iat"] == 900
    assert jwt.get_unverified_header(tokens["access_token"])["kid"]
    assert await mp.me() == (200, {"id": tokens["user"]["id"], "openid": mp.openid})

    doc = await user_doc(stack, tokens["user"]["id"])
    # The first login is counted as the user is created: two clock readings of one request, a few ms
    # apart on a busy machine (14 ms seen in CI), and nx-27017 keeps fewer decimals of a float written
    # by $set than of one inserted.
    assert doc["login_count"] == 1 and doc["last_login_at"] == pytest.approx(doc["created_at"], abs=1.0)


async def test_second_login_of_the_same_openid_counts_on_the_same_user_and_is_created_once(
    mem: IdentityStack,
) -> None:
    mp = await mem.phone().register()
    first = await mp.login()
    second = await mp.login()

    assert first["user"]["id"] == second["user"]["id"]
    assert (await claims_of(mem, first["access_token"]))["sid"] != (
        await claims_of(mem, second["access_token"])
    )["sid"]
    assert (await user_doc(mem, first["user"]["id"]))["login_count"] == 2
    await mem.broker.drain()  # type: ignore[union-attr]
    created = events(mem, UserCreated.TYPE)
    assert [e["user_id"] for e in created] == [first["user"]["id"]]


async def test_a_retried_mp_login_reuses_the_exchange_and_counts_one_login(mem: IdentityStack) -> None:
    mp = await mem.phone().register()
    code = await mp.phone.wx_login()
    first, second = await asyncio.gather(mp.login(code), mp.login(code))

    assert first["user"]["id"] == second["user"]["id"]
    assert (await mem.counters())["sns/jscode2session"] == 1
    assert (await user_doc(mem, first["user"]["id"]))["login_count"] == 1


async def test_a_mp_login_retried_within_the_window_gets_the_same_session(mem: IdentityStack) -> None:
    """Security review L1: a lost answer retried is the same login, not a second session."""
    mp = await mem.phone().register()
    code = await mp.phone.wx_login()
    first = await mp.login(code)
    await asyncio.sleep(1)
    again, twin = await asyncio.gather(mp.login(code), mp.login(code))

    assert first["refresh_token"] == again["refresh_token"] == twin["refresh_token"]
    sids = {(await claims_of(mem, t["access_token"]))["sid"] for t in (first, again, twin)}
    assert len(sids) == 1
    assert await mem.db.refresh_tokens.count_documents({}) == 1
    assert (await mem.counters())["sns/jscode2session"] == 1
    assert (await user_doc(mem, first["user"]["id"]))["login_count"] == 1
    status, _ = await mp.refresh(first["refresh_token"])
    assert status == 200


@pytest.fixture
async def clocked(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> AsyncIterator[tuple[IdentityStack, FakeClock]]:
    """The system over the in-memory bus, its services on a clock the test moves forward."""
    clock = FakeClock(follow_real_time=True)
    async with identity_stack("memory", mongo_server, amqp_base_url, unique, clock=clock) as running:
        yield running, clock


async def test_a_mp_login_code_replayed_after_the_window_is_refused_and_revokes_its_session(
    clocked: tuple[IdentityStack, FakeClock],
) -> None:
    """Security review L1 (RFC 6749 §4.1.2): a code seen again later may have been copied."""
    stack, clock = clocked
    mp = await stack.phone().register()
    code = await mp.phone.wx_login()
    first = await mp.login(code)
    clock.advance(MP_LOGIN_RETRY_SECONDS + 1)

    for _ in range(2):  # refused every time, whatever the reuse revoked
        status, body = await stack.request("POST", "/api/mp/login", {"code": code})
        assert (status, body["error"]["code"]) == (400, "code_invalid")
    status, body = await mp.refresh(first["refresh_token"])
    assert (status, body["error"]["code"]) == (401, "refresh_invalid")
    assert (await stack.counters())["sns/jscode2session"] == 1
    revoked = await stack.db.refresh_tokens.find_one({})
    assert revoked["revoked"] and revoked["revoked_reason"] == "code_reuse"
    # The user is not locked out: a fresh code logs in.
    fresh = await mp.login()
    assert (await mp.refresh(fresh["refresh_token"]))[0] == 200


async def test_a_mp_login_code_wechat_calls_used_revokes_the_session_it_started(mem: IdentityStack) -> None:
    """Once our record of the code is gone (5 minutes), WeChat's 40163 is the replay: revoke too."""
    mp = await mem.phone().register()
    code = await mp.phone.wx_login()
    first = await mp.login(code)
    await mem.db.code_uses.delete_many({})  # what the TTL monitor does after 5 minutes

    status, body = await mem.request("POST", "/api/mp/login", {"code": code})
    assert (status, body["error"]["code"]) == (400, "code_invalid")
    assert (await mem.counters())["sns/jscode2session"] == 2
    status, body = await mp.refresh(first["refresh_token"])
    assert (status, body["error"]["code"]) == (401, "refresh_invalid")


async def test_a_code_spent_on_mp_login_cannot_confirm_a_scan(mem: IdentityStack) -> None:
    mp = await mem.phone().register()
    code = await mp.phone.wx_login()
    await mp.login(code)
    browser = Browser(mem.http, mem.gateway)
    await browser.issue()
    await mp.phone.scan(browser.scene, with_code=False)

    body = {"scene": browser.scene, "scan_token": mp.phone.scan_tokens[browser.scene], "code": code}
    status, body = await mem.request("POST", "/api/mp/confirm", body)
    assert (status, body["error"]["code"]) == (400, "code_invalid")
    assert (await mem.counters())["sns/jscode2session"] == 1


async def test_an_unknown_code_is_a_400_and_a_blocked_user_a_403(mem: IdentityStack) -> None:
    status, body = await mem.request("POST", "/api/mp/login", {"code": "0" * 32})
    assert (status, body["error"]["code"]) == (400, "code_invalid")
    blocked = await mem.phone().register(blocked=True)
    status, body = await mem.request("POST", "/api/mp/login", {"code": await blocked.phone.wx_login()})
    assert (status, body["error"]["code"]) == (403, "user_blocked")


@pytest.mark.parametrize("body", [None, [], {"code": ""}, {"code": "has space"}, {"code": "x" * 129}])
async def test_bad_mp_login_bodies_are_400(mem: IdentityStack, body: Any) -> None:
    status, answer = await mem.request("POST", "/api/mp/login", body)
    assert (status, answer["error"]["code"]) == (400, "invalid_request")


# --- duplicate confirm ----------------------------------------------------------------------------


async def test_duplicate_confirm_delivery_exchanges_the_code_once(stack: IdentityStack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.register()
    await phone.scan(browser.scene, with_code=False)
    code = await phone.wx_login()
    body = {"scene": browser.scene, "scan_token": phone.scan_tokens[browser.scene], "code": code}

    together = await asyncio.gather(*(stack.request("POST", "/api/mp/confirm", body) for _ in range(2)))
    again = await stack.request("POST", "/api/mp/confirm", body)  # a redelivery after the fact

    assert [*together, again] == [(200, {"state": "confirmed"})] * 3
    assert (await stack.counters())["sns/jscode2session"] == 1
    status, tokens = await browser.complete()
    assert status == 200
    assert (await user_doc(stack, tokens["user"]["id"]))["login_count"] == 1
    await assert_logins_announced(stack, 1)


async def test_a_code_sent_with_the_scan_is_exchanged_once_and_the_confirm_needs_none(
    stack: IdentityStack,
) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    openid = await phone.register()

    scanned = await phone.scan(browser.scene)
    assert scanned["identified"] is True and "identify_error" not in scanned
    assert (await stack.counters())["sns/jscode2session"] == 1  # exchanged while the user reads the page
    assert await browser.state() == "scanned"  # identified, not confirmed: nobody is logged in yet

    body = {"scene": browser.scene, "scan_token": phone.scan_tokens[browser.scene]}  # no code
    assert await stack.request("POST", "/api/mp/confirm", body) == (200, {"state": "confirmed"})
    assert await stack.request("POST", "/api/mp/confirm", body) == (200, {"state": "confirmed"})  # a retry
    assert (await stack.counters())["sns/jscode2session"] == 1

    status, tokens = await browser.complete()
    assert status == 200 and tokens["user"]["openid"] == openid
    assert (await user_doc(stack, tokens["user"]["id"]))["login_count"] == 1
    await assert_logins_announced(stack, 1)


async def test_a_scan_retried_with_the_phones_own_token_gets_the_first_answer_and_logs_in_once(
    stack: IdentityStack,
) -> None:
    # A scan whose answer a fault lost (docs/chaos.md): the page retries with the scan token it chose.
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    await phone.register()
    earlier = Browser(stack.http, stack.gateway)  # a returning user: the scan puts them on the scene
    await earlier.issue()
    await phone.scan(earlier.scene)
    await phone.confirm(earlier.scene)
    assert (await earlier.complete())[0] == 200

    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    token, code = secrets.token_urlsafe(32), await phone.wx_login()
    answer = await phone.scan(browser.scene, code=code, scan_token=token)
    again = await phone.scan(browser.scene, code=code, scan_token=token)
    assert again == answer
    assert again["scan_token"] == token and again["identified"] is True
    assert (await stack.counters())["sns/jscode2session"] == 2  # the retry's code was not exchanged again
    assert await browser.state() == "scanned"

    intruder = Phone(stack.http, stack.gateway, stack.sim.url)  # any other token is another phone
    with pytest.raises(PhoneError) as refused:
        await intruder.scan(browser.scene, scan_token=secrets.token_urlsafe(32))
    assert (refused.value.status, refused.value.code) == (409, "already_scanned")
    with pytest.raises(PhoneError) as minted:  # a retry without a token of its own cannot be recognised
        await phone.scan(browser.scene, code=code)
    assert (minted.value.status, minted.value.code) == (409, "already_scanned")

    assert await phone.confirm(browser.scene, scan_token=token) == {"state": "confirmed"}  # no code needed
    status, tokens = await browser.complete()
    assert status == 200
    assert (await user_doc(stack, tokens["user"]["id"]))["login_count"] == 2
    await assert_logins_announced(stack, 2)


async def test_a_scan_token_the_phone_chose_must_be_long_random_base64url(stack: IdentityStack) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    for weak in ("short", "a" * 42, "not base64url!" * 4, "x" * 129):
        body = {"scene": browser.scene, "scan_token": weak}
        status, body = await stack.request("POST", "/api/mp/scan", body)
        assert (status, body["error"]["code"]) == (400, "invalid_request"), weak
    assert await browser.state() == "pending"  # nothing was scanned


async def test_a_returning_user_confirms_without_a_code_once_per_login_and_retries_are_harmless(
    stack: IdentityStack,
) -> None:
    phone = Phone(stack.http, stack.gateway, stack.sim.url)
    openid = await phone.register()
    user_ids = []
    for _ in range(2):  # the second scan finds the user already there
        browser = Browser(stack.http, stack.gateway)
        await browser.issue()
        await phone.scan(browser.scene)
        # Only a user who exists already is recorded on the scan's code (a new one is created at
        # confirm); the scene gets its user at the confirm.
        scan_hash = ticket_hash(phone.scan_tokens[browser.scene])
        use = await stack.db.code_uses.find_one({"scan_hash": scan_hash})
        assert use is not None and use.get("identified_user_id") == (user_ids[0] if user_ids else None)
        scene = await stack.db.scenes.find_one({"_id": browser.scene})
        assert scene is not None and scene["state"] == "scanned" and scene["user_id"] is None
        body = {"scene": browser.scene, "scan_token": phone.scan_tokens[browser.scene]}
        assert await stack.request("POST", "/api/mp/confirm", body) == (200, {"state": "confirmed"})
        assert await stack.request("POST", "/api/mp/confirm", body) == (200, {"state": "confirmed"})
        status, tokens = await browser.complete()
        assert status == 200 and tokens["user"]["openid"] == openid
        user_ids.append(tokens["user"]["id"])
        # The scan's session_key is kept on the user (the phone's encryptedData opens with it).
        sealed = (await user_doc(stack, tokens["user"]["id"]))["session_key"]
        sealer = Sealer.from_text(stack.settings.data_key.get_secret_value())
        opened = sealer.open(sealed, purpose=session_key_purpose(openid))
        assert opened == stack.sim.state.users[openid].session_key

    assert user_ids[0] == user_ids[1]
    assert (await stack.counters())["sns/jscode2session"] == 2
    assert (await user_doc(stack, user_ids[0]))["login_count"] == 2
    await assert_logins_announced(stack, 2)


async def test_a_confirm_without_a_code_after_a_scan_without_one_is_asked_for_a_code(
    mem: IdentityStack,
) -> None:
    browser = Browser(mem.http, mem.gateway)
    await browser.issue()
    phone = Phone(mem.http, mem.gateway, mem.sim.url)
    await phone.register()
    assert (await phone.scan(browser.scene, with_code=False))["identified"] is False

    body = {"scene": browser.scene, "scan_token": phone.scan_tokens[browser.scene]}
    status, refused = await mem.request("POST", "/api/mp/confirm", body)
    assert (status, refused["error"]["code"]) == (400, "code_required")
    assert await browser.state() == "scanned"
    assert await phone.confirm(browser.scene, with_code=True) == {"state": "confirmed"}


async def test_a_bad_code_with_the_scan_leaves_the_scan_standing_and_a_fresh_code_confirms(
    mem: IdentityStack,
) -> None:
    browser = Browser(mem.http, mem.gateway)
    await browser.issue()
    phone = Phone(mem.http, mem.gateway, mem.sim.url)
    await phone.register()

    status, scanned = await mem.request("POST", "/api/mp/scan", {"scene": browser.scene, "code": "0" * 32})
    assert status == 200
    assert (scanned["identified"], scanned["identify_error"]) == (False, "code_invalid")
    assert await browser.state() == "scanned"
    token = scanned["scan_token"]

    status, refused = await mem.request(
        "POST", "/api/mp/confirm", {"scene": browser.scene, "scan_token": token}
    )
    assert (status, refused["error"]["code"]) == (400, "code_required")
    fresh = {"scene": browser.scene, "scan_token": token, "code": await phone.wx_login()}
    assert await mem.request("POST", "/api/mp/confirm", fresh) == (200, {"state": "confirmed"})


async def test_wechat_refusing_the_scans_exchange_leaves_the_scan_standing_and_a_fresh_code_confirms(
    mem: IdentityStack,
) -> None:
    browser = Browser(mem.http, mem.gateway)
    await browser.issue()
    phone = Phone(mem.http, mem.gateway, mem.sim.url)
    await phone.register()
    await mem.control.fault("sns/jscode2session", errcode=45011, count=1)  # minute quota: try later

    scanned = await phone.scan(browser.scene)
    assert (scanned["identified"], scanned["identify_error"]) == (False, "wechat_unavailable")
    assert await browser.state() == "scanned"
    assert await phone.confirm(browser.scene) == {"state": "confirmed"}  # with a fresh code, on its own
    status, tokens = await browser.complete()
    assert status == 200 and tokens["user"]["openid"] == phone.openid


async def test_only_the_phone_that_won_the_scan_is_identified_and_a_stranger_gets_no_confirm(
    mem: IdentityStack,
) -> None:
    browser = Browser(mem.http, mem.gateway)
    await browser.issue()
    owner = Phone(mem.http, mem.gateway, mem.sim.url)
    owner_openid = await owner.register()
    await owner.scan(browser.scene)
    stranger = Phone(mem.http, mem.gateway, mem.sim.url)
    await stranger.register()
    calls = (await mem.counters())["sns/jscode2session"]

    status, body = await mem.request(
        "POST", "/api/mp/scan", {"scene": browser.scene, "code": await stranger.wx_login()}
    )
    assert (status, body["error"]["code"]) == (409, "already_scanned")
    forged = {"scene": browser.scene, "scan_token": "s" * 43}  # no code: rides on nobody's identity
    status, body = await mem.request("POST", "/api/mp/confirm", forged)
    assert (status, body["error"]["code"]) == (403, "scan_token_invalid")
    assert (await mem.counters())["sns/jscode2session"] == calls  # the stranger's code never reached WeChat

    await owner.confirm(browser.scene)
    status, tokens = await browser.complete()
    assert status == 200 and tokens["user"]["openid"] == owner_openid


async def test_another_code_cannot_confirm_an_already_confirmed_scene(mem: IdentityStack) -> None:
    browser = Browser(mem.http, mem.gateway)
    await browser.issue()
    phone = Phone(mem.http, mem.gateway, mem.sim.url)
    await phone.scan(browser.scene)
    await phone.confirm(browser.scene)
    body = {
        "scene": browser.scene,
        "scan_token": phone.scan_tokens[browser.scene],
        "code": await phone.wx_login(),
    }
    status, body = await mem.request("POST", "/api/mp/confirm", body)
    assert (status, body["error"]["code"]) == (409, "already_confirmed")


# --- refresh rotation and logout ------------------------------------------------------------------


async def test_refresh_rotates_the_refresh_token_and_issues_a_fresh_access_token(
    stack: IdentityStack,
) -> None:
    mp = await stack.phone().register()
    first = await mp.login()
    status, second = await mp.refresh()
    assert status == 200, second
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await claims_of(stack, second["access_token"]))["sid"] == (
        await claims_of(stack, first["access_token"])
    )["sid"]
    status, third = await mp.refresh(second["refresh_token"])
    assert status == 200 and third["user"] == first["user"]
    stored = [doc["_id"] async for doc in stack.db.refresh_tokens.find({})]
    assert first["refresh_token"] not in stored and len(stored) == 3  # hashes only


async def test_a_spent_refresh_token_presented_again_revokes_the_whole_family(stack: IdentityStack) -> None:
    mp = await stack.phone().register()
    first = await mp.login()
    status, second = await mp.refresh()
    assert status == 200
    await asyncio.sleep(stack.settings.refresh_grace_seconds + 0.2)

    status, body = await mp.refresh(first["refresh_token"])  # the stolen copy comes back
    assert (status, body["error"]["code"]) == (401, "refresh_reused")
    status, body = await mp.refresh(second["refresh_token"])  # the legitimate holder is logged out too
    assert (status, body["error"]["code"]) == (401, "refresh_invalid")
    family = (await claims_of(stack, first["access_token"]))["sid"]
    revoked = [d["revoked_reason"] async for d in stack.db.refresh_tokens.find({"family": family})]
    assert revoked == ["reuse"] * 2


async def test_two_refreshes_within_the_grace_both_succeed_with_the_same_successor(
    stack: IdentityStack,
) -> None:
    mp = await stack.phone().register()
    await mp.login()
    (s1, a), (s2, b) = await asyncio.gather(mp.refresh(), mp.refresh())  # two tabs
    assert (s1, s2) == (200, 200), (a, b)
    assert a["refresh_token"] == b["refresh_token"]
    status, _ = await mp.refresh()  # a third tab, still within the grace
    assert status == 200

    status, c = await mp.refresh(a["refresh_token"])  # the family goes on from the one live token
    assert status == 200
    family = (await claims_of(stack, c["access_token"]))["sid"]
    live = [d async for d in stack.db.refresh_tokens.find({"family": family, "rotated_at": None})]
    assert len(live) == 1


async def test_within_the_grace_a_successor_that_was_itself_spent_is_not_handed_out(
    mem: IdentityStack,
) -> None:
    mp = await mem.phone().register()
    first = await mp.login()
    _, second = await mp.refresh()
    status, _ = await mp.refresh(second["refresh_token"])
    assert status == 200
    status, body = await mp.refresh(first["refresh_token"])
    assert (status, body["error"]["code"]) == (401, "refresh_reused")


async def test_logout_ends_refresh_and_the_session_calls_but_the_access_token_lives_until_exp(
    stack: IdentityStack,
) -> None:
    mp = await stack.phone().register(phone="13800138000")
    tokens = await mp.login()
    status, _ = await stack.request("POST", "/api/logout", token=tokens["access_token"])
    assert status == 204

    status, body = await mp.refresh()
    assert (status, body["error"]["code"]) == (401, "refresh_invalid")
    status, body = await mp.bind_phone()
    assert (status, body["error"]["code"]) == (401, "session_ended")
    assert (await mp.me())[0] == 200  # documented: verified offline until it expires (15 min)
    status, _ = await stack.request("POST", "/api/logout", token=tokens["access_token"])
    assert status == 401  # the session is gone


async def test_logout_with_the_refresh_token_alone(mem: IdentityStack) -> None:
    mp = await mem.phone().register()
    tokens = await mp.login()
    status, _ = await mem.request("POST", "/api/logout", {"refresh_token": tokens["refresh_token"]})
    assert status == 204
    assert (await mp.refresh())[0] == 401


async def test_logout_everywhere_must_be_a_json_boolean(mem: IdentityStack) -> None:
    mp = await mem.phone().register()
    tokens = await mp.login()
    body = {"refresh_token": tokens["refresh_token"], "everywhere": 1}  # found by make fuzz: was a 204
    status, answer = await mem.request("POST", "/api/logout", body)
    assert status == 400 and answer["error"]["code"] == "invalid_request"
    assert (await mp.refresh())[0] == 200  # nothing was logged out


@pytest.mark.parametrize(
    ("body", "token", "status"),
    [(None, None, 401), ({}, None, 401), ({"refresh_token": "short"}, None, 400), (None, "x.y.z", 401)],
)
async def test_logout_needs_a_credential(
    mem: IdentityStack, body: Any, token: str | None, status: int
) -> None:
    got, answer = await mem.request("POST", "/api/logout", body, token=token)
    assert got == status and answer["error"]["code"] in ("unauthorized", "invalid_request")


@pytest.mark.parametrize("body", [None, {}, {"refresh_token": "A" * 43}, {"refresh_token": "bad token!"}])
async def test_refresh_with_garbage_is_a_4xx(mem: IdentityStack, body: Any) -> None:
    status, answer = await mem.request("POST", "/api/token/refresh", body)
    assert status in (400, 401) and answer["error"]["code"] in ("invalid_request", "refresh_invalid")


# --- phone binding --------------------------------------------------------------------------------


async def test_phone_binding_rules(stack: IdentityStack) -> None:
    mp = await stack.phone().register(phone="13800138000")
    tokens = await mp.login()

    status, bound = await mp.bind_phone()
    assert status == 200, bound
    assert bound["user"]["phone"] == "+8613800138000"
    assert (await claims_of(stack, bound["access_token"]))["phone"] == "+8613800138000"
    assert (await mp.me(bound["access_token"]))[1]["phone"] == "+8613800138000"
    bound_at = (await user_doc(stack, tokens["user"]["id"]))["phone_bound_at"]

    status, again = await mp.bind_phone()  # the same number again: no change
    assert status == 200 and again["user"] == bound["user"]
    assert (await user_doc(stack, tokens["user"]["id"]))["phone_bound_at"] == bound_at

    other = await stack.phone().register(phone="13800138000")  # another WeChat user, same number
    await other.login()
    status, body = await other.bind_phone()
    assert (status, body["error"]["code"]) == (409, "phone_taken")
    assert "phone" not in await user_doc(stack, other.tokens["user"]["id"])
    assert (await stack.counters())["wxa/business/getuserphonenumber"] == 3


async def test_a_refresh_after_binding_carries_the_phone_claim(mem: IdentityStack) -> None:
    mp = await mem.phone().register(phone="13900139000")
    await mp.login()
    assert (await mp.bind_phone())[0] == 200
    status, refreshed = await mp.refresh()
    assert status == 200 and refreshed["user"]["phone"] == "+8613900139000"
    assert (await claims_of(mem, refreshed["access_token"]))["phone"] == "+8613900139000"


async def test_a_new_number_verified_by_wechat_replaces_the_old_one(mem: IdentityStack) -> None:
    mp = await mem.phone().register(phone="13800138001")
    await mp.login()
    assert (await mp.bind_phone())[0] == 200
    mem.sim.state.users[mp.openid].phone = "13800138002"  # the user changed their number in WeChat
    status, body = await mp.bind_phone()
    assert status == 200 and body["user"]["phone"] == "+8613800138002"
    freed = await mem.phone().register(phone="13800138001")  # the old number is free again
    await freed.login()
    assert (await freed.bind_phone())[0] == 200


async def test_phone_code_errors(mem: IdentityStack) -> None:
    mp = await mem.phone().register(phone="13800138003")
    await mp.login()
    code = await mp.phone.phone_number_code()
    assert (await mp.bind_phone(code))[0] == 200
    status, body = await mp.bind_phone(code)  # a phone code works once
    assert (status, body["error"]["code"]) == (400, "phone_code_invalid")

    await mem.control.fault("wxa/business/getuserphonenumber", errcode=48001, count=1)
    status, body = await mp.bind_phone()
    assert (status, body["error"]["code"]) == (403, "phone_unavailable")
    assert "verified non-personal" in body["error"]["message"]

    await mem.control.fault("wxa/business/getuserphonenumber", errcode=45011, count=1)
    status, body = await mp.bind_phone()
    assert (status, body["error"]["code"]) == (503, "wechat_unavailable")


async def test_phone_binding_needs_a_valid_bearer_token(mem: IdentityStack) -> None:
    for token in (None, "garbage", "a.b.c"):
        status, body = await mem.request("POST", "/api/mp/phone", {"code": "c" * 64}, token=token)
        assert (status, body["error"]["code"]) == (401, "unauthorized")


# --- decryption and unionid ------------------------------------------------------------------------


async def test_decryption_returns_the_data_and_links_its_unionid(stack: IdentityStack) -> None:
    await stack.control.configure(open_platform_bound=False)  # jscode2session gives no unionid
    mp = await stack.phone().register(unionid=True)
    tokens = await mp.login()
    assert "unionid" not in tokens["user"]
    unionid = stack.sim.state.users[mp.openid].unionid

    payload = await mp.phone.encrypted({"openId": mp.openid, "nickName": "小明", "unionId": unionid})
    status, body = await mp.decrypt(payload)
    assert status == 200, body
    assert body["data"]["nickName"] == "小明" and body["data"]["watermark"]["appid"] == OFFICIAL_APPID
    assert body["user"]["unionid"] == unionid
    _, refreshed = await mp.refresh()
    assert (await claims_of(stack, refreshed["access_token"]))["unionid"] == unionid


async def test_decrypting_the_official_vector_with_its_session_key(mem: IdentityStack) -> None:
    mp = await mem.phone().register()
    tokens = await mp.login()
    sealer = Sealer.from_text(mem.settings.data_key.get_secret_value())
    sealed = sealer.seal(VECTOR["session_key"], purpose=session_key_purpose(mp.openid))
    await mem.db.users.update_one({"_id": tokens["user"]["id"]}, {"$set": {"session_key": sealed}})

    status, body = await mp.decrypt({"encrypted_data": VECTOR["encryptedData"], "iv": VECTOR["iv"]})
    assert status == 200, body
    assert body["data"] == json.loads(VECTOR["expected_plaintext"])
    assert body["user"]["unionid"] == "ocMvos6NjeKLIBqg5Mr9QjxrP1FA"


async def test_a_session_key_an_older_version_kept_in_mp_sessions_still_decrypts_when_it_is_newer(
    mem: IdentityStack,
) -> None:
    # A rolling upgrade: replicas of the previous release keep the key in mp_sessions, this one on the
    # user. Whichever was kept last is the phone's current key.
    mp = await mem.phone().register()
    tokens = await mp.login()
    user_id = tokens["user"]["id"]
    sealer = Sealer.from_text(mem.settings.data_key.get_secret_value())
    vector_key = sealer.seal(VECTOR["session_key"], purpose=session_key_purpose(mp.openid))
    kept_at = (await mem.db.users.find_one({"_id": user_id}))["session_key_at"]
    vector = {"encrypted_data": VECTOR["encryptedData"], "iv": VECTOR["iv"]}

    older = {"session_key": vector_key, "updated_at": kept_at - 60}
    await mem.db.mp_sessions.insert_one({"_id": user_id, **older})
    status, body = await mp.decrypt(vector)
    assert (status, body["error"]["code"]) == (400, "decrypt_failed")  # the older key lost: not the phone's

    await mem.db.mp_sessions.update_one({"_id": user_id}, {"$set": {"updated_at": kept_at + 60}})
    status, body = await mp.decrypt(vector)
    assert status == 200, body
    assert body["data"] == json.loads(VECTOR["expected_plaintext"])

    # A user who logged in only before the upgrade: the key is in mp_sessions alone.
    await mem.db.users.update_one({"_id": user_id}, {"$unset": {"session_key": "", "session_key_at": ""}})
    status, body = await mp.decrypt(vector)
    assert status == 200, body
    await mem.db.mp_sessions.delete_one({"_id": user_id})
    status, body = await mp.decrypt(vector)
    assert (status, body["error"]["code"]) == (409, "no_session_key"), body


async def test_data_watermarked_for_another_appid_is_refused(mem: IdentityStack) -> None:
    mp = await mem.phone().register()
    await mp.login()
    payload = await mem.control.encrypted_data(mp.openid, {"nickName": "x"}, appid="wx0000000000000000")
    status, body = await mp.decrypt(payload)
    assert (status, body["error"]["code"]) == (400, "watermark_invalid")


async def test_undecryptable_data_is_a_400(mem: IdentityStack) -> None:
    mp = await mem.phone().register()
    await mp.login()
    payload = await mp.phone.encrypted({"nickName": "x"})
    tampered = {"encrypted_data": payload["encrypted_data"], "iv": "AAAAAAAAAAAAAAAAAAAAAA=="}
    status, body = await mp.decrypt(tampered)
    assert (status, body["error"]["code"]) == (400, "decrypt_failed")
    status, body = await mp.decrypt({"encrypted_data": "not base64!", "iv": payload["iv"]})
    assert (status, body["error"]["code"]) == (400, "invalid_request")


async def test_data_made_with_a_newer_session_key_needs_a_new_login(mem: IdentityStack) -> None:
    mp = await mem.phone().register()
    await mp.login()
    await mem.control.advance(301)  # old enough that the next wx.login rotates the session_key
    await mp.phone.wx_login()  # the page called wx.login() but did not log in again
    payload = await mp.phone.encrypted({"nickName": "x"})
    status, body = await mp.decrypt(payload)
    assert (status, body["error"]["code"]) == (400, "decrypt_failed")
    await mp.login()
    assert (await mp.decrypt(payload))[0] == 200


async def test_a_unionid_already_linked_to_another_user_is_refused(mem: IdentityStack) -> None:
    first = await mem.phone().register(unionid=True)
    first_tokens = await first.login()
    taken = first_tokens["user"]["unionid"]
    await mem.control.configure(open_platform_bound=False)
    second = await mem.phone().register()
    second_tokens = await second.login()

    payload = await second.phone.encrypted({"unionId": taken})
    status, body = await second.decrypt(payload)
    assert (status, body["error"]["code"]) == (409, "unionid_taken")
    assert "unionid" not in await user_doc(mem, second_tokens["user"]["id"])


async def test_login_links_a_unionid_that_appears_later(mem: IdentityStack) -> None:
    await mem.control.configure(open_platform_bound=False)
    mp = await mem.phone().register(unionid=True)
    assert "unionid" not in (await mp.login())["user"]
    await mem.control.configure(open_platform_bound=True)  # bound to an Open Platform account later
    tokens = await mp.login()
    assert tokens["user"]["unionid"] == mem.sim.state.users[mp.openid].unionid


async def test_login_is_refused_when_the_unionid_belongs_to_another_user(mem: IdentityStack) -> None:
    mp = await mem.phone().register(unionid=True)
    unionid = mem.sim.state.users[mp.openid].unionid
    # The same person's account from an earlier mini-program (another openid, the same unionid).
    await mem.db.users.insert_one(
        {"_id": "u_earlier", "openid": "o_earlier", "unionid": unionid, "created_at": 1.0, "login_count": 3}
    )
    status, body = await mem.request("POST", "/api/mp/login", {"code": await mp.phone.wx_login()})
    assert (status, body["error"]["code"]) == (409, "unionid_taken")
    assert await mem.db.users.count_documents({"openid": mp.openid}) == 0


async def test_decrypt_needs_a_session_and_valid_fields(mem: IdentityStack) -> None:
    mp = await mem.phone().register()
    await mp.login()
    for body in (None, {}, {"encrypted_data": "AAAA"}, {"encrypted_data": "AAAA", "iv": "!!"}):
        status, answer = await mp.decrypt(body)  # type: ignore[arg-type]
        assert (status, answer["error"]["code"]) == (400, "invalid_request")
    status, answer = await mem.request("POST", "/api/mp/decrypt", {"encrypted_data": "AAAA", "iv": "AAAA"})
    assert (status, answer["error"]["code"]) == (401, "unauthorized")


async def test_session_keys_codes_and_refresh_tokens_are_not_stored_in_clear(mem: IdentityStack) -> None:
    mp = await mem.phone().register(unionid=True)
    code = await mp.phone.wx_login()
    tokens = await mp.login(code)
    session_key = mem.sim.state.users[mp.openid].session_key
    assert session_key
    dump = ""
    for name in await mem.db.list_collection_names():
        dump += json.dumps([doc async for doc in mem.db[name].find({})], default=str)
    assert mem.sim.state.users[mp.openid].openid in dump  # the dump is real
    for secret in (session_key, code, tokens["refresh_token"], tokens["access_token"]):
        assert secret not in dump
    sealed = (await mem.db.users.find_one({"_id": tokens["user"]["id"]}))["session_key"]
    assert await mem.db.mp_sessions.count_documents({}) == 0  # kept on the user, nowhere else
    sealer = Sealer.from_text(mem.settings.data_key.get_secret_value())
    assert sealer.open(sealed, purpose=session_key_purpose(mp.openid)) == session_key
