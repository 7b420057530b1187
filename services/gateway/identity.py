"""Identity routes of the gateway: refresh, logout, mini-program login, phone binding, decryption.

Registered from :func:`services.gateway.routes.setup_routes`. Bearer tokens are verified here with the
JWKS (no RPC); the session service gets the verified ``sub`` and ``sid``, never the token itself.
This module also keeps the gateway's keys fresh: a periodic re-fetch, and one on
``signing_keys.changed``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool

from services.gateway.auth import bearer_token
from services.gateway.errors import Unauthorized
from services.gateway.routes import KEYS, LIMITS, WxCode, client_ip, read_body, tokens_json
from shared.messages import (
    BindPhone,
    DecryptData,
    EndSession,
    LoginMiniProgram,
    RefreshTokens,
    SigningKeysChanged,
)
from shared.runtime import BUS, SETTINGS, stop_task

URLSAFE = r"^[A-Za-z0-9_-]+$"
RefreshToken = Field(min_length=16, max_length=256, pattern=URLSAFE)
BASE64 = r"^[A-Za-z0-9+/]+={0,2}$"


class CodeBody(BaseModel):
    """``{code}``: a wx.login code, or a getPhoneNumber code."""

    model_config = ConfigDict(extra="ignore")
    code: str = WxCode


class RefreshBody(BaseModel):
    """``{refresh_token}``."""

    model_config = ConfigDict(extra="ignore")
    refresh_token: str = RefreshToken


class LogoutBody(BaseModel):
    """``{refresh_token?, everywhere?}``: logout without an access token (e.g. after it expired);
    ``everywhere`` ends every session of the user, not only this one."""

    model_config = ConfigDict(extra="ignore")
    refresh_token: str | None = Field(default=None, min_length=16, max_length=256, pattern=URLSAFE)
    # Strict: 1 or "yes" is a 400, not a logout everywhere (found by `make fuzz`).
    everywhere: StrictBool = False


class DecryptBody(BaseModel):
    """``{encrypted_data, iv}`` as an open-data API hands them to the page (standard base64)."""

    model_config = ConfigDict(extra="ignore")
    encrypted_data: str = Field(min_length=4, max_length=12000, pattern=BASE64)
    iv: str = Field(min_length=4, max_length=64, pattern=BASE64)


async def _claims(request: web.Request) -> dict[str, Any]:
    """The verified claims of the request's bearer token (``sub`` and ``sid`` are checked there)."""
    return await request.app[KEYS].verify(bearer_token(request.headers.get("Authorization")))


async def refresh_tokens(request: web.Request) -> web.Response:
    """``POST /api/token/refresh {refresh_token}`` → new tokens; the presented one is spent."""
    request.app[LIMITS].check("session", client_ip(request))
    body = await read_body(request, RefreshBody)
    pair = await request.app[BUS].call(RefreshTokens(refresh_token=SecretStr(body.refresh_token)))
    return web.json_response(tokens_json(pair))


async def logout(request: web.Request) -> web.Response:
    """``POST /api/logout`` (Bearer, or ``{refresh_token}``; ``{"everywhere": true}`` for every session
    of the user) → 204; the session cannot refresh again."""
    request.app[LIMITS].check("session", client_ip(request))
    body = await read_body(request, LogoutBody) if request.can_read_body else LogoutBody()
    if request.headers.get("Authorization"):
        claims = await _claims(request)
        request.app[LIMITS].check_user("user", claims["sub"])
        message = EndSession(user_id=claims["sub"], sid=claims["sid"], everywhere=body.everywhere)
    elif body.refresh_token:
        message = EndSession(refresh_token=SecretStr(body.refresh_token), everywhere=body.everywhere)
    else:
        raise Unauthorized("send the access token (Authorization: Bearer …) or {refresh_token}")
    await request.app[BUS].call(message)
    return web.Response(status=204)


async def mp_login(request: web.Request) -> web.Response:
    """``POST /api/mp/login {code}`` → tokens for the mini-program itself."""
    request.app[LIMITS].check("login", client_ip(request))
    body = await read_body(request, CodeBody)
    pair = await request.app[BUS].call(LoginMiniProgram(code=SecretStr(body.code)))
    return web.json_response(tokens_json(pair))


async def mp_phone(request: web.Request) -> web.Response:
    """``POST /api/mp/phone {code}`` (Bearer) → the user and an access token with the phone claim."""
    request.app[LIMITS].check("session", client_ip(request))
    claims = await _claims(request)
    request.app[LIMITS].check_user("user", claims["sub"])
    body = await read_body(request, CodeBody)
    bound = await request.app[BUS].call(
        BindPhone(user_id=claims["sub"], sid=claims["sid"], code=SecretStr(body.code))
    )
    return web.json_response(
        {
            "user": bound.user.model_dump(exclude_none=True),
            "access_token": bound.access_token.get_secret_value(),
            "token_type": "Bearer",
            "expires_in": bound.expires_in,
        }
    )


async def mp_decrypt(request: web.Request) -> web.Response:
    """``POST /api/mp/decrypt {encrypted_data, iv}`` (Bearer) → ``{data, user}``."""
    request.app[LIMITS].check("session", client_ip(request))
    claims = await _claims(request)
    request.app[LIMITS].check_user("user", claims["sub"])
    body = await read_body(request, DecryptBody)
    decrypted = await request.app[BUS].call(
        DecryptData(
            user_id=claims["sub"],
            sid=claims["sid"],
            encrypted_data=SecretStr(body.encrypted_data),
            iv=body.iv,
        )
    )
    return web.json_response(
        {
            "data": json.loads(decrypted.data.get_secret_value()),
            "user": decrypted.user.model_dump(exclude_none=True),
        }
    )


async def keys_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: re-fetch the JWKS periodically and whenever the session service rotates."""
    keys, settings = app[KEYS], app[SETTINGS]

    async def on_keys_changed(_event: SigningKeysChanged) -> None:
        await keys.refresh(force=True)

    await app[BUS].subscribe_broadcast([SigningKeysChanged], on_keys_changed)
    # A rotation announced while the bus was down was missed: look again once it is back.
    app[BUS].on_reconnected(functools.partial(keys.refresh, force=True))
    task = asyncio.ensure_future(keys.refresh_forever(settings.jwks_refresh_seconds))
    try:
        yield
    finally:
        await stop_task(task)


def setup_identity_routes(app: web.Application) -> None:
    """The identity routes and the key refresher (``/api/me`` and the JWKS are in ``routes``)."""
    app.cleanup_ctx.append(keys_context)
    r = app.router
    r.add_post("/api/token/refresh", refresh_tokens)
    r.add_post("/api/logout", logout)
    r.add_post("/api/mp/login", mp_login)
    r.add_post("/api/mp/phone", mp_phone)
    r.add_post("/api/mp/decrypt", mp_decrypt)
