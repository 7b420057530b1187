"""Logging in on the phone itself with a typed login code, over the real services and the simulator.

A browser on a phone asks for a login code with its scene; the phone types it into the mini-program
(``POST /api/mp/enter_code``), which works like a scan of that scene: the same answer, the same states
and the same scan-token binding. Wrong, expired and used codes answer 4xx with a JSON error code, and
entries are limited per IP, per WeChat user, per scene and, for misses, all users together.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from shared.logincode import ALPHABET
from shared.mongo import EmbeddedMongo
from sim.phone import Phone, PhoneError
from tests.integration.conftest import Stack
from tests.logcheck import ErrorLog
from tests.scenes import RELAXED_LIMITS, FakeClock, start_stack_with, stop_stack
from tests.support import Browser

LOGIN_CODE = re.compile(f"^[{ALPHABET}]{{8}}$")
# A valid-looking code no scene has (the stack is fresh: every code is unknown but the ones issued).
NOBODY = "22222222"


class PhoneBrowser(Browser):
    """A browser on a phone: it asks for a login code (and a URL Link) with its scene."""

    async def issue(self) -> dict[str, Any]:
        async with self.session.post(
            f"{self.gateway}/api/login/qrcode", json={"login_code": True, "url_link": True}
        ) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 201, body
        self.scene, self.ticket, self.image = body["scene"], body["ticket"], body["image"]
        return body


@pytest.fixture
def clock() -> FakeClock:
    """The services' clock: real time, until a test moves it."""
    return FakeClock(follow_real_time=True)


async def running(
    mongo: EmbeddedMongo, amqp_base_url: str, unique: str, clock: FakeClock, **overrides: Any
) -> Stack:
    settings = {**RELAXED_LIMITS, "code_pool_size": 2, **overrides}
    return await start_stack_with("memory", mongo, amqp_base_url, unique, clock=clock, **settings)


@pytest.fixture
async def stack(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str, clock: FakeClock
) -> AsyncIterator[Stack]:
    started = await running(mongo_server, amqp_base_url, unique, clock)
    try:
        yield started
    finally:
        await stop_stack(started)


def phone(stack: Stack) -> Phone:
    return Phone(stack.http, stack.gateway, stack.sim.url, launch_scene=None)


async def entered(stack: Stack, body: Any) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    """``POST /api/mp/enter_code`` by hand: status, JSON body, headers."""
    async with stack.http.post(f"{stack.gateway}/api/mp/enter_code", json=body) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_a_typed_code_logs_the_phone_browser_in_like_a_scan(stack: Stack, errors: ErrorLog) -> None:
    browser = PhoneBrowser(stack.http, stack.gateway)
    issued = await browser.issue()
    assert LOGIN_CODE.match(issued["login_code"]), issued
    assert "url_link" not in issued  # WXLOGIN_URL_LINK is off by default
    # A desktop browser (no body) gets no code to type.
    desktop = await Browser(stack.http, stack.gateway).issue()
    assert "login_code" not in desktop

    assert (await browser.subscribe())["state"] == "pending"
    hand = phone(stack)
    # Typed as a person would: lower case, with the dash the page shows.
    typed = issued["login_code"].lower()
    answer = await hand.enter_code(f"{typed[:4]}-{typed[4:]}")
    assert answer["scene"] == browser.scene
    assert answer["identified"] is True  # the wx.login code went with it: the confirm needs none
    assert answer["site"] == stack.settings.site_name and answer["requester"]["browser"]
    assert (await browser.next_message())["state"] == "scanned"

    # Only this phone's scan token confirms; another phone cannot, even knowing the scene.
    with pytest.raises(PhoneError) as other:
        await phone(stack).confirm(browser.scene, scan_token="x" * 43)
    assert other.value.code == "scan_token_invalid"
    assert (await hand.confirm(browser.scene))["state"] == "confirmed"
    assert (await browser.next_message())["state"] == "confirmed"
    status, tokens = await browser.complete()
    assert status == 200 and tokens["user"]["openid"] == hand.openid
    await browser.close()
    assert not errors.records, errors.lines()


