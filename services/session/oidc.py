"""OpenID Connect handlers of the session service: authorization codes, the token endpoint's grants,
userinfo, RP-initiated logout (with back-channel logout) and token revocation.

The gateway is the HTTP face (services/gateway/oidc.py): it validates requests against the registered
client, authenticates clients, verifies access tokens and ID-token hints, and calls these RPCs. They
check again what concerns the data they own. Secrets (codes, OP session ids) are stored only as keyed
hashes; a code is spent by one conditional update, and a second use revokes what the first issued
(RFC 6749 §4.1.2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import SecretStr

from services.session.claims import (
    Issuance,
    access_token_claims,
    granted_scope,
    id_token_claims,
    narrowed_scope,
    user_claims,
)
from services.session.errors import (
    ClientUnknown,
    InvalidClient,
    InvalidGrant,
    LoginRequired,
    OidcInvalidRequest,
    RefreshInvalid,
    RefreshReused,
    SessionEnded,
    UserNotFound,
)
from services.session.refresh import Binding, Grant, RefreshFamilies
from services.session.store import OidcCode, OpSession, RefreshRecord, User
from shared.bus import Caller, Publisher
from shared.clients import Client
from shared.errors import ServiceError
from shared.logging import bind_context, get_logger
from shared.messages import (
    Authorize,
    Authorized,
    EndOpSession,
    ExchangeGrant,
    GetUserInfo,
    OidcTokens,
    OpSessionEnded,
    RedeemScene,
    RevokeToken,
    SessionRevoked,
    TokenRevoked,
    UserInfo,
)

log = get_logger(__name__)

CODE_LIFETIME = 60.0
ID_TOKEN_TYPE = "JWT"  # noqa: S105 (a media type, not a secret)
# RFC 7636 §4.1: 43 to 128 characters of the unreserved set.
CODE_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def s256(verifier: str) -> str:
    """The S256 code challenge of ``verifier``: BASE64URL(SHA-256(ASCII(verifier)))."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def check_pkce(challenge: str | None, verifier: str | None) -> None:
    """Raise :class:`InvalidGrant` unless ``verifier`` proves ``challenge`` (RFC 7636 §4.6).

    A verifier without a challenge is refused too (a downgrade: OAuth 2.1 §4.1.3).
    """
    if challenge is None:
        if verifier is not None:
            raise InvalidGrant("code_verifier sent, but the authorization request had no code_challenge")
        return
    if verifier is None:
        raise InvalidGrant("code_verifier is required: the authorization request had a code_challenge")
    if not CODE_VERIFIER.fullmatch(verifier):
        raise InvalidGrant("code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~")
    if not hmac.compare_digest(s256(verifier), challenge):
        raise InvalidGrant("code_verifier does not match the code_challenge")


class Sites(Protocol):
    """The registered clients (:class:`shared.clients.ClientRegistry`, or a fake)."""

    @property
    def default(self) -> Client: ...

    def get(self, client_id: str | None) -> Client | None: ...


class Users(Protocol):
    """Users by id (:class:`services.session.store.UserStore`)."""

    async def get(self, user_id: str) -> User | None: ...


class Codes(Protocol):
    """Authorization codes (:class:`services.session.store.OidcCodeStore`, or a fake)."""

    async def insert(self, code: OidcCode) -> None: ...
    async def get(self, code_id: str) -> OidcCode | None: ...
    async def spend(self, code_id: str, now: float) -> OidcCode | None: ...
    async def mark_reused(self, code_id: str, now: float) -> None: ...


class OpSessions(Protocol):
    """OP sessions (:class:`services.session.store.OpSessionStore`, or a fake)."""

    async def insert(self, session: OpSession) -> bool: ...
    async def get(self, op_id: str) -> OpSession | None: ...
    async def add_grant(self, op_id: str, client_id: str, sid: str) -> None: ...
    async def end(self, op_id: str, now: float) -> OpSession | None: ...
    async def by_sid(self, sid: str) -> OpSession | None: ...
    async def live_of_user(self, user_id: str, now: float) -> list[OpSession]: ...


class TokenSigner(Protocol):
    """What signs tokens (:class:`services.session.keys.Signer`)."""

    ttl: int

    def sign_access(self, claims: dict[str, Any]) -> str: ...
    def sign(self, claims: dict[str, Any], *, alg: str, typ: str) -> str: ...
    def access_claims(self, token: str) -> dict[str, Any] | None: ...


