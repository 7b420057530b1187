"""The WeChat client against the simulator (and a hand-written canned server) over real HTTP.

Per error group: -1 is retried with backoff, 45009/45011 surface at once with a retry_after, a token
error invalidates the token once and retries once, a hang hits the timeout. Single-use credentials
(wx.login codes, phone codes, force refreshes) are never sent twice. Nothing secret is logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from shared.wechat import (
    MALFORMED,
    TIMED_OUT,
    UNREACHABLE,
    WeChatBadRequest,
    WeChatClient,
    WeChatRateLimited,
    WeChatRetryLater,
    WeChatTokenInvalid,
    call_with_token,
)
from sim.phone import decode_scene
from sim.wechat.testing import RunningSim, running_sim

APPID = "wx5f3a9c2e81d04b76"
SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    async with running_sim(appid=APPID, secret=SECRET) as running:
        yield running


class Errors:
    """Records ``on_error(endpoint, errcode)`` calls."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def __call__(self, endpoint: str, errcode: int) -> None:
        self.seen.append((endpoint, errcode))


def make_client(
    sim: RunningSim | str,
    http: aiohttp.ClientSession,
    *,
    timeout: float = 2.0,
    errors: Errors | None = None,
    clock: Callable[[], float] = time.time,
) -> WeChatClient:
    return WeChatClient(
        http,
        base_url=sim if isinstance(sim, str) else sim.url,
        appid=APPID,
        secret=SecretStr(SECRET),
        timeout=timeout,
        retry_attempts=3,
        retry_backoff=0.01,
        on_error=errors,
        clock=clock,
    )


@pytest.fixture
def client(sim: RunningSim) -> WeChatClient:
    return make_client(sim, sim.http)


async def login_code(sim: RunningSim, **traits: Any) -> tuple[str, str]:
    user = await sim.control.create_user(**traits)
    return user["openid"], await sim.control.login_code(user["openid"])


# --- retry later (-1, transport, malformed) -------------------------------------------------------


async def test_minus_one_is_retried_with_backoff_then_succeeds(sim: RunningSim) -> None:
    errors = Errors()
    client = make_client(sim, sim.http, errors=errors)
    await sim.control.fault("cgi-bin/stable_token", errcode=-1, count=2)
    token = await client.stable_token()
    assert token.access_token and token.expires_in == 7200
    assert (await sim.control.counters())["cgi-bin/stable_token"] == 3
    assert errors.seen == [("cgi-bin/stable_token", -1), ("cgi-bin/stable_token", -1)]


async def test_minus_one_that_persists_gives_up_after_the_bounded_attempts(
    sim: RunningSim, client: WeChatClient
) -> None:
    await sim.control.fault("wxa/getwxacodeunlimit", errcode=-1)
    token = (await client.stable_token()).access_token
    with pytest.raises(WeChatRetryLater) as failed:
        await client.get_unlimited_qrcode(token, scene="abc")
    assert failed.value.errcode == -1
    assert (await sim.control.counters())["wxa/getwxacodeunlimit"] == 3


async def test_jscode2session_is_never_retried_and_a_refused_call_leaves_the_code_usable(
    sim: RunningSim, client: WeChatClient
) -> None:
    openid, code = await login_code(sim)
    await sim.control.fault("sns/jscode2session", errcode=-1, count=1)
    with pytest.raises(WeChatRetryLater):
        await client.code2session(code)
    assert (await sim.control.counters())["sns/jscode2session"] == 1
    assert (await client.code2session(code)).openid == openid


async def test_force_refresh_is_never_retried(sim: RunningSim, client: WeChatClient) -> None:
    await sim.control.fault("cgi-bin/stable_token", errcode=-1, count=1)
    with pytest.raises(WeChatRetryLater):
        await client.stable_token(force_refresh=True)
    assert (await sim.control.counters())["cgi-bin/stable_token"] == 1