async def test_an_entry_retried_with_the_same_code_and_own_scan_token_gets_the_first_answer(
    stack: Stack, errors: ErrorLog
) -> None:
    # The answer of an entry that landed was lost (docs/chaos.md): the page sends the same body again.
    browser = PhoneBrowser(stack.http, stack.gateway)
    login_code = (await browser.issue())["login_code"]
    hand = phone(stack)
    body = {"login_code": login_code, "code": await hand.wx_login(), "scan_token": secrets.token_urlsafe(32)}
    first, again = await entered(stack, body), await entered(stack, body)
    assert first[0] == again[0] == 200, (first, again)
    assert again[1] == first[1] and again[1]["scan_token"] == body["scan_token"]
    assert again[1]["scene"] == browser.scene and again[1]["identified"] is True

    # The same code with another token is another phone (or a copied code): refused, as before.
    status, refused, _ = await entered(stack, {**body, "scan_token": secrets.token_urlsafe(32)})
    assert (status, refused["error"]["code"]) == (400, "code_invalid"), refused
    hand.scan_tokens[browser.scene] = body["scan_token"]
    hand.identified[browser.scene] = True
    assert (await hand.confirm(browser.scene))["state"] == "confirmed"
    status, tokens = await browser.complete()
    assert status == 200 and tokens["user"]["openid"] == hand.openid
    assert not errors.records, errors.lines()


async def test_wrong_expired_used_and_cancelled_codes_answer_clearly(
    stack: Stack, clock: FakeClock, errors: ErrorLog
) -> None:
    status, answer, _ = await entered(stack, {"login_code": NOBODY, "code": await phone(stack).wx_login()})
    assert (status, answer["error"]["code"]) == (404, "login_code_invalid")
    assert "check it" in answer["error"]["message"]
    # Not a code at all: a look-alike, the wrong length, no wx.login code. Nothing is counted.
    for body in (
        {"login_code": "OOOO-1111", "code": "c" * 32},
        {"login_code": "2345678", "code": "c" * 32},
        {"login_code": "23456789"},
        {"login_code": 23456789, "code": "c" * 32},
    ):
        status, answer, _ = await entered(stack, body)
        assert (status, answer["error"]["code"]) == (400, "invalid_request"), body

    used = PhoneBrowser(stack.http, stack.gateway)
    code = (await used.issue())["login_code"]
    await phone(stack).enter_code(code)
    with pytest.raises(PhoneError) as again:
        await phone(stack).enter_code(code)
    assert (again.value.status, again.value.code) == (409, "already_scanned")

    cancelled = PhoneBrowser(stack.http, stack.gateway)
    code = (await cancelled.issue())["login_code"]
    hand = phone(stack)
    await hand.enter_code(code)
    await hand.cancel(cancelled.scene)
    with pytest.raises(PhoneError) as after_cancel:
        await phone(stack).enter_code(code)
    assert (after_cancel.value.status, after_cancel.value.code) == (410, "scene_cancelled")

    expired = PhoneBrowser(stack.http, stack.gateway)
    code = (await expired.issue())["login_code"]
    clock.advance(stack.settings.scene_ttl_seconds + 1)
    try:
        with pytest.raises(PhoneError) as late:
            await phone(stack).enter_code(code)
    finally:
        clock.advance(-(stack.settings.scene_ttl_seconds + 1))
    assert (late.value.status, late.value.code) == (410, "scene_expired")
    assert not errors.records, errors.lines()


async def test_entries_are_limited_per_scene_per_user_and_misses_for_everybody(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str, clock: FakeClock, errors: ErrorLog
) -> None:
    stack = await running(
        mongo_server,
        amqp_base_url,
        unique,
        clock,
        login_code_entries_per_scene=2,
        limit_code_entry_per_user_per_hour=3,
        login_code_misses_per_hour=3,
    )
    try:
        # Per scene: a code answers twice (the scan, then already_scanned); after that it is unknown.
        browser = PhoneBrowser(stack.http, stack.gateway)
        code = (await browser.issue())["login_code"]
        refusals = []
        for _ in range(3):
            try:
                await phone(stack).enter_code(code)
                refusals.append("ok")
            except PhoneError as exc:
                refusals.append(exc.code)
        assert refusals == ["ok", "already_scanned", "login_code_invalid"]

        # Per WeChat user: three entries an hour, whatever they name and whatever IP they come from.
        stubborn = phone(stack)
        for _ in range(3):
            with pytest.raises(PhoneError) as wrong:
                await stubborn.enter_code(NOBODY)
            assert wrong.value.code == "login_code_invalid"
        body = {"login_code": NOBODY, "code": await stubborn.wx_login()}
        status, answer, headers = await entered(stack, body)
        assert (status, answer["error"]["code"]) == (429, "rate_limited")
        assert 1 <= int(headers["Retry-After"]) <= 3600

        # Misses of everybody: the third miss of the hour was the stubborn user's, so the budget is
        # spent: no entry is looked at any more, a right code included, until the hour is over.
        right = PhoneBrowser(stack.http, stack.gateway)
        code = (await right.issue())["login_code"]
        with pytest.raises(PhoneError) as spent:
            await phone(stack).enter_code(code)
        assert (spent.value.status, spent.value.code) == (429, "rate_limited")
        assert (await right.state()) == "pending"
        # An hour later the budgets are new (and a new code is needed: that one expired meanwhile).
        clock.advance(3600)
        try:
            later = PhoneBrowser(stack.http, stack.gateway)
            code = (await later.issue())["login_code"]
            assert (await stubborn.enter_code(code))["scene"] == later.scene
        finally:
            clock.advance(-3600)
        assert not errors.records, errors.lines()
    finally:
        await stop_stack(stack)