class ExternalIds(Protocol):
    """Account linking's lookup (:class:`services.session.linking.LinkHandlers`, or a fake)."""

    async def external_id(self, client_id: str | None, user_id: str) -> str | None: ...


class LogoutNotifier(Protocol):
    """Back-channel logout (:class:`services.session.backchannel.BackchannelLogout`, or a recorder)."""

    def notify(self, client: Client, user_id: str, sid: str) -> bool: ...


class OidcHandlers:
    """The five ``session.*`` OpenID Connect RPCs."""

    def __init__(
        self,
        clients: Sites,
        users: Users,
        codes: Codes,
        op_sessions: OpSessions,
        families: RefreshFamilies,
        signer: TokenSigner,
        bus: Caller,
        logout: LogoutNotifier,
        publisher: Publisher | None = None,
        *,
        issuer: str,
        keys: Sequence[bytes],
        subject_key: bytes,
        op_session_ttl: float,
        code_lifetime: float = CODE_LIFETIME,
        clock: Callable[[], float] = time.time,
        links: ExternalIds | None = None,
    ) -> None:
        if not keys or any(len(key) < 32 for key in keys):
            raise ValueError("the OpenID Connect keys must be at least 32 bytes")
        self._clients = clients
        self._users = users
        self._codes = codes
        self._op_sessions = op_sessions
        self._families = families
        self._signer = signer
        self._bus = bus
        self._logout = logout
        # session.revoked notices (the sites' webhooks); None: nobody is told (unit tests)
        self._publisher = publisher
        self._issuer = issuer
        # The first key makes new ids; all are tried for OP sessions (a data key being rotated out).
        self._keys = tuple(keys)
        self._subject_key = subject_key
        self._op_session_ttl = op_session_ttl
        self._code_lifetime = code_lifetime
        self._clock = clock
        # The client's own account of a linked user, in its tokens and userinfo (docs/linking.md).
        self._links = links

    # -- keyed ids --

    def _mac(self, key: bytes, label: str, value: str) -> str:
        return hmac.new(key, f"{label}:{value}".encode(), hashlib.sha256).hexdigest()

    def code_id(self, code: str) -> str:
        """The id an authorization code is stored under (keyed: a database reader learns no code)."""
        return self._mac(self._keys[0], "oidc-code", code)

    def op_ids(self, op_session: str) -> list[str]:
        """The ids an OP session cookie may be stored under (the current key's first)."""
        return [self._mac(key, "op-session", op_session) for key in self._keys]

    def _derived_op_session(self, scene: str, ticket_hash: str) -> str:
        """The OP session a scan login starts, derived from the scene and ticket with the server key, so
        that a retried completion (its first answer lost) sets the same cookie instead of a second one."""
        mac = hmac.new(self._keys[0], f"op-session-of:{scene}:{ticket_hash}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    # -- helpers --

    def _client(self, client_id: str) -> Client:
        client = self._clients.get(client_id)
        if client is None:
            raise ClientUnknown()
        return client

    def _same_client(self, stored: str | None, client_id: str) -> bool:
        return (stored or self._clients.default.client_id) == client_id

    async def _announce_revoked(self, sid: str, reason: str) -> None:
        """``session.revoked`` for a family this service just ended (a notice after the change: a bus
        that is down loses it, logged, and changes nothing)."""
        if self._publisher is None:
            return
        record = await self._families.family_record(sid)
        if record is None:
            return
        event = SessionRevoked(user_id=record.user_id, sid=sid, client_id=record.client_id, reason=reason)
        try:
            await self._publisher.publish(event)
        except ServiceError as exc:
            log.warning("event_not_announced", type=event.TYPE, error_code=exc.error_code)

    async def _op_session(self, op_session: str) -> OpSession | None:
        for op_id in self.op_ids(op_session):
            session = await self._op_sessions.get(op_id)
            if session is not None:
                return session
        return None

    # -- session.authorize --

    async def authorize(self, request: Authorize) -> Authorized:
        """RPC ``session.authorize``: an authorization code for a scan login just confirmed (the scene
        is redeemed for ``request.client_id``; a new OP session starts) or, silently, for the
        browser's OP session (``login_required`` when it is unknown, ended, expired or older than
        ``max_age``)."""
        asked = request.request
        client = self._client(asked.client_id)
        if not client.allows_redirect(asked.redirect_uri):
            raise OidcInvalidRequest("redirect_uri is not registered for this client")
        scope = granted_scope(asked.scope, client)
        if asked.code_challenge is None and client.public:
            raise OidcInvalidRequest("a public client must send a PKCE code_challenge (S256)")
        if asked.code_challenge is not None and asked.code_challenge_method != "S256":
            raise OidcInvalidRequest("code_challenge_method must be S256")
        now = self._clock()
        new_cookie: str | None = None
        if request.scene is not None and request.ticket_hash is not None:
            bind_context(scene=request.scene)
            session, new_cookie = await self._scan_login(request.scene, request.ticket_hash, client, now)
        elif request.op_session is not None:
            found = await self._op_session(request.op_session.get_secret_value())
            if found is None or not found.live(now):
                raise LoginRequired("no live OP session: the user must log in")
            session = found
            if request.max_age is not None and now - session.auth_time > request.max_age:
                raise LoginRequired("the login is older than max_age: the user must log in again")
            if await self._users.get(session.user_id) is None:
                raise LoginRequired("the user of this OP session no longer exists")
        else:
            raise OidcInvalidRequest("a scan login (scene and ticket_hash) or an OP session is required")
        code = secrets.token_urlsafe(32)
        await self._codes.insert(
            OidcCode(
                code_id=self.code_id(code),
                client_id=client.client_id,
                redirect_uri=asked.redirect_uri,
                scope=scope,
                user_id=session.user_id,
                sid=secrets.token_urlsafe(16),
                auth_time=session.auth_time,
                created_at=now,
                expires_at=now + self._code_lifetime,
                nonce=asked.nonce,
                code_challenge=asked.code_challenge,
                op_session=session.op_id,
            )
        )
        log.info(
            "authorization_code_issued",
            client=client.client_id,
            user_id=session.user_id,
            silent=new_cookie is None,
        )
        return Authorized(
            code=SecretStr(code),
            op_session=SecretStr(new_cookie) if new_cookie is not None else None,
            auth_time=_at(session.auth_time),
        )

    async def _scan_login(
        self, scene: str, ticket_hash: str, client: Client, now: float
    ) -> tuple[OpSession, str]:
        """Redeem the confirmed scene for ``client`` and start (or, for a retry, find) its OP session."""
        redeemed = await self._bus.call(
            RedeemScene(scene=scene, ticket_hash=ticket_hash, client_id=client.client_id)
        )
        if await self._users.get(redeemed.user_id) is None:
            raise UserNotFound()
        auth_time = redeemed.confirmed_at.timestamp() if redeemed.confirmed_at is not None else now
        cookie = self._derived_op_session(scene, ticket_hash)
        op_id = self.op_ids(cookie)[0]
        session = OpSession(op_id, redeemed.user_id, auth_time, now, now + self._op_session_ttl)
        if not await self._op_sessions.insert(session):
            stored = await self._op_sessions.get(op_id)  # a retry: the session its first call started
            if stored is None or stored.user_id != redeemed.user_id or not stored.live(now):
                raise LoginRequired("this login's OP session has ended: log in again")
            session = stored
        else:
            log.info("op_session_started", user_id=redeemed.user_id, client=client.client_id)
        return session, cookie

    # -- session.token --

    async def token(self, request: ExchangeGrant) -> OidcTokens:
        """RPC ``session.token``: the ``authorization_code`` and ``refresh_token`` grants for a client the
        gateway authenticated."""
        client = self._clients.get(request.client_id)
        if client is None:
            raise InvalidClient()
        if request.grant_type == "authorization_code":
            return await self._exchange_code(client, request)
        return await self._refresh(client, request)

    async def _exchange_code(self, client: Client, request: ExchangeGrant) -> OidcTokens:
        if request.code is None or request.redirect_uri is None:
            raise OidcInvalidRequest("code and redirect_uri are required")
        code_id = self.code_id(request.code.get_secret_value())
        now = self._clock()
        code = await self._codes.spend(code_id, now)
        if code is None:
            raise await self._refusal(code_id, client, now)
        if code.client_id != client.client_id:
            log.warning("authorization_code_of_another_client", security=True, client=client.client_id)
            raise InvalidGrant("the authorization code was issued to another client")
        if code.expires_at <= now:
            raise InvalidGrant("the authorization code expired")
        if not hmac.compare_digest(code.redirect_uri.encode(), request.redirect_uri.encode()):
            raise InvalidGrant("redirect_uri differs from the one of the authorization request")
        if client.public and code.code_challenge is None:
            raise InvalidGrant("a public client's code needs PKCE")
        verifier = request.code_verifier.get_secret_value() if request.code_verifier is not None else None
        check_pkce(code.code_challenge, verifier)
        user = await self._users.get(code.user_id)
        if user is None:
            raise InvalidGrant("the user no longer exists")
        binding = Binding(client.client_id, code.scope, code.auth_time)
        grant = await self._families.start(user.id, family=code.sid, binding=binding)
        # A second use that arrived while this one ran revoked a family that did not exist yet.
        again = await self._codes.get(code_id)
        if again is not None and again.reused_at is not None:
            if await self._families.revoke(code.sid, "code_reuse"):
                await self._announce_revoked(code.sid, "code_reuse")
            raise InvalidGrant("the authorization code was used twice; its tokens are revoked")
        if code.op_session is not None:
            await self._op_sessions.add_grant(code.op_session, client.client_id, code.sid)
        log.info("authorization_code_exchanged", client=client.client_id, user_id=user.id, family=code.sid)
        return await self._tokens(client, user, grant, scope=code.scope, nonce=code.nonce)

    async def _refusal(self, code_id: str, client: Client, now: float) -> InvalidGrant:
        """An unknown code, or one spent already: then what it issued is revoked (RFC 6749 §4.1.2)."""
        earlier = await self._codes.get(code_id)
        if earlier is None:
            return InvalidGrant("unknown or expired authorization code")
        await self._codes.mark_reused(code_id, now)  # first: an exchange still running then sees it
        revoked = await self._families.revoke(earlier.sid, "code_reuse")
        if revoked:
            await self._announce_revoked(earlier.sid, "code_reuse")
        log.warning(
            "authorization_code_reused",
            security=True,
            client=client.client_id,
            code_client=earlier.client_id,
            family=earlier.sid,
            revoked=revoked,
        )
        return InvalidGrant("the authorization code was used already; the tokens issued with it are revoked")

    async def _refresh(self, client: Client, request: ExchangeGrant) -> OidcTokens:
        if request.refresh_token is None:
            raise OidcInvalidRequest("refresh_token is required")
        token = request.refresh_token.get_secret_value()
        if request.scope:  # checked before the token is spent
            record = await self._families.record_of(token)
            if record is not None and record.scope is not None and record.client_id == client.client_id:
                narrowed_scope(request.scope, record.scope)
        try:
            grant = await self._families.rotate(token, oidc_client=client.client_id)
        except (RefreshInvalid, RefreshReused, SessionEnded) as exc:
            raise InvalidGrant(exc.message) from None
        user = await self._users.get(grant.user_id)
        if user is None:
            raise InvalidGrant("the user no longer exists")
        scope = narrowed_scope(request.scope, grant.binding.scope or "openid")
        return await self._tokens(client, user, grant, scope=scope, nonce=None)

    async def _external_id(self, client: Client, user: User) -> str | None:
        """The ``external_id`` claim for ``client`` (its own account the user is linked to, if any)."""
        return await self._links.external_id(client.client_id, user.id) if self._links is not None else None

    async def _tokens(
        self, client: Client, user: User, grant: Grant, *, scope: str, nonce: str | None
    ) -> OidcTokens:
        external_id = await self._external_id(client, user)
        now = int(self._clock())
        ttl = self._signer.ttl
        auth_time = grant.binding.auth_time if grant.binding.auth_time is not None else now
        issue = Issuance(
            issuer=self._issuer,
            client=client,
            user=user,
            scope=scope,
            key=self._subject_key,
            sid=grant.family,
            auth_time=auth_time,
            now=now,
            ttl=ttl,
            external_id=external_id,
        )
        access_claims = access_token_claims(issue)
        id_claims = id_token_claims(issue, nonce=nonce)
        access = self._signer.sign_access(access_claims)
        id_token = self._signer.sign(id_claims, alg=client.id_token_signed_response_alg, typ=ID_TOKEN_TYPE)
        return OidcTokens(
            access_token=SecretStr(access),
            expires_in=ttl,
            refresh_token=SecretStr(grant.token),
            id_token=SecretStr(id_token),
            scope=scope,
        )

    # -- session.userinfo --

    async def userinfo(self, request: GetUserInfo) -> UserInfo:
        """RPC ``session.userinfo``: the claims of the user of a live session of ``client_id``, as far
        as the token's scope and the grant allow."""
        client = self._clients.get(request.client_id)
        record = await self._families.live_family(request.sid)
        if client is None or record is None or not self._same_client(record.client_id, client.client_id):
            raise SessionEnded("the access token's session has ended")
        user = await self._users.get(record.user_id)
        if user is None:
            raise SessionEnded("the access token's user no longer exists")
        scopes = request.scope.split()
        if record.scope is not None:
            scopes = [scope for scope in scopes if scope in record.scope.split()]
        external_id = await self._external_id(client, user)
        return UserInfo(claims=user_claims(client, user, scopes, self._subject_key, external_id=external_id))

    # -- session.end_session --

    async def end_session(self, request: EndOpSession) -> OpSessionEnded:
        """RPC ``session.end_session``: end the browser's OP session and/or the one that issued ``sid``
        (from a verified ID-token hint), revoke their refresh families and tell the clients."""
        now = self._clock()
        ended: list[OpSession] = []
        if request.op_session is not None:
            for op_id in self.op_ids(request.op_session.get_secret_value()):
                if (session := await self._op_sessions.end(op_id, now)) is not None:
                    ended.append(session)
        revoked = False
        if request.sid is not None:
            owner = await self._op_sessions.by_sid(request.sid)
            if owner is not None and self._hint_matches(owner, request.sid, request.client_id):
                if (session := await self._op_sessions.end(owner.op_id, now)) is not None:
                    ended.append(session)
            elif owner is None:
                revoked = await self._end_family(request.sid, request.client_id)
        for session in ended:
            await self._end_grants(session, reason="rp_logout")
            log.info("op_session_ended", user_id=session.user_id, grants=len(session.grants))
        return OpSessionEnded(ended=bool(ended) or revoked)

    @staticmethod
    def _hint_matches(session: OpSession, sid: str, client_id: str | None) -> bool:
        return client_id is None or (client_id, sid) in session.grants

    async def _end_family(self, sid: str, client_id: str | None) -> bool:
        """A ``sid`` no OP session issued (a browser-API login): revoke it, if it is the client's."""
        record = await self._families.live_family(sid)
        if record is None or (client_id is not None and not self._same_client(record.client_id, client_id)):
            return False
        if not await self._families.revoke(sid, "rp_logout"):
            return False
        await self._announce_revoked(sid, "logout")
        return True

    async def _end_grants(self, session: OpSession, *, reason: str) -> None:
        for client_id, sid in session.grants:
            if await self._families.revoke(sid, reason) and reason == "rp_logout":
                # (a logout everywhere is announced once, by the session that asked for it)
                await self._announce_revoked(sid, "logout")
            client = self._clients.get(client_id)
            if client is not None:
                self._logout.notify(client, session.user_id, sid)

    async def end_user_sessions(self, user_id: str) -> int:
        """ "Log out everywhere": end every OP session of ``user_id`` and tell their clients (the
        refresh families are revoked by the caller too)."""
        now = self._clock()
        count = 0
        for live in await self._op_sessions.live_of_user(user_id, now):
            if (session := await self._op_sessions.end(live.op_id, now)) is not None:
                await self._end_grants(session, reason="logout_everywhere")
                count += 1
        return count

    # -- session.revoke --

    async def revoke(self, request: RevokeToken) -> TokenRevoked:
        """RPC ``session.revoke`` (RFC 7009): a refresh token revokes its family, an access token its
        session; only for the client they were issued to (anything else: ``revoked`` false)."""
        token = request.token.get_secret_value()
        kinds = ["refresh_token", "access_token"]
        if request.token_type_hint == "access_token":  # noqa: S105 (a hint's name, not a secret)
            kinds.reverse()
        for kind in kinds:
            family = (
                await self._refresh_family(token, request.client_id)
                if kind == "refresh_token"
                else await self._access_family(token, request.client_id)
            )
            if family is not None:
                revoked = await self._families.revoke(family, "revoked_by_client")
                if revoked:
                    await self._announce_revoked(family, "logout")
                log.info("token_revoked", client=request.client_id, kind=kind, family=family, revoked=revoked)
                return TokenRevoked(revoked=revoked)
        return TokenRevoked(revoked=False)

    async def _refresh_family(self, token: str, client_id: str) -> str | None:
        record: RefreshRecord | None = await self._families.record_of(token)
        if record is None or not self._same_client(record.client_id, client_id):
            return None
        return record.family

    async def _access_family(self, token: str, client_id: str) -> str | None:
        claims = self._signer.access_claims(token)
        if claims is None or claims.get("aud") != client_id or not isinstance(claims.get("sid"), str):
            return None
        sid = str(claims["sid"])
        record = await self._families.live_family(sid)
        if record is None or not self._same_client(record.client_id, client_id):
            return None
        return sid
