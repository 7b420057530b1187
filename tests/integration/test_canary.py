"""Canary: run every identity flow with recognisable fake secrets and look for them everywhere.

Captured: every log record of every service at DEBUG, both as handed to the logger (before the
redaction processor, so a handler that logs a code fails here even though the redactor would hide
it) and as rendered; every HTTP response (status line, headers, body) of the gateway and of the
services' ops endpoints, and every WebSocket message; every bus message (events and RPC requests
and replies, as encoded). The secrets: the appsecret, the data and bus keys, every wx.login code,
phone code, session_key and access_token the simulator handed out (read from its state), and the
tokens and tickets we issued (these may appear only in the HTTP answer that delivers them).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
import pytest
import structlog
from aiohttp import web

from shared.bus import Delivery, MemoryBroker, MemoryBus
from shared.logging import get_logger
from shared.messages import UserCreated
from shared.mongo import EmbeddedMongo, free_port
from shared.sealing import Sealer
from sim.phone import Phone
from tests.integration.identity_stack import IdentityStack, identity_stack
from tests.support import Browser

APPSECRET = "CANARYappsecret0f1e2d3c4b5a6978"
DATA_KEY = base64.b64encode(b"CANARY-DATA-KEY-CANARY-DATA-KEY-").decode()
BUS_KEY = base64.b64encode(b"CANARY-BUS-KEY--CANARY-BUS-KEY--").decode()


# --- capture ---------------------------------------------------------------------------------------


@dataclass
class Capture:
    """Everything the system said, by channel."""

    logs_raw: list[str] = field(default_factory=list)
    logs_rendered: io.StringIO = field(default_factory=io.StringIO)
    http: list[str] = field(default_factory=list)
    websocket: list[str] = field(default_factory=list)
    bus: list[str] = field(default_factory=list)

    def channels(self) -> dict[str, list[str]]:
        return {
            "log (as logged)": self.logs_raw,
            "log (as rendered)": self.logs_rendered.getvalue().splitlines(),
            "http response": self.http,
            "websocket message": self.websocket,
            "bus message": self.bus,
        }


def spellings(secret: str) -> set[str]:
    """How a secret may show up in text: as is, URL-encoded, JSON-escaped."""
    return {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}


def leaks(secrets: dict[str, Iterable[str]], channels: dict[str, list[str]]) -> list[str]:
    """Every (secret kind, channel, excerpt) where a secret appears."""
    found = []
    for kind, values in secrets.items():
        for value in values:
            for spelling in spellings(value):
                for channel, lines in channels.items():
                    for line in lines:
                        at = line.find(spelling)
                        if at >= 0:
                            found.append(f"{kind} in {channel}: …{line[max(0, at - 80) : at + 20]}…")
    return found


class _RawRecords(logging.Handler):
    """Standard-library records as they were emitted (message and arguments, unformatted)."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        text = repr(record.msg) + " " + repr(record.args)
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        self.sink.append(text)


