"""Every message that crosses the bus: events (past tense), RPC requests (imperative) and replies.

Each model carries its wire ``TYPE`` and ``VERSION``; :func:`encode` and :func:`decode` are the only
places message bodies become bytes. Fields typed :data:`Sealed` are secrets: they are encrypted with
the bus key on the wire and held as ``SecretStr`` in memory, so they never show up in a log line.
A sealed field is bound to its place: the associated data names the message type, its version, the
field and (when the bus passes it) the message id, so it opens nowhere else.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    PlainSerializer,
    SecretStr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_serializer,
)

from shared.sealing import Sealer

# --- field types ----------------------------------------------------------------------------------

SceneId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{32}$")]
# hex SHA-256 of the browser's ticket; the ticket itself never leaves the gateway.
TicketHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# A registered client (site), shared.clients; absent on a message: the default client.
ClientIdField = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$")]
SceneState = Literal["pending", "scanned", "confirmed", "redeemed", "cancelled", "expired"]
TERMINAL_STATES: frozenset[str] = frozenset({"redeemed", "cancelled", "expired"})
# Why the phone cancelled: a plain 取消 (``declined``) or 不是我 (``not_me``: the user did not ask for
# this login, so the code on the screen may have been relayed). Read leniently where it is received,
# so a reason added later never makes an older reader drop the message.
CancelReason = Literal["declined", "not_me"]
ReceivedCancelReason = Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]
# How the phone opened the login page (security review M4): ``camera`` scanned the code off a screen,
# ``image`` recognised it in a picture (a chat image, the album: how a relayed code arrives),
# ``unknown`` a mini-program that does not say (older versions).
LaunchKind = Literal["camera", "image", "unknown"]
# What a scene is for: a login (the browser collects tokens), or linking the scanning WeChat user to an
# account the site already has (docs/linking.md: the browser collects no token). A scene of one
# purpose is never confirmed or redeemed as the other (``scene_purpose_mismatch``).
ScenePurpose = Literal["login", "link"]
# Why the session service refused a link on the phone's confirm; the scene is then cancelled with it,
# so the browser that shows the code is told too.
LinkRefusal = Literal["already_linked", "account_already_linked"]
# The site's own id of one of its accounts (printable ASCII, no spaces), and how the phone names it
# (a masked name the site chose, e.g. 张*三 or j***@example.com; no control or bidi-override characters).
ExternalId = Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,128}$")]
AccountHint = Annotated[str, Field(pattern=r"^[^\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069]{1,40}$")]
# A link request: ``lr_`` + 22 URL-safe characters (128 bits); not a secret (the link token is).
LinkRequestId = Annotated[str, Field(pattern=r"^lr_[A-Za-z0-9_-]{22}$")]


# Earlier versions sealed every field with this one purpose (``v1.`` values): still opened, so a
# sender not yet upgraded is understood; everything sealed now is bound to its message and field.
_LEGACY_PURPOSE = "bus"


def field_purpose(context: dict[str, Any], field: str) -> str:
    """The associated data of a Sealed field: ``bus|<type>|<version>|<field>|<message id>``."""
    return f"bus|{context.get('message', '')}|{field}|{context.get('message_id', '')}"


def _seal_field(value: SecretStr, info: SerializationInfo) -> str:
    # Only reached outside encode (Message seals its fields itself, knowing their names).
    raise ValueError("a Sealed field can only be serialized through shared.messages.encode")


def _open_field(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    context = info.context or {}
    sealer = context.get("sealer")
    if isinstance(sealer, Sealer) and isinstance(value, str):
        if value.startswith("v1."):
            value = sealer.open(value, purpose=_LEGACY_PURPOSE)
        else:
            value = sealer.open(value, purpose=field_purpose(context, info.field_name or ""))
    return handler(value)


Sealed = Annotated[
    SecretStr,
    WrapValidator(_open_field),
    PlainSerializer(_seal_field, return_type=str, when_used="json"),
]


def new_id() -> str:
    """A fresh random id of 32 hex digits (message ids, trace ids): 128 bits from the OS, as unique as
    ``uuid4().hex`` without building a UUID (0.6 µs against 3.5 here; a login makes about twenty)."""
    return os.urandom(16).hex()


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


# --- base classes and the registry ----------------------------------------------------------------

_REGISTRY: dict[tuple[str, int], type[Message]] = {}


class UnknownMessage(ValueError):
    """No schema is registered for this type and version."""


class InvalidMessage(ValueError):
    """The body is not JSON or does not match the schema."""


class Message(BaseModel):
    """A wire message: a frozen pydantic model with a type name and a schema version."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    @field_serializer("*", mode="wrap")
    def _seal_secrets(
        self, value: Any, handler: SerializerFunctionWrapHandler, info: FieldSerializationInfo
    ) -> Any:
        # Every SecretStr of a message is a Sealed field; sealed here, where the field name is known.
        if not isinstance(value, SecretStr) or not info.mode_is_json():
            return handler(value)
        context = info.context or {}
        sealer = context.get("sealer")
        if not isinstance(sealer, Sealer):
            raise ValueError("a Sealed field can only be serialized through shared.messages.encode")
        return sealer.seal(value.get_secret_value(), purpose=field_purpose(context, info.field_name))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("TYPE"):
            key = (cls.TYPE, cls.VERSION)
            if key in _REGISTRY and _REGISTRY[key].__qualname__ != cls.__qualname__:
                raise TypeError(f"message {key} registered twice")
            _REGISTRY[key] = cls


