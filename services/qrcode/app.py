"""Composition root of the qrcode service: builds its clients and wires its handlers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.qrcode.handlers import SceneHandlers, SceneSettings
from services.qrcode.limits import PrefixShareLimit, SharedRateLimit, WindowBudget
from services.qrcode.location import IpLocator
from services.qrcode.logincodes import EntryLimits, LoginCodes, UrlLinks
from services.qrcode.metrics import SceneMetrics
from services.qrcode.pool import CodePool, CodeRenderer, PoolSettings, RenderSettings
from services.qrcode.store import INDEXES, PoolStore, RateWindowStore, SceneStore
from shared.bus import MemoryBroker
from shared.config import Settings
from shared.logging import get_logger
from shared.logincode import MISS_WINDOW_SECONDS, guess_chance_per_day, misses_per_hour_allowed
from shared.messages import (
    CancelScene,
    ConfirmScene,
    GetSceneStatus,
    IdentifyScene,
    IssueScene,
    RedeemScene,
    ScanLoginCode,
    ScanScene,
)
from shared.runtime import (
    BUS,
    CLIENTS,
    DB,
    HTTP,
    READY_CHECKS,
    REGISTRY,
    SETTINGS,
    background,
    bus_context,
    clients_context,
    http_context,
    mongo_context,
    new_app,
)
from shared.sealing import decode_keys
from shared.tokens import TokenCache
from shared.wechat import WeChatClient

SERVICE = "qrcode"
HANDLERS = web.AppKey("handlers", SceneHandlers)
POOL = web.AppKey("pool", CodePool)
SWEEP_INTERVAL = 1.0

log = get_logger(__name__)


def scene_settings(settings: Settings) -> SceneSettings:
    """Scene lifetime and what the phone is shown, from configuration."""
    return SceneSettings(
        scene_ttl=float(settings.scene_ttl_seconds),
        site_name=settings.site_name,
        announce_issued=settings.announce_scene_issued,
    )


def render_settings(settings: Settings) -> RenderSettings:
    """How codes are rendered, from configuration."""
    return RenderSettings(
        page=settings.miniprogram_page,
        env_version=settings.miniprogram_env_version,
        check_path=settings.miniprogram_check_path,
        width=settings.miniprogram_code_width,
        appid=settings.appid,
    )


def pool_settings(settings: Settings) -> PoolSettings:
    """Pool size and refill behaviour, from configuration."""
    return PoolSettings(
        size=settings.code_pool_size,
        refill_below=settings.code_pool_refill_below,
        concurrency=settings.code_pool_refill_concurrency,
    )


def login_code_key(settings: Settings) -> bytes:
    """The key of the typed login codes' hashes (HMAC), separated from the data key with HKDF."""
    data_key = decode_keys(settings.data_key.get_secret_value())[0]
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"wxlogin login code v1")
    return hkdf.derive(data_key)


def login_codes(settings: Settings, scenes: SceneStore, rates: RateWindowStore) -> LoginCodes | None:
    """The typed login codes as configured, or None when they are off.

    The hourly budget of misses is what WXLOGIN_LOGIN_CODE_MISSES_PER_HOUR says, but never more than
    keeps guessing any live code below 10^-6 a day at this minute limit and scene lifetime.
    """
    per_minute = settings.login_code_per_minute
    if per_minute == 0:
        return None
    if not settings.data_key.get_secret_value():
        log.warning("login_codes_off", reason="WXLOGIN_DATA_KEY is not set")
        return None
    ceiling = misses_per_hour_allowed(per_minute, settings.scene_ttl_seconds)
    misses = min(settings.login_code_misses_per_hour, ceiling)
    log.info(
        "login_code_limits",
        per_minute=per_minute,
        misses_per_hour=misses,
        misses_per_hour_ceiling=ceiling,
        guess_chance_per_day=guess_chance_per_day(misses, per_minute, settings.scene_ttl_seconds),
    )
    per_user = settings.limit_code_entry_per_user_per_hour
    return LoginCodes(
        scenes,
        login_code_key(settings),
        SharedRateLimit(rates, "login_codes", per_minute),
        EntryLimits(
            misses=WindowBudget(rates, "code_misses", misses, window=MISS_WINDOW_SECONDS),
            per_user=WindowBudget(rates, "code", per_user, window=MISS_WINDOW_SECONDS) if per_user else None,
            per_scene=settings.login_code_entries_per_scene,
        ),
    )


