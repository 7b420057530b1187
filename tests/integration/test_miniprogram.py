"""The mini-program's page logic (``miniprogram/lib``) under Node, against a real running stack.

``node --test`` runs ``miniprogram/test/`` with a stand-in ``wx`` whose ``wx.request`` goes to this
test's gateway and whose ``wx.login`` gets codes from this test's WeChat simulator.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.clients import new_secret
from shared.mongo import EmbeddedMongo
from tests.integration.conftest import Stack
from tests.scenes import FakeClock, start_stack_with, stop_stack
from tests.support import Browser

MINIPROGRAM = Path(__file__).parents[2] / "miniprogram"
NODE = shutil.which("node")
NODE_TIMEOUT = 90.0
# link.test.js: a confidential client whose backend opens link requests (docs/linking.md).
LINK_SECRET, LINK_SECRET_HASH = new_secret()
LINK_CLIENT, LINK_SITE = "mp-shop", "示例商城"

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(follow_real_time=True)


@pytest.fixture
async def clocked_stack(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Stack]:
    clients = tmp_path / "clients.yaml"
    clients.write_text(
        f"clients:\n  - client_id: {LINK_CLIENT}\n    client_secret_hash: {LINK_SECRET_HASH}\n"
        f"    site_name: {LINK_SITE}\n",
        encoding="utf-8",
    )
    # One client IP runs every Node test: room for their codes and their retried requests.
    stack = await start_stack_with(
        "memory",
        mongo_server,
        amqp_base_url,
        unique,
        clock=clock,
        code_pool_size=4,
        limit_issue_per_ip_burst=30,
        limit_mp_per_ip_burst=120,
        limit_login_per_ip_burst=120,
        limit_session_per_ip_burst=120,
        limit_user_burst=120,
        # confirm-screen.test.js: the browser and the phone come from public addresses (security M4).
        trusted_proxies="127.0.0.0/8",
        clients_file=str(clients),
    )
    try:
        yield stack
    finally:
        await stop_stack(stack)


async def expired_scene(stack: Stack, clock: FakeClock) -> str:
    """A scene the sweeper has moved to ``expired`` (the services' clock goes forward, then back).

    The push proves the sweeper stored it: a status read alone would also say ``expired`` for an
    overdue scene, which turns pending again once the clock is back.
    """
    browser = Browser(stack.http, stack.gateway, origin=stack.settings.allowed_origins[0])
    await browser.issue()
    assert (await browser.subscribe())["state"] == "pending"
    step = stack.settings.scene_ttl_seconds + 1
    clock.advance(step)
    try:
        pushed = await browser.next_message(timeout=10)
    finally:
        clock.advance(-step)
        await browser.close()
    assert pushed.get("state") == "expired", pushed
    return browser.scene


async def test_the_mini_program_pages_pass_their_node_tests_against_the_gateway(
    clocked_stack: Stack, clock: FakeClock
) -> None:
    assert NODE is not None
    env = {
        **os.environ,
        "WXLOGIN_GATEWAY_URL": clocked_stack.gateway,
        "WXLOGIN_SIM_URL": clocked_stack.sim.url,
        "WXLOGIN_SITE_NAME": clocked_stack.settings.site_name,
        "WXLOGIN_EXPIRED_SCENE": await expired_scene(clocked_stack, clock),
        "WXLOGIN_LINK_CLIENT": LINK_CLIENT,
        "WXLOGIN_LINK_SECRET": LINK_SECRET,
        "WXLOGIN_LINK_SITE_NAME": LINK_SITE,
    }
    tests = sorted(str(p) for p in (MINIPROGRAM / "test").glob("*.test.js"))
    proc = await asyncio.create_subprocess_exec(
        NODE,
        "--test",
        "--test-reporter=tap",
        *tests,
        cwd=MINIPROGRAM,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    report = out.decode()
    assert proc.returncode == 0, report
    counts = dict(re.findall(r"^# (pass|fail|skipped) (\d+)$", report, re.MULTILINE))
    assert counts.get("fail") == "0", report
    assert counts.get("skipped") == "0", report  # every live test ran
    assert int(counts.get("pass", "0")) >= 12, report
