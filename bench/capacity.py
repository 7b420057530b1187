"""Idle WebSockets one gateway process holds, and its resident memory per socket.

A minimal WebSocket client (one asyncio protocol per socket, no task each) in this process, which is
not the gateway's, opens sockets in steps, each subscribing to one of a few issued scenes, as idle
browsers on a login page would. At each step the gateway's RSS is read from ``/proc``; the sockets are
then held past one server heartbeat (25 s) to check they stay open. The open-file limit is raised to
its hard limit first (the gateway inherits it), and that limit is the reported cap.

    python -m bench.capacity [--levels 1000,5000,10000,15000] [--hold 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import struct
import time
from typing import Any
from urllib.parse import urlsplit

from bench.cluster import ORIGIN, Cluster, Login, cluster, issue, proc_stat, raise_open_files
from bench.report import print_table, write_json
from shared.logging import configure_logging

SCENES = 50
CONNECT_CONCURRENCY = 100


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    else:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class IdleSocket(asyncio.Protocol):
    """Upgrade, subscribe, answer pings; ``subscribed`` resolves on the first state message."""

    def __init__(self, request: bytes, subscribe: bytes, subscribed: asyncio.Future[None]) -> None:
        self.request = request
        self.subscribe = subscribe
        self.subscribed = subscribed
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self._fail(f"upgrade refused: {head[:60]!r}")
                return
            self.upgraded, self.open, self.buffer = True, True, rest
            assert self.transport is not None
            self.transport.write(self.subscribe)
        self._frames()

    def _frames(self) -> None:
        while len(self.buffer) >= 2:
            b0, b1 = self.buffer[0], self.buffer[1]
            size, offset = b1 & 0x7F, 2
            if size == 126:
                if len(self.buffer) < 4:
                    return
                size, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif size == 127:
                if len(self.buffer) < 10:
                    return
                size, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < offset + size:
                return
            payload, self.buffer = self.buffer[offset : offset + size], self.buffer[offset + size :]
            opcode = b0 & 0x0F
            assert self.transport is not None
            if opcode == 0x9:  # ping → pong, as a browser does
                self.transport.write(_frame(0xA, payload))
            elif opcode == 0x8:  # close
                self.open = False
                self.transport.close()
            elif opcode == 0x1 and not self.subscribed.done():
                message = json.loads(payload)
                if message.get("type") == "state":
                    self.subscribed.set_result(None)
                else:
                    self._fail(f"refused: {message}")

    def _fail(self, why: str) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.subscribed.done():
            self.subscribed.set_exception(RuntimeError(f"connection lost: {exc}"))


class LoadGenerator:
    """Opens and holds idle, subscribed sockets against one gateway."""

    def __init__(self, gateway: str, logins: list[Login]) -> None:
        parts = urlsplit(gateway)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.logins = logins
        self.sockets: list[IdleSocket] = []
        self.failed = 0

    def _request(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET /api/login/ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {ORIGIN}\r\n\r\n"
        ).encode()

    async def _open_one(self, index: int) -> None:
        login = self.logins[index % len(self.logins)]
        sub = json.dumps({"type": "subscribe", "scene": login.scene, "ticket": login.ticket}).encode()
        loop = asyncio.get_running_loop()
        subscribed: asyncio.Future[None] = loop.create_future()
        try:
            _, proto = await loop.create_connection(
                lambda: IdleSocket(self._request(), _frame(0x1, sub), subscribed), self.host, self.port
            )
            await asyncio.wait_for(subscribed, timeout=30)
        except (OSError, RuntimeError, TimeoutError) as exc:
            self.failed += 1
            if self.failed <= 3:
                print(f"  socket {index} failed: {exc}", flush=True)
            return
        self.sockets.append(proto)

    async def grow_to(self, n: int) -> None:
        """Open sockets until ``n`` are held (failures are counted, not retried)."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        start = len(self.sockets) + self.failed

        async def one(i: int) -> None:
            async with gate:
                await self._open_one(i)

        await asyncio.gather(*(one(i) for i in range(start, n)))

    @property
    def open_count(self) -> int:
        """Sockets that are still open."""
        return sum(1 for s in self.sockets if s.open)

    def close(self) -> None:
        """Close every socket."""
        for s in self.sockets:
            if s.transport is not None:
                s.transport.close()


async def gauge(c: Cluster) -> float | None:
    """The gateway's own count of open sockets (``wxlogin_gateway_websockets``)."""
    try:
        async with c.http.get(f"{c.gateway}/metrics") as resp:
            text = await resp.text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("wxlogin_gateway_websockets "):
            return float(line.split()[1])
    return None


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Issue a few scenes, then grow the sockets level by level, reading the gateway's RSS."""
    soft, hard = raise_open_files()
    env = {"WXLOGIN_SCENE_TTL_SECONDS": "1800", "WXLOGIN_CODE_POOL_SIZE": "60"}
    rows: list[dict[str, Any]] = []
    async with cluster(env) as c:
        pid = c.pids()["gateway-1"]
        logins = []
        for _ in range(SCENES):
            login = Login()
            await issue(c.http, c.gateway, login)
            logins.append(login)
        gen = LoadGenerator(c.gateway, logins)
        await gen.grow_to(100)  # the first sockets allocate what every later one shares
        await asyncio.sleep(1.0)
        base_rss = proc_stat(pid).rss_kb - 0
        base_n = gen.open_count
        try:
            for level in args.levels:
                started = time.perf_counter()
                await gen.grow_to(level)
                took = time.perf_counter() - started
                await asyncio.sleep(2.0)
                rss = proc_stat(pid).rss_kb
                held = gen.open_count
                per = (rss - base_rss) / max(1, held - base_n)
                rows.append(
                    {
                        "sockets": level,
                        "held": held,
                        "gateway_gauge": await gauge(c),
                        "failed": gen.failed,
                        "gateway_rss_mb": round(rss / 1024, 1),
                        "kb_per_socket": round(per, 2),
                        "open_s": round(took, 1),
                    }
                )
                print(f"  {level}: held {held}, RSS {rss / 1024:.0f} MB, {per:.1f} KB/socket", flush=True)
                if held < level * 0.9:
                    break
            await asyncio.sleep(args.hold)  # past a 25 s heartbeat: idle sockets must answer pings
            after_hold = gen.open_count
        finally:
            gen.close()
    return {
        "open_files_limit": {"soft": soft, "hard": hard},
        "base": {"sockets": base_n, "gateway_rss_mb": round(base_rss / 1024, 1)},
        "rows": rows,
        "held_after_s": args.hold,
        "still_open_after_hold": after_hold,
    }


def main(argv: list[str] | None = None) -> None:
    """Run, print the table, write ``bench/results/capacity.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument(
        "--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 5000, 10000, 15000]
    )
    parser.add_argument("--hold", type=float, default=30.0, help="seconds to hold the last level")
    args = parser.parse_args(argv)
    configure_logging(service="bench", fmt="console", level="WARNING")
    result = asyncio.run(measure(args))
    limit = result["open_files_limit"]
    print(
        f"\nidle subscribed WebSockets on one gateway process (open-file limit {limit['soft']}/"
        f"{limit['hard']}; baseline {result['base']['gateway_rss_mb']} MB at {result['base']['sockets']})"
    )
    columns = ["sockets", "held", "gateway_gauge", "failed", "gateway_rss_mb", "kb_per_socket", "open_s"]
    print_table(result["rows"], columns)
    print(f"still open after {result['held_after_s']:g} s more: {result['still_open_after_hold']}")
    print(f"wrote {write_json('capacity', {'benchmark': 'capacity', **result})}")


if __name__ == "__main__":
    main()
