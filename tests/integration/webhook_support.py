"""Helpers for the webhook tests: a real receiver that verifies every delivery with the
``standardwebhooks`` package (not our code), the webhook service on a port, and publishers of the
bus events it consumes."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.bus import AmqpBus
from shared.clients import new_secret
from shared.config import Settings
from shared.httpserver import AppRunner
from shared.mongo import EmbeddedMongo, free_port
from shared.runtime import AccessLogger
from shared.sealing import Sealer
from tests.support import make_settings

SHOP_SECRET, SHOP_SECRET_HASH = new_secret()
BLOG_SECRET, BLOG_SECRET_HASH = new_secret()


def whsec() -> str:
    """A fresh Standard Webhooks secret."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Received:
    """One request the receiver got, and what the reference library said about it."""

    id: str
    timestamp: int
    signature: str
    body: bytes
    answered: int | str
    verified: dict[str, bool]  # secret -> verified
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A site's webhook endpoint on 127.0.0.1: answers from a script (then 204), verifies everything.

    A script entry is a status code, or ``"hang"`` (the request waits until ``release`` is set).
    """

    secrets: list[str]
    port: int = field(default_factory=free_port)
    script: list[int | str] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hung: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/wx?src=wxlogin"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/wx", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        verified = {}
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
                verified[secret] = True
            except WebhookVerificationError:
                verified[secret] = False
        answer: int | str = self.script.pop(0) if self.script else 204
        self.requests.append(
            Received(
                id=headers.get("webhook-id", ""),
                timestamp=int(headers.get("webhook-timestamp", "0")),
                signature=headers.get("webhook-signature", ""),
                body=body,
                answered=answer,
                verified=verified,
                at=time.monotonic(),
            )
        )
        if answer == "hang":
            self.hung.set()
            await self.release.wait()
            answer = 204
        return web.Response(status=int(answer))

    def delivered(self) -> list[Received]:
        """The requests answered with a 2xx, in arrival order."""
        return [r for r in self.requests if isinstance(r.answered, int) and 200 <= r.answered < 300]


def clients_file(
    path: Path, shop_endpoints: list[dict[str, Any]], blog_endpoints: list[dict[str, Any]] = ()
) -> str:  # type: ignore[assignment]
    """A clients file: ``shop`` (confidential) and ``blog`` (pairwise), with these webhook endpoints."""
    data = {
        "clients": [
            {
                "client_id": "shop",
                "client_secret_hash": SHOP_SECRET_HASH,
                "site_name": "Shop",
                "webhooks": shop_endpoints,
            },
            {
                "client_id": "blog",
                "client_secret_hash": BLOG_SECRET_HASH,
                "site_name": "Blog",
                "subject_type": "pairwise",
                "webhooks": list(blog_endpoints),
            },
        ]
    }
    path.write_text(yaml.safe_dump(data))
    return str(path)


def webhook_settings(
    mongo: EmbeddedMongo, amqp_base_url: str, unique: str, clients: str, **overrides: Any
) -> Settings:
    """Fast retries and polls, 127.0.0.1 allowed (the receiver runs there), the real broker."""
    values: dict[str, Any] = {
        "mongo_url": mongo.url,
        "mongo_db": f"t_{unique}",
        "amqp_url": amqp_base_url,
        "bus_prefix": f"t{unique}.",
        "clients_file": clients,
        "webhook_http_hosts": "127.0.0.1,localhost",
        "webhook_allowed_networks": "127.0.0.1",
        "webhook_retry_schedule": "0,0.3,0.3,0.5,0.5,1,1,1",
        "webhook_poll_seconds": 0.1,
        "webhook_timeout_seconds": 1.0,
    }
    values.update(overrides)
    return make_settings(**values)


@dataclass
class WebhookService:
    """The webhook service as an app on a free port (its ops port: metrics and the admin route)."""

    settings: Settings
    environ: Mapping[str, str]
    runner: AppRunner | None = None
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> WebhookService:
        from services.webhook.app import create_app

        app = create_app(self.settings, environ=self.environ)
        self.runner = AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    async def admin(
        self, method: str, path: str, *, client: str = "shop", secret: str = SHOP_SECRET, **kwargs: Any
    ) -> tuple[int, Any]:
        basic = base64.b64encode(f"{client}:{secret}".encode()).decode()
        headers = {"Authorization": f"Basic {basic}"}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.url + path, headers=headers, **kwargs) as resp,
        ):
            return resp.status, await resp.json()

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(self.url + "/metrics") as resp:
            return await resp.text()


@asynccontextmanager
async def publishers(settings: Settings) -> AsyncIterator[dict[str, AmqpBus]]:
    """Buses of the session and qrcode services, to publish the events they own."""
    sealer = Sealer.from_text(settings.bus_key.get_secret_value())
    buses = {
        name: AmqpBus(settings.amqp_url, name, sealer, prefix=settings.bus_prefix)
        for name in ("session", "qrcode")
    }
    for bus in buses.values():
        await bus.start()
    try:
        yield buses
    finally:
        for bus in buses.values():
            await bus.close()
