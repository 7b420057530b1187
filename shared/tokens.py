"""The access_token as the qrcode and session services hold it: in memory, fed by the token service.

:class:`TokenCache` is a :class:`shared.wechat.TokenProvider`. It learns tokens from the
``token.refreshed`` broadcast, asks ``token.current`` at start-up and whenever it has no valid one,
waits (bounded) instead of failing while the token service has none yet, and reports rejected tokens
by fingerprint only: the broadcast is the one message that carries the token itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable

from shared.bus import Bus
from shared.errors import RemoteError, ServiceError
from shared.logging import get_logger, register_secret
from shared.messages import GetCurrentToken, TokenInvalidated, TokenRefreshed

log = get_logger(__name__)


def fingerprint(token: str) -> str:
    """A non-secret name for a token: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class TokenUnavailable(ServiceError):
    """No valid access_token could be obtained in time."""

    code = "token_unavailable"
    default_message = "the WeChat access token is not available yet"


class TokenCache:
    """Holds the current access_token of a consumer service."""

    def __init__(
        self,
        bus: Bus,
        *,
        wait_seconds: float = 10.0,
        poll_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._wait = wait_seconds
        self._poll = poll_seconds
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._changed = asyncio.Event()

    @property
    def valid(self) -> bool:
        """True while a token is held and has not expired (for ``/readyz``)."""
        return self._token is not None and self._expires_at > self._clock()

    def _accept(self, token: str, expires_at: float) -> None:
        if token == self._token and expires_at <= self._expires_at:
            return
        register_secret(token)
        self._token, self._expires_at = token, expires_at
        self._changed.set()
        self._changed = asyncio.Event()
        log.info(
            "token_received", fingerprint=fingerprint(token), expires_in=round(expires_at - self._clock())
        )

    async def start(self) -> bool:
        """Subscribe this instance to the ``token.refreshed`` broadcast, then ask ``token.current`` once.

        What a consumer's composition root calls at start-up. Returns whether a token was obtained;
        False is normal while the token service has none yet (``get`` then waits, bounded).
        """
        await self._bus.subscribe_broadcast([TokenRefreshed], self.on_refreshed)
        # A refresh broadcast while this instance was cut off from the bus was missed: ask again.
        self._bus.on_reconnected(self.fetch)
        return await self.fetch()

    async def on_refreshed(self, event: TokenRefreshed) -> None:
        """Handler for the ``token.refreshed`` broadcast."""
        self._accept(event.access_token.get_secret_value(), event.expires_at.timestamp())

    async def fetch(self) -> bool:
        """Ask the token service for the current token; False when it has none or is down."""
        try:
            reply = await self._bus.call(GetCurrentToken())
        except RemoteError as exc:
            log.info("token_current_unavailable", error_code=exc.error_code)
            return False
        self._accept(reply.access_token.get_secret_value(), reply.expires_at.timestamp())
        return True

    async def get(self) -> str:
        """The current token, waiting up to ``wait_seconds`` while none is valid."""
        deadline = time.monotonic() + self._wait
        while not self.valid:
            if not await self.fetch() or not self.valid:
                await self._wait_for_change(deadline)
            if time.monotonic() >= deadline and not self.valid:
                raise TokenUnavailable(retry_after=5)
        assert self._token is not None
        return self._token

    async def invalidated(self, token: str, errcode: int) -> str:
        """Report ``token`` as rejected and return a different one (bounded wait)."""
        await self._bus.publish(TokenInvalidated(fingerprint=fingerprint(token), errcode=errcode))
        deadline = time.monotonic() + self._wait
        while self._token == token or not self.valid:
            await self._wait_for_change(deadline)
            if self._token == token:
                await self.fetch()
            if time.monotonic() >= deadline and (self._token == token or not self.valid):
                raise TokenUnavailable(
                    "WeChat rejected the access token and no new one arrived", retry_after=5
                )
        assert self._token is not None
        return self._token

    async def _wait_for_change(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), min(self._poll, remaining))
