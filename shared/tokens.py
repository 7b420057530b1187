"""The access_token as the qrcode and session services hold it: in memory, fed by the token service.

:class:`TokenCache` is a :class:`shared.wechat.TokenProvider`. It learns tokens from the
``token.refreshed`` broadcast, asks ``token.current`` at start-up and whenever it has no valid one,
waits (bounded) instead of failing while the token service has none yet, and reports rejected tokens
by fingerprint only: the broadcast is the one message that carries the token itself.

A rejected token is replaced within the caller's deadline (``renew_seconds`` by default): by a newer
one already held, else by what ``token.current {rejected}`` answers (docs/token.md §3). The token
service never leaves it waiting for a force refresh WeChat does not allow yet.
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
from shared.messages import GetCurrentToken, TokenRefreshed

log = get_logger(__name__)


def fingerprint(token: str) -> str:
    """A non-secret name for a token: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class TokenUnavailable(ServiceError):
    """No valid access_token could be obtained in time."""

    code = "token_unavailable"
    default_message = "the WeChat access token is not available yet"


class TokenCache:
    """Holds the current access_token of a consumer service.

    ``wait_seconds`` bounds :meth:`get` while no token exists yet (start-up); ``renew_seconds`` bounds
    :meth:`invalidated` when the caller gives no deadline: pass less than the RPC timeout of the
    requests whose handlers call WeChat, so the retry still fits in it.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        wait_seconds: float = 10.0,
        renew_seconds: float = 1.5,
        poll_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._wait = wait_seconds
        self._renew = renew_seconds
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

    async def invalidated(self, token: str, errcode: int, *, deadline: float | None = None) -> str:
        """Report ``token`` as rejected by WeChat; the token to retry with, by ``deadline``.

        ``deadline`` is a :func:`time.monotonic` instant (default: ``renew_seconds`` from now). A
        different valid token already held (the broadcast came first) is returned at once. Otherwise
        the token service answers ``token.current {rejected}``: a newer token, the result of a force
        refresh, or the rejected token itself when it is less than 30 s old (the newest WeChat will
        give; one retry with it is all the caller makes). Raises :class:`TokenUnavailable` (with
        ``retry_after``) when none comes in time, never waiting past ``deadline``.
        """
        if deadline is None:
            deadline = time.monotonic() + self._renew
        newer = self._newer_than(token)
        if newer is not None:
            log.info("token_rejected_newer_held", fingerprint=fingerprint(token), errcode=errcode)
            return newer
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TokenUnavailable(
                "WeChat rejected the access token; no time left to renew it", retry_after=1
            )
        request = GetCurrentToken(
            rejected=fingerprint(token), errcode=errcode, wait_seconds=min(remaining, 30)
        )
        try:
            reply = await self._bus.call(request, timeout=remaining)
        except RemoteError as exc:
            newer = self._newer_than(token)  # the broadcast may have come while the call failed
            if newer is not None:
                return newer
            log.warning("token_renewal_failed", fingerprint=fingerprint(token), error_code=exc.error_code)
            raise TokenUnavailable(
                "WeChat rejected the access token and no usable one came in time",
                retry_after=exc.retry_after or 1,
            ) from None
        fresh = reply.access_token.get_secret_value()
        self._accept(fresh, reply.expires_at.timestamp())
        if fresh == token:
            log.info("token_rejected_but_newest", fingerprint=fingerprint(token), errcode=errcode)
        return fresh

    def _newer_than(self, token: str) -> str | None:
        held = self._token
        return held if held is not None and held != token and self.valid else None

    async def _wait_for_change(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), min(self._poll, remaining))
