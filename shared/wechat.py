"""The one async client for WeChat's server API (``../shared/wechat-api.md`` is its contract).

Errors are grouped by what the caller must do:

* :class:`WeChatRetryLater` (-1, timeouts, transport failures, malformed answers): retried here with
  the bounded policy of :mod:`shared.retry`, except for calls that spend a single-use credential;
* :class:`WeChatRateLimited` (45009/45011): never retried here, carries ``retry_after`` seconds;
* :class:`WeChatTokenInvalid` (40001/40014/42001): :func:`call_with_token` reports the token to
  its provider and retries once with the token it answers, within the caller's deadline;
* :class:`WeChatBadRequest`: everything else; retrying cannot help.

Every call has a timeout. Answers are parsed tolerantly (success with or without ``errcode: 0``,
``countryCode`` as number or string, JSON errors labelled ``text/plain``). Outbound URLs are logged
without their query strings, and no secret (appsecret, access token, code, session_key) is logged.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
from pydantic import SecretStr

from shared.logging import get_logger, register_secret
from shared.retry import transient_policy
from shared.wxcrypto import session_signature

log = get_logger(__name__)

T = TypeVar("T")

TOKEN_INVALID_CODES = frozenset({40001, 40014, 42001})
RATE_LIMIT_CODES = frozenset({45009, 45011})
RETRY_LATER_CODES = frozenset({-1})
SESSION_KEY_STALE_CODES = frozenset({87007, 87009})  # checksession: the key is not (or no longer) valid

# Codes of our own for failures that never reached an errcode (WeChat's are -1 or positive).
MALFORMED = -2
TIMED_OUT = -3
UNREACHABLE = -4
HTTP_ERROR = -5

BEIJING_OFFSET = 8 * 3600
# 45009 from getwxacodeunlimit is its 5000/minute limit, not a daily quota (wechat-api.md §4).
_PER_MINUTE_45009 = frozenset({"wxa/getwxacodeunlimit"})


class WeChatError(Exception):
    """WeChat answered with a non-zero errcode, or could not be reached."""

    def __init__(self, endpoint: str, errcode: int, errmsg: str) -> None:
        self.endpoint = endpoint
        self.errcode = errcode
        self.errmsg = errmsg
        super().__init__(f"{endpoint}: {errcode} {errmsg}")


class WeChatRetryLater(WeChatError):
    """Transient: WeChat is busy (-1), slow, unreachable or answered garbage."""


class WeChatRateLimited(WeChatError):
    """A quota or rate limit (45009, 45011); wait ``retry_after`` seconds before trying again."""

    def __init__(self, endpoint: str, errcode: int, errmsg: str, *, retry_after: float | None = None) -> None:
        super().__init__(endpoint, errcode, errmsg)
        self.retry_after = retry_after if retry_after is not None else rate_limit_delay(endpoint, errcode)


class WeChatTokenInvalid(WeChatError):
    """The access_token was rejected (40001/40014/42001); a fresh token may succeed."""


class WeChatBadRequest(WeChatError):
    """WeChat refused the request itself (bad code, bad scene, blocked user, ...)."""


def seconds_to_beijing_midnight(now: float) -> float:
    """Seconds from ``now`` (epoch) until the next midnight in Beijing, when daily quotas reset."""
    return 86400 - ((now + BEIJING_OFFSET) % 86400)


def rate_limit_delay(endpoint: str, errcode: int, *, now: float | None = None) -> float:
    """How long a 45009/45011 from ``endpoint`` lasts: the minute, or until Beijing midnight."""
    if errcode == 45011 or endpoint in _PER_MINUTE_45009:
        return 60.0  # "retry next minute"
    return seconds_to_beijing_midnight(time.time() if now is None else now)


def classify(endpoint: str, errcode: int, errmsg: str, *, now: float | None = None) -> WeChatError:
    """The typed error for an errcode."""
    if errcode in TOKEN_INVALID_CODES:
        return WeChatTokenInvalid(endpoint, errcode, errmsg)
    if errcode in RATE_LIMIT_CODES:
        return WeChatRateLimited(
            endpoint, errcode, errmsg, retry_after=rate_limit_delay(endpoint, errcode, now=now)
        )
    if errcode in RETRY_LATER_CODES:
        return WeChatRetryLater(endpoint, errcode, errmsg)
    return WeChatBadRequest(endpoint, errcode, errmsg)


# aiohttp re-sends an idempotent request (a GET) once when the connection drops after it was sent
# (RFC 9112 §9.3.1). For a single-use wx.login code that second send would get 40163 for a code WeChat
# may have accepted; calls that must not be repeated refuse the re-send with a per-request middleware
# (aiohttp ≥ 3.12; older versions have no hook, and the call is sent as before).
_PER_REQUEST_MIDDLEWARES = "middlewares" in inspect.signature(aiohttp.ClientSession._request).parameters


class _NotResent(aiohttp.ClientError):
    """aiohttp wanted to send a single-use request a second time; it was stopped."""


def _send_once() -> Any:
    sent = False

    async def middleware(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        nonlocal sent
        if sent:
            raise _NotResent("connection dropped after the request was sent")
        sent = True
        response: aiohttp.ClientResponse = await handler(request)
        return response

    return middleware


# --- typed results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An access_token and its remaining lifetime in seconds when it was fetched."""

    access_token: str
    expires_in: int

    def __repr__(self) -> str:
        return f"AccessToken(expires_in={self.expires_in})"