class Event(Message):
    """Something that happened; published on the exchange of each service in ``PUBLISHERS``.

    ``HINT`` marks an event that only hurries a push along: the change it reports is stored in Mongo
    already, a gateway re-reads it on (re)subscribe and after a reconnect, and a later event reports the
    same outcome or a later state (``login.confirmed`` after ``scene.confirmed``). The bus publishes a
    hint without asking the broker to confirm it, so it costs one write and no reply; a lost hint
    delays or skips a push, never a login.
    """

    PUBLISHERS: ClassVar[tuple[str, ...]] = ()
    HINT: ClassVar[bool] = False


class Reply(Message):
    """The answer to a :class:`Request`."""


R = TypeVar("R", bound=Reply)


class Request(Message, Generic[R]):
    """An RPC request; ``TYPE`` is ``<service>.<method>`` and ``REPLY`` the model of its answer."""

    REPLY: ClassVar[type[Reply]]

    @classmethod
    def service(cls) -> str:
        """The service that answers this request."""
        return cls.TYPE.split(".", 1)[0]


def message_class(type_: str, version: int) -> type[Message]:
    """The registered model for ``type_``/``version`` (raises :class:`UnknownMessage`)."""
    try:
        return _REGISTRY[(type_, version)]
    except KeyError:
        raise UnknownMessage(f"unknown message type {type_!r} version {version}") from None


def _context(cls: type[Message], sealer: Sealer, message_id: str) -> dict[str, Any]:
    return {"sealer": sealer, "message": f"{cls.TYPE}|{cls.VERSION}", "message_id": message_id}


def encode(message: Message, sealer: Sealer, *, message_id: str = "") -> bytes:
    """The JSON body of ``message``; Sealed fields are encrypted, bound to the message type, version,
    field name and ``message_id`` (which :func:`decode` must then be given too)."""
    return message.model_dump_json(context=_context(type(message), sealer, message_id)).encode()


def decode_as(cls: type[Message], body: bytes, sealer: Sealer, *, message_id: str = "") -> Any:
    """Parse ``body`` as ``cls`` (raises :class:`InvalidMessage`)."""
    try:
        return cls.model_validate_json(body, context=_context(cls, sealer, message_id))
    except (ValidationError, ValueError) as exc:
        raise InvalidMessage(f"{cls.TYPE or cls.__name__}: {_short(exc)}") from None


def decode(type_: str, version: int, body: bytes, sealer: Sealer, *, message_id: str = "") -> Message:
    """Parse a message received with AMQP ``type`` and ``headers.v``."""
    return decode_as(message_class(type_, version), body, sealer, message_id=message_id)


def encode_error(error: dict[str, Any]) -> bytes:
    """The body of an RPC error reply: ``{"error": {"code", "message"}}``."""
    return json.dumps({"error": error}).encode()


def decode_error(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an RPC error reply (tolerates garbage)."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        err = None
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        return {"code": "internal", "message": "malformed error reply"}
    return err


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3])
    return str(exc)[:200]


# --- shared value objects -------------------------------------------------------------------------


class UserView(BaseModel):
    """What a site may know about a user."""

    model_config = ConfigDict(frozen=True)

    id: str
    openid: str
    unionid: str | None = None
    phone: str | None = None
    # The site's own account this user is linked to (docs/linking.md): only in answers for that site.
    external_id: str | None = None


