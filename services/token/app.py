"""Composition root of the token service: builds its clients and wires its handlers."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from services.token.handlers import RefreshPolicy, TokenKeeper, TokenMetrics
from services.token.store import INDEXES, LeaseStore, TokenStore
from shared.bus import MemoryBroker
from shared.config import Settings
from shared.messages import GetCurrentToken, TokenInvalidated, TokenRefreshed
from shared.runtime import (
    BUS,
    DB,
    HTTP,
    READY_CHECKS,
    REGISTRY,
    SETTINGS,
    background,
    bus_context,
    http_context,
    mongo_context,
    new_app,
)
from shared.sealing import Sealer
from shared.wechat import WeChatClient

SERVICE = "token"
KEEPER = web.AppKey("keeper", TokenKeeper)


def data_sealer(settings: Settings) -> Sealer:
    """The sealer of the stored access_token (``WXLOGIN_DATA_KEY``, as the session service's secrets)."""
    key = settings.data_key.get_secret_value()
    if not key:
        raise RuntimeError("WXLOGIN_DATA_KEY is not set (base64 of 32 random bytes)")
    return Sealer.from_text(key)


def create_app(
    settings: Settings, *, broker: MemoryBroker | None = None, clock: Callable[[], float] = time.time
) -> web.Application:
    """The token service as an aiohttp app (its HTTP side is only the ops endpoints)."""
    app = new_app(settings)
    app.cleanup_ctx.extend([mongo_context(INDEXES), bus_context(SERVICE, broker), http_context])

    async def handlers_ctx(app: web.Application) -> AsyncIterator[None]:
        settings, bus, db = app[SETTINGS], app[BUS], app[DB]
        metrics = TokenMetrics(app[REGISTRY])
        wechat = WeChatClient(
            app[HTTP],
            base_url=settings.wechat_api_base,
            appid=settings.appid,
            secret=settings.secret,
            timeout=settings.wechat_timeout_seconds,
            on_error=metrics.wechat_error,
            clock=clock,
        )
        keeper = TokenKeeper(
            TokenStore(db, settings.appid, sealer=data_sealer(settings)),
            LeaseStore(db, settings.appid),
            wechat,
            bus,
            metrics,
            # Operators see in the lease document which host and process refreshes.
            owner=f"{socket.gethostname()}/{os.getpid()}/{bus.instance}",
            policy=RefreshPolicy.from_settings(settings),
            clock=clock,
        )
        app[KEEPER] = keeper
        await keeper.load()
        await bus.serve({GetCurrentToken: keeper.current})
        await bus.subscribe(TokenInvalidated, keeper.on_invalidated)
        await bus.subscribe_broadcast([TokenRefreshed], keeper.on_refreshed)

        async def token_ready() -> bool:
            return keeper.valid

        app[READY_CHECKS]["token"] = token_ready
        background(app, keeper.run(), "token-refresh")
        yield
        # The loop was cancelled on shutdown; hand the lease over now rather than after it lapses.
        await keeper.release()

    app.cleanup_ctx.append(handlers_ctx)
    return app