async def test_phone_code_is_never_retried(sim: RunningSim, client: WeChatClient) -> None:
    user = await sim.control.create_user(phone="13800138000")
    code = await sim.control.phone_code(user["openid"])
    token = (await client.stable_token()).access_token
    await sim.control.fault("wxa/business/getuserphonenumber", errcode=-1, count=1)
    with pytest.raises(WeChatRetryLater):
        await client.get_phone_number(token, code)
    assert (await sim.control.counters())["wxa/business/getuserphonenumber"] == 1
    assert (await client.get_phone_number(token, code)).pure_phone_number == "13800138000"


async def test_a_malformed_body_is_retry_later_and_retried(sim: RunningSim, client: WeChatClient) -> None:
    await sim.control.fault("cgi-bin/stable_token", mode="malformed")
    with pytest.raises(WeChatRetryLater) as failed:
        await client.stable_token()
    assert failed.value.errcode == MALFORMED
    assert (await sim.control.counters())["cgi-bin/stable_token"] == 3


async def test_a_code_image_cut_short_is_retried_and_the_next_one_is_used(
    sim: RunningSim, client: WeChatClient
) -> None:
    token = (await client.stable_token()).access_token
    await sim.control.fault("wxa/getwxacodeunlimit", mode="malformed", count=1)
    image = await client.get_unlimited_qrcode(token, scene="k=AbC123", page="pages/login/index")
    assert image.content_type == "image/png"  # sniffed: the header said image/jpeg
    assert decode_scene(image.data) == "k=AbC123"
    assert (await sim.control.counters())["wxa/getwxacodeunlimit"] == 2


async def test_an_unreachable_wechat_is_retry_later(sim: RunningSim) -> None:
    client = make_client("http://127.0.0.1:9", sim.http)  # the discard port: nothing listens
    with pytest.raises(WeChatRetryLater) as failed:
        await client.code2session("0716AVll20uHk94SLDml27etM946AVlq")
    assert failed.value.errcode == UNREACHABLE


# --- timeouts -------------------------------------------------------------------------------------


async def test_a_hang_hits_the_timeout_and_a_single_use_call_is_not_repeated(sim: RunningSim) -> None:
    client = make_client(sim, sim.http, timeout=0.3)
    _, code = await login_code(sim)
    await sim.control.fault("sns/jscode2session", mode="hang")
    started = time.monotonic()
    with pytest.raises(WeChatRetryLater) as failed:
        await client.code2session(code)
    assert failed.value.errcode == TIMED_OUT
    assert 0.3 <= time.monotonic() - started < 1.5
    assert (await sim.control.counters())["sns/jscode2session"] == 1


async def test_a_hang_on_a_retried_call_costs_each_attempt_its_timeout(sim: RunningSim) -> None:
    client = make_client(sim, sim.http, timeout=0.2)
    await sim.control.fault("cgi-bin/stable_token", mode="hang")
    started = time.monotonic()
    with pytest.raises(WeChatRetryLater):
        await client.stable_token()
    assert 0.6 <= time.monotonic() - started < 3.0
    assert (await sim.control.counters())["cgi-bin/stable_token"] == 3


async def test_latency_under_the_timeout_is_only_slow(sim: RunningSim) -> None:
    client = make_client(sim, sim.http, timeout=1.0)
    await sim.control.fault("cgi-bin/stable_token", latency_ms=200)
    started = time.monotonic()
    assert (await client.stable_token()).access_token
    assert time.monotonic() - started >= 0.2


async def test_a_dropped_connection_does_not_resend_a_wx_login_code(sim: RunningSim) -> None:
    # aiohttp re-sends a GET once when the connection drops after sending; for a code it must not.
    openid, code = await login_code(sim)
    await sim.control.fault("sns/jscode2session", mode="hang", count=1)
    call = asyncio.ensure_future(make_client(sim, sim.http, timeout=5).code2session(code))
    await asyncio.sleep(0.3)
    await sim.control.clear_faults()  # the simulator now closes the hanging connection
    with pytest.raises(WeChatRetryLater) as failed:
        await call
    assert failed.value.errcode == UNREACHABLE
    assert (await sim.control.counters())["sns/jscode2session"] == 1
    assert (await make_client(sim, sim.http).code2session(code)).openid == openid