@dataclass(frozen=True, slots=True)
class Code2Session:
    """The result of exchanging a wx.login code (``unionid`` only for Open Platform-bound apps)."""

    openid: str
    session_key: str
    unionid: str | None = None

    def __repr__(self) -> str:
        return f"Code2Session(openid={self.openid!r}, unionid={self.unionid!r})"


@dataclass(frozen=True, slots=True)
class CodeImage:
    """A rendered mini-program code: its bytes and their real MIME type (sniffed, not trusted)."""

    data: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class PhoneInfo:
    """A user's phone number from getuserphonenumber (``country_code`` always a string, e.g. "86")."""

    phone_number: str
    pure_phone_number: str
    country_code: str
    watermark_appid: str | None = None
    watermark_timestamp: int | None = None


def sniff_image_type(data: bytes) -> str | None:
    """``image/png`` or ``image/jpeg`` from magic bytes (WeChat's header says jpeg either way)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def image_is_complete(data: bytes, kind: str) -> bool:
    """False for an image cut short (a PNG without its IEND chunk, a JPEG without its end marker).

    Looks at the last bytes only, so trailing padding some encoders add is tolerated.
    """
    tail = data[-64:]
    if kind == "image/png":
        return b"IEND" in tail
    if kind == "image/jpeg":
        return b"\xff\xd9" in tail
    return True


# --- token providers ------------------------------------------------------------------------------


class TokenProvider(Protocol):
    """Where a service gets its access_token (the token service's broadcast, held in memory)."""

    async def get(self) -> str:
        """The current token; waits (bounded) while none is known yet."""
        ...

    async def invalidated(self, token: str, errcode: int, *, deadline: float | None = None) -> str:
        """Report ``token`` as rejected by WeChat; the token to retry with, by ``deadline``.

        ``deadline`` is a :func:`time.monotonic` instant (None: the provider's own bound). The
        answer may be ``token`` itself when it is the newest WeChat will give right now.
        """
        ...


async def call_with_token(
    provider: TokenProvider, call: Callable[[str], Awaitable[T]], *, deadline: float | None = None
) -> T:
    """Run ``call(token)``; on a token error (40001/40014/42001) get a token and retry exactly once.

    The wait for the retry's token ends by ``deadline`` (a :func:`time.monotonic` instant, e.g. the
    caller's RPC deadline; None: the provider's bound), so a rejected token costs one retry within
    the caller's time or a retryable error, never a timeout. A second token error is raised to the
    caller: a token that fails twice in a row is a problem for the token service, not something to
    loop on.
    """
    token = await provider.get()
    try:
        return await call(token)
    except WeChatTokenInvalid as exc:
        log.warning("wechat_token_rejected", endpoint=exc.endpoint, errcode=exc.errcode)
        fresh = await provider.invalidated(token, exc.errcode, deadline=deadline)
        return await call(fresh)


# --- the client -----------------------------------------------------------------------------------


class WeChatClient:
    """Calls api.weixin.qq.com (or the simulator) for one mini-program.

    ``timeout`` bounds each HTTP attempt; ``retry_attempts`` and ``retry_backoff`` (first wait, in
    seconds) shape the bounded retry of transient failures. ``on_error(endpoint, errcode)`` is told
    of every failure (metrics). ``clock`` gives the time used for ``retry_after``.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        appid: str,
        secret: SecretStr,
        timeout: float = 5.0,
        retry_attempts: int = 3,
        on_error: Callable[[str, int], None] | None = None,
        retry_backoff: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self.appid = appid
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_attempts = retry_attempts
        self._retry_backoff = retry_backoff
        self._on_error = on_error
        self._clock = clock
        register_secret(secret.get_secret_value(), pin=True)

    # -- endpoints --

    async def get_access_token(self) -> AccessToken:
        """``GET /cgi-bin/token``: a new token each call; the previous one dies five minutes later.

        Prefer :meth:`stable_token` (what the token service uses): this one spends a daily quota and
        invalidates the tokens other holders of the appsecret are using.
        """
        params = {
            "grant_type": "client_credential",
            "appid": self.appid,
            "secret": self._secret_value(),
        }
        data = await self._json("GET", "cgi-bin/token", params=params)
        return self._access_token("cgi-bin/token", data)

    async def stable_token(self, *, force_refresh: bool = False) -> AccessToken:
        """``POST /cgi-bin/stable_token`` (normal mode unless ``force_refresh``).

        A force refresh is never retried here: it invalidates the previous token, is limited to 20 a
        day and 30 s apart, and WeChat may have performed one that timed out on the way back.
        """
        body = {
            "grant_type": "client_credential",
            "appid": self.appid,
            "secret": self._secret_value(),
            "force_refresh": force_refresh,
        }
        data = await self._json("POST", "cgi-bin/stable_token", json_body=body, retry=not force_refresh)
        return self._access_token("cgi-bin/stable_token", data)

    async def code2session(self, js_code: str) -> Code2Session:
        """``GET /sns/jscode2session``: exchange a wx.login code (single use, 5 minutes)."""
        params = {
            "appid": self.appid,
            "secret": self._secret_value(),
            "js_code": js_code,
            "grant_type": "authorization_code",
        }
        # Never retried: a code works once, and WeChat may have consumed it before a timeout.
        data = await self._json("GET", "sns/jscode2session", params=params, retry=False)
        return Code2Session(
            openid=self._required_str(data, "openid", "sns/jscode2session"),
            session_key=self._required_str(data, "session_key", "sns/jscode2session"),
            unionid=_optional_str(data.get("unionid")),
        )

    async def get_unlimited_qrcode(
        self,
        access_token: str,
        *,
        scene: str,
        page: str | None = None,
        check_path: bool = True,
        env_version: str = "release",
        width: int = 430,
        is_hyaline: bool = False,
    ) -> CodeImage:
        """``POST /wxa/getwxacodeunlimit``: an image on success, a JSON error otherwise.

        The bytes are sniffed (WeChat labels PNGs image/jpeg) and must be a complete image.
        """
        body: dict[str, Any] = {
            "scene": scene,
            "check_path": check_path,
            "env_version": env_version,
            "width": width,
            "is_hyaline": is_hyaline,
        }
        if page:
            body["page"] = page
        endpoint = "wxa/getwxacodeunlimit"
        params = {"access_token": access_token}

        async def once() -> CodeImage:
            raw, content_type = await self._request("POST", endpoint, params=params, json_body=body)
            kind = sniff_image_type(raw)
            if kind is not None:
                if not image_is_complete(raw, kind):
                    raise self._malformed(endpoint, "image cut short")
                return CodeImage(raw, kind)
            # Not an image: a JSON error, whatever the Content-Type says.
            self._raise_for(endpoint, self._parse_json(endpoint, raw))
            raise self._malformed(endpoint, f"neither an image nor an error ({content_type[:40]})")

        return await self._with_retry(endpoint, once)

    async def get_phone_number(self, access_token: str, code: str, *, openid: str | None = None) -> PhoneInfo:
        """``POST /wxa/business/getuserphonenumber`` with a getPhoneNumber button code.

        Never retried: the code works once.
        """
        body: dict[str, Any] = {"code": code}
        if openid:
            body["openid"] = openid
        endpoint = "wxa/business/getuserphonenumber"
        data = await self._json(
            "POST", endpoint, params={"access_token": access_token}, json_body=body, retry=False
        )
        info = data.get("phone_info")
        if not isinstance(info, dict):
            raise self._malformed(endpoint, "phone_info missing")
        watermark = info.get("watermark")
        if not isinstance(watermark, dict):
            watermark = {}
        return PhoneInfo(
            phone_number=_text(info.get("phoneNumber")),
            pure_phone_number=_text(info.get("purePhoneNumber")),
            country_code=_text(info.get("countryCode")),  # a number or a string depending on the day
            watermark_appid=_optional_str(watermark.get("appid")),
            watermark_timestamp=_optional_int(watermark.get("timestamp")),
        )

    async def check_session(self, access_token: str, *, openid: str, session_key: str) -> bool:
        """``GET /wxa/checksession``: True while ``session_key`` is the user's current one.

        False when WeChat says it is not (87009 invalid signature, 87007 expired); other errors raise.
        """
        endpoint = "wxa/checksession"
        params = {
            "access_token": access_token,
            "openid": openid,
            "signature": session_signature(session_key),
            "sig_method": "hmac_sha256",
        }
        try:
            await self._json("GET", endpoint, params=params)
        except WeChatBadRequest as exc:
            if exc.errcode in SESSION_KEY_STALE_CODES:
                return False
            raise
        return True

    async def generate_urllink(
        self,
        access_token: str,
        *,
        path: str,
        query: str,
        env_version: str = "release",
        expire_interval_days: int = 1,
    ) -> str:
        """``POST /wxa/generate_urllink``: a ``https://wxaurl.cn/…`` link that opens ``path?query`` in
        WeChat, valid ``expire_interval_days`` (1 to 30). Only non-personal mini-programs get one:
        a personal one is answered 40002 (:class:`WeChatBadRequest`)."""
        body: dict[str, Any] = {
            "path": path,
            "query": query,
            "env_version": env_version,
            "expire_type": 1,
            "expire_interval": expire_interval_days,
        }
        endpoint = "wxa/generate_urllink"
        # One attempt: the link is a convenience on the issue path, which must not wait on retries.
        data = await self._json(
            "POST", endpoint, params={"access_token": access_token}, json_body=body, retry=False
        )
        return self._required_str(data, "url_link", endpoint)

    # -- plumbing --

    def _secret_value(self) -> str:
        return self._secret.get_secret_value()

    def _access_token(self, endpoint: str, data: dict[str, Any]) -> AccessToken:
        token = self._required_str(data, "access_token", endpoint)
        register_secret(token)
        expires_in = _optional_int(data.get("expires_in"))
        return AccessToken(token, expires_in if expires_in and expires_in > 0 else 7200)

    async def _json(
        self,
        method: str,
        endpoint: str,
        *,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        async def once() -> dict[str, Any]:
            raw, _ = await self._request(
                method, endpoint, params=params, json_body=json_body, send_once=not retry
            )
            data = self._parse_json(endpoint, raw)
            self._raise_for(endpoint, data)
            return data

        if not retry:
            return await once()
        return await self._with_retry(endpoint, once)

    async def _with_retry(self, endpoint: str, once: Callable[[], Awaitable[T]]) -> T:
        async for attempt in transient_policy(
            f"wechat {endpoint}", WeChatRetryLater, attempts=self._retry_attempts, initial=self._retry_backoff
        ):
            with attempt:
                return await once()
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for(self, endpoint: str, data: dict[str, Any]) -> None:
        errcode = data.get("errcode")
        if errcode in (None, 0, "0"):
            return
        try:
            code = int(errcode)
        except (TypeError, ValueError):
            code = MALFORMED
        errmsg = str(data.get("errmsg", ""))[:300]
        log.warning("wechat_error", endpoint=endpoint, errcode=code, errmsg=errmsg)
        self._count_failure(endpoint, code)
        raise classify(endpoint, code, errmsg, now=self._clock())

    def _parse_json(self, endpoint: str, raw: bytes) -> dict[str, Any]:
        # Parse whatever the Content-Type says: some endpoints send JSON as text/plain.
        try:
            data = json.loads(raw)
        except ValueError:
            raise self._malformed(endpoint, "malformed response body") from None
        if not isinstance(data, dict):
            raise self._malformed(endpoint, "response is not a JSON object")
        return data

    def _required_str(self, data: dict[str, Any], key: str, endpoint: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise self._malformed(endpoint, f"{key} missing from response")
        return value

    def _malformed(self, endpoint: str, why: str) -> WeChatRetryLater:
        log.warning("wechat_malformed_answer", endpoint=endpoint, why=why)
        self._count_failure(endpoint, MALFORMED)
        return WeChatRetryLater(endpoint, MALFORMED, why)

    async def _request(
        self,
        method: str,
        endpoint: str,
        *,
        params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        send_once: bool = False,
    ) -> tuple[bytes, str]:
        url = f"{self._base}/{endpoint}"  # logged as is: the query string is passed separately
        data = json.dumps(json_body, ensure_ascii=False).encode() if json_body is not None else None
        extra: dict[str, Any] = {}
        if send_once and _PER_REQUEST_MIDDLEWARES:
            extra["middlewares"] = (_send_once(),)
        started = time.monotonic()
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                data=data,
                headers={"Content-Type": "application/json"} if data is not None else None,
                timeout=self._timeout,
                **extra,
            ) as resp:
                raw = await resp.read()
                status, content_type = resp.status, resp.headers.get("Content-Type", "")
        except TimeoutError:
            log.warning("wechat_timeout", method=method, url=url, timeout_s=self._timeout.total)
            self._count_failure(endpoint, TIMED_OUT)
            raise WeChatRetryLater(endpoint, TIMED_OUT, "timed out") from None
        except _NotResent:
            log.warning("wechat_dropped_not_resent", method=method, url=url)
            self._count_failure(endpoint, UNREACHABLE)
            raise WeChatRetryLater(
                endpoint, UNREACHABLE, "connection dropped after sending; not re-sent"
            ) from None
        except aiohttp.ClientError as exc:
            # Only the type: some aiohttp errors quote the full URL, query string included.
            log.warning("wechat_unreachable", method=method, url=url, error=type(exc).__name__)
            self._count_failure(endpoint, UNREACHABLE)
            raise WeChatRetryLater(endpoint, UNREACHABLE, f"unreachable: {type(exc).__name__}") from None
        log.debug(
            "wechat_call",
            method=method,
            url=url,
            status=status,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        if status >= 500:
            self._count_failure(endpoint, HTTP_ERROR)
            raise WeChatRetryLater(endpoint, HTTP_ERROR, f"HTTP {status}")
        return raw, content_type

    def _count_failure(self, endpoint: str, code: int) -> None:
        if self._on_error is not None:
            self._on_error(endpoint, code)


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _optional_int(value: Any) -> int | None:
    # Numbers sometimes arrive as strings ("7200"); booleans are not numbers.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _text(value: Any) -> str:
    # countryCode is 86 in some answers and "86" in others; both become "86".
    if value is None or isinstance(value, bool):
        return ""
    number = _optional_int(value) if not isinstance(value, str) else None
    return str(number) if number is not None else str(value).strip()
