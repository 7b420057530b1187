"""The simulator's control API over real HTTP: faults, the generic errcodes, counters, clock, reset."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from shared.wxcrypto import WatermarkMismatch, decrypt_encrypted_data, session_signature
from sim.phone import Phone
from sim.wechat.faults import ENDPOINTS
from sim.wechat.testing import Answer, ControlCallFailed, RunningSim, running_sim

APPID = "wx5f3a9c2e81d04b76"
SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

TOKEN_BEARING = ["wxa/getwxacodeunlimit", "wxa/business/getuserphonenumber", "wxa/checksession"]


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    async with running_sim(appid=APPID, secret=SECRET) as running:
        yield running


async def good_call(sim: RunningSim, endpoint: str, token: str | None = None) -> Answer:
    """A call of ``endpoint`` that succeeds when no fault interferes (``token`` overrides the real one)."""
    user = await sim.control.create_user(phone="13800138000")
    openid = user["openid"]
    js_code = await sim.control.login_code(openid)
    if token is None and endpoint in TOKEN_BEARING:
        await sim.control.clear_faults("cgi-bin/stable_token")
        token = await sim.access_token()
    if endpoint == "cgi-bin/token":
        params = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
        return await sim.wechat("GET", endpoint, params=params)
    if endpoint == "cgi-bin/stable_token":
        body = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
        return await sim.wechat("POST", endpoint, json_body=body)
    if endpoint == "sns/jscode2session":
        params = {"appid": APPID, "secret": SECRET, "js_code": js_code, "grant_type": "authorization_code"}
        return await sim.wechat("GET", endpoint, params=params)
    assert token is not None
    if endpoint == "wxa/getwxacodeunlimit":
        return await sim.wechat("POST", endpoint, params={"access_token": token}, json_body={"scene": "abc"})
    if endpoint == "wxa/business/getuserphonenumber":
        phone_code = await sim.control.phone_code(openid)
        return await sim.wechat(
            "POST", endpoint, params={"access_token": token}, json_body={"code": phone_code}
        )
    key = (await sim.control.user(openid))["session_key"]
    params = {
        "access_token": token,
        "openid": openid,
        "signature": session_signature(key),
        "sig_method": "hmac_sha256",
    }
    return await sim.wechat("GET", endpoint, params=params)


def succeeded(answer: Answer) -> bool:
    return answer.status == 200 and answer.errcode in (None, 0)


# --- generic errcodes, per endpoint ---------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_errcode_fault_answers_the_next_count_calls_with_real_wording(
    sim: RunningSim, endpoint: str
) -> None:
    await sim.control.fault(endpoint, errcode=-1, count=2)
    for _ in range(2):
        answer = await good_call(sim, endpoint)
        assert answer.status == 200
        assert answer.json["errcode"] == -1
        assert answer.json["errmsg"].startswith("system error, rid: ")
    assert succeeded(await good_call(sim, endpoint))


@pytest.mark.parametrize("endpoint", TOKEN_BEARING)
@pytest.mark.parametrize(
    ("token_case", "errcode"),
    [("missing", 41001), ("malformed", 40014), ("unknown", 40001), ("expired", 42001)],
)
async def test_token_errcodes_on_every_token_bearing_endpoint(
    sim: RunningSim, endpoint: str, token_case: str, errcode: int
) -> None:
    token = await sim.access_token()
    if token_case == "expired":
        await sim.control.advance(7200)
    bad = {"missing": "", "malformed": "not-a-token", "unknown": "77_" + "A" * 133, "expired": token}
    answer = await good_call(sim, endpoint, token=bad[token_case])
    assert answer.json["errcode"] == errcode


@pytest.mark.parametrize(
    ("endpoint", "wrong_method", "errcode"),
    [
        ("cgi-bin/token", "POST", 43001),
        ("sns/jscode2session", "POST", 43001),
        ("wxa/checksession", "POST", 43001),
        ("cgi-bin/stable_token", "GET", 43002),
        ("wxa/getwxacodeunlimit", "GET", 43002),
        ("wxa/business/getuserphonenumber", "GET", 43002),
        ("cgi-bin/stable_token", "PUT", 43002),
    ],
)
async def test_wrong_method_gets_43001_or_43002_not_an_http_error(
    sim: RunningSim, endpoint: str, wrong_method: str, errcode: int
) -> None:
    answer = await sim.wechat(wrong_method, endpoint)
    assert answer.status == 200
    assert answer.json["errcode"] == errcode


@pytest.mark.parametrize("endpoint", ["cgi-bin/stable_token", "wxa/business/getuserphonenumber"])
async def test_empty_post_gets_44002_and_a_non_json_body_47001(sim: RunningSim, endpoint: str) -> None:
    token = await sim.access_token()
    params = {"access_token": token}
    assert (await sim.wechat("POST", endpoint, params=params, data=b"")).errcode == 44002
    assert (await sim.wechat("POST", endpoint, params=params, data=b"a=1&b=2")).errcode == 47001


async def test_an_errcode_fault_can_carry_its_own_errmsg(sim: RunningSim) -> None:
    await sim.control.fault("sns/jscode2session", errcode=40029, errmsg="invalid code hint: [XfmcTVNre]")
    answer = await good_call(sim, "sns/jscode2session")
    assert answer.json["errmsg"].startswith("invalid code hint: [XfmcTVNre] rid: ")
    assert answer.content_type == "text/plain"  # faulted answers keep the endpoint's content type


async def test_a_fault_without_count_lasts_until_cleared(sim: RunningSim) -> None:
    await sim.control.fault("cgi-bin/token", errcode=45009)
    for _ in range(3):
        assert (await good_call(sim, "cgi-bin/token")).errcode == 45009
    assert (await sim.control.call("GET", "/sim/faults"))["faults"][0]["count"] is None
    assert await sim.control.clear_faults("cgi-bin/token") == 1
    assert succeeded(await good_call(sim, "cgi-bin/token"))


async def test_faults_of_one_endpoint_do_not_touch_another(sim: RunningSim) -> None:
    await sim.control.fault("sns/jscode2session", errcode=-1)
    assert succeeded(await good_call(sim, "cgi-bin/token"))


async def test_faults_apply_in_the_order_they_were_added(sim: RunningSim) -> None:
    await sim.control.fault("cgi-bin/token", errcode=-1, count=1)
    await sim.control.fault("cgi-bin/token", errcode=45009, count=1)
    assert (await good_call(sim, "cgi-bin/token")).errcode == -1
    assert (await good_call(sim, "cgi-bin/token")).errcode == 45009
    assert succeeded(await good_call(sim, "cgi-bin/token"))


# --- latency, malformed, hang ---------------------------------------------------------------------


async def timed_token_call(sim: RunningSim) -> tuple[Answer, float]:
    """One ``cgi-bin/token`` call and how long it took (nothing else inside the measurement)."""
    params = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
    started = time.monotonic()
    answer = await sim.wechat("GET", "cgi-bin/token", params=params)
    return answer, time.monotonic() - started


async def test_latency_slows_the_next_count_calls_only(sim: RunningSim) -> None:
    await sim.control.fault("cgi-bin/token", latency_ms=400, count=1)
    slow, slow_s = await timed_token_call(sim)
    fast, fast_s = await timed_token_call(sim)
    assert succeeded(slow) and succeeded(fast)
    assert slow_s >= 0.4
    assert fast_s < 0.3


async def test_standing_latency_combines_with_an_errcode_fault(sim: RunningSim) -> None:
    await sim.control.fault("cgi-bin/token", latency_ms=400)
    await sim.control.fault("cgi-bin/token", errcode=-1, count=1)
    failed, failed_s = await timed_token_call(sim)
    slow, slow_s = await timed_token_call(sim)
    assert failed.errcode == -1 and succeeded(slow)
    assert failed_s >= 0.4 and slow_s >= 0.4
    await sim.control.clear_faults()
    _, fast_s = await timed_token_call(sim)
    assert fast_s < 0.3


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e != "wxa/getwxacodeunlimit"])
async def test_malformed_json_endpoints_answer_a_body_that_does_not_parse(
    sim: RunningSim, endpoint: str
) -> None:
    await sim.control.fault(endpoint, mode="malformed", count=1)
    answer = await good_call(sim, endpoint)
    assert answer.status == 200
    with pytest.raises(ValueError, match=r"Expecting|Unterminated|Extra data"):
        answer.json  # noqa: B018


async def test_malformed_code_is_an_image_cut_short(sim: RunningSim) -> None:
    await sim.control.fault("wxa/getwxacodeunlimit", mode="malformed", count=1)
    answer = await good_call(sim, "wxa/getwxacodeunlimit")
    assert answer.content_type == "image/jpeg"
    assert answer.body.startswith(b"\x89PNG") and b"IEND" not in answer.body


async def test_hang_never_answers_and_clearing_the_fault_drops_the_connection(sim: RunningSim) -> None:
    await sim.control.fault("cgi-bin/token", mode="hang", count=1)
    # POST: aiohttp silently re-sends a dropped GET once, which would hide the dropped connection.
    async with aiohttp.ClientSession() as http:
        call = asyncio.ensure_future(http.post(f"{sim.url}/cgi-bin/token"))
        done, _ = await asyncio.wait({call}, timeout=0.5)
        assert not done  # still no answer
        assert await sim.control.clear_faults() == 0  # the count-1 fault was spent by the call
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await asyncio.wait_for(call, 2)
    assert succeeded(await good_call(sim, "cgi-bin/token"))


async def test_a_hanging_call_does_not_hold_up_the_simulator_shutdown() -> None:
    async with running_sim(appid=APPID, secret=SECRET) as sim:
        await sim.control.fault("cgi-bin/token", mode="hang")
        call = asyncio.ensure_future(good_call(sim, "cgi-bin/token"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
    with pytest.raises(aiohttp.ClientError):
        await call


# --- counters, clock, reset -----------------------------------------------------------------------


async def test_counters_count_every_call_per_endpoint_including_refused_ones(sim: RunningSim) -> None:
    await sim.control.fault("cgi-bin/token", errcode=-1, count=1)
    await good_call(sim, "cgi-bin/token")
    await good_call(sim, "cgi-bin/token")
    await sim.wechat("POST", "cgi-bin/token")  # 43001, still a call
    await good_call(sim, "sns/jscode2session")
    assert await sim.control.counters() == {"cgi-bin/token": 3, "sns/jscode2session": 1}


async def test_clock_moves_forward_only(sim: RunningSim) -> None:
    before = (await sim.control.call("GET", "/sim/clock"))["now"]
    after = await sim.control.advance(3600)
    assert 3600 <= after - before < 3601
    with pytest.raises(ControlCallFailed) as refused:
        await sim.control.advance(-1)
    assert refused.value.status == 400


async def test_reset_forgets_users_codes_tokens_faults_counters_clock_and_config(sim: RunningSim) -> None:
    user = await sim.control.create_user()
    js_code = await sim.control.login_code(user["openid"])
    token = await sim.access_token()
    await sim.control.fault("cgi-bin/token", errcode=-1)
    await sim.control.advance(1000)
    await sim.control.configure(open_platform_bound=False, limits={"token_per_day": 1})
    await sim.control.reset()
    assert await sim.control.counters() == {}
    assert (await sim.control.call("GET", "/sim/faults"))["faults"] == []
    assert (await sim.control.call("GET", "/sim/clock"))["offset_s"] == 0
    config = await sim.control.configure()
    assert config["open_platform_bound"] is True and config["limits"]["token_per_day"] == 2000
    with pytest.raises(ControlCallFailed):
        await sim.control.user(user["openid"])
    params = {"appid": APPID, "secret": SECRET, "js_code": js_code, "grant_type": "authorization_code"}
    assert (await sim.wechat("GET", "sns/jscode2session", params=params)).errcode == 40029
    assert (await good_call(sim, "wxa/getwxacodeunlimit", token=token)).errcode == 40001


# --- encrypted data -------------------------------------------------------------------------------


async def test_encrypted_data_decrypts_with_the_session_key_from_jscode2session(sim: RunningSim) -> None:
    user = await sim.control.create_user()
    js_code = await sim.control.login_code(user["openid"])
    params = {"appid": APPID, "secret": SECRET, "js_code": js_code, "grant_type": "authorization_code"}
    session_key = (await sim.wechat("GET", "sns/jscode2session", params=params)).json["session_key"]
    sealed = await sim.control.encrypted_data(user["openid"], {"nickName": "小明", "gender": 1})
    data = decrypt_encrypted_data(session_key, sealed["encrypted_data"], sealed["iv"], appid=APPID)
    assert data["nickName"] == "小明" and data["gender"] == 1
    assert data["watermark"]["appid"] == APPID
    assert abs(data["watermark"]["timestamp"] - sim.state.now()) < 5


async def test_encrypted_data_with_another_appid_is_rejected_by_the_watermark_check(sim: RunningSim) -> None:
    user = await sim.control.create_user()
    await sim.control.login_code(user["openid"])
    key = (await sim.control.user(user["openid"]))["session_key"]
    sealed = await sim.control.encrypted_data(user["openid"], {"x": 1}, appid="wx0000000000000000")
    with pytest.raises(WatermarkMismatch):
        decrypt_encrypted_data(key, sealed["encrypted_data"], sealed["iv"], appid=APPID)


# --- bad input to the control API -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/sim/users", b"{not json", 400, "invalid_json"),
        ("POST", "/sim/users", [1], 400, "invalid_json"),
        ("POST", "/sim/users", {"unionId": True}, 400, "unknown_field"),
        ("POST", "/sim/users", {"phone": "138-0013"}, 400, "invalid_field"),
        ("POST", "/sim/users", {"blocked": "yes"}, 400, "invalid_field"),
        ("POST", "/sim/codes", {}, 400, "invalid_field"),
        ("POST", "/sim/codes", {"openid": "o" + "x" * 27}, 404, "unknown_openid"),
        ("POST", "/sim/phone-codes", {"openid": "@no-phone"}, 409, "no_phone"),
        ("POST", "/sim/encrypted-data", {"openid": "@no-phone", "data": "x"}, 400, "invalid_field"),
        ("POST", "/sim/encrypted-data", {"openid": "@no-phone", "data": {}}, 409, "no_session_key"),
        ("POST", "/sim/faults", {"endpoint": "sns/nothing", "errcode": -1}, 400, "invalid_fault"),
        ("POST", "/sim/faults", {"endpoint": "cgi-bin/token"}, 400, "invalid_fault"),
        ("POST", "/sim/faults", {"endpoint": "cgi-bin/token", "errcode": 0}, 400, "invalid_fault"),
        ("POST", "/sim/faults", {"endpoint": "cgi-bin/token", "errcode": "-1"}, 400, "invalid_fault"),
        ("POST", "/sim/faults", {"endpoint": "cgi-bin/token", "errcode": -1, "mode": "hang"}, 400,
         "invalid_fault"),
        ("POST", "/sim/faults", {"endpoint": "cgi-bin/token", "errcode": -1, "count": 0}, 400,
         "invalid_fault"),
        ("POST", "/sim/faults", {"endpoint": "cgi-bin/token", "latency_ms": -5}, 400, "invalid_fault"),
        ("POST", "/sim/faults", {"endpoint": "cgi-bin/token", "mode": "slow"}, 400, "invalid_fault"),
        ("POST", "/sim/faults", {"endpoint": "cgi-bin/token", "errorcode": -1}, 400, "invalid_fault"),
        ("DELETE", "/sim/faults?endpoint=nope", None, 400, "invalid_field"),
        ("POST", "/sim/clock", {"advance_s": "10"}, 400, "invalid_field"),
        ("POST", "/sim/clock", {}, 400, "invalid_field"),
        ("POST", "/sim/config", {"limits": {"tokens_per_day": 1}}, 400, "unknown_field"),
        ("POST", "/sim/config", {"country_code_as": "float"}, 400, "invalid_field"),
        ("POST", "/sim/config", {"published_pages": "pages/index/index"}, 400, "invalid_field"),
        ("GET", "/sim/nothing", None, 404, "not_found"),
        ("PUT", "/sim/users", None, 405, "method_not_allowed"),
    ],
)  # fmt: skip
async def test_bad_control_input_gets_a_clear_json_4xx(
    sim: RunningSim, method: str, path: str, body: Any, status: int, code: str
) -> None:
    no_phone = (await sim.control.create_user())["openid"]
    if isinstance(body, dict) and body.get("openid") == "@no-phone":
        body = {**body, "openid": no_phone}
    data = body if isinstance(body, bytes) else None
    async with sim.http.request(
        method, f"{sim.url}{path}", data=data, json=None if data is not None or body is None else body
    ) as resp:
        assert resp.status == status
        assert resp.headers["Content-Type"].startswith("application/json")
        answer = await resp.json()
    assert answer["error"]["code"] == code
    assert answer["error"]["message"]


async def test_control_api_allows_the_demo_page_from_another_origin(sim: RunningSim) -> None:
    async with sim.http.options(f"{sim.url}/sim/faults", headers={"Origin": "http://127.0.0.1:8080"}) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "DELETE" in resp.headers["Access-Control-Allow-Methods"]


async def test_the_simulated_phone_gets_phone_codes_and_encrypted_data_from_the_simulator(
    sim: RunningSim,
) -> None:
    phone = Phone(sim.http, gateway="http://127.0.0.1:1", sim=sim.url)
    openid = await phone.register(phone="13800138000")
    token = await sim.access_token()
    code = await phone.phone_number_code()
    answer = await sim.wechat(
        "POST", "wxa/business/getuserphonenumber", params={"access_token": token}, json_body={"code": code}
    )
    assert answer.json["phone_info"]["purePhoneNumber"] == "13800138000"
    await phone.wx_login()
    sealed = await phone.encrypted({"openId": openid})
    key = (await sim.control.user(openid))["session_key"]
    data = decrypt_encrypted_data(key, sealed["encrypted_data"], sealed["iv"], appid=APPID)
    assert data["openId"] == openid
