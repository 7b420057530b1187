"""Composition root of the session service: builds its clients and wires its handlers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pymongo.errors import PyMongoError

from services.session.backchannel import BackchannelLogout
from services.session.handlers import SessionHandlers, SessionStores
from services.session.keys import Signer
from services.session.linking import LinkHandlers
from services.session.oidc import OidcHandlers
from services.session.refresh import RefreshFamilies
from services.session.store import (
    INDEXES,
    CodeUseStore,
    IdentityLinkStore,
    LinkRequestStore,
    MpSessionStore,
    OidcCodeStore,
    OpSessionStore,
    RefreshTokenStore,
    SigningKeyStore,
    UserStore,
)
from shared.bus import Bus, MemoryBroker
from shared.config import Settings
from shared.logging import get_logger
from shared.messages import (
    Authorize,
    BindPhone,
    CompleteLink,
    CompleteLogin,
    ConfirmLogin,
    DecryptData,
    EndOpSession,
    EndSession,
    EnterLoginCode,
    ExchangeGrant,
    GetJwks,
    GetLinkStatus,
    GetUserInfo,
    IdentifyScanner,
    IssueLinkScene,
    LoginMiniProgram,
    OpenLink,
    RefreshTokens,
    RevokeToken,
    SigningKeysChanged,
    Unlink,
)
from shared.runtime import (
    BUS,
    CLIENTS,
    DB,
    HTTP,
    SETTINGS,
    bus_context,
    clients_context,
    http_context,
    mongo_context,
    new_app,
    stop_task,
)
from shared.sealing import Sealer, decode_keys
from shared.subjects import subject_key
from shared.tokens import TokenCache
from shared.wechat import WeChatClient

SERVICE = "session"
HANDLERS = web.AppKey("handlers", SessionHandlers)
SIGNER = web.AppKey("signer", Signer)

log = get_logger(__name__)


def data_sealer(settings: Settings) -> Sealer:
    """The sealer for secrets at rest (``WXLOGIN_DATA_KEY``)."""
    key = settings.data_key.get_secret_value()
    if not key:
        raise RuntimeError("WXLOGIN_DATA_KEY is not set (base64 of 32 random bytes)")
    return Sealer.from_text(key)


def _derive(data_key: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(data_key)


def successor_keys(settings: Settings) -> list[bytes]:
    """The keys that derive refresh-token successors and their keyed ids, separated from the data
    key with HKDF: one per ``WXLOGIN_DATA_KEY`` listed, the current one first."""
    keys = decode_keys(settings.data_key.get_secret_value())
    return [_derive(key, b"wxlogin refresh-token successor v1") for key in keys]


def oidc_keys(settings: Settings) -> list[bytes]:
    """The keys of authorization-code and OP-session ids (HMAC), separated from the data key with HKDF:
    one per ``WXLOGIN_DATA_KEY`` listed, the current one first (OP sessions outlive a key rotation)."""
    keys = decode_keys(settings.data_key.get_secret_value())
    return [_derive(key, b"wxlogin openid connect ids v1") for key in keys]


def link_keys(settings: Settings) -> list[bytes]:
    """The keys of link-token ids (HMAC), separated from the data key with HKDF: one per
    ``WXLOGIN_DATA_KEY`` listed, the current one first."""
    keys = decode_keys(settings.data_key.get_secret_value())
    return [_derive(key, b"wxlogin link tokens v1") for key in keys]


def code_key(settings: Settings) -> bytes:
    """The key of the wx.login code ids (HMAC), separated from the current data key with HKDF."""
    return _derive(decode_keys(settings.data_key.get_secret_value())[0], b"wxlogin wx.login code id v1")


async def warn_of_legacy_tokens(store: RefreshTokenStore) -> None:
    """Say once at start-up when refresh tokens of an earlier version (bare SHA-256 ids) are stored:
    they are never accepted as they are (anyone who can write to MongoDB could plant one), and
    ``refresh-tokens migrate`` re-keys them so their sessions go on."""
    try:
        legacy = await store.count_legacy()
    except PyMongoError as exc:  # not worth failing a start over
        log.warning("refresh_tokens_legacy_unknown", error=type(exc).__name__)
        return
    if legacy:
        log.warning(
            "refresh_tokens_legacy_found",
            count=legacy,
            note="run `python -m services.session refresh-tokens migrate` once, or these sessions end",
        )


async def reload_keys_forever(signer: Signer, bus: Bus, interval: float) -> None:
    """Adopt rotations made with ``keys rotate``/``keys retire``; tell the gateways when keys change."""
    while True:
        await asyncio.sleep(interval)
        try:
            if await signer.reload():
                kids = [jwk["kid"] for jwk in signer.jwks()]
                log.info("signing_keys_changed", kids=kids)
                await bus.publish(SigningKeysChanged(kids=kids))
        except Exception:  # Mongo or the bus hiccuped: the next round tries again
            log.exception("signing_keys_reload_failed")


def create_app(
    settings: Settings, *, broker: MemoryBroker | None = None, clock: Callable[[], float] = time.time
) -> web.Application:
    """The session service as an aiohttp app (its HTTP side is only the ops endpoints)."""
    sealer = data_sealer(settings)  # fail at start-up, not at the first login
    app = new_app(settings)
    app.cleanup_ctx.extend(
        [clients_context, mongo_context(INDEXES), bus_context(SERVICE, broker), http_context]
    )

    async def handlers_ctx(app: web.Application) -> AsyncIterator[None]:
        settings, db, bus = app[SETTINGS], app[DB], app[BUS]
        wechat = WeChatClient(
            app[HTTP],
            base_url=settings.wechat_api_base,
            appid=settings.appid,
            secret=settings.secret,
            timeout=settings.wechat_timeout_seconds,
        )
        # getuserphonenumber needs the access_token the token service broadcasts. Not a readiness
        # condition: logins and tokens work without it, phone binding waits for it (bounded).
        access_tokens = TokenCache(bus, clock=clock, renew_seconds=settings.rpc_timeout_seconds / 2)
        await access_tokens.start()
        key_store = SigningKeyStore(db)
        await key_store.upgrade()  # records and indexes of a version with Ed25519 keys only
        signer = Signer(
            key_store,
            sealer,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl=settings.access_token_ttl_seconds,
            clock=clock,
        )
        await signer.load()
        app[SIGNER] = signer
        refresh_store = RefreshTokenStore(db)
        first_key, *older_keys = successor_keys(settings)
        families = RefreshFamilies(
            refresh_store,
            first_key,
            older_keys=older_keys,
            ttl=float(settings.refresh_token_ttl_seconds),
            grace=settings.refresh_grace_seconds,
            max_age=float(settings.session_max_seconds),
            clock=clock,
        )
        await warn_of_legacy_tokens(refresh_store)
        clients, users, subjects = app[CLIENTS], UserStore(db), subject_key(settings)
        backchannel = BackchannelLogout(app[HTTP], signer, issuer=settings.issuer, subject_key=subjects)
        linking = LinkHandlers(
            clients,
            LinkRequestStore(db),
            IdentityLinkStore(db),
            bus,
            bus,
            keys=link_keys(settings),
            subject_key=subjects,
            # A link token must show its code within a scene's lifetime (docs/linking.md).
            request_ttl=float(settings.scene_ttl_seconds),
            clock=clock,
        )
        oidc = OidcHandlers(
            clients,
            users,
            OidcCodeStore(db),
            OpSessionStore(db),
            families,
            signer,
            bus,
            backchannel,
            publisher=bus,
            issuer=settings.issuer,
            keys=oidc_keys(settings),
            subject_key=subjects,
            op_session_ttl=float(settings.session_max_seconds),
            clock=clock,
            links=linking,
        )
        stores = SessionStores(users, CodeUseStore(db), MpSessionStore(db))
        handlers = SessionHandlers(
            stores,
            signer,
            families,
            wechat,
            access_tokens,
            bus,
            bus,
            sealer,
            code_key=code_key(settings),
            clock=clock,
            end_op_sessions=oidc.end_user_sessions,
            linking=linking,
        )
        app[HANDLERS] = handlers
        await bus.serve(
            {
                ConfirmLogin: handlers.confirm,
                IdentifyScanner: handlers.identify,
                EnterLoginCode: handlers.enter_code,
                CompleteLogin: handlers.complete,
                LoginMiniProgram: handlers.mp_login,
                RefreshTokens: handlers.refresh,
                EndSession: handlers.logout,
                BindPhone: handlers.bind_phone,
                DecryptData: handlers.decrypt,
                GetJwks: handlers.jwks,
                Authorize: oidc.authorize,
                ExchangeGrant: oidc.token,
                GetUserInfo: oidc.userinfo,
                EndOpSession: oidc.end_session,
                RevokeToken: oidc.revoke,
                OpenLink: linking.open_link,
                IssueLinkScene: linking.issue_link,
                CompleteLink: linking.complete,
                GetLinkStatus: linking.status,
                Unlink: linking.unlink,
            }
        )
        reloader = asyncio.ensure_future(
            reload_keys_forever(signer, bus, settings.signing_keys_reload_seconds)
        )
        try:
            yield
        finally:
            await stop_task(reloader)
            # Logout tokens still on their way: a bounded wait, before the HTTP client closes.
            await backchannel.close(timeout=min(5.0, settings.shutdown_timeout_seconds))

    app.cleanup_ctx.append(handlers_ctx)
    return app
