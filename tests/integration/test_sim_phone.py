"""The simulator's ``wxa/business/getuserphonenumber`` and ``wxa/checksession`` over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.wxcrypto import session_signature as signature
from sim.wechat.testing import Answer, RunningSim, running_sim

APPID = "wx5f3a9c2e81d04b76"
SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
RID = re.compile(r" rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$")


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    async with running_sim(appid=APPID, secret=SECRET) as running:
        yield running


@pytest.fixture
async def token(sim: RunningSim) -> str:
    return await sim.access_token()


async def phone(sim: RunningSim, token: str, body: Any = None, *, data: bytes | None = None) -> Answer:
    return await sim.wechat(
        "POST", "wxa/business/getuserphonenumber", params={"access_token": token}, json_body=body, data=data
    )


async def user_with_phone(sim: RunningSim, number: str = "13800138000", **traits: Any) -> tuple[str, str]:
    user = await sim.control.create_user(phone=number, **traits)
    return user["openid"], await sim.control.phone_code(user["openid"])


# --- getuserphonenumber ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "errcode", "wording"),
    [
        ("empty-body", 44002, "empty post data"),
        ("form-body", 47001, "data format error"),
        ("no-code", 40029, "invalid code"),
        ("unknown-code", 40029, "invalid code"),
        ("login-code-instead", 40029, "invalid code"),
        ("other-openid", 40003, "invalid openid"),
    ],
)
async def test_getuserphonenumber_errcodes(
    sim: RunningSim, token: str, case: str, errcode: int, wording: str
) -> None:
    openid, code = await user_with_phone(sim)
    answer = {
        "empty-body": lambda: phone(sim, token, data=b""),
        "form-body": lambda: phone(sim, token, data=f"code={code}".encode()),
        "no-code": lambda: phone(sim, token, {}),
        "unknown-code": lambda: phone(sim, token, {"code": "e3" * 32}),
        "login-code-instead": lambda: phone(sim, token, {"code": "0716AVll20uHk94SLDml27etM946AVlq"}),
        "other-openid": lambda: phone(sim, token, {"code": code, "openid": "o" + "x" * 27}),
    }[case]
    refused = await answer()
    assert refused.json["errcode"] == errcode
    assert refused.json["errmsg"].startswith(wording)
    assert RID.search(refused.json["errmsg"])
    assert "phone_info" in (await phone(sim, token, {"code": code, "openid": openid})).json  # not spent


@pytest.mark.parametrize(
    ("method", "params", "errcode"),
    [("GET", None, 43002), ("POST", {}, 41001), ("POST", {"access_token": "bad"}, 40014)],
    ids=["get-43002", "no-token-41001", "malformed-token-40014"],
)
async def test_getuserphonenumber_method_and_token_errcodes(
    sim: RunningSim, token: str, method: str, params: dict[str, str] | None, errcode: int
) -> None:
    _, code = await user_with_phone(sim)
    answer = await sim.wechat(
        method,
        "wxa/business/getuserphonenumber",
        params={"access_token": token} if params is None else params,
        json_body={"code": code},
    )
    assert answer.errcode == errcode


async def test_phone_code_has_the_real_shape_and_the_answer_the_documented_one(
    sim: RunningSim, token: str
) -> None:
    _, code = await user_with_phone(sim)
    assert re.fullmatch(r"[0-9a-f]{64}", code)
    granted_at = int(sim.state.now())
    answer = await phone(sim, token, {"code": code})
    assert answer.content_type == "application/json; encoding=utf-8"
    body = answer.json
    assert (body["errcode"], body["errmsg"]) == (0, "ok")
    info = body["phone_info"]
    assert info["phoneNumber"] == info["purePhoneNumber"] == "13800138000"
    assert info["countryCode"] == "86"
    assert info["watermark"]["appid"] == APPID
    assert abs(info["watermark"]["timestamp"] - granted_at) <= 1


async def test_country_code_can_be_sent_as_a_number_and_foreign_numbers_carry_it(
    sim: RunningSim, token: str
) -> None:
    await sim.control.configure(country_code_as="number")
    _, code = await user_with_phone(sim, "4155550100", country_code="1")
    info = (await phone(sim, token, {"code": code})).json["phone_info"]
    assert info["countryCode"] == 1
    assert (info["phoneNumber"], info["purePhoneNumber"]) == ("+14155550100", "4155550100")


async def test_a_phone_code_works_once_and_lives_five_minutes(sim: RunningSim, token: str) -> None:
    openid, code = await user_with_phone(sim)
    late = await sim.control.phone_code(openid)
    assert "phone_info" in (await phone(sim, token, {"code": code})).json
    assert (await phone(sim, token, {"code": code})).errcode == 40029
    await sim.control.advance(300)
    assert (await phone(sim, token, {"code": late})).errcode == 40029


async def test_a_phone_rate_limit_can_be_switched_on_and_gives_45011(sim: RunningSim, token: str) -> None:
    assert (await sim.control.configure())["limits"]["phone_per_minute"] is None  # no published limit
    await sim.control.configure(limits={"phone_per_minute": 1})
    await sim.control.advance(60 - sim.state.now() % 60 + 0.01)
    openid, first = await user_with_phone(sim)
    second = await sim.control.phone_code(openid)
    assert "phone_info" in (await phone(sim, token, {"code": first})).json
    assert (await phone(sim, token, {"code": second})).errcode == 45011


# --- checksession ---------------------------------------------------------------------------------


async def logged_in(sim: RunningSim) -> tuple[str, str]:
    user = await sim.control.create_user()
    await sim.control.login_code(user["openid"])  # wx.login gives the user a session_key
    return user["openid"], (await sim.control.user(user["openid"]))["session_key"]


async def check(sim: RunningSim, token: str, method: str = "GET", **params: str | None) -> Answer:
    query = {"access_token": token, "sig_method": "hmac_sha256", **params}
    return await sim.wechat(
        method, "wxa/checksession", params={k: v for k, v in query.items() if v is not None}
    )


async def test_checksession_accepts_the_current_session_key(sim: RunningSim, token: str) -> None:
    openid, key = await logged_in(sim)
    answer = await check(sim, token, openid=openid, signature=signature(key))
    assert answer.json == {"errcode": 0, "errmsg": "ok"}


@pytest.mark.parametrize(
    ("case", "errcode", "wording"),
    [
        ("post", 43001, "require GET method"),
        ("no-token", 41001, "access_token missing"),
        ("sig-method", 87008, "invalid sig_method"),
        ("unknown-openid", 40003, "invalid openid"),
        ("no-session-key", 87007, "session_key is not existd or expired"),
        ("bad-signature", 87009, "invalid signature"),
        ("decoded-key-signature", 87009, "invalid signature"),
    ],
)
async def test_checksession_errcodes(
    sim: RunningSim, token: str, case: str, errcode: int, wording: str
) -> None:
    openid, key = await logged_in(sim)
    never_logged_in = (await sim.control.create_user())["openid"]
    good = signature(key)
    decoded = hmac.new(base64.b64decode(key), b"", hashlib.sha256).hexdigest()
    answer = await {
        "post": lambda: check(sim, token, "POST", openid=openid, signature=good),
        "no-token": lambda: check(sim, "", openid=openid, signature=good),
        "sig-method": lambda: check(sim, token, openid=openid, signature=good, sig_method="md5"),
        "unknown-openid": lambda: check(sim, token, openid="o" + "x" * 27, signature=good),
        "no-session-key": lambda: check(sim, token, openid=never_logged_in, signature=good),
        "bad-signature": lambda: check(sim, token, openid=openid, signature="0" * 64),
        "decoded-key-signature": lambda: check(sim, token, openid=openid, signature=decoded),
    }[case]()
    assert answer.json["errcode"] == errcode
    assert answer.json["errmsg"].startswith(wording)


async def test_checksession_refuses_a_session_key_replaced_by_a_later_wx_login(
    sim: RunningSim, token: str
) -> None:
    openid, old_key = await logged_in(sim)
    await sim.control.advance(300)
    await sim.control.login_code(openid)
    new_key = (await sim.control.user(openid))["session_key"]
    assert new_key != old_key
    assert (await check(sim, token, openid=openid, signature=signature(old_key))).errcode == 87009
    assert (await check(sim, token, openid=openid, signature=signature(new_key))).errcode == 0