@contextmanager
def captured_logs(capture: Capture) -> Iterator[None]:
    """Every log record at DEBUG, before and after redaction, for the duration."""
    original = structlog.get_config()["processors"]
    # The formatter redacts, last before rendering: catch each event as it is handed to it.
    at = original.index(structlog.stdlib.ProcessorFormatter.wrap_for_formatter)

    def before_redaction(
        _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        capture.logs_raw.append(repr(dict(event_dict)))
        return event_dict

    structlog.configure(processors=[*original[:at], before_redaction, *original[at:]])
    root = logging.getLogger()
    rendered = logging.StreamHandler(capture.logs_rendered)
    rendered.setFormatter(root.handlers[0].formatter)
    raw = _RawRecords(capture.logs_raw)
    levels = {
        name: logging.getLogger(name).level for name in ("", "aiohttp", "aio_pika", "aiormq", "pymongo")
    }
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(rendered)
    root.addHandler(raw)
    try:
        yield
    finally:
        root.removeHandler(rendered)
        root.removeHandler(raw)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        structlog.configure(processors=original)


def recording_session(capture: Capture, watched: list[str]) -> aiohttp.ClientSession:
    """A client session that records every response from the ``watched`` base URLs."""

    async def record(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await handler(request)
        if any(str(request.url).startswith(base) for base in watched):
            head = f"{response.status} {response.reason}\n" + "\n".join(
                f"{k}: {v}" for k, v in response.headers.items()
            )
            body = b"" if response.status == 101 else await response.read()
            capture.http.append(head + "\n\n" + body.decode("utf-8", "replace"))
        return response

    return aiohttp.ClientSession(middlewares=(record,))


class RecordingBroker(MemoryBroker):
    """The in-memory broker, also keeping every RPC request and reply (events it keeps already)."""

    def __init__(self) -> None:
        super().__init__()
        self.rpc: list[tuple[Delivery, tuple[str, int, bytes]]] = []

    def server_for(self, service: str) -> Any:
        server = super().server_for(service)
        if server is None:
            return None

        async def recording(delivery: Delivery) -> tuple[str, int, bytes]:
            reply: tuple[str, int, bytes] = await server(delivery)
            self.rpc.append((delivery, reply))
            return reply

        return recording

    def messages(self) -> list[str]:
        out = [_delivery_text(d) for _, d in self.published]
        for request, (type_, version, body) in self.rpc:
            out.append(_delivery_text(request))
            out.append(f"{type_} v{version} {body.decode('utf-8', 'replace')}")
        return out


def _delivery_text(d: Delivery) -> str:
    body = d.body.decode("utf-8", "replace")
    return f"{d.type} v{d.version} {d.message_id} {d.correlation_id} {d.app_id} {body}"


class RecordingBrowser(Browser):
    """The JS SDK's part, keeping every WebSocket message it receives."""

    def __init__(self, session: aiohttp.ClientSession, gateway: str, sink: list[str]) -> None:
        super().__init__(session, gateway)
        self.sink = sink

    async def next_message(self, timeout: float = 5.0) -> dict[str, Any]:
        message = await super().next_message(timeout)
        self.sink.append(json.dumps(message))
        return message


# --- the flows ---------------------------------------------------------------------------------------


@dataclass
class Issued:
    """What we handed out over HTTP (allowed in the answer that delivers it, nowhere else)."""

    tokens: set[str] = field(default_factory=set)

    def keep(self, body: Any) -> None:
        if isinstance(body, dict):
            for key in ("access_token", "refresh_token", "ticket", "scan_token"):
                if isinstance(body.get(key), str):
                    self.tokens.add(body[key])


async def run_every_flow(stack: IdentityStack, http: aiohttp.ClientSession, capture: Capture) -> Issued:
    """Scan login, mini-program login, phone, decryption, refresh (twice, and a reuse), logout."""
    issued = Issued()

    async def call(method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with http.request(method, f"{stack.gateway}{path}", json=body, headers=headers) as resp:
            raw = await resp.read()
            data = json.loads(raw) if raw else None
        issued.keep(data)
        return resp.status, data

    # Scan login, with the browser on a WebSocket.
    browser = RecordingBrowser(http, stack.gateway, capture.websocket)
    issued.keep(await browser.issue())
    assert (await browser.subscribe())["state"] == "pending"
    scanner = Phone(http, stack.gateway, stack.sim.url)
    await scanner.register(unionid=True)
    issued.keep(await scanner.scan(browser.scene))
    assert (await browser.next_message())["state"] == "scanned"
    code = await scanner.wx_login()
    confirm = {"scene": browser.scene, "scan_token": scanner.scan_tokens[browser.scene], "code": code}
    assert (await call("POST", "/api/mp/confirm", confirm))[0] == 200
    assert (await call("POST", "/api/mp/confirm", confirm))[0] == 200
    assert (await browser.next_message())["state"] == "confirmed"
    await browser.next_message()
    status, web_tokens = await browser.complete()
    assert status == 200
    issued.keep(web_tokens)
    assert (await call("GET", "/api/me", token=web_tokens["access_token"]))[0] == 200

    # Plain mini-program login, phone binding, decryption.
    phone = Phone(http, stack.gateway, stack.sim.url)
    await phone.register(unionid=True, phone="13700137000")
    status, mp = await call("POST", "/api/mp/login", {"code": await phone.wx_login()})
    assert status == 200
    status, bound = await call(
        "POST", "/api/mp/phone", {"code": await phone.phone_number_code()}, mp["access_token"]
    )
    assert status == 200, bound
    payload = await phone.encrypted({"nickName": "金丝雀", "unionId": mp["user"]["unionid"]})
    assert (await call("POST", "/api/mp/decrypt", payload, mp["access_token"]))[0] == 200
    wrong = await stack.control.encrypted_data(phone.openid or "", {"x": 1}, appid="wx0000000000000000")
    assert (await call("POST", "/api/mp/decrypt", wrong, mp["access_token"]))[0] == 400

    # Refresh: two tabs at once, a rotation, a stolen copy after the grace, then a fresh login's logout.
    both = await asyncio.gather(
        *(call("POST", "/api/token/refresh", {"refresh_token": mp["refresh_token"]}) for _ in range(2))
    )
    assert [s for s, _ in both] == [200, 200]
    assert (await call("POST", "/api/token/refresh", {"refresh_token": both[0][1]["refresh_token"]}))[
        0
    ] == 200
    await asyncio.sleep(stack.settings.refresh_grace_seconds + 0.2)
    assert (await call("POST", "/api/token/refresh", {"refresh_token": mp["refresh_token"]}))[0] == 401
    status, again = await call("POST", "/api/mp/login", {"code": await phone.wx_login()})
    assert status == 200
    assert (await call("POST", "/api/logout", token=again["access_token"]))[0] == 204
    assert (await call("POST", "/api/token/refresh", {"refresh_token": again["refresh_token"]}))[0] == 401

    # Failures: a reused code, a bad phone code.
    assert (await call("POST", "/api/mp/login", {"code": code}))[0] == 400
    status, _ = await call("POST", "/api/mp/phone", {"code": "f" * 64}, web_tokens["access_token"])
    assert status == 400

    # Ops endpoints of every service.
    for key in stack.system.urls:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(f"{stack.system.urls[key]}{path}") as resp:
                await resp.read()
    await browser.close()
    return issued


def secrets_of(stack: IdentityStack, issued: Issued) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(never anywhere, never outside the HTTP answer that delivers them)."""
    state = stack.sim.state
    everywhere = {
        "appsecret": {APPSECRET},
        "data key": {DATA_KEY},
        "bus key": {BUS_KEY},
        "wx.login code": set(state.codes),
        "phone code": set(state.phone_codes),
        "session_key": {u.session_key for u in state.users.values() if u.session_key},
        "WeChat access_token": set(state.tokens),
    }
    assert all(everywhere.values()), {k: len(v) for k, v in everywhere.items()}  # the flows made each kind
    assert any(len(t) == 43 for t in issued.tokens)  # the scan token was collected too
    return everywhere, {"our token, ticket or scan token": issued.tokens}


def assert_no_leaks(stack: IdentityStack, issued: Issued, capture: Capture) -> None:
    everywhere, ours = secrets_of(stack, issued)
    channels = capture.channels()
    assert all(channels[name] for name in channels), {k: len(v) for k, v in channels.items()}
    not_http = {k: v for k, v in channels.items() if k != "http response"}
    found = leaks(everywhere, channels) + leaks(ours, not_http)
    assert found == [], "\n".join(found[:20])


# --- the tests -----------------------------------------------------------------------------------------


CANARY_SETTINGS = {"secret": APPSECRET, "data_key": DATA_KEY, "bus_key": BUS_KEY}


async def test_no_secret_appears_in_logs_responses_or_bus_messages(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    capture = Capture()
    with captured_logs(capture):
        async with identity_stack(
            "memory", mongo_server, amqp_base_url, unique, broker_factory=RecordingBroker, **CANARY_SETTINGS
        ) as stack:
            http = recording_session(capture, list(stack.system.urls.values()))
            try:
                issued = await run_every_flow(stack, http, capture)
            finally:
                await http.close()
            assert isinstance(stack.broker, RecordingBroker)
            await stack.broker.drain()
            capture.bus.extend(stack.broker.messages())
            assert any(m.startswith("session.decrypt ") for m in capture.bus)
            assert any(m.startswith("token.refreshed ") for m in capture.bus)
            assert_no_leaks(stack, issued, capture)


def _rabbitmqctl(*args: str) -> bool:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return False
    return subprocess.run([ctl, *args], capture_output=True, timeout=60).returncode == 0


async def test_no_secret_appears_on_rabbitmq_either(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> None:
    vhost = urllib.parse.unquote(amqp_base_url.rsplit("/", 1)[1])
    if not vhost or not await asyncio.to_thread(_rabbitmqctl, "trace_on", "-p", vhost):
        pytest.skip("needs rabbitmqctl and the per-run vhost (the firehose is switched on per vhost)")
    capture = Capture()
    connection = await aio_pika.connect(amqp_base_url)
    try:
        channel = await connection.channel()
        spy = await channel.declare_queue(exclusive=True)
        # The firehose copies every publish in the vhost, including RPC requests and direct replies.
        await spy.bind("amq.rabbitmq.trace", routing_key="publish.#")

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            headers = message.headers or {}
            where = f"{headers.get('exchange_name')} {headers.get('routing_keys')}"
            capture.bus.append(f"{where} {message.body.decode('utf-8', 'replace')}")
            await message.ack()

        await spy.consume(keep)
        with captured_logs(capture):
            async with identity_stack(
                "amqp", mongo_server, amqp_base_url, unique, **CANARY_SETTINGS
            ) as stack:
                http = recording_session(capture, list(stack.system.urls.values()))
                try:
                    issued = await run_every_flow(stack, http, capture)
                finally:
                    await http.close()
                await asyncio.sleep(0.3)  # let the firehose copies arrive
                prefix = stack.settings.bus_prefix
                assert any(f"{prefix}session.rpc" in m and "session.decrypt" not in m for m in capture.bus)
                assert any("amq.rabbitmq.reply-to" in m for m in capture.bus)  # replies are traced too
                assert_no_leaks(stack, issued, capture)
    finally:
        await connection.close()
        await asyncio.to_thread(_rabbitmqctl, "trace_off", "-p", vhost)


async def test_the_canary_catches_a_leak_in_each_channel(unique: str) -> None:
    """A test that cannot fail is a defect: plant one secret per channel and see it reported."""
    planted = "CANARYplanted0code0" + unique
    capture = Capture()
    with captured_logs(capture):
        # A handler that logs a code under a key the redactor knows (hidden in output) …
        get_logger("canary").info("oops", code=planted)
        # … and under one it does not.
        get_logger("canary").info("oops", wx=planted)
    assert leaks({"code": [planted]}, {"raw": capture.logs_raw})  # both are caught before redaction
    assert sum(planted in line for line in capture.logs_rendered.getvalue().splitlines()) == 1

    broker = RecordingBroker()
    sealer = Sealer.from_text(BUS_KEY)
    session, gateway = MemoryBus(broker, "session", sealer), MemoryBus(broker, "gateway", sealer)
    await session.start()
    await gateway.start()
    await gateway.subscribe_broadcast([UserCreated], lambda event: asyncio.sleep(0))
    await session.publish(UserCreated(user_id="u_1", openid=planted))
    capture.bus.extend(broker.messages())

    app = web.Application()

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"echo": planted})

    app.router.add_get("/", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    http = recording_session(capture, [f"http://127.0.0.1:{port}"])
    try:
        async with http.get(f"http://127.0.0.1:{port}/") as resp:
            assert (await resp.json())["echo"] == planted  # the body can still be read after recording
    finally:
        await http.close()
        await runner.cleanup()

    found = leaks({"code": [planted]}, capture.channels())
    assert {line.split(": ", 1)[0] for line in found} == {
        "code in log (as logged)",
        "code in log (as rendered)",
        "code in bus message",
        "code in http response",
    }
