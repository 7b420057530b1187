"""Any-code mode over real HTTP: codes the simulator never issued (WeChat DevTools') as virtual users.

Off by default (an unknown code is 40029, as on WeChat); "sticky" maps every unknown code to one
developer user; "new" makes a new user per code. A code is still single use (40163).
"""

from __future__ import annotations

import re
import secrets
import string

from sim.wechat.testing import Answer, RunningSim, running_sim

APPID = "wx5f3a9c2e81d04b76"
SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
OPENID = re.compile(r"^o[A-Za-z0-9_-]{27}$")
MAINLAND_MOBILE = re.compile(r"^1[3-9][0-9]{9}$")


def devtools_code() -> str:
    """What wx.login() gives in WeChat DevTools: 32 alphanumerics WeChat issued, unknown here."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


async def exchange(sim: RunningSim, js_code: str) -> Answer:
    params = {"appid": APPID, "secret": SECRET, "js_code": js_code, "grant_type": "authorization_code"}
    return await sim.wechat("GET", "sns/jscode2session", params=params)


async def phone_number(sim: RunningSim, code: str, openid: str | None = None) -> Answer:
    body = {"code": code, **({"openid": openid} if openid else {})}
    token = await sim.access_token()
    return await sim.wechat(
        "POST", "wxa/business/getuserphonenumber", params={"access_token": token}, json_body=body
    )


async def test_off_by_default_an_unknown_code_is_40029_as_on_wechat() -> None:
    async with running_sim(appid=APPID, secret=SECRET) as sim:
        assert (await sim.control.configure())["any_code"] == "off"
        assert (await exchange(sim, devtools_code())).errcode == 40029
        assert (await phone_number(sim, secrets.token_hex(32))).errcode == 40029
        assert not sim.state.users  # nobody was made up


async def test_sticky_an_unknown_code_is_the_developer_user_and_is_single_use() -> None:
    async with running_sim(appid=APPID, secret=SECRET, any_code="sticky") as sim:
        code = devtools_code()
        first = await exchange(sim, code)
        assert first.content_type == "text/plain" and first.errcode is None
        body = first.json
        assert OPENID.match(body["openid"])
        assert body["openid"] == (await sim.control.dev_user())["openid"]
        assert body["unionid"].startswith("o") and len(body["session_key"]) == 24
        again = await exchange(sim, code)
        assert again.errcode == 40163 and again.json["errmsg"].startswith("code been used")


async def test_sticky_two_devtools_logins_are_the_same_user_until_a_new_one_is_asked_for() -> None:
    async with running_sim(appid=APPID, secret=SECRET, any_code="sticky") as sim:
        one, two = (await exchange(sim, devtools_code())).json, (await exchange(sim, devtools_code())).json
        assert one["openid"] == two["openid"] and one["unionid"] == two["unionid"]

        fresh = await sim.control.new_dev_user()
        assert fresh["index"] == 2 and fresh["openid"] != one["openid"]
        assert (await exchange(sim, devtools_code())).json["openid"] == fresh["openid"]

        back = await sim.control.new_dev_user(index=1)
        assert back["openid"] == one["openid"]
        assert (await exchange(sim, devtools_code())).json["openid"] == one["openid"]

        chosen = await sim.control.create_user(phone="13900139000")
        assert (await sim.control.new_dev_user(openid=chosen["openid"]))["index"] is None
        assert (await exchange(sim, devtools_code())).json["openid"] == chosen["openid"]

    # Remembered across a restart: developer user 1 of an appid derives from the appid.
    async with running_sim(appid=APPID, secret=SECRET, any_code="sticky") as restarted:
        assert (await exchange(restarted, devtools_code())).json["openid"] == one["openid"]


async def test_new_mode_makes_a_new_user_per_unknown_code() -> None:
    async with running_sim(appid=APPID, secret=SECRET, any_code="new") as sim:
        one, two = (await exchange(sim, devtools_code())).json, (await exchange(sim, devtools_code())).json
        assert one["openid"] != two["openid"]
        assert (await sim.control.user(one["openid"]))["session_key"] == one["session_key"]


async def test_sticky_an_unknown_phone_code_gives_the_users_virtual_phone_once() -> None:
    async with running_sim(appid=APPID, secret=SECRET, any_code="sticky") as sim:
        openid = (await exchange(sim, devtools_code())).json["openid"]
        code = secrets.token_hex(32)
        answer = await phone_number(sim, code, openid)
        assert answer.errcode == 0
        info = answer.json["phone_info"]
        assert MAINLAND_MOBILE.match(info["purePhoneNumber"]) and info["countryCode"] == "86"
        assert info["purePhoneNumber"] == (await sim.control.user(openid))["phone"]
        assert info["watermark"]["appid"] == APPID
        assert (await phone_number(sim, code, openid)).errcode == 40029  # spent, like any phone code

        # A user made without a phone gets a virtual one, the same every time.
        bare = await sim.control.create_user()
        first = (await phone_number(sim, secrets.token_hex(32), bare["openid"])).json["phone_info"]
        second = (await phone_number(sim, secrets.token_hex(32), bare["openid"])).json["phone_info"]
        assert first["purePhoneNumber"] == second["purePhoneNumber"] != info["purePhoneNumber"]


async def test_the_mode_is_switched_by_config_and_reset_restores_it() -> None:
    async with running_sim(appid=APPID, secret=SECRET) as sim:
        assert (await sim.control.configure(any_code="sticky"))["any_code"] == "sticky"
        code = devtools_code()
        assert (await exchange(sim, code)).errcode is None
        await sim.control.reset()
        assert (await sim.control.configure())["any_code"] == "off"
        assert (await exchange(sim, devtools_code())).errcode == 40029


async def test_bad_any_code_settings_are_refused() -> None:
    async with running_sim(appid=APPID, secret=SECRET, any_code="sticky") as sim:
        for call, body in [
            ("/sim/config", {"any_code": "yes"}),
            ("/sim/dev-user", {"index": 0}),
            ("/sim/dev-user", {"index": 1, "openid": "o" * 28}),
            ("/sim/dev-user", {"name": "me"}),
        ]:
            async with sim.http.post(f"{sim.url}{call}", json=body) as resp:
                assert resp.status == 400, (call, body)
        async with sim.http.post(f"{sim.url}/sim/dev-user", json={"openid": "o" * 28}) as resp:
            assert resp.status == 404


async def test_an_expired_code_the_simulator_issued_is_not_taken_as_a_new_one() -> None:
    async with running_sim(appid=APPID, secret=SECRET, any_code="sticky") as sim:
        user = await sim.control.create_user()
        code = await sim.control.login_code(user["openid"])
        await sim.control.advance(301)
        assert (await exchange(sim, code)).errcode == 40029
