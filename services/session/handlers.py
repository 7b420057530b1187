"""Identity handlers: logins (scan confirm, mini-program), tokens, logout, phone binding, decryption."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import SecretStr

from services.session.errors import (
    CodeAlreadyUsed,
    CodeInProgress,
    CodeInvalid,
    CodeRequired,
    DecryptFailed,
    NoSessionKey,
    PhoneCodeInvalid,
    PhoneTaken,
    PhoneUnavailable,
    RefreshReused,
    UnionIdTaken,
    UserBlocked,
    UserNotFound,
    WatermarkInvalid,
    WeChatUnavailable,
)
from services.session.keys import Signer
from services.session.refresh import Binding, RefreshFamilies
from services.session.store import (
    CODE_LIFETIME,
    CodeUse,
    CodeUseStore,
    ConfirmedUsers,
    MpSessionStore,
    SessionKey,
    Taken,
    User,
    UserStore,
)
from shared.bus import Caller, Publisher
from shared.errors import RemoteError, ServiceError
from shared.logging import bind_context, get_logger
from shared.messages import (
    BindPhone,
    CodeScanned,
    CompleteLogin,
    ConfirmLogin,
    ConfirmResult,
    ConfirmScene,
    DecryptData,
    DecryptedData,
    EndSession,
    EnterLoginCode,
    Event,
    GetJwks,
    GetSceneStatus,
    Identified,
    IdentifyScanner,
    Jwks,
    LoggedOut,
    LoginConfirmed,
    LoginMiniProgram,
    PhoneBound,
    PhoneNumberBound,
    RedeemScene,
    RefreshTokens,
    ScanLoginCode,
    SessionRevoked,
    TokenPair,
    UserCreated,
)
from shared.sealing import Sealer
from shared.wechat import (
    PhoneInfo,
    TokenProvider,
    WeChatBadRequest,
    WeChatClient,
    WeChatError,
    call_with_token,
)
from shared.wxcrypto import DecryptionFailed, WatermarkMismatch, decrypt_encrypted_data

log = get_logger(__name__)

# Why a scene in this state cannot be confirmed (the codes the qrcode service also uses).
_NOT_CONFIRMABLE = {
    "pending": ("scene_not_scanned", "the login code has not been scanned"),
    "confirmed": ("already_confirmed", "the login was already confirmed"),
    "redeemed": ("already_confirmed", "the login was already confirmed"),
    "cancelled": ("scene_cancelled", "the login was cancelled"),
    "expired": ("scene_expired", "the login code has expired"),
}
_CODE_USED = 40163  # code been used
_CODE_ERRORS = {40029: CodeInvalid, _CODE_USED: CodeInvalid, 41008: CodeInvalid, 40226: UserBlocked}
# getuserphonenumber: 40029 bad/used/expired code, 40003 the code is not this openid's.
_PHONE_CODE_ERRORS = frozenset({40029, 40003, 41008})
_API_UNAUTHORIZED = 48001  # the mini-program may not call this API (personal or unverified)
MP_LOGIN = "mp_login"
# A wx.login code sent to /api/mp/login again within this many seconds is a retry whose answer was
# lost: it gets the same session. Later, it is a replayed code: refused, and the session it started is
# revoked (RFC 6749 §4.1.2). Short, since within it a copied code gets the session too.
MP_LOGIN_RETRY_SECONDS = 10.0


def session_key_purpose(openid: str) -> str:
    """Sealing purpose that ties a stored session_key to its user."""
    return f"session-key:{openid}"


def mp_login_seed(code_hash: str) -> str:
    """What the session of a mini-program login is derived from: the code's keyed hash."""
    return f"{MP_LOGIN}:{code_hash}"


# What a wx.login code sent with a typed login code is claimed for until the code's scene is known;
# then it is spent on that scene (confirm:<scene>) as a scan's code is.
ENTER_CODE = "enter_code"


CONFIRM_PREFIX = "confirm:"


def confirm_purpose(scene: str) -> str:
    """What a wx.login code is spent on when it confirms ``scene``."""
    return f"{CONFIRM_PREFIX}{scene}"


