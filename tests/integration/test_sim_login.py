"""The simulator's ``sns/jscode2session`` over real HTTP: single use, 5-minute life, risk, rate, unionid."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator

import pytest

from sim.wechat.testing import Answer, RunningSim, running_sim

APPID = "wx5f3a9c2e81d04b76"
SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
OPENID = re.compile(r"^o[A-Za-z0-9_-]{27}$")
LOGIN_CODE = re.compile(r"^[A-Za-z0-9]{32}$")


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    async with running_sim(appid=APPID, secret=SECRET) as running:
        yield running


async def exchange(sim: RunningSim, js_code: str | None, **overrides: str | None) -> Answer:
    query = {
        "appid": APPID,
        "secret": SECRET,
        "js_code": js_code,
        "grant_type": "authorization_code",
        **overrides,
    }
    params = {k: v for k, v in query.items() if v is not None}
    return await sim.wechat("GET", "sns/jscode2session", params=params)


async def new_code(sim: RunningSim, **traits: bool) -> tuple[str, str]:
    user = await sim.control.create_user(**traits)
    return user["openid"], await sim.control.login_code(user["openid"])


@pytest.mark.parametrize(
    ("method", "overrides", "errcode", "wording"),
    [
        ("POST", {}, 43001, "require GET method"),
        ("GET", {"appid": None}, 41002, "appid missing"),
        ("GET", {"appid": "wx0000000000000000"}, 40013, "invalid appid"),
        ("GET", {"secret": None}, 41004, "appsecret missing"),
        ("GET", {"secret": "f" * 32}, 40125, "invalid appsecret"),
        ("GET", {"grant_type": "client_credential"}, 40002, "invalid grant_type"),
        ("GET", {"js_code": None}, 41008, "missing code"),
        ("GET", {"js_code": "0716AVll20uHk94SLDml27etM946AVlq"}, 40029, "invalid code"),
    ],
    ids=["post-43001", "no-appid-41002", "wrong-appid-40013", "no-secret-41004", "wrong-secret-40125",
         "grant-40002", "no-code-41008", "unknown-code-40029"],
)  # fmt: skip
async def test_jscode2session_errcodes(
    sim: RunningSim, method: str, overrides: dict[str, str | None], errcode: int, wording: str
) -> None:
    _, js_code = await new_code(sim)
    query = {"appid": APPID, "secret": SECRET, "js_code": js_code, "grant_type": "authorization_code"}
    query.update(overrides)  # type: ignore[arg-type]
    answer = await sim.wechat(
        method, "sns/jscode2session", params={k: v for k, v in query.items() if v is not None}
    )
    assert answer.status == 200
    assert answer.json["errcode"] == errcode
    assert re.match(rf"^{wording},? rid: [0-9a-f]{{8}}-[0-9a-f]{{8}}-[0-9a-f]{{8}}$", answer.json["errmsg"])
    if errcode != 40029:  # a refusal before the lookup leaves the code usable
        assert "openid" in (await exchange(sim, js_code)).json


async def test_success_has_real_shapes_no_errcode_and_arrives_as_text_plain(sim: RunningSim) -> None:
    openid, js_code = await new_code(sim)
    assert LOGIN_CODE.match(js_code)
    answer = await exchange(sim, js_code)
    assert answer.content_type == "text/plain"
    body = answer.json
    assert set(body) == {"openid", "session_key"}
    assert body["openid"] == openid and OPENID.match(openid)
    assert len(body["session_key"]) == 24 and len(base64.b64decode(body["session_key"])) == 16


async def test_a_code_works_once_then_gets_40163(sim: RunningSim) -> None:
    _, js_code = await new_code(sim)
    assert "openid" in (await exchange(sim, js_code)).json
    reused = await exchange(sim, js_code)
    assert reused.json["errcode"] == 40163
    assert reused.json["errmsg"].startswith("code been used")


async def test_a_code_lives_five_minutes_on_the_simulator_clock(sim: RunningSim) -> None:
    openid, early = await new_code(sim)
    late = await sim.control.login_code(openid)
    await sim.control.advance(299)
    assert "openid" in (await exchange(sim, early)).json
    await sim.control.advance(1)
    assert (await exchange(sim, late)).json["errcode"] == 40029


async def test_a_used_code_past_its_life_is_unknown_40029(sim: RunningSim) -> None:
    _, js_code = await new_code(sim)
    await exchange(sim, js_code)
    await sim.control.advance(300)
    assert (await exchange(sim, js_code)).json["errcode"] == 40029


async def test_a_blocked_user_gets_40226(sim: RunningSim) -> None:
    _, js_code = await new_code(sim, blocked=True)
    answer = await exchange(sim, js_code)
    assert answer.json["errcode"] == 40226
    assert answer.json["errmsg"].startswith("code blocked")


async def test_a_user_blocked_after_wx_login_gets_40226_and_unblocked_logs_in(sim: RunningSim) -> None:
    openid, js_code = await new_code(sim)
    await sim.control.call("PATCH", f"/sim/users/{openid}", {"blocked": True})
    assert (await exchange(sim, js_code)).json["errcode"] == 40226
    await sim.control.call("PATCH", f"/sim/users/{openid}", {"blocked": False})
    assert (await exchange(sim, await sim.control.login_code(openid))).json["openid"] == openid


async def test_more_than_the_per_user_minute_rate_gets_45011(sim: RunningSim) -> None:
    assert (await sim.control.configure())["limits"]["code2session_per_user_minute"] == 100
    await sim.control.configure(limits={"code2session_per_user_minute": 2})
    await sim.control.advance(60 - sim.state.now() % 60 + 0.01)
    openid, _ = await new_code(sim)
    codes = [await sim.control.login_code(openid) for _ in range(3)]
    assert "openid" in (await exchange(sim, codes[0])).json
    assert "openid" in (await exchange(sim, codes[1])).json
    limited = await exchange(sim, codes[2])
    assert limited.json["errcode"] == 45011
    assert limited.json["errmsg"].startswith("api minute-quota reach limit, must slower, retry next minute")
    _, other = await new_code(sim)
    assert "openid" in (await exchange(sim, other)).json  # the rate is per user
    await sim.control.advance(60)
    assert "openid" in (await exchange(sim, codes[2])).json  # the limited call did not spend the code


async def test_unionid_only_for_users_of_an_app_bound_to_an_open_platform(sim: RunningSim) -> None:
    _, with_unionid = await new_code(sim, unionid=True)
    _, without = await new_code(sim)
    body = (await exchange(sim, with_unionid)).json
    assert OPENID.match(body["unionid"])
    assert "unionid" not in (await exchange(sim, without)).json
    await sim.control.configure(open_platform_bound=False)
    _, unbound = await new_code(sim, unionid=True)
    assert "unionid" not in (await exchange(sim, unbound)).json


async def test_wx_login_rotates_the_session_key_only_after_its_minimum_age(sim: RunningSim) -> None:
    openid, first = await new_code(sim)
    second = await sim.control.login_code(openid)
    key1 = (await exchange(sim, first)).json["session_key"]
    assert (await exchange(sim, second)).json["session_key"] == key1
    await sim.control.advance(300)
    third = await sim.control.login_code(openid)
    key3 = (await exchange(sim, third)).json["session_key"]
    assert key3 != key1
    assert (await sim.control.user(openid))["session_key"] == key3