class Place(BaseModel):
    """Where an IP address is, coarsely, from the offline IP database (security review M4, L2).

    ``kind`` is ``public`` (a place the database knows), ``local`` (this machine or a private
    network) or ``unknown``; ``label`` is what the phone shows (e.g. 广东省广州市 · 电信).
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["public", "local", "unknown"]
    label: str
    country: str = ""
    province: str = ""
    city: str = ""
    isp: str = ""


class Requester(BaseModel):
    """The browser that asked for a login code, as shown on the phone before it approves.

    ``browser`` and ``os`` come from the User-Agent, which the browser (or whoever holds the code)
    chose: the phone labels them as reported by the browser. ``location`` is where its address is.
    ``ip`` is always empty since security review L2 (the address stays in the scene, for operators);
    it is kept so that gateways of earlier versions still read the reply.
    """

    model_config = ConfigDict(frozen=True)

    browser: str
    os: str
    ip: str = ""
    requested_at: AwareDatetime
    location: Place | None = None


# --- token service --------------------------------------------------------------------------------


class TokenRefreshed(Event):
    """The token service obtained a new access_token (the only event that carries it)."""

    TYPE = "token.refreshed"
    PUBLISHERS = ("token",)

    access_token: Sealed
    expires_at: AwareDatetime


class TokenInvalidated(Event):
    """WeChat rejected an access_token (40001/40014/42001). Carries its fingerprint, not the token."""

    TYPE = "token.invalidated"
    PUBLISHERS = ("qrcode", "session", "token")

    fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    errcode: int


class CurrentToken(Reply):
    """The access_token now in use and when it expires."""

    TYPE = "token.current.reply"

    access_token: Sealed
    expires_at: AwareDatetime


class GetCurrentToken(Request[CurrentToken]):
    """Ask the token service for the access_token now in use.

    With ``rejected`` (the fingerprint of a token WeChat refused, with its ``errcode``), the question
    is "what do I retry with?": the answer is the stored token if it is newer than the rejected one;
    else the result of the force refresh this request claimed or waited for; else, when the rejected
    token is itself less than 30 s old (WeChat allows no force refresh yet), that same token. It comes
    within ``wait_seconds`` (the caller's remaining deadline), or the call fails with
    ``token_unavailable``. A token service that predates these fields answers the stored token.
    """

    TYPE = "token.current"
    REPLY = CurrentToken

    rejected: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")] | None = None
    errcode: int | None = None
    wait_seconds: Annotated[float, Field(ge=0, le=30)] | None = None


# --- qrcode service -------------------------------------------------------------------------------


class SceneIssued(Event):
    """A login code was handed to a browser."""

    TYPE = "scene.issued"
    PUBLISHERS = ("qrcode",)
    HINT = True

    scene: SceneId
    expires_at: AwareDatetime


class SceneScanned(Event):
    """A phone opened the mini-program page for the scene."""

    TYPE = "scene.scanned"
    PUBLISHERS = ("qrcode",)
    HINT = True

    scene: SceneId


class SceneConfirmed(Event):
    """The phone that scanned confirmed: the qrcode service moved the scene to ``confirmed``.

    Published right after the transition, so gateways push at once; the session service's
    ``login.confirmed`` follows (gateways push whichever arrives first, once).
    """

    TYPE = "scene.confirmed"
    PUBLISHERS = ("qrcode",)
    HINT = True

    scene: SceneId


class SceneCancelled(Event):
    """The phone declined the login; ``reason`` says how (``declined``, ``not_me``), for the browser."""

    TYPE = "scene.cancelled"
    PUBLISHERS = ("qrcode",)

    scene: SceneId
    reason: ReceivedCancelReason | None = None
    # The client the scene belongs to (None: the default client), for the site's webhooks.
    client_id: ClientIdField | None = None
    # ``link``: a link scene (no login failed); None: a login, or a version that did not say.
    purpose: ScenePurpose | None = None


class SceneExpired(Event):
    """The scene outlived its lifetime before being confirmed (announced exactly once).

    ``scanned`` says whether a phone had scanned it (None: a version that did not say): the webhook
    service reports only scanned scenes as failed logins, not every code nobody looked at.
    """

    TYPE = "scene.expired"
    PUBLISHERS = ("qrcode",)

    scene: SceneId
    client_id: ClientIdField | None = None
    scanned: bool | None = None
    purpose: ScenePurpose | None = None


class IssuedScene(Reply):
    """A fresh scene and its code image."""

    TYPE = "qrcode.issue.reply"

    scene: SceneId
    image: str  # data: URI
    expires_at: AwareDatetime
    # The typed login code of a phone's browser (asked for with ``with_login_code``); None when not
    # asked, turned off, or over the minute's budget of new codes.
    login_code: Sealed | None = None
    # A URL Link that opens the scan page in WeChat (``with_url_link``, when the operator turned
    # WXLOGIN_URL_LINK on and WeChat gave one); None otherwise.
    url_link: Annotated[str, Field(max_length=512)] | None = None


class IssueScene(Request[IssuedScene]):
    """Mint a scene bound to the browser that holds the ticket."""

    TYPE = "qrcode.issue"
    REPLY = IssuedScene

    ticket_hash: TicketHash
    ip: Annotated[str, Field(max_length=64)]
    user_agent: Annotated[str, Field(max_length=512)] = ""
    # The site that asked (the gateway checked the Origin against it); the scene is bound to it.
    client_id: ClientIdField | None = None
    # A browser on a phone asks for what a phone needs: a code to type, an "open WeChat" link.
    with_login_code: bool = False
    with_url_link: bool = False
    # A link scene (issued by the session service for a link request) and the account it links,
    # as the site names it for the phone.
    purpose: ScenePurpose = "login"
    account_hint: AccountHint | None = None


class SceneStatus(Reply):
    """The state of a scene as stored (``redeemed`` is reported as it is; the gateway maps it)."""

    TYPE = "qrcode.status.reply"

    scene: SceneId
    state: SceneState
    expires_at: AwareDatetime
    # Who confirmed it (confirmed/redeemed); for services only, the gateway never passes it on.
    user_id: str | None = None
    # The client the scene is bound to (None: the default client).
    client_id: ClientIdField | None = None
    # Why a cancelled scene was cancelled (None: by a version that did not say).
    reason: ReceivedCancelReason | None = None


class GetSceneStatus(Request[SceneStatus]):
    """Read a scene; with ``ticket_hash`` the caller must be the browser that asked for it, with
    ``scan_hash`` the phone that scanned it."""

    TYPE = "qrcode.status"
    REPLY = SceneStatus

    scene: SceneId
    ticket_hash: TicketHash | None = None
    scan_hash: TicketHash | None = None


class ScanInfo(Reply):
    """What the phone is about to approve (security review M4: what it can trust, and warnings).

    ``scanner`` is where the phone itself is; ``location_mismatch`` is true when it and the browser
    are placed in different countries or provinces (a relayed code); ``launch`` is how the phone
    opened the page (``image``: the code came as a picture, a strong warning).
    """

    TYPE = "qrcode.scan.reply"

    site: str
    requester: Requester
    expires_at: AwareDatetime
    scanner: Place | None = None
    location_mismatch: bool = False
    launch: LaunchKind = "unknown"
    # ``link``: the phone is asked to link this WeChat to the site's account ``account_hint``.
    purpose: ScenePurpose = "login"
    account_hint: str | None = None


class ScanScene(Request[ScanInfo]):
    """A phone scanned the code: ``pending → scanned``, bound to that phone's scan token."""

    TYPE = "qrcode.scan"
    REPLY = ScanInfo

    scene: SceneId
    # hex SHA-256 of the scan token the gateway handed to this phone; confirm and cancel need it.
    scan_hash: TicketHash
    ip: Annotated[str, Field(max_length=64)] = ""
    # WeChat's launch scene of the mini-program page (1047: the camera scanned a code); refused for
    # share cards and other mini-programs (launch_scene_refused). None: a mini-program that predates it.
    launch_scene: Annotated[int, Field(ge=0, le=99999)] | None = None


class CancelScene(Request[SceneStatus]):
    """The phone that scanned declined: ``scanned → cancelled``, with the reason the browser is told."""

    TYPE = "qrcode.cancel"
    REPLY = SceneStatus

    scene: SceneId
    scan_hash: TicketHash
    # The phone's choice, or (sent by the session service) why a link was refused.
    reason: CancelReason | LinkRefusal = "declined"


class ConfirmScene(Request[SceneStatus]):
    """The session service identified the user of the phone that scanned: ``scanned → confirmed``.

    Without ``user_id``, for the user :class:`IdentifyScene` recorded at the scan (refused with
    ``scene_not_identified`` when there is none); the reply names the user.
    """

    TYPE = "qrcode.confirm"
    REPLY = SceneStatus

    scene: SceneId
    scan_hash: TicketHash
    user_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    # A scene of the other purpose is refused (scene_purpose_mismatch) before anything changes.
    purpose: ScenePurpose = "login"


class IdentifyScene(Request[SceneStatus]):
    """The code the scanning phone sent with its scan belongs to this existing user.

    Recorded on the scanned scene (confirming stays the phone's choice), so the confirm can go
    straight to ``qrcode.confirm`` without looking the user up first.
    """

    TYPE = "qrcode.identify"
    REPLY = SceneStatus

    scene: SceneId
    scan_hash: TicketHash
    user_id: Annotated[str, Field(min_length=1, max_length=64)]


class RedeemedScene(Reply):
    """The confirmed user of a scene, handed out once."""

    TYPE = "qrcode.redeem.reply"

    scene: SceneId
    user_id: str
    client_id: ClientIdField | None = None
    # When the phone confirmed: the OpenID Connect ``auth_time``.
    confirmed_at: AwareDatetime | None = None


class RedeemScene(Request[RedeemedScene]):
    """The browser collects its login: ``confirmed → redeemed``, ticket checked."""

    TYPE = "qrcode.redeem"
    REPLY = RedeemedScene

    scene: SceneId
    ticket_hash: TicketHash
    # The client collecting the login: a scene bound to another client is refused (client_mismatch).
    client_id: ClientIdField | None = None
    # A link scene yields no login, and a login scene no link (scene_purpose_mismatch).
    purpose: ScenePurpose = "login"


# A typed login code on the bus: 8 characters of shared.logincode.ALPHABET (always sealed).
LoginCodeField = Sealed
# A WeChat user, as counted by the per-user limit on code entries: a keyed hash of the openid.
EntrantKey = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class CodeScanned(Reply):
    """A typed login code named a live scene and scanned it: the scene, and what the phone approves."""

    TYPE = "qrcode.scan_code.reply"

    scene: SceneId
    scan: ScanInfo


class ScanLoginCode(Request[CodeScanned]):
    """A phone typed a login code: find its scene and scan it as ``qrcode.scan`` would, bound to the
    phone's ``scan_hash``.

    Counted first against the entrant's hourly limit and, unless it names a stored code, the global
    budget of misses; the scene's own entries are counted too (docs/security.md). Sent by the session
    service, which identified the entrant from the phone's wx.login code.
    """

    TYPE = "qrcode.scan_code"
    REPLY = CodeScanned

    login_code: LoginCodeField
    scan_hash: TicketHash
    ip: Annotated[str, Field(max_length=64)] = ""
    entrant: EntrantKey


# --- session service ------------------------------------------------------------------------------


class LoginConfirmed(Event):
    """A phone confirmed a scan login (the browser is told; no credential travels)."""

    TYPE = "login.confirmed"
    PUBLISHERS = ("session",)

    scene: SceneId
    user_id: str
    client_id: ClientIdField | None = None
    # The site's account this WeChat user is linked to at that client (docs/linking.md), if any.
    external_id: ExternalId | None = None


class UserCreated(Event):
    """A user was seen for the first time; ``client_id`` is the site of the login that created it."""

    TYPE = "user.created"
    PUBLISHERS = ("session",)

    user_id: str
    openid: str
    unionid: str | None = None
    client_id: ClientIdField | None = None


class PhoneNumberBound(Event):
    """A user bound (or changed) the phone number of their account (the number never travels)."""

    TYPE = "phone.bound"
    PUBLISHERS = ("session",)

    user_id: str
    client_id: ClientIdField | None = None


# Why sessions ended: ``logout``, ``logout_everywhere``, ``reuse_detected`` (a spent refresh token came
# back), ``code_reuse``, ... Read leniently, so a reason added later never makes a reader drop it.
RevokeReason = Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]


