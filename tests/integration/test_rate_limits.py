"""Abuse limits: the global issue limit counted in Mongo by every qrcode replica, per-IP limits at the
gateway (429 with Retry-After), and which address a limit counts (X-Forwarded-For only from trusted
proxies). Also what the phone is shown about the browser that asked."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from services.qrcode.errors import IssueRateLimited
from services.qrcode.handlers import SceneHandlers, SceneSettings
from services.qrcode.limits import PrefixShareLimit, SharedRateLimit
from services.qrcode.store import RATES, RateWindowStore, SceneStore
from shared.errors import ServiceError
from shared.messages import IssueScene
from shared.mongo import EmbeddedMongo
from shared.runtime import Database
from sim.phone import Phone, PhoneError
from tests.scenes import (
    RELAXED_LIMITS,
    FakeClock,
    RecordingPublisher,
    StaticCodes,
    fetch_metrics,
    metric_value,
    new_ticket,
    scene_database,
    scene_handlers,
    start_stack_with,
    stop_stack,
    ticket_hash,
)
from tests.support import ORIGIN

CHROME_ON_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


async def test_the_global_issue_limit_is_shared_by_every_replica(mongo_server: EmbeddedMongo) -> None:
    async with scene_database(mongo_server) as db:
        clock = FakeClock(start=math.ceil(time.time() / 10) * 10 + 10)  # the start of a 10 s window
        replicas = [
            scene_handlers(
                db, clock, RecordingPublisher(), issue_limit=SharedRateLimit(RateWindowStore(db), "issue", 60)
            )
            for _ in range(3)
        ]  # 60/min: 10 per 10 s window, whichever replica is asked

        async def issue(i: int) -> Any:
            request = IssueScene(ticket_hash=ticket_hash(new_ticket()), ip="198.51.100.1")
            try:
                return await replicas[i % 3].issue(request)
            except ServiceError as exc:
                return exc

        results = await asyncio.gather(*(issue(i) for i in range(30)))
        assert Counter(type(r).__name__ for r in results) == {"IssuedScene": 10, "IssueRateLimited": 20}
        assert all(0 < r.retry_after <= 10 for r in results if isinstance(r, IssueRateLimited))

        clock.advance(10)  # the next window
        assert not isinstance(await issue(0), ServiceError)


class CountingRates(RateWindowStore):
    """The real ``scene_rates`` store, counting its reserve calls (each one Mongo round trip or more)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.reserves = 0

    async def reserve(self, name: str, window: int, limit: int, wanted: int, *, purge_at: float) -> int:
        self.reserves += 1
        return await super().reserve(name, window, limit, wanted, purge_at=purge_at)


def _window_start() -> float:
    return math.ceil(time.time() / 10) * 10 + 10


async def _count(db: Database, name: str, now: float) -> int:
    doc = await db[RATES].find_one({"_id": f"{name}:{math.floor(now / 10)}"})
    return 0 if doc is None else int(doc["count"])


async def test_replicas_leasing_uses_in_batches_never_exceed_the_window_on_the_real_store(
    mongo_server: EmbeddedMongo,
) -> None:
    async with scene_database(mongo_server) as db:
        now = _window_start()
        stores = [CountingRates(db) for _ in range(3)]
        replicas = [SharedRateLimit(store, "issue", 3840) for store in stores]  # 640 a window, k = 16
        assert replicas[0].lease == 16
        decisions = await asyncio.gather(*(replicas[i % 3].take(now + i * 0.001) for i in range(800)))
        allowed = sum(d.allowed for d in decisions)
        assert 640 - (3 - 1) * (16 - 1) <= allowed <= 640
        assert await _count(db, "issue", now) == 640  # what Mongo counted: the window, never more
        # One Mongo reserve per batch (and one each to learn the window is spent), not one per issue.
        assert sum(store.reserves for store in stores) <= 640 // 16 + 3 * 2


