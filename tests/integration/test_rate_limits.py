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
from services.qrcode.limits import SharedRateLimit
from services.qrcode.store import RateWindowStore
from shared.errors import ServiceError
from shared.messages import IssueScene
from shared.mongo import EmbeddedMongo
from sim.phone import Phone, PhoneError
from tests.scenes import (
    RELAXED_LIMITS,
    FakeClock,
    RecordingPublisher,
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
        headers = {"X-Forwarded-For": "203.0.113.77", "User-Agent": CHROME_ON_WINDOWS}
        async with stack.http.post(f"{stack.gateway}/api/login/qrcode", headers=headers) as resp:
            scene = (await resp.json())["scene"]
        phone = Phone(stack.http, stack.gateway, stack.sim.url)
        assert (await phone.scan(scene))["requester"][
            "ip"
        ] == "127.0.0.1"  # the spoofed header changed nothing
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
        headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.50, 10.0.0.2", "User-Agent": CHROME_ON_WINDOWS}
        before = datetime.now(UTC)
        async with stack.http.post(f"{stack.gateway}/api/login/qrcode", headers=headers) as resp:
            scene = (await resp.json())["scene"]
        phone = Phone(stack.http, stack.gateway, stack.sim.url)
        shown = await phone.scan(scene)
        assert shown["site"] == "示例商城"
        requester = shown["requester"]
        assert (requester["browser"], requester["os"], requester["ip"]) == (
            "Chrome 126",
            "Windows",
            "203.0.113.50",
        )
        requested_at = datetime.fromisoformat(requester["requested_at"].replace("Z", "+00:00"))
        assert before.timestamp() - 1 <= requested_at.timestamp() <= time.time() + 1

        second = Phone(stack.http, stack.gateway, stack.sim.url)
        with pytest.raises(PhoneError) as refused:
            await second.scan(scene)
        assert (refused.value.status, refused.value.code) == (409, "already_scanned")
    finally:
        await stop_stack(stack)
