"""A token WeChat rejects (40001) costs exactly one retry within the caller's RPC timeout, also right
after a force refresh, when WeChat allows no newer token for 30 s (issue 13).

The four services over real RabbitMQ and the simulator over real HTTP; the simulator's fault
injection answers 40001 to a valid token, and its counters count every WeChat call.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.mongo import EmbeddedMongo
from tests.integration.identity_stack import IdentityStack, MiniProgram, identity_stack
from tests.support import Browser

PHONE = "wxa/business/getuserphonenumber"
RENDER = "wxa/getwxacodeunlimit"
STABLE = "cgi-bin/stable_token"


@pytest.fixture
async def stack(mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str) -> AsyncIterator[IdentityStack]:
    """The system over RabbitMQ, without a code pool: every issue renders its code through WeChat."""
    async with identity_stack("amqp", mongo_server, amqp_base_url, unique, code_pool_size=0) as running:
        yield running


def forced(stack: IdentityStack) -> int:
    """Force refreshes WeChat granted today."""
    return stack.sim.state.used("force_refresh", "day")


async def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def user_with_phone(stack: IdentityStack) -> MiniProgram:
    mp = await stack.phone().register(phone="13800138000")
    await mp.login()
    return mp


async def test_phone_binding_retries_a_40001_once_also_right_after_a_force_refresh(
    stack: IdentityStack,
) -> None:
    mp = await user_with_phone(stack)
    rpc_timeout = stack.settings.rpc_timeout_seconds

    # A valid token rejected: one force refresh, one retry with its token.
    before = await stack.counters()
    await stack.control.fault(PHONE, errcode=40001, count=1)
    (status, body), _ = await timed(mp.bind_phone())
    assert status == 200, body
    after = await stack.counters()
    assert after[PHONE] - before.get(PHONE, 0) == 2
    assert after[STABLE] - before.get(STABLE, 0) == 1 and forced(stack) == 1

    # Seconds later WeChat rejects the new token too: no force refresh is allowed for 30 s, so the
    # retry uses the newest token there is, at once, instead of waiting 10 s for one that cannot come.
    await stack.control.fault(PHONE, errcode=40001, count=1)
    (status, body), elapsed = await timed(mp.bind_phone())
    assert status == 200, body
    assert elapsed < rpc_timeout / 2
    final = await stack.counters()
    assert final[PHONE] - after[PHONE] == 2  # exactly one retry
    assert final[STABLE] == after[STABLE] and forced(stack) == 1


async def test_a_code_render_retries_a_40001_once_also_right_after_a_force_refresh(
    stack: IdentityStack,
) -> None:
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()  # the token is known and works
    before = await stack.counters()
    await stack.control.fault(RENDER, errcode=40001, count=1)
    await browser.issue()
    after = await stack.counters()
    assert after[RENDER] - before[RENDER] == 2
    assert forced(stack) == 1

    await stack.control.fault(RENDER, errcode=42001, count=1)
    _, elapsed = await timed(browser.issue())
    assert elapsed < stack.settings.rpc_timeout_seconds / 2
    final = await stack.counters()
    assert final[RENDER] - after[RENDER] == 2
    assert final[STABLE] == after[STABLE] and forced(stack) == 1


async def test_a_rejected_token_that_cannot_be_replaced_in_time_is_a_quick_503_with_retry_after(
    stack: IdentityStack,
) -> None:
    mp = await user_with_phone(stack)
    before = await stack.counters()
    # The force refresh fails (it is never retried: WeChat may have done it), and the retry with the
    # rejected token is refused again: a retryable answer well within the RPC timeout, not a timeout.
    await stack.control.fault(STABLE, errcode=-1, count=1)
    await stack.control.fault(PHONE, errcode=40001, count=1)
    started = time.monotonic()
    async with stack.http.post(
        f"{stack.gateway}/api/mp/phone",
        json={"code": await mp.phone.phone_number_code()},
        headers={"Authorization": f"Bearer {mp.access_token}"},
    ) as resp:
        body = await resp.json()
        status, retry_after = resp.status, resp.headers.get("Retry-After")
    assert time.monotonic() - started < stack.settings.rpc_timeout_seconds
    assert (status, body["error"]["code"]) == (503, "token_unavailable")
    assert retry_after is not None and int(retry_after) >= 1
    after = await stack.counters()
    assert after[PHONE] - before.get(PHONE, 0) == 1  # no retry without a token to retry with
    assert forced(stack) == 0