class SessionRevoked(Event):
    """A session (refresh family ``sid``) was ended; with ``logout_everywhere`` every session of the
    user was, ``sid`` being the one that asked."""

    TYPE = "session.revoked"
    PUBLISHERS = ("session",)

    user_id: str
    sid: str
    client_id: ClientIdField | None = None
    reason: RevokeReason


class ConfirmResult(Reply):
    """The scene is confirmed."""

    TYPE = "session.confirm.reply"

    scene: SceneId
    state: SceneState


class ConfirmLogin(Request[ConfirmResult]):
    """The phone approved: find its user, confirm the scene.

    ``code`` is the phone's wx.login code, exchanged now; without it, the identity the scan exchanged
    (:class:`IdentifyScanner`) is used, so confirming waits on no WeChat call.
    """

    TYPE = "session.confirm"
    REPLY = ConfirmResult

    scene: SceneId
    scan_hash: TicketHash
    code: Sealed | None = None


class Identified(Reply):
    """Whether the scanning phone's wx.login code was exchanged (nothing else leaves the service)."""

    TYPE = "session.identify.reply"

    identified: bool


class IdentifyScanner(Request[Identified]):
    """The phone that scanned sent its wx.login code with the scan: exchange it ahead of the confirm.

    Sent by the gateway only after ``qrcode.scan`` bound ``scan_hash`` to this phone, so a code of a
    phone that did not win the scan never reaches WeChat.
    """

    TYPE = "session.identify"
    REPLY = Identified

    scene: SceneId
    scan_hash: TicketHash
    code: Sealed


