"""Helpers for tests that drive the simulator over real HTTP: run it on a free port, script it.

async with running_sim(appid="wx…", secret="…") as sim:
    user = await sim.control.create_user(unionid=True)
    code = await sim.control.login_code(user["openid"])
    await sim.control.fault("sns/jscode2session", errcode=-1, count=1)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from sim.wechat.app import STATE, create_app
from sim.wechat.state import DEFAULT_PAGES, AnyCode, Limits, SimState


class ControlCallFailed(Exception):
    """The control API refused a call (its ``{"error": {"code", "message"}}`` is in ``body``)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class SimControl:
    """The ``/sim`` control API of a running simulator, one method per call."""

    http: aiohttp.ClientSession
    url: str

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Any control call; raises :class:`ControlCallFailed` on a 4xx/5xx."""
        async with self.http.request(method, f"{self.url}{path}", json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise ControlCallFailed(resp.status, data)
            return data

    async def create_user(self, **traits: Any) -> dict[str, Any]:
        """``POST /sim/users`` (``unionid``, ``phone``, ``country_code``, ``blocked``)."""
        user: dict[str, Any] = await self.call("POST", "/sim/users", traits)
        return user

    async def user(self, openid: str) -> dict[str, Any]:
        """``GET /sim/users/{openid}`` (includes the current ``session_key``)."""
        user: dict[str, Any] = await self.call("GET", f"/sim/users/{openid}")
        return user

    async def login_code(self, openid: str) -> str:
        """``POST /sim/codes``: what ``wx.login()`` returns on the user's phone."""
        return str((await self.call("POST", "/sim/codes", {"openid": openid}))["code"])

    async def phone_code(self, openid: str) -> str:
        """``POST /sim/phone-codes``: what a getPhoneNumber button returns."""
        return str((await self.call("POST", "/sim/phone-codes", {"openid": openid}))["code"])

    async def encrypted_data(self, openid: str, data: dict[str, Any], **extra: Any) -> dict[str, str]:
        """``POST /sim/encrypted-data`` → ``{encrypted_data, iv}``."""
        out: dict[str, str] = await self.call(
            "POST", "/sim/encrypted-data", {"openid": openid, "data": data, **extra}
        )
        return out

    async def dev_user(self) -> dict[str, Any]:
        """``GET /sim/dev-user``: the user unknown codes log in as in sticky any-code mode."""
        user: dict[str, Any] = await self.call("GET", "/sim/dev-user")
        return user

    async def new_dev_user(self, **choice: Any) -> dict[str, Any]:
        """``POST /sim/dev-user`` (``index`` or ``openid``; neither: the next developer user)."""
        user: dict[str, Any] = await self.call("POST", "/sim/dev-user", choice)
        return user

    async def fault(self, endpoint: str, **spec: Any) -> dict[str, Any]:
        """``POST /sim/faults`` (``errcode``, ``errmsg``, ``count``, ``latency_ms``, ``mode``)."""
        fault: dict[str, Any] = await self.call("POST", "/sim/faults", {"endpoint": endpoint, **spec})
        return fault

    async def clear_faults(self, endpoint: str | None = None) -> int:
        """``DELETE /sim/faults[?endpoint=…]`` → how many were removed."""
        path = "/sim/faults" + (f"?endpoint={endpoint}" if endpoint else "")
        return int((await self.call("DELETE", path))["cleared"])

    async def advance(self, seconds: float) -> float:
        """``POST /sim/clock`` → the new simulated time."""
        return float((await self.call("POST", "/sim/clock", {"advance_s": seconds}))["now"])

    async def counters(self) -> dict[str, int]:
        """``GET /sim/counters``."""
        counts: dict[str, int] = await self.call("GET", "/sim/counters")
        return counts

    async def configure(self, **changes: Any) -> dict[str, Any]:
        """``POST /sim/config`` with any of ``open_platform_bound``, ``published_pages``, ``limits``..."""
        config: dict[str, Any] = await self.call("POST", "/sim/config", changes)
        return config

    async def reset(self) -> None:
        """``POST /sim/reset``."""
        await self.call("POST", "/sim/reset")


@dataclass(frozen=True)
class Answer:
    """A raw answer of a WeChat endpoint: status, Content-Type, bytes, and the JSON when it parses."""

    status: int
    content_type: str
    body: bytes

    @property
    def json(self) -> Any:
        """The body as JSON (whatever the Content-Type says, as a client must read it)."""
        return json.loads(self.body)

    @property
    def errcode(self) -> int | None:
        """The errcode of a JSON answer (None for an image, or a success without one)."""
        try:
            data = self.json
        except ValueError:
            return None
        return data.get("errcode") if isinstance(data, dict) else None


@dataclass
class RunningSim:
    """A simulator listening on 127.0.0.1, its state (for white-box checks) and its control API."""

    url: str
    state: SimState
    control: SimControl
    http: aiohttp.ClientSession

    async def access_token(self) -> str:
        """A valid access_token, from ``cgi-bin/stable_token`` with the simulator's own credentials."""
        body = {"grant_type": "client_credential", "appid": self.state.appid, "secret": self.state.secret}
        token: str = (await self.wechat("POST", "cgi-bin/stable_token", json_body=body)).json["access_token"]
        return token

    async def wechat(
        self,
        method: str,
        endpoint: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Call a WeChat endpoint by hand (``json_body`` is serialised, ``data`` sent as is)."""
        payload = json.dumps(json_body).encode() if json_body is not None else data
        async with self.http.request(
            method, f"{self.url}/{endpoint}", params=params, data=payload, headers=headers
        ) as resp:
            return Answer(resp.status, resp.headers.get("Content-Type", ""), await resp.read())


@asynccontextmanager
async def running_sim(
    *,
    appid: str,
    secret: str,
    open_platform_bound: bool = True,
    published_pages: Iterable[str] = DEFAULT_PAGES,
    limits: Limits | None = None,
    any_code: AnyCode = "off",
) -> AsyncIterator[RunningSim]:
    """The simulator on a free port of 127.0.0.1 with an HTTP session; both stopped on exit."""
    app = create_app(
        appid=appid,
        secret=secret,
        open_platform_bound=open_platform_bound,
        published_pages=published_pages,
        limits=limits,
        any_code=any_code,
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    http = aiohttp.ClientSession()
    try:
        yield RunningSim(url, app[STATE], SimControl(http, url), http)
    finally:
        await http.close()
        await runner.cleanup()