async def sweep_forever(handlers: SceneHandlers, interval: float = SWEEP_INTERVAL) -> None:
    """Run the expiry sweeper every ``interval`` seconds (errors are logged, never fatal).

    Started with ``background()``, whose ``stop_task`` ends it even when a callee swallowed the cancel.
    """
    while True:
        try:
            await handlers.sweep()
        except Exception:  # the sweeper must survive a Mongo or bus hiccup
            log.exception("sweep_failed")
        await asyncio.sleep(interval)


def create_app(
    settings: Settings, *, broker: MemoryBroker | None = None, clock: Callable[[], float] = time.time
) -> web.Application:
    """The qrcode service as an aiohttp app (its HTTP side is only the ops endpoints)."""
    app = new_app(settings)
    app.cleanup_ctx.extend(
        [clients_context, mongo_context(INDEXES), bus_context(SERVICE, broker), http_context]
    )

    async def handlers_ctx(app: web.Application) -> AsyncIterator[None]:
        settings, bus, db = app[SETTINGS], app[BUS], app[DB]
        wechat = WeChatClient(
            app[HTTP],
            base_url=settings.wechat_api_base,
            appid=settings.appid,
            secret=settings.secret,
            timeout=settings.wechat_timeout_seconds,
        )
        # A rejected token is renewed within half an RPC timeout, so the retry still fits in the call.
        tokens = TokenCache(bus, clock=clock, renew_seconds=settings.rpc_timeout_seconds / 2)
        await tokens.start()  # the broadcast, then the current token once (False while none yet)

        async def token_ready() -> bool:  # codes cannot be rendered without an access_token
            return tokens.valid or await tokens.fetch()

        app[READY_CHECKS]["token"] = token_ready
        metrics = SceneMetrics(app[REGISTRY])
        # Loaded whole, once (11 MB for IPv4): every lookup of a scan is then a few microseconds.
        locator = IpLocator.from_paths(settings.ip2region_db)
        if locator.databases:
            paths = {f"ipv{db.version}": db.path for db in locator.databases.values()}
            log.info("ip_databases_loaded", **paths)
        else:  # the scan still works; the phone shows "unknown" for every public address
            log.warning("ip_database_missing", note="make install brings it, or set WXLOGIN_IP2REGION_DB")
        rates = RateWindowStore(db)
        render = render_settings(settings)
        pool = CodePool(
            PoolStore(db),
            CodeRenderer(wechat, tokens, render),
            SharedRateLimit(rates, "renders", settings.code_renders_per_minute),
            render,
            pool_settings(settings),
            metrics=metrics,
            clock=clock,
            holder=bus.instance,
        )
        handlers = SceneHandlers(
            SceneStore(db),
            pool,
            bus,
            scene_settings(settings),
            issue_limit=SharedRateLimit(rates, "issue", settings.limit_issue_global_per_minute),
            prefix_limit=PrefixShareLimit(
                rates,
                settings.limit_issue_global_per_minute,
                settings.limit_issue_prefix_share_percent,
                settings.limit_ipv4_prefixes,
                settings.limit_ipv6_prefixes,
            ),
            clients=app[CLIENTS],
            locator=locator,
            metrics=metrics,
            clock=clock,
            login_codes=login_codes(settings, SceneStore(db), rates),
            url_links=(
                UrlLinks(wechat, tokens, page=render.page, env_version=render.env_version)
                if settings.url_link
                else None
            ),
        )
        app[HANDLERS], app[POOL] = handlers, pool
        await bus.serve(
            {
                IssueScene: handlers.issue,
                GetSceneStatus: handlers.status,
                ScanScene: handlers.scan,
                CancelScene: handlers.cancel,
                ConfirmScene: handlers.confirm,
                IdentifyScene: handlers.identify,
                RedeemScene: handlers.redeem,
                ScanLoginCode: handlers.scan_code,
            }
        )
        background(app, sweep_forever(handlers), "scene-sweeper")
        background(app, pool.run(), "code-pool-refill")
        yield

    app.cleanup_ctx.append(handlers_ctx)
    return app