class EnterLoginCode(Request[CodeScanned]):
    """A phone typed the login code a browser on the same phone shows (instead of scanning).

    The session service exchanges the phone's wx.login ``code`` first (the per-user limit needs to
    know who types), then has the qrcode service scan the code's scene for ``scan_hash``, and spends
    the wx.login code on that scene as a scan that sent it would: the confirm needs no code.
    """

    TYPE = "session.enter_code"
    REPLY = CodeScanned

    login_code: LoginCodeField
    code: Sealed
    scan_hash: TicketHash
    ip: Annotated[str, Field(max_length=64)] = ""


class TokenPair(Reply):
    """Tokens for a logged-in user."""

    TYPE = "session.tokens.reply"

    access_token: Sealed
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a token type, not a secret
    expires_in: int
    refresh_token: Sealed
    user: UserView


class CompleteLogin(Request[TokenPair]):
    """The browser collects its tokens for a confirmed scene."""

    TYPE = "session.complete"
    REPLY = TokenPair

    scene: SceneId
    ticket_hash: TicketHash
    # The client collecting the login; the access token's audience.
    client_id: ClientIdField | None = None


class Jwks(Reply):
    """Public signing keys (RFC 7517 JSON Web Key Set)."""

    TYPE = "session.jwks.reply"

    keys: list[dict[str, Any]]