def e164(info: PhoneInfo) -> str:
    """The number as ``+<country code><national number>`` (unambiguous across countries)."""
    digits = "".join(ch for ch in info.pure_phone_number if ch.isdigit())
    country = "".join(ch for ch in info.country_code if ch.isdigit()) or "86"
    return f"+{country}{digits}"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a wx.login code belongs to, with their session_key sealed for storage."""

    code_hash: str
    openid: str
    unionid: str | None
    sealed_session_key: str


@dataclass(frozen=True)
class SessionStores:
    """The collections the handlers work on (refresh tokens are behind :class:`RefreshFamilies`)."""

    users: UserStore
    code_uses: CodeUseStore
    mp_sessions: MpSessionStore
    confirmed: ConfirmedUsers = field(default_factory=ConfirmedUsers)  # this replica's memory


class Linking(Protocol):
    """Account linking (:class:`services.session.linking.LinkHandlers`), as logins and tokens need it."""

    async def confirm(self, scene: str, scan_hash: str, user_id: str) -> object:
        """The phone that scanned link scene ``scene`` confirmed as ``user_id``: link, or refuse."""
        ...

    async def external_id(self, client_id: str | None, user_id: str) -> str | None:
        """The account of ``client_id`` the user is linked to, for that client's tokens only."""
        ...


