"""The gateway fuzzed (docs/security.md, "Fuzzing"): Schemathesis against ``/openapi.json`` of a running
stack, and random frames on the login WebSocket. Every answer matches the OpenAPI document, none is a
500, and nothing is logged at error level or with a traceback. ``make fuzz`` runs the same, longer
(``WXLOGIN_FUZZ_EXAMPLES``, ``WXLOGIN_FUZZ_FRAMES``); the numbers are printed (``pytest -s``)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import string
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from services.gateway.openapi import document
from shared.mongo import EmbeddedMongo
from tests.integration.conftest import Stack
from tests.logcheck import ErrorLog
from tests.scenes import start_stack_with, stop_stack
from tests.support import ORIGIN, make_settings

EXAMPLES = int(os.environ.get("WXLOGIN_FUZZ_EXAMPLES", "120"))  # per operation (35): ~4,900 requests, 80 s
FRAMES = int(os.environ.get("WXLOGIN_FUZZ_FRAMES", "300"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
OPS_PATHS = {"/healthz", "/readyz", "/metrics"}
# Per-IP limits off, so the cases reach the handlers instead of a 429.
NO_LIMITS = {
    **{f"limit_{kind}_per_ip_per_minute": 0 for kind in ("issue", "mp", "ws", "poll", "login", "session")},
    "limit_user_per_minute": 0,
    "limit_issue_prefix_share_percent": 100,
}


@pytest.fixture
async def stack(mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str) -> AsyncIterator[Stack]:
    running = await start_stack_with(
        "memory", mongo_server, amqp_base_url, unique, code_pool_size=0, status_max_wait_seconds=1,
        **NO_LIMITS,
    )  # fmt: skip
    try:
        yield running
    finally:
        await stop_stack(running)


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route of the app, HEAD and the ops endpoints aside."""
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        if route.method != "HEAD" and path not in OPS_PATHS:
            routes.add((route.method.lower(), path))
    return routes


def test_the_openapi_document_describes_exactly_the_gateways_routes() -> None:
    from services.gateway.app import create_app

    app = create_app(make_settings())
    doc = document()
    described = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert described == registered_routes(app)
    assert doc["openapi"].startswith("3.1")
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (method, path)
            if "requestBody" not in operation:
                continue
            # Every body route says how it refuses a bad body: a JSON one with the API's error, a form
            # (the OAuth endpoints, RFC 6749) with a 400 of its own format.
            if "application/json" in operation["requestBody"]["content"]:
                for status in ("400", "413", "415"):
                    error = operation["responses"][status]["content"]["application/json"]["schema"]
                    assert error == {"$ref": "#/components/schemas/Error"}, (method, path, status)
            else:
                assert "400" in operation["responses"], (method, path)


async def test_the_gateway_serves_its_openapi_document(stack: Stack) -> None:
    async with stack.http.get(f"{stack.gateway}/openapi.json") as resp:
        assert resp.status == 200
        assert await resp.json() == json.loads(json.dumps(document()))


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed (the dev extra)")
async def test_schemathesis_finds_no_500_no_traceback_and_no_answer_off_the_schema(
    stack: Stack, errors: ErrorLog, tmp_path: Path
) -> None:
    har = tmp_path / "run.har"
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", f"{stack.gateway}/openapi.json",
        "--checks", "all",
        # A schema-valid wx.login code or refresh token is still one WeChat never issued: refused.
        "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(EXAMPLES),
        "--seed", os.environ.get("WXLOGIN_FUZZ_SEED", "20261206"),
        "--generation-database", "none",
        "--request-timeout", "10",
        "--no-color",
        "--report", "har", "--report-har-path", str(har),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await proc.communicate()
    finally:
        if proc.returncode is None:  # the test timed out or was cancelled: stop what it started
            proc.kill()
            await proc.wait()
    text = output.decode(errors="replace")
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(entry["response"]["status"] for entry in entries)
    print(f"\nschemathesis: {len(entries)} requests, statuses {dict(sorted(statuses.items()))}")
    assert proc.returncode == 0, text[-6000:]
    assert statuses[500] == 0
    assert len(entries) >= min(1000, 8 * EXAMPLES)
    assert errors.records == [], errors.lines()[:20]


def _deep(rng: random.Random) -> str:
    depth = rng.choice([50, 500, 999, 1000, 1023])
    return rng.choice("[{") * depth if rng.random() < 0.5 else "[" * (depth // 2) + "]" * (depth // 2)


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**63, 1e308, float("nan")])
    if kind == 2:
        return "".join(chr(rng.randrange(0x10FFFF)) for _ in range(rng.randrange(40))).encode(
            "utf-8", "replace"
        ).decode("utf-8", "replace")
    if kind == 3:
        return rng.choice(["subscribe", "", "x" * 32, "A" * 31, "state", "error"])
    if kind in (4, 5):
        keys = ["type", "scene", "ticket", "since", "code", rng.choice(["__proto__", "$where", "a" * 10])]
        return {rng.choice(keys): _json_value(rng, depth + 1) for _ in range(rng.randrange(5))}
    return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def random_frame(rng: random.Random) -> tuple[str, str | bytes]:
    """One frame a hostile or broken client might send: ("text" | "binary", data)."""
    kind = rng.randrange(8)
    scene = "".join(rng.choice(string.ascii_letters + string.digits + "_-") for _ in range(32))
    if kind == 0:
        return "text", _deep(rng)
    if kind == 1:
        return "text", json.dumps(_json_value(rng))
    if kind == 2:  # a subscribe frame, almost right
        frame = {"type": "subscribe", "scene": scene, "ticket": "t" * rng.choice([0, 15, 16, 128, 129])}
        frame.pop(rng.choice(["type", "scene", "ticket", "none"]), None)
        return "text", json.dumps(frame)
    if kind == 3:
        return "binary", rng.randbytes(rng.randrange(1, 1100))
    if kind == 4:
        return "text", "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 400)))
    if kind == 5:
        return "text", "x" * rng.choice([1023, 1024, 1025, 5000])  # around the 1 KB frame cap
    if kind == 6:
        return "text", rng.choice(['{"type":"subscribe"', "null", "[]", '""', "1e999", '{"a":NaN}', "\x00"])
    return "text", json.dumps({"type": "subscribe", "scene": scene, "ticket": "T" * 43})  # unknown scene


async def test_random_websocket_frames_get_a_refusal_frame_or_a_close_never_a_crash(
    stack: Stack, errors: ErrorLog
) -> None:
    rng = random.Random(int(os.environ.get("WXLOGIN_FUZZ_SEED", "20261206")))
    closes: Counter[int | None] = Counter()
    codes: Counter[str] = Counter()
    async with aiohttp.ClientSession() as http:
        for _ in range(FRAMES):
            kind, data = random_frame(rng)
            async with http.ws_connect(f"{stack.gateway}/api/login/ws", headers={"Origin": ORIGIN}) as ws:
                await (ws.send_str(data) if kind == "text" else ws.send_bytes(data))  # type: ignore[arg-type]
                while True:
                    msg = await ws.receive(timeout=10)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    frame = json.loads(msg.data)
                    assert frame["type"] == "error" and isinstance(frame["code"], str), frame
                    codes[frame["code"]] += 1
                closes[ws.close_code] += 1
    print(f"\nwebsocket: {FRAMES} frames, close codes {dict(closes)}, refusals {dict(codes)}")
    assert set(closes) <= {1000, 1008, 1009}, closes  # never 1011 (a server error)
    assert errors.records == [], errors.lines()[:20]


