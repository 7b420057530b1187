"""Hostile input at the gateway's edge (docs/security.md L3, L4, Info): deeply nested JSON, bodies of
the wrong type, requests aiohttp refuses before the app, ops endpoints spelt another way. Each answer
is 4xx in the API's JSON error shape and nothing is logged at error level or with a traceback."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.mongo import EmbeddedMongo, free_port
from sim.wechat.testing import running_sim
from tests.integration.conftest import Stack
from tests.logcheck import ErrorLog
from tests.scenes import start_stack_with, stop_stack
from tests.support import ORIGIN, eventually

HAPROXY = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"

DEEP = "[" * 5000 + "]" * 5000  # 10 KB, under the 16 KB body cap; ~1000 levels used to be a 500
JSON_ROUTES = [
    "/api/login/complete",
    "/api/mp/scan",
    "/api/mp/confirm",
    "/api/mp/cancel",
    "/api/mp/login",
    "/api/token/refresh",
    "/api/logout",
]


@pytest.fixture
async def stack(mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str) -> AsyncIterator[Stack]:
    running = await start_stack_with("memory", mongo_server, amqp_base_url, unique, code_pool_size=0)
    try:
        yield running
    finally:
        await stop_stack(running)


def assert_api_error(status: int, body: Any, expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body


async def test_deeply_nested_json_is_a_400_on_every_json_route_not_a_500(
    stack: Stack, errors: ErrorLog
) -> None:
    for path in JSON_ROUTES:
        async with stack.http.post(
            f"{stack.gateway}{path}", data=DEEP, headers={"Content-Type": "application/json"}
        ) as resp:
            assert_api_error(resp.status, await resp.json(), 400, "invalid_request")
    assert errors.records == [], errors.lines()


async def test_a_deeply_nested_websocket_frame_is_refused_like_any_malformed_frame(
    stack: Stack, errors: ErrorLog
) -> None:
    ws = await stack.http.ws_connect(f"{stack.gateway}/api/login/ws", headers={"Origin": ORIGIN})
    await ws.send_str("[" * 1000)  # the 1 KB frame cap holds 1000 levels
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data) == {
        "type": "error",
        "code": "invalid_request",
    }
    await ws.receive(timeout=5)
    assert ws.close_code == 1008
    assert errors.records == [], errors.lines()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_json_body_sent_as_another_type_is_a_415(stack: Stack, content_type: str | None) -> None:
    # text/plain is what a cross-site form or a fetch without preflight sends.
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"code": "0" * 32}).encode()
    for path in JSON_ROUTES:
        async with stack.http.post(
            f"{stack.gateway}{path}", data=body, headers=headers, skip_auto_headers=["Content-Type"]
        ) as resp:
            assert_api_error(resp.status, await resp.json(), 415, "unsupported_media_type")


async def test_json_with_a_charset_is_still_json(stack: Stack) -> None:
    async with stack.http.post(
        f"{stack.gateway}/api/mp/scan",
        data=b'{"scene": "x"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    ) as resp:
        assert_api_error(resp.status, await resp.json(), 400, "invalid_request")  # the scene, not the type


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is; the status, headers and body of the answer (read until close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


MALFORMED = {
    "request line": b"GARBAGE\r\n\r\n",
    "method": b"G@T /api/me HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP version": b"GET /api/me HTTP/9.9\r\nHost: x\r\n\r\n",
    "line too long": b"GET /api/me?" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header too long": b"GET /api/me HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20000 + b"\r\n\r\n",
    "too many headers": b"GET /api/me HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
    + b"\r\n",
    "header name": b"GET /api/me HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    "chunk size": b"POST /api/mp/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    "Content-Length with chunked": b"POST /api/mp/login HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_request_aiohttp_refuses_before_the_app_gets_our_json_error(
    stack: Stack, errors: ErrorLog, request_bytes: bytes
) -> None:
    port = int(stack.gateway.rsplit(":", 1)[1])
    status, headers, body = await asyncio.to_thread(raw_exchange, port, request_bytes)
    assert headers["content-type"].startswith("application/json")
    assert_api_error(status, json.loads(body), 400, "invalid_request")
    assert b"a" * 100 not in body  # the client's bytes are not echoed
    assert errors.records == [], errors.lines()


async def test_a_body_over_the_cap_is_a_413_in_our_json(stack: Stack) -> None:
    port = int(stack.gateway.rsplit(":", 1)[1])
    request = (
        b"POST /api/mp/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: 20000\r\n\r\n" + b" " * 20000
    )
    status, _, body = await asyncio.to_thread(raw_exchange, port, request)
    assert_api_error(status, json.loads(body), 413, "payload_too_large")


@pytest.mark.parametrize(
    "target", ["/%6Detrics", "/%6detrics", "/metric%73", "/%72eadyz", "/%68ealthz", "http://x/metrics"]
)
async def test_ops_endpoints_spelt_another_way_are_not_found_on_the_public_port(
    stack: Stack, target: str
) -> None:
    # The load balancer refuses exactly /metrics, /readyz, /healthz (percent-decoded); the gateway
    # refuses every other spelling of them, so no difference in decoding between the two opens a gap.
    port = int(stack.gateway.rsplit(":", 1)[1])
    request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    status, _, body = await asyncio.to_thread(raw_exchange, port, request)
    assert_api_error(status, json.loads(body), 404, "not_found")
    assert b"wxlogin_" not in body


def public_frontend(config: str, port: int, gateway_port: int) -> str:
    """The shipped ``frontend public`` rules, listening on ``port`` in front of one local gateway."""
    lines = config.splitlines()
    start = lines.index("frontend public")
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "#")))
    frontend = [
        f"    bind 127.0.0.1:{port}" if line.strip().startswith("bind :") else line
        for line in lines[start:end]
    ]
    return "\n".join(
        [
            "defaults",
            "    mode http",
            "    timeout connect 5s",
            "    timeout client 10s",
            "    timeout server 10s",
            *frontend,
            "backend gateways",
            f"    server gateway 127.0.0.1:{gateway_port}",
            "",
        ]
    )


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed here")
async def test_the_shipped_load_balancer_refuses_percent_encoded_ops_paths(
    stack: Stack, tmp_path: Path
) -> None:
    gateway_port = int(stack.gateway.rsplit(":", 1)[1])
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(public_frontend(HAPROXY.read_text(), port, gateway_port))
    proc = await asyncio.create_subprocess_exec(
        "haproxy", "-db", "-f", str(cfg), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await eventually(lambda: _port_open(port), timeout=10)
        refused = ["/metrics", "/%6Detrics", "/%6detrics", "/readyz", "/%72eadyz", "/healthz", "/metrics?x=1"]
        for target in refused:
            request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            status, _, body = await asyncio.to_thread(raw_exchange, port, request)
            assert_api_error(status, json.loads(body), 404, "not_found")
            assert b"wxlogin_" not in body, target
        request = b"GET /sdk/wxlogin.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, _, _ = await asyncio.to_thread(raw_exchange, port, request)
        assert status == 200  # the rest passes
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


async def test_the_exact_ops_paths_still_answer_for_the_balancer_and_prometheus(stack: Stack) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        async with stack.http.get(f"{stack.gateway}{path}") as resp:
            assert resp.status in (200, 503), path


async def test_the_simulator_answers_deeply_nested_json_with_its_errors_not_a_500() -> None:
    async with (
        running_sim(appid="wx5f3a9c2e81d04b76", secret="0" * 32) as sim,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(f"{sim.url}/cgi-bin/stable_token", data=DEEP) as resp:
            assert resp.status == 200
            assert (await resp.json())["errcode"] == 47001
        async with http.post(f"{sim.url}/sim/users", data=DEEP) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "invalid_json"