async def test_code_entries_are_limited_per_ip_at_the_gateway(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str, clock: FakeClock
) -> None:
    limits = {"limit_code_entry_per_ip_per_minute": 1, "limit_code_entry_per_ip_burst": 2}
    stack = await running(mongo_server, amqp_base_url, unique, clock, **limits)
    try:
        answers = []
        for _ in range(3):
            body = {"login_code": NOBODY, "code": await phone(stack).wx_login()}
            status, answer, headers = await entered(stack, body)
            answers.append((status, answer["error"]["code"]))
        assert answers == [(404, "login_code_invalid")] * 2 + [(429, "rate_limited")]
        assert int(headers["Retry-After"]) >= 1
    finally:
        await stop_stack(stack)


async def test_only_so_many_scenes_a_minute_get_a_code_and_the_issue_goes_on_without(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str, clock: FakeClock
) -> None:
    # 6 a minute: one per 10 s window, counted in Mongo by every qrcode replica.
    stack = await running(mongo_server, amqp_base_url, unique, clock, login_code_per_minute=6)
    try:
        clock.advance(10 - clock() % 10 + 0.01)  # the start of a window, with time to spare
        first = await PhoneBrowser(stack.http, stack.gateway).issue()
        second = await PhoneBrowser(stack.http, stack.gateway).issue()
        assert "login_code" in first and "login_code" not in second
    finally:
        await stop_stack(stack)


async def test_a_url_link_opens_the_scan_page_and_a_personal_mini_program_gets_none(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str, clock: FakeClock, errors: ErrorLog
) -> None:
    stack = await running(mongo_server, amqp_base_url, unique, clock, url_link=True)
    try:
        browser = PhoneBrowser(stack.http, stack.gateway)
        issued = await browser.issue()
        assert re.match(r"^https://wxaurl\.cn/\w{11}$", issued["url_link"])
        link = {"url": issued["url_link"]}
        async with stack.http.get(f"{stack.sim.url}/sim/url-link", params=link) as resp:
            opened = await resp.json()
        assert opened["path"] == stack.settings.miniprogram_page
        assert opened["query"] == f"scene={browser.scene}" and opened["launch_scene"] == 1194
        # Opening it is a scan of that scene.
        assert "scan_token" in await Phone(stack.http, stack.gateway, stack.sim.url).scan(browser.scene)
        # A desktop browser does not ask for one.
        assert "url_link" not in await Browser(stack.http, stack.gateway).issue()

        # A personal mini-program: WeChat answers 40002, the page simply gets no button.
        async with stack.http.post(f"{stack.sim.url}/sim/config", json={"personal": True}) as resp:
            assert resp.status == 200
        refused = await PhoneBrowser(stack.http, stack.gateway).issue()
        assert "url_link" not in refused and LOGIN_CODE.match(refused["login_code"])
        assert not errors.records, errors.lines()
    finally:
        await stop_stack(stack)


async def test_the_simulated_phone_types_a_code_from_the_command_line(stack: Stack) -> None:
    browser = PhoneBrowser(stack.http, stack.gateway)
    code = (await browser.issue())["login_code"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sim.phone",
        "--login-code",
        f"{code[:4]}-{code[4:]}",
        "--gateway",
        stack.gateway,
        "--sim",
        stack.sim.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    entered, confirmed = (json.loads(line) for line in out.decode().splitlines())
    assert entered["scene"] == browser.scene and confirmed == {"state": "confirmed"}
    status, tokens = await browser.complete()
    assert status == 200 and tokens["user"]["openid"]
