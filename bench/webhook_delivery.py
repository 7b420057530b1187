"""Webhook delivery: latency from ``login.confirmed`` on the bus to the site's receiver, and throughput.

The webhook service runs in this process over real RabbitMQ and an nx-27017 server, with one
endpoint: a receiver on 127.0.0.1 that verifies every delivery with the ``standardwebhooks`` package.
A session-named bus publishes ``login.confirmed`` events:

* **latency**: one event every ``--gap`` seconds; from the publish to the receiver's verified read;
* **throughput**: ``--burst`` events published as fast as the bus confirms them; deliveries per
  second from the first publish to the last delivery (one endpoint: one at a time, in order).

    python -m bench.webhook_delivery [--events 300] [--gap 0.05] [--burst 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import SecretStr
from standardwebhooks import Webhook

from bench.report import print_table, summarize, write_json
from shared.bus import AmqpBus
from shared.config import Settings
from shared.httpserver import AppRunner
from shared.logging import configure_logging
from shared.messages import LoginConfirmed
from shared.mongo import EmbeddedMongo, free_port
from shared.sealing import Sealer, generate_key


class Receiver:
    """The site's endpoint: verifies each delivery, notes when each scene arrived."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.arrived: dict[str, float] = {}
        self.wanted = 0
        self.all_in = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event: Any = self.webhook.verify(body, dict(request.headers))
        self.arrived[str(event["data"]["scene"])] = time.perf_counter()
        if len(self.arrived) >= self.wanted:
            self.all_in.set()
        return web.Response(status=204)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    receiver = Receiver(secret)
    site = web.Application()
    site.router.add_post("/hook", receiver.handle)
    site_runner = web.AppRunner(site, access_log=None)
    await site_runner.setup()
    port = free_port()
    await web.TCPSite(site_runner, "127.0.0.1", port).start()
    workdir = Path(tempfile.mkdtemp(prefix="wxlogin-bench-webhook-"))
    clients = workdir / "clients.yaml"
    clients.write_text(
        "clients:\n  - client_id: wxlogin-site\n    site_name: Bench\n    webhooks:\n"
        f"      - id: main\n        url: http://127.0.0.1:{port}/hook\n        secret_envs: [BENCH_HOOK]\n"
    )
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    from services.webhook.app import create_app

    with EmbeddedMongo(data_dir=str(workdir / "mongo")) as mongo:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            bus_key=SecretStr(generate_key()),
            data_key=SecretStr(generate_key()),
            mongo_url=mongo.url,
            mongo_db="bench_webhook",
            amqp_url=args.amqp_url,
            bus_prefix=prefix,
            clients_file=str(clients),
            webhook_http_hosts=["127.0.0.1"],
            webhook_allowed_networks=["127.0.0.1"],
            log_level="WARNING",
        )
        service = AppRunner(create_app(settings, environ={"BENCH_HOOK": secret}))
        await service.setup()
        bus = AmqpBus(
            settings.amqp_url, "session", Sealer.from_text(settings.bus_key.get_secret_value()), prefix=prefix
        )
        await bus.start()
        try:
            # Latency: one event at a time.
            receiver.wanted, receiver.all_in = args.events, asyncio.Event()
            sent: dict[str, float] = {}
            for n in range(args.events):
                scene = f"L{n:031d}"
                sent[scene] = time.perf_counter()
                await bus.publish(LoginConfirmed(scene=scene, user_id=f"u_{n}"))
                await asyncio.sleep(args.gap)
            await asyncio.wait_for(receiver.all_in.wait(), 120)
            latency = summarize([receiver.arrived[s] - t for s, t in sent.items()])
            # Throughput: a burst.
            receiver.arrived.clear()
            receiver.wanted, receiver.all_in = args.burst, asyncio.Event()
            started = time.perf_counter()
            for n in range(args.burst):
                await bus.publish(LoginConfirmed(scene=f"B{n:031d}", user_id=f"u_{n}"))
            published = time.perf_counter() - started
            await asyncio.wait_for(receiver.all_in.wait(), 600)
            elapsed = max(receiver.arrived.values()) - started
        finally:
            await bus.close()
            await service.cleanup()
            await site_runner.cleanup()
    return {
        "latency": latency,
        "burst": args.burst,
        "publish_seconds": round(published, 2),
        "delivered_seconds": round(elapsed, 2),
        "deliveries_per_second": round(args.burst / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_delivery", description=__doc__)
    parser.add_argument("--events", type=int, default=300, help="latency: events, one at a time")
    parser.add_argument("--gap", type=float, default=0.05, help="latency: seconds between events")
    parser.add_argument("--burst", type=int, default=1000, help="throughput: events at once")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args(argv)
    configure_logging(service="bench", fmt="json", level="WARNING")
    result = asyncio.run(run(args))
    latency = result["latency"]
    print_table(
        [{"what": "login.confirmed → verified delivery", **latency}],
        ["what", "n", "p50_ms", "p90_ms", "p99_ms", "max_ms"],
    )
    print(
        f"\nburst of {result['burst']}: published in {result['publish_seconds']} s, all delivered in "
        f"{result['delivered_seconds']} s: {result['deliveries_per_second']} deliveries/s (one endpoint)"
    )
    shown = {k: v for k, v in vars(args).items() if k != "amqp_url"}  # it may carry a password
    write_json("webhook_delivery", {"args": shown, **result})


if __name__ == "__main__":
    main()