# --- rate limited ---------------------------------------------------------------------------------


async def test_45011_surfaces_as_rate_limited_without_a_retry(sim: RunningSim, client: WeChatClient) -> None:
    _, code = await login_code(sim)
    await sim.control.fault("sns/jscode2session", errcode=45011, count=1)
    with pytest.raises(WeChatRateLimited) as limited:
        await client.code2session(code)
    assert (limited.value.errcode, limited.value.retry_after) == (45011, 60.0)
    assert (await sim.control.counters())["sns/jscode2session"] == 1


async def test_a_real_daily_quota_surfaces_with_the_time_until_beijing_midnight(sim: RunningSim) -> None:
    beijing_23h = datetime(2026, 3, 1, 15, 0, tzinfo=UTC).timestamp()
    client = make_client(sim, sim.http, clock=lambda: beijing_23h)
    await sim.control.configure(limits={"token_per_day": 0})
    with pytest.raises(WeChatRateLimited) as limited:
        await client.get_access_token()
    assert limited.value.errcode == 45009
    assert limited.value.retry_after == pytest.approx(3600)
    assert (await sim.control.counters())["cgi-bin/token"] == 1


async def test_the_code_rate_limit_is_a_minute_not_a_day(sim: RunningSim, client: WeChatClient) -> None:
    token = (await client.stable_token()).access_token
    await sim.control.configure(limits={"qrcode_per_minute": 0})
    with pytest.raises(WeChatRateLimited) as limited:
        await client.get_unlimited_qrcode(token, scene="abc")
    assert (limited.value.errcode, limited.value.retry_after) == (45009, 60.0)
    assert (await sim.control.counters())["wxa/getwxacodeunlimit"] == 1


# --- token invalid --------------------------------------------------------------------------------


class RecordingTokens:
    """A TokenProvider over the client itself, recording every invalidation."""

    def __init__(self, client: WeChatClient, first: str) -> None:
        self.client = client
        self.current = first
        self.invalidations: list[tuple[str, int]] = []

    async def get(self) -> str:
        return self.current

    async def invalidated(self, token: str, errcode: int, *, deadline: float | None = None) -> str:
        self.invalidations.append((token, errcode))
        self.current = (await self.client.stable_token()).access_token
        return self.current


async def test_40001_triggers_exactly_one_invalidation_and_one_retry(
    sim: RunningSim, client: WeChatClient
) -> None:
    stale = (await client.stable_token()).access_token
    await client.stable_token(force_refresh=True)  # WeChat now answers 40001 to the stale token
    tokens = RecordingTokens(client, stale)
    image = await call_with_token(tokens, lambda t: client.get_unlimited_qrcode(t, scene="abc"))
    assert decode_scene(image.data) == "abc"
    assert tokens.invalidations == [(stale, 40001)]
    assert (await sim.control.counters())["wxa/getwxacodeunlimit"] == 2


async def test_a_token_rejected_twice_is_raised_after_one_invalidation(
    sim: RunningSim, client: WeChatClient
) -> None:
    tokens = RecordingTokens(client, (await client.stable_token()).access_token)
    await sim.control.fault("wxa/getwxacodeunlimit", errcode=40001, count=2)
    with pytest.raises(WeChatTokenInvalid):
        await call_with_token(tokens, lambda t: client.get_unlimited_qrcode(t, scene="abc"))
    assert len(tokens.invalidations) == 1
    assert (await sim.control.counters())["wxa/getwxacodeunlimit"] == 2


@pytest.mark.parametrize("errcode", [40014, 42001])
async def test_other_token_errcodes_are_token_invalid_and_not_retried_by_the_client(
    sim: RunningSim, client: WeChatClient, errcode: int
) -> None:
    token = (await client.stable_token()).access_token
    await sim.control.fault("wxa/getwxacodeunlimit", errcode=errcode, count=1)
    with pytest.raises(WeChatTokenInvalid) as rejected:
        await client.get_unlimited_qrcode(token, scene="abc")
    assert rejected.value.errcode == errcode
    assert (await sim.control.counters())["wxa/getwxacodeunlimit"] == 1


