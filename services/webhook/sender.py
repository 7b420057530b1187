"""One delivery attempt over HTTP: sign by Standard Webhooks v1, POST, classify the answer.

Signatures come from the ``standardwebhooks`` package (the reference implementation receivers use
too): ``v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">``, one per secret of
the endpoint, space separated (several while a secret rotates). The timestamp is the attempt's, so
a retry hours later still passes the receiver's 5-minute tolerance; ``webhook-id`` never changes.
Redirects are not followed (a redirect could lead past the SSRF guard) and count as a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol

import aiohttp
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from services.webhook.ssrf import AddressRefused, UrlGuard, refusal_of

Outcome = Literal["delivered", "failed", "gone", "refused"]
USER_AGENT = "wxlogin-webhooks/1"
# The answer's body is not needed: read at most this much so the connection can be reused.
ANSWER_READ_LIMIT = 64 * 1024
# Retry-After is believed up to this long (a day); longer hints are capped.
MAX_RETRY_AFTER = 86400.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to.

    ``delivered`` (2xx), ``gone`` (410: the endpoint is disabled), ``refused`` (never sent: the URL
    or its address is not allowed, or no usable secret), ``failed`` (anything else: retried).
    """

    outcome: Outcome
    status: int | None = None
    latency: float = 0.0
    error: str | None = None
    retry_after: float | None = None


class Sender(Protocol):
    """What the delivery worker needs (an :class:`HttpSender`, or a fake in unit tests)."""

    async def send(self, url: str, message_id: str, body: bytes, secrets: Sequence[str]) -> Attempt: ...


def signature_header(secrets: Sequence[str], message_id: str, at: datetime, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,…`` per secret, space separated."""
    return " ".join(Webhook(secret).sign(message_id, at, body) for secret in secrets)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``now`` a ``Retry-After`` header asks to wait (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value) if value.isdigit() else parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}"[:300] if text else name


class HttpSender:
    """Sends signed deliveries with one aiohttp session (whose resolver is the SSRF guard's)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        guard: UrlGuard,
        *,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._guard = guard
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock

    async def send(self, url: str, message_id: str, body: bytes, secrets: Sequence[str]) -> Attempt:
        """POST ``body`` to ``url``, signed with every secret; never raises for the receiver's sake."""
        try:
            self._guard.check_url(url)
        except AddressRefused as exc:
            return Attempt("refused", error=str(exc))
        if not secrets:
            return Attempt("refused", error="no_secret: none of the endpoint's secret_envs is set")
        now = self._clock()
        try:
            signature = signature_header(secrets, message_id, datetime.fromtimestamp(now, UTC), body)
        except (ValueError, EmptyWebhookSecretError) as exc:  # a malformed whsec_ value (bad base64)
            return Attempt("refused", error=f"secret_invalid: {type(exc).__name__}")
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": signature,
        }
        started = time.monotonic()
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False, timeout=self._timeout
            ) as resp:
                await resp.content.read(ANSWER_READ_LIMIT)
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
        except TimeoutError:
            return Attempt("failed", latency=time.monotonic() - started, error="timeout")
        except aiohttp.ClientError as exc:
            refused = refusal_of(exc)
            if refused is not None:
                return Attempt("refused", latency=time.monotonic() - started, error=str(refused))
            return Attempt("failed", latency=time.monotonic() - started, error=_short(exc))
        latency = time.monotonic() - started
        if 200 <= status < 300:
            return Attempt("delivered", status, latency)
        if status == 410:
            return Attempt("gone", status, latency, error="410 Gone: the receiver asked for no more")
        hint = retry_after if status in (429, 503) else None
        return Attempt("failed", status, latency, error=f"HTTP {status}", retry_after=hint)