class GetJwks(Request[Jwks]):
    """Ask for the public keys that verify access tokens."""

    TYPE = "session.jwks"
    REPLY = Jwks


# --- identity -------------------------------------------------------------------------------------

# A refresh-token family: one login, and every token rotated from it (the access token's ``sid``).
SessionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
UserId = Annotated[str, Field(min_length=1, max_length=64)]


class SigningKeysChanged(Event):
    """A session replica saw the published signing keys change (rotated or retired).

    Gateways re-fetch the JWKS at once instead of waiting for their periodic refresh.
    """

    TYPE = "signing_keys.changed"
    PUBLISHERS = ("session",)

    kids: list[str]


class LoginMiniProgram(Request[TokenPair]):
    """Plain in-mini-program login: exchange a wx.login code for tokens of a new session."""

    TYPE = "session.mp_login"
    REPLY = TokenPair

    code: Sealed


class RefreshTokens(Request[TokenPair]):
    """Rotate a refresh token: a new access token and the family's next refresh token."""

    TYPE = "session.refresh"
    REPLY = TokenPair

    refresh_token: Sealed


class LoggedOut(Reply):
    """The session (refresh family) is revoked; ``revoked`` is False when it already was."""

    TYPE = "session.logout.reply"

    revoked: bool


class EndSession(Request[LoggedOut]):
    """Log out: revoke the family named by a verified access token's ``sid``, or a refresh token's.

    With ``everywhere``, every family (every device, every login) of that token's user is revoked.
    """

    TYPE = "session.logout"
    REPLY = LoggedOut

    user_id: UserId | None = None
    sid: SessionId | None = None
    refresh_token: Sealed | None = None
    everywhere: bool = False  # a default: senders that predate it still validate


class PhoneBound(Reply):
    """The user after phone binding, with a fresh access token that carries the ``phone`` claim."""

    TYPE = "session.bind_phone.reply"

    user: UserView
    access_token: Sealed
    expires_in: int


class BindPhone(Request[PhoneBound]):
    """Bind the number behind a getPhoneNumber code to the user of a verified access token."""

    TYPE = "session.bind_phone"
    REPLY = PhoneBound

    user_id: UserId
    sid: SessionId
    code: Sealed


class DecryptedData(Reply):
    """Open data decrypted with the user's session_key (``data`` is its JSON text, sealed: it is PII)."""

    TYPE = "session.decrypt.reply"

    data: Sealed
    user: UserView