async def test_a_window_with_fewer_uses_left_than_asked_gives_exactly_what_is_left(
    mongo_server: EmbeddedMongo,
) -> None:
    async with scene_database(mongo_server) as db:
        store, now = RateWindowStore(db), _window_start()
        window, purge_at = math.floor(now / 10), now + 130
        got = await asyncio.gather(
            *(store.reserve("renders", window, 25, 3, purge_at=purge_at) for _ in range(20))
        )
        assert sum(got) == 25 and all(0 <= g <= 3 for g in got)  # 8 batches of 3 and the 1 left
        assert await _count(db, "renders", now) == 25
        assert await store.reserve("renders", window, 25, 3, purge_at=purge_at) == 0
        assert await store.reserve("renders", window + 1, 25, 30, purge_at=purge_at) == 25  # capped


async def test_a_prefix_over_its_leased_share_spends_nothing_of_the_global_budget(
    mongo_server: EmbeddedMongo,
) -> None:
    async with scene_database(mongo_server) as db:
        clock = FakeClock(start=_window_start())  # stays in one 10 s window

        def replica() -> SceneHandlers:
            rates = RateWindowStore(db)
            return SceneHandlers(
                SceneStore(db),
                StaticCodes(),
                RecordingPublisher(),
                SceneSettings(scene_ttl=120.0, site_name="Test Site"),
                issue_limit=SharedRateLimit(rates, "issue", 1920),  # 320 a window, k = 10
                prefix_limit=PrefixShareLimit(rates, 1920, 25, [24], [48]),  # 80 for one /24, k = 2
                clock=clock,
            )

        replicas = [replica(), replica()]

        waits: list[float | None] = []

        async def issue(i: int, ip: str) -> bool:
            try:
                await replicas[i % 2].issue(IssueScene(ticket_hash=ticket_hash(new_ticket()), ip=ip))
            except IssueRateLimited as exc:
                waits.append(exc.retry_after)
                return False
            return True

        attack = [await issue(i, f"198.51.100.{i % 200 + 1}") for i in range(100)]
        assert 80 - (2 - 1) * (2 - 1) <= attack.count(True) <= 80
        spent = await _count(db, "issue", clock())
        assert attack.count(True) <= spent <= attack.count(True) + 2 * (10 - 1)  # leases, nothing more

        more = [await issue(i, f"198.51.100.{i % 200 + 1}") for i in range(40)]
        assert more == [False] * 40
        assert await _count(db, "issue", clock()) == spent  # the refused prefix took nothing global
        assert await _count(db, "issue@198.51.100.0/24", clock()) == 80

        assert await issue(0, "203.0.113.7") and await issue(1, "2001:db8:99::1")  # everyone else
        assert all(wait is not None and 1 <= wait <= 10 for wait in waits)