# --- bad request ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scene", "page", "errcode"),
    [("登录", None, 40129), ("a" * 33, None, 40169), ("abc", "/pages/login/index", 41030)],
)
async def test_a_refused_code_request_is_bad_request_and_not_retried(
    sim: RunningSim, client: WeChatClient, scene: str, page: str | None, errcode: int
) -> None:
    token = (await client.stable_token()).access_token
    with pytest.raises(WeChatBadRequest) as refused:
        await client.get_unlimited_qrcode(token, scene=scene, page=page)
    assert refused.value.errcode == errcode
    assert (await sim.control.counters())["wxa/getwxacodeunlimit"] == 1


@pytest.mark.parametrize(("reuse", "errcode"), [(False, 40226), (True, 40163)])
async def test_code_refusals_are_bad_requests_with_their_errcode(
    sim: RunningSim, client: WeChatClient, reuse: bool, errcode: int
) -> None:
    _, code = await login_code(sim, blocked=not reuse)
    if reuse:
        await client.code2session(code)
    with pytest.raises(WeChatBadRequest) as refused:
        await client.code2session(code)
    assert refused.value.errcode == errcode


# --- typed results and tolerant parsing -----------------------------------------------------------


async def test_code2session_reads_a_text_plain_answer_with_its_unionid(
    sim: RunningSim, client: WeChatClient
) -> None:
    openid, code = await login_code(sim, unionid=True)
    result = await client.code2session(code)
    assert result.openid == openid
    assert result.unionid is not None and result.unionid.startswith("o")
    assert len(result.session_key) == 24
    assert result.session_key not in repr(result)


async def test_get_access_token_gets_a_new_token_each_call(client: WeChatClient) -> None:
    first, second = await client.get_access_token(), await client.get_access_token()
    assert first.access_token != second.access_token
    assert first.expires_in == second.expires_in == 7200
    assert first.access_token not in repr(first)


@pytest.mark.parametrize(("country_code_as", "sent"), [("string", "86"), ("number", 86)])
async def test_phone_country_code_is_a_string_whether_sent_as_number_or_string(
    sim: RunningSim, client: WeChatClient, country_code_as: str, sent: object
) -> None:
    await sim.control.configure(country_code_as=country_code_as)
    user = await sim.control.create_user(phone="13800138000")
    token = (await client.stable_token()).access_token
    info = await client.get_phone_number(
        token, await sim.control.phone_code(user["openid"]), openid=user["openid"]
    )
    assert (info.phone_number, info.pure_phone_number, info.country_code) == (
        "13800138000",
        "13800138000",
        "86",
    )
    assert info.watermark_appid == APPID
    assert isinstance(info.watermark_timestamp, int)


async def test_check_session_is_true_for_the_current_key_and_false_once_replaced(
    sim: RunningSim, client: WeChatClient
) -> None:
    openid, code = await login_code(sim)
    key = (await client.code2session(code)).session_key
    token = (await client.stable_token()).access_token
    assert await client.check_session(token, openid=openid, session_key=key) is True
    await sim.control.advance(300)
    await sim.control.login_code(openid)  # wx.login again: a new session_key
    assert await client.check_session(token, openid=openid, session_key=key) is False


async def test_check_session_with_a_bad_token_raises_token_invalid(
    sim: RunningSim, client: WeChatClient
) -> None:
    openid, _ = await login_code(sim)
    with pytest.raises(WeChatTokenInvalid):
        await client.check_session("77_" + "A" * 133, openid=openid, session_key="x" * 24)


# A hand-written WeChat that answers what each test scripts: shapes the simulator does not produce.
Canned = dict[str, tuple[int, str, bytes]]


@pytest.fixture
async def canned() -> AsyncIterator[tuple[str, Canned]]:
    answers: Canned = {}

    async def answer(request: web.Request) -> web.Response:
        status, content_type, body = answers[request.path.lstrip("/")]
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", answers
    finally:
        await runner.cleanup()


