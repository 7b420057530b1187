"""The login driver: continuous browser + phone logins at a steady rate, each a well-behaved client
(waits out 503/429 after Retry-After, retries network errors at a live gateway, times every request
out), with a ledger of what each login saw; and a /readyz poller that records every replica's answers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.chaos.stack import ORIGIN

REQUEST_TIMEOUT = 10.0  # a request unanswered this long is a hang
RETRY_STATUSES = frozenset({429, 503})
NETWORK_RETRY = 0.5  # seconds before retrying a request the network failed
POLL_WAIT = 5  # seconds a status long-poll may wait
PUSH_PATIENCE = 8.0  # seconds a socket may stay silent before the browser asks by long-poll
FINAL_STATES = frozenset({"confirmed", "cancelled", "expired"})
HANG = "hang"
NETWORK = "network"


class GiveUp(Exception):
    """A login stopped: ``retryable`` when it only ever saw errors a client waits out."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


@dataclass
class LoginRecord:
    """What one login saw, step by step; times are ``time.monotonic()``."""

    n: int
    started: float
    scene: str = ""
    seen: dict[str, list[int | str]] = field(default_factory=dict)
    codes: list[str] = field(default_factory=list)  # the error codes of refusals, in order
    confirmed: bool = False
    completed_at: float | None = None
    sessions: set[str] = field(default_factory=set)  # refresh tokens the completes returned
    failure: str = ""
    failed_retryable: bool = False
    gateway: int = 0

    def saw(self, step: str, what: int | str) -> None:
        """Note one answer (an HTTP status, ``hang`` or ``network``) of ``step``."""
        self.seen.setdefault(step, []).append(what)

    def summary(self) -> str:
        """What each step saw, counted: ``issue 201, confirm 503x12 200``."""
        parts = []
        for step, seen in self.seen.items():
            counted = [f"{a}x{seen.count(a)}" if seen.count(a) > 1 else str(a) for a in dict.fromkeys(seen)]
            parts.append(f"{step} {' '.join(counted)}")
        return ", ".join(parts)

    def last_answer(self, step: str) -> str:
        """The last answer of ``step``, with its error code when it was a refusal: ``503 bus_unavailable``."""
        last = self.seen[step][-1]
        refusals = [code for code in self.codes if code.startswith(f"{step} ")]
        if isinstance(last, int) and last >= 400 and refusals:
            return refusals[-1].removeprefix(f"{step} ")
        return str(last)

    def answers(self) -> Iterable[int | str]:
        """Every answer of every step."""
        return itertools.chain.from_iterable(self.seen.values())

    @property
    def completed(self) -> bool:
        """The browser got tokens."""
        return self.completed_at is not None

    @property
    def lost(self) -> bool:
        """The phone confirmed but the browser never got tokens."""
        return self.confirmed and not self.completed

    @property
    def doubled(self) -> bool:
        """The scene was redeemed for two different sessions."""
        return len(self.sessions) > 1

    @property
    def server_errors(self) -> int:
        """Answers of 5xx other than 503 (a 500 where a 503 belonged, or worse)."""
        return sum(1 for a in self.answers() if isinstance(a, int) and a >= 500 and a != 503)

    @property
    def hangs(self) -> int:
        """Requests unanswered within :data:`REQUEST_TIMEOUT`."""
        return sum(1 for a in self.answers() if a == HANG)

    @property
    def unavailable(self) -> int:
        """Answers of 503."""
        return sum(1 for a in self.answers() if a == 503)


