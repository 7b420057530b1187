"""What a phone's browser gets besides the code image: a typed login code (minted with the scene, found
again when a phone enters it) and a URL Link for the "打开微信" button.

A login code is stored only as a keyed hash (HMAC-SHA256 with a key derived from the data key): with
8 characters of 31, a plain hash of every code could be computed from a database dump in minutes.
Entries are limited per WeChat user and, for entries that name no stored code (misses), all users
together, both per hour in ``scene_rates``; the miss budget never exceeds what keeps guessing any live
code below 10^-6 a day (:mod:`shared.logincode`, docs/security.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

from services.qrcode.errors import CodeEntriesLimited, LoginCodeInvalid
from services.qrcode.limits import Decision
from shared.logging import get_logger
from shared.logincode import new_login_code
from shared.wechat import TokenProvider, WeChatClient, WeChatError, call_with_token

log = get_logger(__name__)

# A code that collides with a stored one is replaced; five collisions in a row mean something else.
MINT_ATTEMPTS = 5
# The URL Link is asked for on the issue path: it may not hold the issue up for long.
URL_LINK_TIMEOUT = 1.0


class CodeStore(Protocol):
    """Where login codes are kept: on their scenes (:class:`services.qrcode.store.SceneStore`)."""

    async def set_login_code(self, scene_id: str, code_hash: str) -> bool:
        """Give the scene this code; False when another stored scene has it."""
        ...

    async def enter_login_code(self, code_hash: str, *, limit: int) -> tuple[str | None, bool]:
        """Count an entry: the scene (if entries were left), and whether the code is stored at all."""
        ...


class Budget(Protocol):
    """A count every replica shares (:class:`services.qrcode.limits.WindowBudget`)."""

    async def take(self, now: float, key: str = "") -> Decision:
        """Count one use if there is room."""
        ...

    async def give_back(self, now: float, key: str = "") -> None:
        """Uncount one use."""
        ...


class MintLimit(Protocol):
    """New login codes per minute (:class:`services.qrcode.limits.SharedRateLimit`)."""

    async def take(self, now: float) -> Decision:
        """Count one new code if there is room."""
        ...


@dataclass(frozen=True)
class EntryLimits:
    """How entries are limited: misses of everybody, entries per user, entries per scene."""

    misses: Budget
    per_user: Budget | None
    per_scene: int


class LoginCodes:
    """Mints a scene's login code and finds the scene of an entered one."""

    def __init__(self, store: CodeStore, key: bytes, mint_limit: MintLimit, limits: EntryLimits) -> None:
        self._store = store
        self._key = key
        self._mint_limit = mint_limit
        self._limits = limits

    def code_hash(self, code: str) -> str:
        """The keyed hash a code is stored and found under."""
        return hmac.new(self._key, b"login-code:" + code.encode(), hashlib.sha256).hexdigest()

    async def mint(self, scene_id: str, now: float) -> str | None:
        """A new code for ``scene_id``, or None when this minute's new codes are spent."""
        if not (await self._mint_limit.take(now)).allowed:
            log.info("login_code_not_minted", reason="per_minute")
            return None
        for _ in range(MINT_ATTEMPTS):
            code = new_login_code()
            if await self._store.set_login_code(scene_id, self.code_hash(code)):
                return code
            log.info("login_code_collision")  # one in ~10^8 with thousands stored: mint another
        log.warning("login_code_not_minted", reason="collisions")
        return None

    async def enter(self, code: str, entrant: str, now: float) -> str:
        """The scene of an entered code, its entry counted; raises :class:`LoginCodeInvalid` or
        :class:`CodeEntriesLimited` (``rate_limited``)."""
        limits = self._limits
        if limits.per_user is not None:
            mine = await limits.per_user.take(now, entrant)
            if not mine.allowed:
                log.info("login_code_refused", reason="per_user")
                raise CodeEntriesLimited(retry_after=mine.retry_after)
        # Every entry might be a guess: it takes one miss before it is looked at, and gives it back
        # when the code is stored (then it is not a guess that failed).
        miss = await limits.misses.take(now)
        if not miss.allowed:
            log.warning("login_code_refused", reason="misses_budget")
            raise CodeEntriesLimited(
                "too many wrong login codes were entered; try again later, or scan the code instead",
                retry_after=miss.retry_after,
            )
        scene_id, stored = await self._store.enter_login_code(self.code_hash(code), limit=limits.per_scene)
        if stored:
            await limits.misses.give_back(now)
        if scene_id is None:
            log.info("login_code_refused", reason="entries_per_scene" if stored else "unknown")
            raise LoginCodeInvalid()
        return scene_id


class UrlLinks:
    """URL Links (``wxa/generate_urllink``) that open the scan page of a scene in WeChat."""

    def __init__(self, wechat: WeChatClient, tokens: TokenProvider, *, page: str, env_version: str) -> None:
        self._wechat = wechat
        self._tokens = tokens
        self._page = page
        self._env_version = env_version

    async def link(self, scene_id: str) -> str | None:
        """The link, or None when WeChat gives none now (a personal mini-program: 40002)."""

        async def generate(token: str) -> str:
            return await self._wechat.generate_urllink(
                token, path=self._page, query=f"scene={scene_id}", env_version=self._env_version
            )

        try:
            return await asyncio.wait_for(call_with_token(self._tokens, generate), URL_LINK_TIMEOUT)
        except WeChatError as exc:
            # 40002: WeChat gives URL Links to non-personal mini-programs only (WXLOGIN_URL_LINK is on
            # for one that is personal); the page then shows no "open WeChat" button.
            log.warning("url_link_not_generated", errcode=exc.errcode)
        except TimeoutError:
            log.warning("url_link_not_generated", errcode="timeout")
        return None