class SessionHandlers:
    """RPC handlers of the session service."""

    def __init__(
        self,
        stores: SessionStores,
        signer: Signer,
        families: RefreshFamilies,
        wechat: WeChatClient,
        access_tokens: TokenProvider,
        bus: Caller,
        publisher: Publisher,
        data_sealer: Sealer,
        *,
        code_key: bytes,
        clock: Callable[[], float] = time.time,
        claim_wait: float = 5.0,
        mp_login_retry: float = MP_LOGIN_RETRY_SECONDS,
        end_op_sessions: Callable[[str], Awaitable[object]] | None = None,
        linking: Linking | None = None,
    ) -> None:
        self._stores = stores
        self._signer = signer
        self._families = families
        self._wechat = wechat
        self._access_tokens = access_tokens
        self._bus = bus
        self._publisher = publisher
        self._data_sealer = data_sealer
        self._code_key = code_key
        self._clock = clock
        self._claim_wait = claim_wait
        self._mp_login_retry = mp_login_retry
        # "Log out everywhere" ends the user's OpenID Connect OP sessions too (and tells their clients).
        self._end_op_sessions = end_op_sessions
        # Link scenes are confirmed there; tokens carry the client's external_id (None: no linking).
        self._linking = linking

    # -- logins --

    async def identify(self, request: IdentifyScanner) -> Identified:
        """RPC ``session.identify``: exchange the scanning phone's wx.login code ahead of its confirm.

        The gateway asks right after ``qrcode.scan`` bound ``scan_hash`` to this phone, while the user
        reads what they are approving; the confirm then waits on no WeChat call. The code is spent
        on this scene as a confirm with it would spend it. Nobody is created, counted or logged in
        until the confirm; a returning user is recorded on the code, in the write that stores the
        exchange, so the confirm can confirm the scene for them at once.
        """
        bind_context(scene=request.scene)
        code = request.code.get_secret_value()
        purpose = confirm_purpose(request.scene)
        await self._exchange(code, purpose, scan_hash=request.scan_hash, identify=True)
        log.info("scanner_identified")
        return Identified(identified=True)

    async def enter_code(self, request: EnterLoginCode) -> CodeScanned:
        """RPC ``session.enter_code``: a phone typed the login code its own browser shows.

        The phone's wx.login code is exchanged first: the qrcode service counts code entries per
        WeChat user (a keyed hash of the openid, never the openid). Once the typed code's scene is
        scanned for this phone, the wx.login code is spent on that scene as a scan that sent it would
        spend it, so the confirm needs no code, and a returning user is recorded on it. A retry with
        the same code and scan token (its answer lost) goes on with the first exchange.
        """
        code = request.code.get_secret_value()

        def entered_before(use: CodeUse) -> bool:
            """This phone's retry (same code, same scan token) of an entry whose answer was lost."""
            same_phone = use.scan_hash is not None and hmac.compare_digest(use.scan_hash, request.scan_hash)
            return use.purpose.startswith(CONFIRM_PREFIX) and same_phone

        identity = await self._exchange(code, ENTER_CODE, scan_hash=request.scan_hash, resumes=entered_before)
        scanned = await self._bus.call(
            ScanLoginCode(
                login_code=request.login_code,
                scan_hash=request.scan_hash,
                ip=request.ip,
                entrant=self.entrant_key(identity.openid),
            )
        )
        bind_context(scene=scanned.scene)
        await self._stores.code_uses.rebind(
            identity.code_hash,
            from_purpose=ENTER_CODE,
            purpose=confirm_purpose(scanned.scene),
            scan_hash=request.scan_hash,
        )
        await self._identify_returning(scanned.scene, request.scan_hash, identity)
        log.info("scanner_identified", by="login_code")
        return scanned

    async def _identify_returning(self, scene: str, scan_hash: str, identity: Identity) -> None:
        """Whom the code of a typed entry shows, a returning user or a new one, is recorded once its
        scene is known (a scan's code records it as it is exchanged: :meth:`identify`)."""
        known = await self._returning_user(identity.openid, identity.unionid)
        await self._stores.code_uses.identify(identity.code_hash, scan_hash, confirm_purpose(scene), known)

    async def _returning_user(self, openid: str, unionid: str | None) -> str | None:
        """The user of ``openid`` when there is nothing to create or link at the confirm: the confirm
        can then go straight to qrcode.confirm for them (before, ``qrcode.identify`` put them on the
        scene: one RPC more per login)."""
        known = await self._stores.users.by_openid(openid)
        if known is not None and (unionid is None or known.unionid == unionid):
            return known.id
        return None

    async def confirm(self, request: ConfirmLogin) -> ConfirmResult:
        """RPC ``session.confirm``: identify the phone's user and confirm the scene for them.

        With a code, the code is exchanged now (after checking that this phone scanned); without
        one, the code the phone sent with its scan (:meth:`identify`) is used. Idempotent: a retried
        or redelivered request answers ``confirmed`` again without calling WeChat or announcing
        anything twice.
        """
        bind_context(scene=request.scene)
        purpose = confirm_purpose(request.scene)
        if request.code is None:
            return await self._confirm_scanner(request, purpose)
        code = request.code.get_secret_value()
        # Checked before WeChat sees the code: only the phone that scanned may confirm.
        status = await self._bus.call(GetSceneStatus(scene=request.scene, scan_hash=request.scan_hash))
        if status.state != "scanned":
            if status.state in ("confirmed", "redeemed") and await self._confirmed_by(
                self.code_id(code), purpose
            ):
                log.info("confirm_repeated")
                return ConfirmResult(scene=request.scene, state="confirmed")
            raise RemoteError(*_NOT_CONFIRMABLE[status.state])
        identity = await self._exchange(code, purpose)
        user = await self._ensure_user(identity, client_id=status.client_id)
        return await self._confirm_for(request, identity, user.id)

    async def _confirm_scanner(self, request: ConfirmLogin, purpose: str) -> ConfirmResult:
        """A confirm without a code: the code sent with the scan identified the phone.

        A returning user was recorded on the code (:meth:`identify`; in this replica's memory, else
        one read), so qrcode.confirm comes first and the push leaves before anything else is looked
        up; otherwise the user is found or created.
        """
        # The returning user the scan's code showed (None: a new one; or a scene an older replica
        # identified with qrcode.identify, whose user qrcode then takes).
        known = await self._stores.code_uses.identified_user(request.scan_hash, purpose)
        try:
            confirmed = await self._bus.call(
                ConfirmScene(scene=request.scene, scan_hash=request.scan_hash, user_id=known)
            )
        except RemoteError as exc:
            if exc.error_code == "scene_purpose_mismatch":  # a link scene (docs/linking.md)
                identity = await self._scanner_identity(request, purpose)
                user = await self._ensure_user(identity, client_id=await self._scene_client(request))
                return await self._confirm_link(request, identity, user.id)
            if exc.error_code not in ("scene_not_identified", "already_confirmed"):
                raise
            identity = await self._scanner_identity(request, purpose)
            # A user may be created now: user.created names the site of this login.
            client_id = (
                await self._scene_client(request) if exc.error_code == "scene_not_identified" else None
            )
            user_id = (await self._ensure_user(identity, client_id=client_id)).id
            if exc.error_code == "scene_not_identified":
                return await self._confirm_for(request, identity, user_id)
            if not await self._confirmed_for(request.scene, user_id):
                raise
            await self._note_login(identity, user_id)  # a retry: counted once all the same
            return ConfirmResult(scene=request.scene, state="confirmed")
        if confirmed.user_id is None:
            raise RuntimeError("qrcode.confirm named no user")
        # The identity is read and the login's code marked used for the user in one write.
        use, first = await self._stores.code_uses.attach_for_scan(
            request.scan_hash, purpose, confirmed.user_id
        )
        if use is None or not use.openid or not use.sealed_session_key:
            identity = await self._scanner_identity(request, purpose)  # says why it is missing
            await self._announce(request.scene, identity, confirmed.user_id, confirmed.client_id)
            return ConfirmResult(scene=request.scene, state="confirmed")
        identity = Identity(use.code_hash, use.openid, use.unionid, use.sealed_session_key)
        await self._announce(request.scene, identity, confirmed.user_id, confirmed.client_id, attached=first)
        return ConfirmResult(scene=request.scene, state="confirmed")

    async def _confirm_for(self, request: ConfirmLogin, identity: Identity, user_id: str) -> ConfirmResult:
        """``qrcode.confirm`` for ``user_id``, then announce the login."""
        try:
            confirmed = await self._bus.call(
                ConfirmScene(scene=request.scene, scan_hash=request.scan_hash, user_id=user_id)
            )
        except RemoteError as exc:
            if exc.error_code == "scene_purpose_mismatch":  # a link scene (docs/linking.md)
                return await self._confirm_link(request, identity, user_id)
            # A twin of this request (same code, hence same user) may have confirmed it a moment ago;
            # another phone's win is refused at once rather than waited on.
            if exc.error_code == "already_confirmed" and await self._confirmed_for(request.scene, user_id):
                await self._note_login(identity, user_id)
                return ConfirmResult(scene=request.scene, state="confirmed")
            raise
        await self._announce(request.scene, identity, user_id, confirmed.client_id)
        return ConfirmResult(scene=request.scene, state="confirmed")

    async def _announce(
        self,
        scene: str,
        identity: Identity,
        user_id: str,
        client_id: str | None,
        *,
        attached: bool | None = None,
    ) -> None:
        """After qrcode.confirm (which pushed already): login.confirmed (naming the scene's client, and
        the client's account of a linked user), beside the login's bookkeeping. ``attached``: whether
        the code was just marked used for the user (True: count the login; None: not yet asked)."""

        async def announce() -> None:
            external_id = await self._external_id(client_id, user_id)
            await self._publisher.publish(
                LoginConfirmed(scene=scene, user_id=user_id, client_id=client_id, external_id=external_id)
            )

        bookkeeping = (
            self._note_login(identity, user_id)
            if attached is None
            else self._note_attached_login(identity, user_id, counted_now=attached)
        )
        _, counted = await asyncio.gather(announce(), bookkeeping)
        if counted is not None:  # the user as this login counted it, for the browser's complete
            self._stores.confirmed.keep(scene, counted)
        log.info("login_confirmed", user_id=user_id)

    async def _confirm_link(self, request: ConfirmLogin, identity: Identity, user_id: str) -> ConfirmResult:
        """The phone confirmed a link scene: the link is stored and the scene confirmed, or refused
        (``already_linked``, ``account_already_linked``: the browser is told too). No login is made."""
        if self._linking is None:
            raise RemoteError("scene_purpose_mismatch", "account linking is not served here")
        await self._linking.confirm(request.scene, request.scan_hash, user_id)
        # The code's session_key is kept as a login's is; the code is spent, but no login is counted.
        await self._stores.users.keep_session_key(user_id, identity.sealed_session_key, self._clock())
        await self._stores.code_uses.attach_user(identity.code_hash, user_id)
        return ConfirmResult(scene=request.scene, state="confirmed")

    async def _external_id(self, client_id: str | None, user_id: str) -> str | None:
        """The ``external_id`` claim of ``client_id``'s tokens for ``user_id`` (docs/linking.md)."""
        return await self._linking.external_id(client_id, user_id) if self._linking is not None else None

    async def _scanner_identity(self, request: ConfirmLogin, purpose: str) -> Identity:
        """The identity exchanged from the code this phone sent with its scan."""
        use = await self._stores.code_uses.for_scan(request.scan_hash, purpose)
        if use is not None and use.openid and use.sealed_session_key:
            return Identity(use.code_hash, use.openid, use.unionid, use.sealed_session_key)
        # Say why precisely: a wrong scan token or a scene past scanning, else the missing code.
        status = await self._bus.call(GetSceneStatus(scene=request.scene, scan_hash=request.scan_hash))
        if status.state != "scanned":
            raise RemoteError(*_NOT_CONFIRMABLE[status.state])
        raise CodeRequired()

    async def complete(self, request: CompleteLogin) -> TokenPair:
        """RPC ``session.complete``: redeem the confirmed scene (ticket checked) and issue tokens.

        Idempotent within the redeem window: the same scene and ticket get the same session (same
        refresh token and ``sid``), so a browser whose answer was lost loses no login and makes no
        second one. The scene must belong to ``client_id`` (``client_mismatch`` otherwise), which is
        the access token's audience.
        """
        bind_context(scene=request.scene)
        redeemed = await self._bus.call(
            RedeemScene(scene=request.scene, ticket_hash=request.ticket_hash, client_id=request.client_id)
        )
        # The user the confirm counted, when this replica served it (no read), else from Mongo.
        user = self._stores.confirmed.take(request.scene, redeemed.user_id)
        if user is None:
            user = await self._stores.users.get(redeemed.user_id)
        if user is None:
            raise UserNotFound()
        log.info("login_completed", user_id=user.id, client=redeemed.client_id)
        # One scan login, one session: a retry whose first answer was lost gets the same session.
        return await self._new_session(
            user, once_for=f"{request.scene}:{request.ticket_hash}", client_id=redeemed.client_id
        )

    async def mp_login(self, request: LoginMiniProgram) -> TokenPair:
        """RPC ``session.mp_login``: plain in-mini-program login with a wx.login code.

        A retry with the same code within :data:`MP_LOGIN_RETRY_SECONDS` (a lost response) reuses the
        stored exchange and gets the same session (same refresh token and ``sid``: both are derived
        from the code's keyed hash); the login is counted once. Later the code is refused and that
        session revoked (see :meth:`_exchange`).
        """
        code = request.code.get_secret_value()
        identity = await self._exchange(code, MP_LOGIN)
        user = await self._record_login(identity)
        log.info("mp_login", user_id=user.id)
        return await self._new_session(user, once_for=mp_login_seed(identity.code_hash))

    # -- tokens --

    async def refresh(self, request: RefreshTokens) -> TokenPair:
        """RPC ``session.refresh``: rotate the refresh token, issue a fresh access token."""
        presented = request.refresh_token.get_secret_value()
        try:
            grant = await self._families.rotate(presented)
        except RefreshReused:  # the family was revoked as stolen: its site is told
            await self._announce_revoked(await self._families.family_of(presented), "reuse_detected")
            raise
        user = await self._stores.users.get(grant.user_id)
        if user is None:
            raise UserNotFound()
        client_id = grant.binding.client_id
        external_id = await self._external_id(client_id, user.id)
        return self._pair(user, grant.family, grant.token, client_id=client_id, external_id=external_id)

    async def logout(self, request: EndSession) -> LoggedOut:
        """RPC ``session.logout``: revoke the family of a verified access token or a refresh token;
        with ``everywhere``, every family of its user (a refresh token must then be live)."""
        family: str | None = None
        if request.everywhere:
            owner: str | None = None
            asking: str | None = None  # the session that asked
            if request.sid and request.user_id:
                await self._families.check_live(request.sid, request.user_id)
                owner, asking = request.user_id, request.sid
            elif request.refresh_token is not None:
                owner = await self._families.live_owner(request.refresh_token.get_secret_value())
                asking = await self._families.family_of(request.refresh_token.get_secret_value())
            if owner is None:
                return LoggedOut(revoked=False)
            revoked = await self._families.revoke_user(owner, "logout_everywhere") > 0
            if revoked:  # told to the site of the session that asked
                await self._announce_revoked(asking, "logout_everywhere")
            if self._end_op_sessions is not None:  # OpenID Connect: the OP sessions, and their clients told
                await self._end_op_sessions(owner)
            return LoggedOut(revoked=revoked)
        if request.sid and request.user_id:
            family = request.sid
            await self._families.check_live(family, request.user_id)
        elif request.refresh_token is not None:
            family = await self._families.family_of(request.refresh_token.get_secret_value())
        if family is None:
            return LoggedOut(revoked=False)  # unknown token: nothing to end, and nothing to reveal
        revoked = await self._families.revoke(family, "logout")
        if revoked:
            await self._announce_revoked(family, "logout")
        return LoggedOut(revoked=revoked)

    async def jwks(self, _request: GetJwks) -> Jwks:
        """RPC ``session.jwks``: the public keys that verify access tokens."""
        return Jwks(keys=self._signer.jwks())

    # -- phone and open data --

    async def bind_phone(self, request: BindPhone) -> PhoneBound:
        """RPC ``session.bind_phone``: bind the number behind a getPhoneNumber code.

        No phone yet → bound; the same number again → unchanged; a different number verified by
        WeChat → replaces it; a number another user has → ``phone_taken``.
        """
        user = await self._live_user(request.user_id, request.sid)
        family = await self._families.live_family(request.sid)
        code = request.code.get_secret_value()
        info = await self._phone_info(code, user.openid)
        phone = e164(info)
        bound = False
        for _ in range(3):
            if user.phone == phone:
                break
            try:
                changed = await self._stores.users.set_phone(
                    user.id, phone, replacing=user.phone, now=self._clock()
                )
            except Taken:
                log.warning("phone_taken", user_id=user.id)
                raise PhoneTaken() from None
            if changed:
                bound = True
                log.info("phone_bound", user_id=user.id, replaced=user.phone is not None)
            user = await self._must_get(user.id)
        else:
            raise WeChatUnavailable("the account changed during the request; try again", retry_after=1)
        if bound:  # never the number itself: the site asks userinfo
            await self._notify(
                PhoneNumberBound(user_id=user.id, client_id=family.client_id if family else None)
            )
        client_id = family.client_id if family else None
        external_id = await self._external_id(client_id, user.id)
        return PhoneBound(
            user=user.view().model_copy(update={"external_id": external_id}),
            access_token=SecretStr(
                self._signer.issue(user, request.sid, audience=client_id, external_id=external_id)
            ),
            expires_in=self._signer.ttl,
        )

    async def decrypt(self, request: DecryptData) -> DecryptedData:
        """RPC ``session.decrypt``: open ``encryptedData`` with the user's stored session_key.

        The watermark must name our appid. A ``unionId`` inside is linked to a user who has none.
        """
        await self._families.check_live(request.sid, request.user_id)
        # The key on the user, or one an older version kept in mp_sessions later (a rolling upgrade).
        found, older = await asyncio.gather(
            self._stores.users.with_session_key(request.user_id),
            self._stores.mp_sessions.get(request.user_id),
        )
        if found is None:
            raise UserNotFound()
        user, kept = found
        key = SessionKey.newest(kept, older)
        if key is None:
            raise NoSessionKey()
        session_key = self._data_sealer.open(key.sealed, purpose=session_key_purpose(user.openid))
        try:
            data = decrypt_encrypted_data(
                session_key, request.encrypted_data.get_secret_value(), request.iv, appid=self._wechat.appid
            )
        except WatermarkMismatch:
            log.warning("decrypt_watermark_mismatch", user_id=user.id)
            raise WatermarkInvalid() from None
        except DecryptionFailed as exc:
            log.info("decrypt_failed", user_id=user.id, reason=str(exc))
            raise DecryptFailed() from None
        unionid = data.get("unionId")
        if isinstance(unionid, str) and unionid:
            user = await self._link_unionid(user, unionid)
        return DecryptedData(data=SecretStr(json.dumps(data, ensure_ascii=False)), user=user.view())

    # -- helpers --

    def entrant_key(self, openid: str) -> str:
        """Who enters login codes, for the per-user limit: a keyed hash of the openid (32 hex)."""
        return hmac.new(self._code_key, b"entrant:" + openid.encode(), hashlib.sha256).hexdigest()[:32]

    def code_id(self, code: str) -> str:
        """The id a wx.login code's exchange is stored under: keyed (HMAC-SHA256), so someone who can
        write to MongoDB cannot plant the outcome of a code they will send."""
        return hmac.new(self._code_key, b"wx-code:" + code.encode(), hashlib.sha256).hexdigest()

    async def _new_session(
        self, user: User, *, once_for: str | None = None, client_id: str | None = None
    ) -> TokenPair:
        grant, external_id = await asyncio.gather(
            self._families.start(user.id, once_for=once_for, binding=Binding(client_id)),
            self._external_id(client_id, user.id),
        )
        return self._pair(user, grant.family, grant.token, client_id=client_id, external_id=external_id)

    def _pair(
        self,
        user: User,
        family: str,
        refresh_token: str,
        *,
        client_id: str | None = None,
        external_id: str | None = None,
    ) -> TokenPair:
        """Tokens of the browser and mini-program API; the access token's audience is the client, and
        the client's ``external_id`` of a linked user goes with them (for that client only)."""
        return TokenPair(
            access_token=SecretStr(
                self._signer.issue(user, family, audience=client_id, external_id=external_id)
            ),
            expires_in=self._signer.ttl,
            refresh_token=SecretStr(refresh_token),
            user=user.view().model_copy(update={"external_id": external_id}),
        )

    async def _live_user(self, user_id: str, sid: str) -> User:
        await self._families.check_live(sid, user_id)
        return await self._must_get(user_id)

    async def _must_get(self, user_id: str) -> User:
        user = await self._stores.users.get(user_id)
        if user is None:
            raise UserNotFound()
        return user

    async def _record_login(self, identity: Identity) -> User:
        """Find or create the user; count the login and keep the session_key once per code."""
        user = await self._ensure_user(identity)
        return await self._note_login(identity, user.id) or user

    async def _ensure_user(self, identity: Identity, *, client_id: str | None = None) -> User:
        """The user of the identity's openid, created (and announced, naming the site of the login
        that created it: ``client_id``) the first time."""
        try:
            user, created = await self._stores.users.ensure(identity.openid, identity.unionid, self._clock())
        except Taken:
            holder = await self._stores.users.by_unionid(identity.unionid or "")
            log.warning("unionid_conflict", security=True, linked_user=holder.id if holder else None)
            raise UnionIdTaken() from None
        if created:
            await self._publisher.publish(
                UserCreated(user_id=user.id, openid=user.openid, unionid=user.unionid, client_id=client_id)
            )
            log.info("user_created", user_id=user.id)
        if identity.unionid and user.unionid != identity.unionid:
            log.warning("unionid_mismatch", security=True, user_id=user.id)  # kept the linked one
        return user

    async def _note_login(self, identity: Identity, user_id: str) -> User | None:
        """Keep the code's session_key and count the login, once per code; the user as counted then."""
        counted_now = await self._stores.code_uses.attach_user(identity.code_hash, user_id)
        return await self._note_attached_login(identity, user_id, counted_now=counted_now)

    async def _note_attached_login(
        self, identity: Identity, user_id: str, *, counted_now: bool
    ) -> User | None:
        """:meth:`_note_login` for a code already marked used for ``user_id``: the session_key is kept
        on the user, in the write that counts the login when this request was the one that marked the
        code (the user as counted then), else alone (the same code always carries the same key, so
        keeping it again on a retry is harmless)."""
        now = self._clock()
        sealed = identity.sealed_session_key
        if counted_now:
            return await self._stores.users.count_login(user_id, now, sealed_session_key=sealed)
        await self._stores.users.keep_session_key(user_id, sealed, now)
        return None

    async def _link_unionid(self, user: User, unionid: str) -> User:
        if user.unionid == unionid:
            return user
        if user.unionid is not None:
            log.warning("unionid_mismatch", security=True, user_id=user.id)  # a unionid never changes
            return user
        try:
            linked = await self._stores.users.link_unionid(user.id, unionid)
        except Taken:
            holder = await self._stores.users.by_unionid(unionid)
            log.warning(
                "unionid_conflict", security=True, user_id=user.id, linked_user=holder.id if holder else None
            )
            raise UnionIdTaken() from None
        log.info("unionid_linked", user_id=user.id)
        return linked

    async def _phone_info(self, code: str, openid: str) -> PhoneInfo:
        async def fetch(token: str) -> PhoneInfo:
            return await self._wechat.get_phone_number(token, code, openid=openid)

        try:
            info = await call_with_token(self._access_tokens, fetch)
        except WeChatBadRequest as exc:
            if exc.errcode in _PHONE_CODE_ERRORS:
                raise PhoneCodeInvalid() from None
            if exc.errcode == _API_UNAUTHORIZED:
                log.error("phone_api_unauthorized", errcode=exc.errcode)
                raise PhoneUnavailable() from None
            log.error("phone_number_refused", errcode=exc.errcode)
            raise WeChatUnavailable() from None
        except WeChatError as exc:
            raise WeChatUnavailable(retry_after=getattr(exc, "retry_after", 2)) from None
        if info.watermark_appid is not None and info.watermark_appid != self._wechat.appid:
            log.warning("phone_watermark_mismatch")
            raise WatermarkInvalid()
        if not info.pure_phone_number:
            raise WeChatUnavailable("WeChat returned no phone number")
        return info

    async def _exchange(
        self,
        code: str,
        purpose: str,
        *,
        scan_hash: str | None = None,
        resumes: Callable[[CodeUse], bool] | None = None,
        identify: bool = False,
    ) -> Identity:
        """Exchange a wx.login code with WeChat at most once; a retry for the same purpose reuses it
        (a mini-program login only within :data:`MP_LOGIN_RETRY_SECONDS`), as does a request that
        ``resumes`` an earlier use of another purpose (a typed entry retried after it was spent on
        its scene). ``identify``: a code sent with a scan (``scan_hash``) also records the returning
        user it shows (:meth:`_returning_user`) in the write that stores the exchange.

        Any other reuse of a code is refused, and when the code had logged in on the mini-program,
        the session it started is revoked: a code seen twice may have been copied.
        """
        code_hash = self.code_id(code)
        now = self._clock()
        earlier = await self._stores.code_uses.claim(code_hash, purpose, now, scan_hash=scan_hash)
        if earlier is not None:
            window = self._mp_login_retry if purpose == MP_LOGIN else CODE_LIFETIME
            ours = earlier.purpose == purpose or (resumes is not None and resumes(earlier))
            if not ours or now - earlier.created_at > window:
                log.info("code_reuse_refused", first_use=earlier.purpose.partition(":")[0])
                if earlier.purpose == MP_LOGIN:
                    await self._revoke_code_session(code_hash)
                raise CodeAlreadyUsed()
            return await self._await_claim(code_hash, earlier)
        try:
            result = await self._wechat.code2session(code)
        except WeChatBadRequest as exc:
            await self._stores.code_uses.fail(code_hash, exc.errcode)
            if exc.errcode == _CODE_USED:  # spent before our record of it was purged
                await self._revoke_code_session(code_hash)
            raise self._code_error(exc.errcode) from None
        except WeChatError as exc:
            # WeChat may not have seen the code: let a retry exchange it again.
            await self._stores.code_uses.release(code_hash)
            raise WeChatUnavailable(retry_after=getattr(exc, "retry_after", 2)) from None
        sealed = self._data_sealer.seal(result.session_key, purpose=session_key_purpose(result.openid))
        known = await self._returning_user(result.openid, result.unionid) if identify else None
        await self._stores.code_uses.succeed(
            code_hash,
            result.openid,
            result.unionid,
            sealed,
            identified=(scan_hash, purpose, known) if identify and scan_hash else None,
        )
        return Identity(code_hash, result.openid, result.unionid, sealed)

    async def _revoke_code_session(self, code_hash: str) -> None:
        """Revoke the session a mini-program login with this code started, if any."""
        family = self._families.family_for(mp_login_seed(code_hash))
        if await self._families.revoke(family, "code_reuse"):
            log.warning("code_reuse_session_revoked", security=True, family=family)
            await self._announce_revoked(family, "code_reuse")

    async def _announce_revoked(self, family: str | None, reason: str) -> None:
        """``session.revoked`` for a family just ended, naming its user and client (the site's webhooks)."""
        record = await self._families.family_record(family) if family else None
        if record is not None:
            await self._notify(
                SessionRevoked(
                    user_id=record.user_id, sid=record.family, client_id=record.client_id, reason=reason
                )
            )

    async def _notify(self, event: Event) -> None:
        """Publish a notice of a change already made: the bus being down must not undo or fail it (a
        lost notice is logged)."""
        try:
            await self._publisher.publish(event)
        except ServiceError as exc:
            log.warning("event_not_announced", type=event.TYPE, error_code=exc.error_code)

    async def _scene_client(self, request: ConfirmLogin) -> str | None:
        """The client the scene being confirmed belongs to."""
        status = await self._bus.call(GetSceneStatus(scene=request.scene, scan_hash=request.scan_hash))
        return status.client_id

    async def _await_claim(self, code_hash: str, use: CodeUse) -> Identity:
        deadline = time.monotonic() + self._claim_wait
        while True:
            if use.status == "done" and use.openid and use.sealed_session_key:
                return Identity(code_hash, use.openid, use.unionid, use.sealed_session_key)
            if use.status == "failed":
                raise self._code_error(use.errcode or 40029)
            if time.monotonic() >= deadline:
                raise CodeInProgress(retry_after=1)
            await asyncio.sleep(0.05)
            use = await self._stores.code_uses.get(code_hash) or CodeUse("exchanging")

    async def _confirmed_for(self, scene: str, user_id: str) -> bool:
        """True when ``scene`` is confirmed for ``user_id`` (by a twin of this request)."""
        status = await self._bus.call(GetSceneStatus(scene=scene))
        return status.state in ("confirmed", "redeemed") and status.user_id == user_id

    async def _confirmed_by(self, code_hash: str, purpose: str, *, wait: float = 0.0) -> bool:
        """True when this code already confirmed this scene (polls up to ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        while True:
            use = await self._stores.code_uses.get(code_hash)
            if use is not None and use.purpose == purpose and use.done:
                return True
            if use is None or use.purpose != purpose or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    @staticmethod
    def _code_error(errcode: int) -> ServiceError:
        error_class = _CODE_ERRORS.get(errcode)
        if error_class is None:
            log.error("code_exchange_refused", errcode=errcode)  # appid/secret misconfiguration
            return WeChatUnavailable()
        return error_class()