class DecryptData(Request[DecryptedData]):
    """Decrypt ``encryptedData`` from an open-data API with the user's stored session_key."""

    TYPE = "session.decrypt"
    REPLY = DecryptedData

    user_id: UserId
    sid: SessionId
    encrypted_data: Sealed
    iv: Annotated[str, Field(min_length=1, max_length=64)]


# --- OpenID Connect (session service; the gateway is the HTTP face) ---------------------------------


class AuthorizationRequest(BaseModel):
    """What an RP asked for at the authorization endpoint, validated by the gateway against the
    registered client (redirect URI exact, scopes allowed, PKCE present for a public client)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    client_id: ClientIdField
    redirect_uri: Annotated[str, Field(min_length=1, max_length=2048)]
    scope: Annotated[str, Field(max_length=512)]  # space-separated, openid included
    nonce: Annotated[str, Field(max_length=512)] | None = None
    code_challenge: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43,128}$")] | None = None
    code_challenge_method: Literal["S256"] | None = None


class Authorized(Reply):
    """An authorization code for the RP, and the browser's OP session."""

    TYPE = "session.authorize.reply"

    code: Sealed
    # A new OP session id (the gateway sets it as the cookie); None when an existing one was used.
    op_session: Sealed | None = None
    auth_time: AwareDatetime


class Authorize(Request[Authorized]):
    """Mint an authorization code for ``request``: either from a scan login the browser just saw
    confirmed (``scene`` + ``ticket_hash``: the scene is redeemed, bound to ``request.client_id``, and
    a new OP session starts) or silently from the browser's OP session (``op_session``; refused with
    ``login_required`` when it is unknown, ended, or older than ``max_age`` seconds)."""

    TYPE = "session.authorize"
    REPLY = Authorized

    request: AuthorizationRequest
    scene: SceneId | None = None
    ticket_hash: TicketHash | None = None
    op_session: Sealed | None = None
    max_age: Annotated[int, Field(ge=0)] | None = None


class OidcTokens(Reply):
    """The token endpoint's answer (RFC 6749 §5.1, plus the ID token)."""

    TYPE = "session.oidc_tokens.reply"

    access_token: Sealed
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a token type, not a secret
    expires_in: int
    refresh_token: Sealed | None = None
    id_token: Sealed | None = None
    scope: str


class ExchangeGrant(Request[OidcTokens]):
    """The token endpoint, for a client the gateway authenticated: ``authorization_code`` (with
    ``code``, ``redirect_uri`` and ``code_verifier``) or ``refresh_token``. A code works once; a
    second use is refused and revokes what the first one issued."""

    TYPE = "session.token"
    REPLY = OidcTokens

    client_id: ClientIdField
    grant_type: Literal["authorization_code", "refresh_token"]
    code: Sealed | None = None
    redirect_uri: Annotated[str, Field(max_length=2048)] | None = None
    code_verifier: Sealed | None = None
    refresh_token: Sealed | None = None
    scope: Annotated[str, Field(max_length=512)] | None = None


class UserInfo(Reply):
    """The claims the client may see about the user of an access token."""

    TYPE = "session.userinfo.reply"

    claims: dict[str, Any]


class GetUserInfo(Request[UserInfo]):
    """The userinfo endpoint, for an access token the gateway verified (its ``aud``, ``sid``, scope)."""

    TYPE = "session.userinfo"
    REPLY = UserInfo

    client_id: ClientIdField
    sid: SessionId
    scope: Annotated[str, Field(max_length=512)] = "openid"


class OpSessionEnded(Reply):
    """RP-initiated logout is done: the OP session ended, its sessions revoked, clients told."""

    TYPE = "session.end_session.reply"

    ended: bool


class EndOpSession(Request[OpSessionEnded]):
    """RP-initiated logout: end the browser's OP session (``op_session``) or, from an ``id_token_hint``
    the gateway verified, the OP session of that ``sid``; revoke the refresh families it started and
    send back-channel logout tokens to the clients that registered a URI."""

    TYPE = "session.end_session"
    REPLY = OpSessionEnded

    op_session: Sealed | None = None
    sid: SessionId | None = None
    client_id: ClientIdField | None = None


class TokenRevoked(Reply):
    """RFC 7009 (the gateway always answers 200); ``revoked`` says whether anything was live."""

    TYPE = "session.revoke.reply"

    revoked: bool