async def test_the_global_limit_answers_429_with_retry_after_through_the_gateway(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    overrides = {**RELAXED_LIMITS, "limit_issue_global_per_minute": 6}  # one per 10 s window
    stack = await start_stack_with("amqp", mongo_server, amqp_base_url, unique, code_pool_size=0, **overrides)
    try:
        statuses = []
        for _ in range(3):
            async with stack.http.post(f"{stack.gateway}/api/login/qrcode") as resp:
                body = await resp.json()
                statuses.append(resp.status)
                if resp.status == 429:
                    assert body["error"]["code"] == "rate_limited"
                    assert 1 <= int(resp.headers["Retry-After"]) <= 10
        # One per window; three quick calls span at most two windows.
        assert statuses[0] == 201 and 429 in statuses and statuses.count(201) <= 2
    finally:
        await stop_stack(stack)


async def test_per_ip_limits_answer_429_with_retry_after_and_count_each_client_apart(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    stack = await start_stack_with(
        "memory",
        mongo_server,
        amqp_base_url,
        unique,
        code_pool_size=0,
        trusted_proxies="127.0.0.1",
        limit_issue_per_ip_per_minute=6,
        limit_issue_per_ip_burst=3,
        limit_mp_per_ip_per_minute=6,
        limit_mp_per_ip_burst=2,
        limit_ws_per_ip_per_minute=6,
        limit_ws_per_ip_burst=2,
    )
    url = stack.gateway
    try:

        async def issue(client: str) -> aiohttp.ClientResponse:
            async with stack.http.post(
                f"{url}/api/login/qrcode", headers={"X-Forwarded-For": client}
            ) as resp:
                await resp.read()
                return resp

        first = [await issue("203.0.113.1") for _ in range(4)]
        assert [r.status for r in first] == [201, 201, 201, 429]
        assert int(first[-1].headers["Retry-After"]) == 10  # one more every 10 s at 6/min
        assert (await issue("203.0.113.2")).status == 201  # another client is counted apart
        assert (await issue("2001:db8:1:2::1")).status == 201
        for _ in range(2):
            await issue("2001:db8:1:2::99")  # the same /64: one subscriber
        assert (await issue("2001:db8:1:2::abcd")).status == 429

        scans = []
        for _ in range(3):
            async with stack.http.post(
                f"{url}/api/mp/scan", json={"scene": "s" * 32}, headers={"X-Forwarded-For": "198.51.100.4"}
            ) as resp:
                scans.append(resp.status)
        assert scans == [404, 404, 429]

        connects = []
        for _ in range(3):
            try:
                async with stack.http.ws_connect(
                    f"{url}/api/login/ws", headers={"Origin": ORIGIN, "X-Forwarded-For": "198.51.100.5"}
                ):
                    connects.append(101)
            except aiohttp.WSServerHandshakeError as exc:
                connects.append(exc.status)
        assert connects == [101, 101, 429]

        text = await fetch_metrics(stack.http, url)
        assert metric_value(text, "wxlogin_gateway_rate_limited_total", limit="issue") == 2
    finally:
        await stop_stack(stack)


async def test_x_forwarded_for_is_ignored_unless_it_comes_from_a_trusted_proxy(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    stack = await start_stack_with(
        "memory", mongo_server, amqp_base_url, unique, code_pool_size=0, **RELAXED_LIMITS
    )  # no trusted proxies
    try:
        headers = {"X-Forwarded-For": "183.2.172.185", "User-Agent": CHROME_ON_WINDOWS}
        async with stack.http.post(f"{stack.gateway}/api/login/qrcode", headers=headers) as resp:
            scene = (await resp.json())["scene"]
        phone = Phone(stack.http, stack.gateway, stack.sim.url)
        requester = (await phone.scan(scene))["requester"]
        assert requester["location"]["kind"] == "local"  # 127.0.0.1: the spoofed header changed nothing
    finally:
        await stop_stack(stack)


async def test_the_phone_is_shown_the_site_and_the_browser_that_asked(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    stack = await start_stack_with(
        "memory",
        mongo_server,
        amqp_base_url,
        unique,
        code_pool_size=0,
        site_name="示例商城",
        trusted_proxies="127.0.0.0/8,10.0.0.0/8",
        **RELAXED_LIMITS,
    )
    try:
        # Client-written hops on the left are not believed; our proxies (10.0.0.2, 127.0.0.1) appended.
        headers = {"X-Forwarded-For": "6.6.6.6, 183.2.172.185, 10.0.0.2", "User-Agent": CHROME_ON_WINDOWS}
        before = datetime.now(UTC)
        async with stack.http.post(f"{stack.gateway}/api/login/qrcode", headers=headers) as resp:
            scene = (await resp.json())["scene"]
        phone = Phone(stack.http, stack.gateway, stack.sim.url)
        shown = await phone.scan(scene)
        assert shown["site"] == "示例商城"
        requester = shown["requester"]
        # Where 183.2.172.185 is (the offline database), not the address itself (security review L2).
        assert (requester["browser"], requester["os"], requester["location"]["label"]) == (
            "Chrome 126",
            "Windows",
            "广东省广州市 · 电信",
        )
        assert "183.2.172.185" not in str(shown)
        requested_at = datetime.fromisoformat(requester["requested_at"].replace("Z", "+00:00"))
        assert before.timestamp() - 1 <= requested_at.timestamp() <= time.time() + 1

        second = Phone(stack.http, stack.gateway, stack.sim.url)
        with pytest.raises(PhoneError) as refused:
            await second.scan(scene)
        assert (refused.value.status, refused.value.code) == (409, "already_scanned")
    finally:
        await stop_stack(stack)


# --- security review M2: one holder of many addresses is one client ----------------------------------


async def _issue_from(stack: Any, client: str) -> aiohttp.ClientResponse:
    headers = {"X-Forwarded-For": client}
    async with stack.http.post(f"{stack.gateway}/api/login/qrcode", headers=headers) as resp:
        await resp.read()
        return resp


def _addresses_in_one_56(count: int) -> list[str]:
    """``count`` addresses, each in its own /64, all inside 2001:db8:0:ab00::/56."""
    return [f"2001:db8:0:ab{i:02x}::1" for i in range(count)]


async def test_sixty_64s_of_one_56_cannot_spend_the_global_issue_budget_of_everyone_else(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    # The gateways' buckets are out of the way: this is the share every qrcode replica counts in Mongo.
    clock = FakeClock(start=math.ceil(time.time() / 10) * 10 + 10)  # stays in one 10 s window
    stack = await start_stack_with(
        "memory",
        mongo_server,
        amqp_base_url,
        unique,
        clock=clock,
        code_pool_size=0,
        trusted_proxies="127.0.0.1",
        **{
            **RELAXED_LIMITS,
            "limit_issue_global_per_minute": 60,  # 10 per window for everyone together
            "limit_issue_prefix_share_percent": 20,  # 2 per window for one /48 or /24
        },
    )
    try:
        attack = [await _issue_from(stack, ip) for ip in _addresses_in_one_56(60)]
        assert [r.status for r in attack].count(201) == 2
        refused = [r for r in attack if r.status == 429]
        assert len(refused) == 58 and all(1 <= int(r.headers["Retry-After"]) <= 10 for r in refused)

        ipv4 = [await _issue_from(stack, f"198.51.100.{i}") for i in range(1, 61)]
        assert [r.status for r in ipv4].count(201) == 2

        # Everyone else still gets codes: the /56 and the /24 together took 4 of the window's 10.
        assert (await _issue_from(stack, "203.0.113.7")).status == 201
        assert (await _issue_from(stack, "2001:db8:99::1")).status == 201
    finally:
        await stop_stack(stack)


async def test_a_gateway_counts_the_56_and_the_24_of_a_client_not_only_its_address(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    stack = await start_stack_with(
        "memory",
        mongo_server,
        amqp_base_url,
        unique,
        code_pool_size=0,
        trusted_proxies="127.0.0.1",
        **{
            **RELAXED_LIMITS,
            "limit_issue_per_ip_per_minute": 6,
            "limit_issue_per_ip_burst": 1,
            "limit_prefix_factor": 4,  # a /24 or /56: burst 4; a /48: 16
        },
    )
    try:
        attack = [await _issue_from(stack, ip) for ip in _addresses_in_one_56(60)]
        assert [r.status for r in attack] == [201] * 4 + [429] * 56
        assert all(int(r.headers["Retry-After"]) >= 1 for r in attack[4:])
        ipv4 = [await _issue_from(stack, f"198.51.100.{i}") for i in range(1, 61)]
        assert [r.status for r in ipv4] == [201] * 4 + [429] * 56
        assert (await _issue_from(stack, "203.0.113.7")).status == 201
        assert (await _issue_from(stack, "2001:db8:99::1")).status == 201
        text = await fetch_metrics(stack.http, stack.gateway)
        assert metric_value(text, "wxlogin_gateway_rate_limited_total", limit="issue") == 112
    finally:
        await stop_stack(stack)


# --- security review M3: every route that costs a WeChat call, crypto or a write has a limit ---------


async def _post(
    stack: Any, path: str, body: Any, client: str, token: str | None = None
) -> aiohttp.ClientResponse:
    headers = {"X-Forwarded-For": client}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with stack.http.post(f"{stack.gateway}{path}", json=body, headers=headers) as resp:
        await resp.read()
        return resp


async def _code_exchanges(stack: Any) -> int:
    async with stack.http.get(f"{stack.sim.url}/sim/counters") as resp:
        return int((await resp.json()).get("sns/jscode2session", 0))


async def test_mp_login_beyond_its_limit_is_429_with_retry_after_and_reaches_no_wechat(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    stack = await start_stack_with(
        "memory",
        mongo_server,
        amqp_base_url,
        unique,
        code_pool_size=0,
        trusted_proxies="127.0.0.1",
        **{**RELAXED_LIMITS, "limit_login_per_ip_per_minute": 6, "limit_login_per_ip_burst": 3},
    )
    try:
        phone = Phone(stack.http, stack.gateway, stack.sim.url)
        codes = [await phone.wx_login() for _ in range(10)]
        logins = [await _post(stack, "/api/mp/login", {"code": c}, "203.0.113.20") for c in codes[:3]]
        assert [r.status for r in logins] == [200, 200, 200]
        exchanged = await _code_exchanges(stack)
        assert exchanged >= 3

        over = [await _post(stack, "/api/mp/login", {"code": c}, "203.0.113.20") for c in codes[3:8]]
        assert [r.status for r in over] == [429] * 5
        assert all(int(r.headers["Retry-After"]) == 10 for r in over)  # one more every 10 s at 6/min
        assert await _code_exchanges(stack) == exchanged  # no code reached WeChat

        # Its /24 neighbours share a wider bucket (4 x 3), not this address's; elsewhere is untouched.
        assert (await _post(stack, "/api/mp/login", {"code": codes[8]}, "203.0.113.21")).status == 200
        assert (await _post(stack, "/api/mp/login", {"code": codes[9]}, "2001:db8:5::1")).status == 200
    finally:
        await stop_stack(stack)


async def test_refresh_logout_phone_and_decrypt_each_have_a_per_client_limit(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    stack = await start_stack_with(
        "memory",
        mongo_server,
        amqp_base_url,
        unique,
        code_pool_size=0,
        trusted_proxies="127.0.0.1",
        **{**RELAXED_LIMITS, "limit_session_per_ip_per_minute": 6, "limit_session_per_ip_burst": 2},
    )
    try:
        calls = {
            "/api/token/refresh": {"refresh_token": "r" * 43},
            "/api/logout": {"refresh_token": "r" * 43},
            "/api/mp/phone": {"code": "phone-code"},
            "/api/mp/decrypt": {"encrypted_data": "AAAA", "iv": "AAAA"},
        }
        for n, (path, body) in enumerate(calls.items()):
            client = f"203.0.{n}.1"  # each route from its own /24, so each meets its limit alone
            statuses = [(await _post(stack, path, body, client)).status for _ in range(3)]
            assert statuses[:2] != [429, 429] and statuses[2] == 429, (path, statuses)
    finally:
        await stop_stack(stack)


async def test_phone_decrypt_and_logout_have_a_per_user_limit_whatever_the_address(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    stack = await start_stack_with(
        "memory",
        mongo_server,
        amqp_base_url,
        unique,
        code_pool_size=0,
        trusted_proxies="127.0.0.1",
        **{**RELAXED_LIMITS, "limit_user_per_minute": 6, "limit_user_burst": 2},
    )
    try:
        phone = Phone(stack.http, stack.gateway, stack.sim.url)
        login = await _post(stack, "/api/mp/login", {"code": await phone.wx_login()}, "203.0.113.30")
        assert login.status == 200
        async with stack.http.post(
            f"{stack.gateway}/api/mp/login", json={"code": await phone.wx_login()}
        ) as resp:
            token = (await resp.json())["access_token"]
        garbage = {"encrypted_data": "AAAA", "iv": "AAAA"}
        statuses = [
            (await _post(stack, "/api/mp/decrypt", garbage, f"198.51.{i}.1", token)).status for i in range(3)
        ]
        assert statuses[:2] != [429, 429] and statuses[2] == 429, statuses
        bind = await _post(stack, "/api/mp/phone", {"code": "phone-code"}, "192.0.2.1", token)
        assert bind.status == 429 and int(bind.headers["Retry-After"]) >= 1
        logout = await _post(stack, "/api/logout", {}, "192.0.2.2", token)
        assert logout.status == 429
    finally:
        await stop_stack(stack)