async def test_success_bodies_with_errcode_zero_and_numbers_as_strings_are_accepted(
    canned: tuple[str, Canned],
) -> None:
    url, answers = canned
    answers["cgi-bin/stable_token"] = (
        200,
        "text/plain",
        b'{"errcode":0,"errmsg":"ok","access_token":"80_abc","expires_in":"345"}',
    )
    answers["sns/jscode2session"] = (
        200,
        "application/json",
        b'{"openid":"o1","session_key":"k","unionid":"","errcode":0,"errmsg":"ok","expires_in":7200}',
    )
    async with aiohttp.ClientSession() as http:
        client = make_client(url, http)
        assert (await client.stable_token()).expires_in == 345
        session = await client.code2session("c")
    assert (session.openid, session.unionid) == ("o1", None)


@pytest.mark.parametrize(
    ("status", "content_type", "body", "group", "errcode"),
    [
        (200, "text/plain", b'{"errcode":40029,"errmsg":"invalid code"}', WeChatBadRequest, 40029),
        (200, "text/html", b'{"errcode":"45011","errmsg":"limit"}', WeChatRateLimited, 45011),
        (502, "text/html", b"<html>Bad Gateway</html>", WeChatRetryLater, -5),
        (200, "application/json", b"[]", WeChatRetryLater, MALFORMED),
        (200, "application/json", b'{"errcode":0,"errmsg":"ok"}', WeChatRetryLater, MALFORMED),
    ],
    ids=["text-plain-error", "string-errcode", "http-502", "json-array", "no-openid"],
)
async def test_odd_answers_fall_in_the_right_group(
    canned: tuple[str, Canned], status: int, content_type: str, body: bytes, group: type, errcode: int
) -> None:
    url, answers = canned
    answers["sns/jscode2session"] = (status, content_type, body)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(group) as failed:
            await make_client(url, http).code2session("c")
    assert failed.value.errcode == errcode


async def test_a_json_error_labelled_as_an_image_is_still_read_as_an_error(
    canned: tuple[str, Canned],
) -> None:
    url, answers = canned
    answers["wxa/getwxacodeunlimit"] = (200, "image/jpeg", b'{"errcode":40129,"errmsg":"invalid scene"}')
    async with aiohttp.ClientSession() as http:
        with pytest.raises(WeChatBadRequest) as refused:
            await make_client(url, http).get_unlimited_qrcode("80_t", scene="x")
    assert refused.value.errcode == 40129


# --- logging --------------------------------------------------------------------------------------


async def test_nothing_secret_reaches_the_logs_and_urls_are_logged_without_query(sim: RunningSim) -> None:
    client = make_client(sim, sim.http, timeout=0.3)
    openid, code = await login_code(sim, phone="13800138000")
    phone_code = await sim.control.phone_code(openid)
    secrets: list[str] = [SECRET, code, phone_code]
    with capture_logs() as logs:
        token = (await client.stable_token()).access_token
        basic = (await client.get_access_token()).access_token
        session_key = (await client.code2session(code)).session_key
        secrets += [token, basic, session_key]
        await client.get_phone_number(token, phone_code)
        await client.check_session(token, openid=openid, session_key=session_key)
        await sim.control.fault("sns/jscode2session", errcode=-1, count=1)
        await sim.control.fault("cgi-bin/token", errcode=-1, count=1)
        await sim.control.fault("wxa/getwxacodeunlimit", mode="hang", count=1)
        failures: list[Exception] = []
        for attempt in (
            client.code2session(code),
            client.get_access_token(),
            client.get_unlimited_qrcode(token, scene="abc"),
            client.code2session(code),  # now 40163
        ):
            try:
                await attempt
            except Exception as exc:
                failures.append(exc)
    calls = [entry for entry in logs if entry["event"] == "wechat_call"]
    assert {entry["url"].rsplit("/", 2)[-1] for entry in calls} >= {"stable_token", "jscode2session", "token"}
    assert all("?" not in entry["url"] for entry in calls)
    assert {entry["event"] for entry in logs} >= {"wechat_error", "wechat_timeout", "retrying"}
    dumped = repr(logs) + repr([str(exc) for exc in failures])
    leaked = [s for s in secrets if s in dumped]
    assert leaked == []