class RevokeToken(Request[TokenRevoked]):
    """RFC 7009 revocation of a refresh token (its family) or an access token (its session) issued to
    ``client_id``; a token of another client is ignored."""

    TYPE = "session.revoke"
    REPLY = TokenRevoked

    client_id: ClientIdField
    token: Sealed
    token_type_hint: Literal["access_token", "refresh_token"] | None = None


# --- account linking (docs/linking.md; session service, the gateway is the HTTP face) ---------------


class IdentityLinked(Event):
    """A phone confirmed a link: the site ``client_id``'s account ``external_id`` is linked to the WeChat
    user ``user_id`` (also when the same pair was linked already: a site is told what it asked)."""

    TYPE = "identity.linked"
    PUBLISHERS = ("session",)

    client_id: ClientIdField  # always the real id, the default client's too
    user_id: UserId
    external_id: ExternalId
    link_request: LinkRequestId | None = None


class IdentityUnlinked(Event):
    """The link between the site's account ``external_id`` and the WeChat user ``user_id`` was removed
    (``reason`` ``unlinked_by_client``: the site's backend asked)."""

    TYPE = "identity.unlinked"
    PUBLISHERS = ("session",)

    client_id: ClientIdField
    user_id: UserId
    external_id: ExternalId
    reason: RevokeReason = "unlinked_by_client"


class LinkOpened(Reply):
    """A new link request: its id (to ask about it) and its single-use link token (for the browser)."""

    TYPE = "session.open_link.reply"

    link_request: LinkRequestId
    link_token: Sealed
    expires_at: AwareDatetime


class OpenLink(Request[LinkOpened]):
    """A site's backend (the gateway authenticated its client) opens a link request for one of its
    accounts; only the keyed hash of the link token is stored."""

    TYPE = "session.open_link"
    REPLY = LinkOpened

    client_id: ClientIdField
    external_id: ExternalId
    hint: AccountHint


class IssueLinkScene(Request[IssuedScene]):
    """A browser shows the code of a link request: the link token is spent (once) on a new link scene
    bound to this browser's ticket and to the request's client (``client_id`` as the browser named it:
    another client's request is ``client_mismatch``)."""

    TYPE = "session.issue_link"
    REPLY = IssuedScene

    link_token: Sealed
    client_id: ClientIdField | None = None
    ticket_hash: TicketHash
    ip: Annotated[str, Field(max_length=64)]
    user_agent: Annotated[str, Field(max_length=512)] = ""
    with_login_code: bool = False
    with_url_link: bool = False


class LinkCompleted(Reply):
    """The browser that showed a link code collected its outcome: linked."""

    TYPE = "session.complete_link.reply"

    scene: SceneId
    link_request: LinkRequestId
    state: Literal["linked"] = "linked"


class CompleteLink(Request[LinkCompleted]):
    """The browser that showed a link scene collects it once the phone confirmed (ticket checked)."""

    TYPE = "session.complete_link"
    REPLY = LinkCompleted

    scene: SceneId
    ticket_hash: TicketHash
    client_id: ClientIdField | None = None


# pending: no phone has scanned (shown or not yet); scanned; linked; refused (``reason``:
# ``already_linked``, ``account_already_linked``, ``declined``, ``not_me``); expired.
LinkState = Literal["pending", "scanned", "linked", "refused", "expired"]


class LinkStatus(Reply):
    """Where a link request stands; ``sub`` is the linked WeChat user as the client sees it."""

    TYPE = "session.link_status.reply"

    link_request: LinkRequestId
    state: LinkState
    reason: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")] | None = None
    external_id: ExternalId
    expires_at: AwareDatetime
    linked_at: AwareDatetime | None = None
    sub: str | None = None


class GetLinkStatus(Request[LinkStatus]):
    """A site's backend asks about one of its link requests (another client's is unknown)."""

    TYPE = "session.link_status"
    REPLY = LinkStatus

    client_id: ClientIdField
    link_request: LinkRequestId


class Unlinked(Reply):
    """How many WeChat users were unlinked from the account."""

    TYPE = "session.unlink.reply"

    unlinked: int


class Unlink(Request[Unlinked]):
    """A site's backend removes the links of its account ``external_id`` (with ``sub``: only that WeChat
    user's); none is ``link_not_found``."""

    TYPE = "session.unlink"
    REPLY = Unlinked

    client_id: ClientIdField
    external_id: ExternalId
    sub: Annotated[str, Field(min_length=1, max_length=128)] | None = None