@dataclass
class Answer:
    """An HTTP answer: status, JSON body (or None) and Retry-After in seconds (or None)."""

    status: int
    body: Any
    retry_after: float | None

    @property
    def code(self) -> str:
        """The error code of an error body ('' otherwise)."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code", "")) if isinstance(error, dict) else ""


class Driver:
    """Runs logins against the live gateways and keeps their ledger."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        gateways: Callable[[], list[str]],
        sim_url: str,
        openids: list[str],
        *,
        lifetime: float = 120.0,
    ) -> None:
        self.http = http
        self.gateways = gateways
        self.sim_url = sim_url
        self.openids = openids
        self.lifetime = lifetime  # the scene's lifetime: how long a browser keeps trying to log in
        self.ledger: list[LoginRecord] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the load ------------------------------------------------------------------------------

    async def run(self, rate: float, stop: asyncio.Event) -> None:
        """Start ``rate`` logins a second until ``stop`` is set, then wait for those in flight."""
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not stop.is_set():
            self._start_login()
            next_at += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start_login(self) -> None:
        rec = LoginRecord(len(self.ledger), time.monotonic(), gateway=len(self.ledger))
        self.ledger.append(rec)
        task = asyncio.ensure_future(self._login(rec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _login(self, rec: LoginRecord) -> None:
        try:
            await self.login(rec)
        except GiveUp as exc:
            rec.failure, rec.failed_retryable = str(exc), exc.retryable

    # --- one login -----------------------------------------------------------------------------

    async def login(self, rec: LoginRecord) -> None:
        """Issue, watch (socket, long-poll fallback), scan and confirm on the phone, complete (twice)."""
        lifetime = self.lifetime
        issued = await self.call(rec, "issue", "POST", "/api/login/qrcode", rec.started + lifetime)
        if issued.status != 201:
            raise GiveUp(f"issue answered {issued.status} {issued.code}", retryable=False)
        rec.scene, ticket = issued.body["scene"], issued.body["ticket"]
        deadline = time.monotonic() + float(issued.body.get("expires_in", lifetime))
        watcher = asyncio.ensure_future(self.watch(rec, ticket, deadline))
        try:
            await self.phone(rec, deadline)
            state = await asyncio.wait_for(watcher, max(0.1, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise GiveUp("no final state before the scene expired", retryable=True) from exc
        finally:
            watcher.cancel()
        if state != "confirmed":
            raise GiveUp(f"the browser saw {state}", retryable=False)
        await self.complete(rec, ticket, deadline)

    async def phone(self, rec: LoginRecord, deadline: float) -> None:
        """The mini-program: scan with a wx.login code and a scan token of its own (a retry of a scan
        whose answer a fault lost is answered again), then confirm."""
        openid = self.openids[rec.n % len(self.openids)]
        scan_token = secrets.token_urlsafe(32)

        async def scan_body() -> dict[str, Any]:
            return {"scene": rec.scene, "code": await self.wx_code(openid), "scan_token": scan_token}

        scanned = await self.call(rec, "scan", "POST", "/api/mp/scan", deadline, body=scan_body)
        if scanned.status != 200:
            raise GiveUp(f"scan answered {scanned.status} {scanned.code}", retryable=False)
        identified = scanned.body.get("identified") is True

        async def confirm_body() -> dict[str, Any]:
            body = {"scene": rec.scene, "scan_token": scanned.body["scan_token"]}
            return body if identified else {**body, "code": await self.wx_code(openid)}

        confirmed = await self.call(rec, "confirm", "POST", "/api/mp/confirm", deadline, body=confirm_body)
        if confirmed.status == 200 or confirmed.code == "already_confirmed":  # a retry after a lost answer
            rec.confirmed = True
            return
        raise GiveUp(f"confirm answered {confirmed.status} {confirmed.code}", retryable=False)

    async def complete(self, rec: LoginRecord, ticket: str, deadline: float) -> None:
        """Redeem the scene for tokens, then once more, as a browser whose answer was lost would: the
        same session must come back (complete is idempotent); a second, different one is a doubling."""
        body = {"scene": rec.scene, "ticket": ticket}
        path = "/api/login/complete"
        done = await self.call(rec, "complete", "POST", path, deadline, body=body)
        if done.status != 200 or "refresh_token" not in done.body:
            raise GiveUp(f"complete answered {done.status} {done.code}", retryable=False)
        rec.completed_at = time.monotonic()
        rec.sessions.add(str(done.body["refresh_token"]))
        again = await self.call(rec, "complete_again", "POST", path, deadline + 30, body=body)
        if again.status == 200 and "refresh_token" in again.body:
            rec.sessions.add(str(again.body["refresh_token"]))

    async def wx_code(self, openid: str) -> str:
        """A fresh ``wx.login()`` code from the simulator (not under chaos)."""
        async with self.http.post(f"{self.sim_url}/sim/codes", json={"openid": openid}) as resp:
            return str((await resp.json())["code"])

    # --- the browser's watch -------------------------------------------------------------------

    async def watch(self, rec: LoginRecord, ticket: str, deadline: float) -> str:
        """The final state: pushed on a socket, or long-polled while the socket is gone or silent."""
        known = "pending"
        while time.monotonic() < deadline:
            known, wait = await self.socket_watch(rec, ticket, known, deadline)
            if known in FINAL_STATES:
                return known
            if wait:
                await asyncio.sleep(wait)
            known = await self.poll(rec, ticket, known, deadline)
            if known in FINAL_STATES:
                return known
        return "expired"

    async def socket_watch(
        self, rec: LoginRecord, ticket: str, known: str, deadline: float
    ) -> tuple[str, float]:
        """Subscribe at a live gateway and read pushes; returns the last state and how long to wait."""
        url = self.gateway(rec) + "/api/login/ws"
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                ws = await self.http.ws_connect(url, origin=ORIGIN, autoping=True)
                await ws.send_json({"type": "subscribe", "scene": rec.scene, "ticket": ticket})
        except TimeoutError:
            rec.saw("subscribe", HANG)
            rec.gateway += 1
            return known, 0.0
        except aiohttp.ClientError:
            rec.saw("subscribe", NETWORK)
            rec.gateway += 1
            return known, NETWORK_RETRY
        try:
            return await self._read_pushes(rec, ws, known, deadline)
        finally:
            await ws.close()

    async def _read_pushes(
        self, rec: LoginRecord, ws: aiohttp.ClientWebSocketResponse, known: str, deadline: float
    ) -> tuple[str, float]:
        while time.monotonic() < deadline:
            try:
                msg = await ws.receive(timeout=min(PUSH_PATIENCE, max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                return known, 0.0  # silent: ask by long-poll, then subscribe again
            if msg.type != aiohttp.WSMsgType.TEXT:
                rec.saw("subscribe", "dropped")
                rec.gateway += 1
                return known, NETWORK_RETRY
            frame = msg.json()
            if frame.get("type") == "error":
                code = str(frame.get("code"))
                rec.saw("subscribe", code)
                if "retry_after" not in frame:
                    raise GiveUp(f"subscribe refused: {code}", retryable=False)
                return known, float(frame["retry_after"])
            known = str(frame.get("state", known))
            if known in FINAL_STATES:
                return known, 0.0
        return known, 0.0

    async def poll(self, rec: LoginRecord, ticket: str, known: str, deadline: float) -> str:
        """One status long-poll (``GET /api/login/status``); returns the state it reports."""
        path = f"/api/login/status?scene={rec.scene}&wait={POLL_WAIT}&since={known}"
        headers = {"X-Login-Ticket": ticket, "Origin": ORIGIN}
        answer = await self.call(rec, "status", "GET", path, deadline, headers=headers, extra_wait=POLL_WAIT)
        if answer.status in (200, 202, 408, 410):
            return str(answer.body.get("state", known))
        raise GiveUp(f"status answered {answer.status} {answer.code}", retryable=False)

    # --- one request, the way a well-behaved client makes it -----------------------------------

    def gateway(self, rec: LoginRecord) -> str:
        """The gateway this login talks to now (it moves on after a network error)."""
        live = self.gateways()
        if not live:
            raise GiveUp("no gateway runs", retryable=True)
        return live[rec.gateway % len(live)]

    async def call(
        self,
        rec: LoginRecord,
        step: str,
        method: str,
        path: str,
        deadline: float,
        *,
        body: dict[str, Any] | Callable[[], Awaitable[dict[str, Any]]] | None = None,
        headers: dict[str, str] | None = None,
        extra_wait: float = 0.0,
    ) -> Answer:
        """``method path`` at a live gateway, retried after 503/429 (Retry-After), network errors and
        hangs until ``deadline``; returns the first other answer."""
        while True:
            payload = await body() if callable(body) else body
            wait = await self._attempt(rec, step, method, path, payload, headers, extra_wait)
            if isinstance(wait, Answer):
                return wait
            if time.monotonic() + wait > deadline:
                raise GiveUp(f"{step}: gave up after {rec.last_answer(step)}", retryable=True)
            await asyncio.sleep(wait)

    async def _attempt(
        self,
        rec: LoginRecord,
        step: str,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        headers: dict[str, str] | None,
        extra_wait: float,
    ) -> Answer | float:
        url = self.gateway(rec) + path
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT + extra_wait):
                async with self.http.request(
                    method, url, json=payload, headers=headers or {"Origin": ORIGIN}
                ) as resp:
                    answer = await _answer(resp)
        except TimeoutError:
            rec.saw(step, HANG)
            rec.gateway += 1
            return 0.0
        except aiohttp.ClientError:
            rec.saw(step, NETWORK)
            rec.gateway += 1
            return NETWORK_RETRY
        rec.saw(step, answer.status)
        if answer.status >= 400:
            rec.codes.append(f"{step} {answer.status} {answer.code or '-'}")
        if answer.status in RETRY_STATUSES:
            return answer.retry_after if answer.retry_after is not None else 1.0
        return answer


async def _answer(resp: aiohttp.ClientResponse) -> Answer:
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        body = None
    hint = resp.headers.get("Retry-After")
    retry_after = float(hint) if hint and hint.replace(".", "", 1).isdigit() else None
    return Answer(resp.status, body, retry_after)


async def make_users(http: aiohttp.ClientSession, sim_url: str, n: int) -> list[str]:
    """``n`` simulated WeChat users for the phones to take turns with."""
    openids = []
    for _ in range(n):
        async with http.post(f"{sim_url}/sim/users", json={}) as resp:
            openids.append(str((await resp.json())["openid"]))
    return openids


# --- readiness ----------------------------------------------------------------------------------


@dataclass
class ReadySample:
    """One /readyz answer of one replica: an HTTP status, ``hang`` or ``network``."""

    at: float
    replica: str
    status: int | str
    checks: tuple[str, ...] = ()


class ReadyWatch:
    """Polls every replica's /readyz every ``interval`` seconds and keeps every answer."""

    def __init__(self, http: aiohttp.ClientSession, replicas: Callable[[], list[tuple[str, str]]]) -> None:
        self.http = http
        self.replicas = replicas  # () → [(name, base url)] of the replicas running now
        self.samples: list[ReadySample] = []

    async def run(self, stop: asyncio.Event, interval: float = 0.3) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            await asyncio.gather(*(self._probe(name, url) for name, url in self.replicas()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _probe(self, name: str, url: str) -> None:
        at = time.monotonic()
        try:
            async with asyncio.timeout(3.0), self.http.get(f"{url}/readyz") as resp:
                body = await resp.json(content_type=None)
                checks = tuple(sorted(body.get("checks", {}))) if isinstance(body, dict) else ()
                self.samples.append(ReadySample(at, name, resp.status, checks))
        except TimeoutError:
            self.samples.append(ReadySample(at, name, HANG))
        except (aiohttp.ClientError, ValueError):
            self.samples.append(ReadySample(at, name, NETWORK))

    def of(self, replica: str, start: float, end: float) -> list[ReadySample]:
        """The samples of ``replica`` taken in ``[start, end)``."""
        return [s for s in self.samples if s.replica == replica and start <= s.at < end]

    def checks(self, replica: str) -> tuple[str, ...]:
        """The checks ``replica`` reports (from its last answer that named any)."""
        named = [s.checks for s in self.samples if s.replica == replica and s.checks]
        return named[-1] if named else ()
