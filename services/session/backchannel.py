"""OpenID Connect Back-Channel Logout 1.0: tell the clients that registered a URI that a session ended.

Each logout token (``typ`` logout+jwt, signed with the client's ID-token algorithm: iss, aud, iat,
exp, jti, sub, sid, the back-channel logout event, never a nonce) is POSTed as
``logout_token=<JWT>`` in the background: a short timeout, a couple of retries on network errors
and 5xx answers, failures logged. The RPC that ended the session never waits for it; shutdown waits
a bounded time for deliveries still running (:meth:`BackchannelLogout.close`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from shared.clients import Client
from shared.logging import get_logger
from shared.retry import transient_policy
from shared.subjects import subject

log = get_logger(__name__)

LOGOUT_TOKEN_TYPE = "logout+jwt"  # noqa: S105 (a media type, not a secret)
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_TTL = 120
# Per attempt; three attempts at most, 0.2 s and 0.4 s apart (jittered).
DELIVERY_TIMEOUT_SECONDS = 2.0
DELIVERY_ATTEMPTS = 3


class TokenSigner(Protocol):
    """What signs logout tokens (:class:`services.session.keys.Signer`)."""

    def sign(self, claims: dict[str, Any], *, alg: str, typ: str) -> str: ...


class _Retryable(Exception):
    """The client's endpoint answered 5xx: worth another attempt."""


class BackchannelLogout:
    """Sends logout tokens to clients' ``backchannel_logout_uri`` in the background."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        signer: TokenSigner,
        *,
        issuer: str,
        subject_key: bytes,
        timeout: float = DELIVERY_TIMEOUT_SECONDS,
        attempts: int = DELIVERY_ATTEMPTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._signer = signer
        self._issuer = issuer
        self._subject_key = subject_key
        self._timeout = timeout
        self._attempts = attempts
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def logout_token(self, client: Client, user_id: str, sid: str) -> str:
        """The signed logout token for ``client`` about session ``sid`` of ``user_id``."""
        now = int(self._clock())
        claims = {
            "iss": self._issuer,
            "aud": client.client_id,
            "iat": now,
            "exp": now + LOGOUT_TOKEN_TTL,
            "jti": secrets.token_urlsafe(16),
            "sub": subject(client, user_id, self._subject_key),
            "sid": sid,
            "events": {LOGOUT_EVENT: {}},
        }
        return self._signer.sign(claims, alg=client.id_token_signed_response_alg, typ=LOGOUT_TOKEN_TYPE)

    def notify(self, client: Client, user_id: str, sid: str) -> bool:
        """Start delivering a logout token to ``client`` (if it registered a URI); returns at once."""
        uri = client.backchannel_logout_uri
        if not uri:
            return False
        token = self.logout_token(client, user_id, sid)
        task = asyncio.ensure_future(self._deliver(client.client_id, uri, token, sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _deliver(self, client_id: str, uri: str, token: str, sid: str) -> None:
        started = time.monotonic()
        try:
            async for attempt in transient_policy(
                "backchannel_logout",
                (aiohttp.ClientError, TimeoutError, _Retryable),
                attempts=self._attempts,
            ):
                with attempt:
                    status = await self._post(uri, token)
        except (aiohttp.ClientError, TimeoutError, _Retryable) as exc:
            log.warning(
                "backchannel_logout_failed",
                client=client_id,
                sid=sid,
                error=type(exc).__name__,
                detail=str(exc)[:120],
            )
            return
        ms = round((time.monotonic() - started) * 1000, 1)
        if status in (200, 204):
            log.info("backchannel_logout_sent", client=client_id, sid=sid, ms=ms)
        else:  # a 4xx: the client refused this token; sending it again cannot help
            log.warning("backchannel_logout_refused", client=client_id, sid=sid, status=status, ms=ms)

    async def _post(self, uri: str, token: str) -> int:
        async with self._http.post(
            uri,
            data={"logout_token": token},
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            allow_redirects=False,
        ) as response:
            await response.read()
            if response.status >= 500:
                raise _Retryable(f"HTTP {response.status}")
            return response.status

    @property
    def pending(self) -> int:
        """Deliveries still running."""
        return len(self._tasks)

    async def close(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` seconds for deliveries still running; cancel the rest."""
        tasks = set(self._tasks)
        if not tasks:
            return
        _, left = await asyncio.wait(tasks, timeout=timeout)
        for task in left:
            task.cancel()
        if left:
            log.warning("backchannel_logout_abandoned", count=len(left))
            await asyncio.wait(left, timeout=1.0)
