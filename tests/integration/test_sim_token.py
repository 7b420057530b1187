"""The simulator's access-token endpoints over real HTTP: ``cgi-bin/token`` and ``cgi-bin/stable_token``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sim.wechat.testing import Answer, RunningSim, running_sim

APPID = "wx5f3a9c2e81d04b76"
SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
RID = re.compile(r",? rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$")
ACCESS_TOKEN = re.compile(r"^[0-9]{2}_[A-Za-z0-9_-]{77,155}$")


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    async with running_sim(appid=APPID, secret=SECRET) as running:
        yield running


def assert_error(answer: Answer, errcode: int, wording: str) -> None:
    """HTTP 200, JSON, the errcode, the real wording followed by a rid."""
    assert answer.status == 200
    assert answer.json["errcode"] == errcode, answer.json
    errmsg = answer.json["errmsg"]
    assert errmsg.startswith(wording), errmsg
    assert RID.search(errmsg), errmsg


async def basic_token(sim: RunningSim, **params: str | None) -> Answer:
    query = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET, **params}
    return await sim.wechat("GET", "cgi-bin/token", params={k: v for k, v in query.items() if v is not None})


async def stable_token(sim: RunningSim, **body: Any) -> Answer:
    payload = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET, **body}
    return await sim.wechat(
        "POST", "cgi-bin/stable_token", json_body={k: v for k, v in payload.items() if v is not None}
    )


async def token_works(sim: RunningSim, token: str) -> int | None:
    """None when ``token`` renders a code, else the errcode it gets."""
    answer = await sim.wechat(
        "POST", "wxa/getwxacodeunlimit", params={"access_token": token}, json_body={"scene": "t"}
    )
    return answer.errcode


async def to_next_minute(sim: RunningSim) -> None:
    """Just past the start of a calendar minute, so a burst of calls stays inside one window."""
    await sim.control.advance(60 - sim.state.now() % 60 + 0.01)


async def to_next_beijing_midnight(sim: RunningSim) -> None:
    now = sim.state.now()
    await sim.control.advance(86400 - ((now + 8 * 3600) % 86400) + 1)


# --- cgi-bin/token --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "errcode", "wording"),
    [
        ("POST", {}, 43001, "require GET method"),
        ("GET", {"grant_type": None}, 40002, "invalid grant_type"),
        ("GET", {"grant_type": "authorization_code"}, 40002, "invalid grant_type"),
        ("GET", {"appid": None}, 41002, "appid missing"),
        ("GET", {"appid": "wx0000000000000000"}, 40013, "invalid appid"),
        ("GET", {"secret": None}, 41004, "appsecret missing"),
        ("GET", {"secret": "f" * 32}, 40125, "invalid appsecret"),
    ],
    ids=["post-43001", "no-grant-40002", "wrong-grant-40002", "no-appid-41002", "wrong-appid-40013",
         "no-secret-41004", "wrong-secret-40125"],
)  # fmt: skip
async def test_cgi_bin_token_errcodes(
    sim: RunningSim, method: str, params: dict[str, str | None], errcode: int, wording: str
) -> None:
    query = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET, **params}
    answer = await sim.wechat(
        method, "cgi-bin/token", params={k: v for k, v in query.items() if v is not None}
    )
    assert_error(answer, errcode, wording)
    assert not sim.state.tokens  # a refused call mints nothing


async def test_cgi_bin_token_answers_a_real_shaped_7200s_token_without_errcode(sim: RunningSim) -> None:
    answer = await basic_token(sim)
    assert answer.content_type.startswith("application/json")
    body = answer.json
    assert set(body) == {"access_token", "expires_in"}
    assert ACCESS_TOKEN.match(body["access_token"])
    assert body["expires_in"] == 7200


async def test_new_cgi_bin_token_leaves_the_previous_one_working_for_five_minutes(sim: RunningSim) -> None:
    first = (await basic_token(sim)).json["access_token"]
    second = (await basic_token(sim)).json["access_token"]
    assert first != second
    await sim.control.advance(299)
    assert await token_works(sim, first) is None
    await sim.control.advance(2)
    assert await token_works(sim, first) == 40001
    assert await token_works(sim, second) is None


async def test_cgi_bin_token_expires_after_7200s_with_42001(sim: RunningSim) -> None:
    token = (await basic_token(sim)).json["access_token"]
    await sim.control.advance(7199)
    assert await token_works(sim, token) is None
    await sim.control.advance(1)
    assert await token_works(sim, token) == 42001


async def test_cgi_bin_token_daily_quota_gives_45009_until_beijing_midnight(sim: RunningSim) -> None:
    assert (await sim.control.configure())["limits"]["token_per_day"] == 2000  # the real default
    await sim.control.configure(limits={"token_per_day": 2})
    await to_next_beijing_midnight(sim)
    assert "access_token" in (await basic_token(sim)).json
    assert "access_token" in (await basic_token(sim)).json
    assert_error(await basic_token(sim), 45009, "reach max api daily quota limit")
    await to_next_beijing_midnight(sim)
    assert "access_token" in (await basic_token(sim)).json


# --- cgi-bin/stable_token -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "data", "errcode", "wording"),
    [
        ("GET", None, 43002, "require POST method"),
        ("POST", b"", 44002, "empty post data"),
        ("POST", b"grant_type=client_credential&appid=x&secret=y", 47001, "data format error"),
        ("POST", b"[1, 2]", 47001, "data format error"),
        ("POST", {"grant_type": "password"}, 40002, "invalid grant_type"),
        ("POST", {"appid": None}, 41002, "appid missing"),
        ("POST", {"appid": "wx0000000000000000"}, 40013, "invalid appid"),
        ("POST", {"secret": None}, 41004, "appsecret missing"),
        ("POST", {"secret": "f" * 32}, 40125, "invalid appsecret"),
        ("POST", {"force_refresh": "true"}, 47001, "data format error"),
    ],
    ids=["get-43002", "empty-44002", "form-47001", "array-47001", "grant-40002", "no-appid-41002",
         "wrong-appid-40013", "no-secret-41004", "wrong-secret-40125", "force-string-47001"],
)  # fmt: skip
async def test_stable_token_errcodes(
    sim: RunningSim, method: str, data: bytes | dict[str, Any] | None, errcode: int, wording: str
) -> None:
    if isinstance(data, dict):
        answer = await stable_token(sim, **data)
    else:
        answer = await sim.wechat(method, "cgi-bin/stable_token", data=data)
    assert_error(answer, errcode, wording)
    assert not sim.state.tokens


async def test_stable_token_normal_mode_returns_the_same_token_with_its_remaining_lifetime(
    sim: RunningSim,
) -> None:
    first = (await stable_token(sim)).json
    assert ACCESS_TOKEN.match(first["access_token"]) and first["expires_in"] == 7200
    await sim.control.advance(1000)
    again = (await stable_token(sim, force_refresh=False)).json
    assert again["access_token"] == first["access_token"]
    assert again["expires_in"] in (6199, 6200)  # real milliseconds pass between the calls


async def test_stable_token_renews_five_minutes_early_and_the_old_one_lasts_until_it_expires(
    sim: RunningSim,
) -> None:
    old = (await stable_token(sim)).json["access_token"]
    await sim.control.advance(6899)
    same = (await stable_token(sim)).json
    assert same["access_token"] == old and same["expires_in"] in (300, 301)
    await sim.control.advance(1)
    renewed = (await stable_token(sim)).json
    assert renewed["access_token"] != old and renewed["expires_in"] == 7200
    assert await token_works(sim, old) is None  # still inside its 7200 s
    await sim.control.advance(300)
    assert await token_works(sim, old) == 42001
    assert await token_works(sim, renewed["access_token"]) is None


async def test_force_refresh_mints_a_new_token_and_the_old_one_gets_40001_at_once(sim: RunningSim) -> None:
    old = (await stable_token(sim)).json["access_token"]
    forced = (await stable_token(sim, force_refresh=True)).json
    assert forced["access_token"] != old and forced["expires_in"] == 7200
    assert await token_works(sim, old) == 40001
    assert await token_works(sim, forced["access_token"]) is None
    assert (await stable_token(sim)).json["access_token"] == forced["access_token"]


async def test_force_refresh_less_than_30s_after_the_last_one_gets_45011(sim: RunningSim) -> None:
    first = (await stable_token(sim, force_refresh=True)).json["access_token"]
    await sim.control.advance(29)
    assert_error(await stable_token(sim, force_refresh=True), 45011, "api minute-quota reach limit")
    assert await token_works(sim, first) is None  # a refused force refresh invalidates nothing
    await sim.control.advance(1)
    assert (await stable_token(sim, force_refresh=True)).json["access_token"] != first


async def test_force_refresh_is_limited_to_20_a_day_then_45009_until_beijing_midnight(
    sim: RunningSim,
) -> None:
    # Start just after a Beijing midnight so 21 refreshes 30 s apart stay inside one day.
    await to_next_beijing_midnight(sim)
    for _ in range(20):
        assert "access_token" in (await stable_token(sim, force_refresh=True)).json
        await sim.control.advance(30)
    assert_error(await stable_token(sim, force_refresh=True), 45009, "reach max api daily quota limit")
    assert "access_token" in (await stable_token(sim)).json  # normal mode is unaffected
    await to_next_beijing_midnight(sim)
    assert "access_token" in (await stable_token(sim, force_refresh=True)).json


async def test_stable_and_basic_tokens_are_isolated(sim: RunningSim) -> None:
    stable = (await stable_token(sim)).json["access_token"]
    basic = (await basic_token(sim)).json["access_token"]
    await basic_token(sim)
    await sim.control.advance(301)  # the first basic token is now superseded
    assert await token_works(sim, basic) == 40001
    assert await token_works(sim, stable) is None
    assert (await stable_token(sim)).json["access_token"] == stable
    latest_basic = (await basic_token(sim)).json["access_token"]
    await stable_token(sim, force_refresh=True)
    assert await token_works(sim, latest_basic) is None


async def test_stable_token_per_minute_and_per_day_limits(sim: RunningSim) -> None:
    limits = (await sim.control.configure())["limits"]
    assert (limits["stable_token_per_minute"], limits["stable_token_per_day"]) == (10_000, 500_000)
    await sim.control.configure(limits={"stable_token_per_minute": 2, "stable_token_per_day": 3})
    await to_next_beijing_midnight(sim)
    await to_next_minute(sim)
    await stable_token(sim)
    await stable_token(sim)
    assert_error(await stable_token(sim), 45011, "api minute-quota reach limit, must slower")
    await sim.control.advance(60)
    await stable_token(sim)
    assert_error(await stable_token(sim), 45009, "reach max api daily quota limit")
