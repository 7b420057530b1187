"""Collections of the session service: ``users`` (with each user's latest sealed session_key),
``code_uses``, ``refresh_tokens``, ``signing_keys``, for OpenID Connect ``oidc_codes`` and
``op_sessions``, and for account linking ``link_requests`` and ``identity_links``; ``mp_sessions`` is
only read (session keys older versions kept there). Times are epoch seconds; ``purge_at`` dates
(written at insert) drive TTL indexes.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from shared.logging import get_logger
from shared.messages import UserView
from shared.mongo import Index
from shared.runtime import Database

log = get_logger(__name__)

USERS = "users"
CODE_USES = "code_uses"
MP_SESSIONS = "mp_sessions"
REFRESH_TOKENS = "refresh_tokens"
SIGNING_KEYS = "signing_keys"
OIDC_CODES = "oidc_codes"
OP_SESSIONS = "op_sessions"
LINK_REQUESTS = "link_requests"
IDENTITY_LINKS = "identity_links"

INDEXES = [
    Index(USERS, [("openid", 1)], unique=True, name="users_openid"),
    Index(
        USERS, [("unionid", 1)], unique=True, partial={"unionid": {"$type": "string"}}, name="users_unionid"
    ),
    Index(USERS, [("phone", 1)], unique=True, partial={"phone": {"$type": "string"}}, name="users_phone"),
    Index(CODE_USES, [("purge_at", 1)], expire_after_seconds=0, name="code_uses_ttl"),
    Index(CODE_USES, [("scan_hash", 1)], name="code_uses_scan"),
    Index(REFRESH_TOKENS, [("purge_at", 1)], expire_after_seconds=0, name="refresh_tokens_ttl"),
    Index(REFRESH_TOKENS, [("family", 1)], name="refresh_tokens_family"),
    Index(REFRESH_TOKENS, [("user_id", 1)], name="refresh_tokens_user"),
    Index(
        SIGNING_KEYS,
        [("current_alg", 1)],
        unique=True,
        partial={"current_alg": {"$type": "string"}},
        name="signing_keys_one_current_per_alg",
    ),
    Index(OIDC_CODES, [("purge_at", 1)], expire_after_seconds=0, name="oidc_codes_ttl"),
    Index(OP_SESSIONS, [("purge_at", 1)], expire_after_seconds=0, name="op_sessions_ttl"),
    Index(OP_SESSIONS, [("grants.sid", 1)], name="op_sessions_sid"),
    Index(OP_SESSIONS, [("user_id", 1)], name="op_sessions_user"),
    Index(LINK_REQUESTS, [("purge_at", 1)], expire_after_seconds=0, name="link_requests_ttl"),
    Index(LINK_REQUESTS, [("token_id", 1)], unique=True, name="link_requests_token"),
    Index(
        LINK_REQUESTS,
        [("scene", 1)],
        unique=True,
        partial={"scene": {"$type": "string"}},
        name="link_requests_scene",
    ),
    # The rules of linking (docs/linking.md), enforced by the store whatever races the code loses: a
    # WeChat user is linked to at most one account of a site; an account of a site that does not
    # allow several WeChat users has at most one (``account_key`` is set only for such a site).
    Index(IDENTITY_LINKS, [("client_id", 1), ("user_id", 1)], unique=True, name="identity_links_user"),
    Index(
        IDENTITY_LINKS,
        [("account_key", 1)],
        unique=True,
        partial={"account_key": {"$type": "string"}},
        name="identity_links_account",
    ),
    Index(IDENTITY_LINKS, [("client_id", 1), ("external_id", 1)], name="identity_links_external"),
]


def _date(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def new_user_id() -> str:
    """An opaque, unguessable user id."""
    return "u_" + secrets.token_urlsafe(12)


# --- users ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    """A person known by their openid in this mini-program."""

    id: str
    openid: str
    unionid: str | None
    phone: str | None
    created_at: float
    last_login_at: float
    login_count: int

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> User:
        return cls(
            id=str(doc["_id"]),
            openid=str(doc["openid"]),
            unionid=doc.get("unionid") or None,
            phone=doc.get("phone") or None,
            created_at=float(doc["created_at"]),
            last_login_at=float(doc.get("last_login_at", doc["created_at"])),
            login_count=int(doc.get("login_count", 0)),
        )

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "_id": self.id,
            "openid": self.openid,
            "created_at": self.created_at,
            "last_login_at": self.last_login_at,
            "login_count": self.login_count,
        }
        # Absent rather than null, so the partial unique indexes ignore them.
        if self.unionid:
            doc["unionid"] = self.unionid
        if self.phone:
            doc["phone"] = self.phone
        return doc

    def view(self) -> UserView:
        return UserView(id=self.id, openid=self.openid, unionid=self.unionid, phone=self.phone)


# Where a user's latest WeChat session_key is kept (sealed with the data key, bound to the openid),
# and when: the key that opens the user's encryptedData. Never part of a user's view.
SESSION_KEY = "session_key"
SESSION_KEY_AT = "session_key_at"


@dataclass(frozen=True, slots=True)
class SessionKey:
    """A user's WeChat session_key as stored (sealed), and when it was kept."""

    sealed: str
    at: float

    @staticmethod
    def newest(*keys: SessionKey | None) -> SessionKey | None:
        """The most recently kept of ``keys`` (None if there is none)."""
        return max((key for key in keys if key is not None), key=lambda key: key.at, default=None)


class Taken(Exception):
    """A unique field (``unionid``, ``phone``) already belongs to another user."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} already belongs to another user")
        self.field = field


class UserStore:
    """Users keyed by openid; ``unionid`` and ``phone`` are unique when present.

    Changes to a unique field use ``update_one`` (it raises ``DuplicateKeyError`` everywhere;
    nx-27017's ``find_one_and_update`` silently returns None instead) and then read the user back.
    """

    def __init__(self, db: Database) -> None:
        self._users = db[USERS]

    async def get(self, user_id: str) -> User | None:
        doc = await self._users.find_one({"_id": user_id})
        return User.from_doc(doc) if doc else None

    async def by_openid(self, openid: str) -> User | None:
        doc = await self._users.find_one({"openid": openid})
        return User.from_doc(doc) if doc else None

    async def by_unionid(self, unionid: str) -> User | None:
        doc = await self._users.find_one({"unionid": unionid})
        return User.from_doc(doc) if doc else None

    async def ensure(self, openid: str, unionid: str | None, now: float) -> tuple[User, bool]:
        """The user of ``openid``, created the first time; returns (user, created).

        A unionid is linked to an existing user who has none. Raises :class:`Taken` when the
        unionid belongs to another user (the user is then neither created nor changed).
        """
        for _ in range(3):
            user = await self.by_openid(openid)
            if user is not None:
                if unionid and user.unionid is None:
                    user = await self.link_unionid(user.id, unionid)
                return user, False
            user = User(new_user_id(), openid, unionid, None, now, now, 0)
            try:
                await self._users.insert_one(user.to_doc())
            except DuplicateKeyError:
                if (
                    unionid
                    and await self.by_openid(openid) is None
                    and await self._users.find_one({"unionid": unionid}, {"_id": 1})
                ):
                    raise Taken("unionid") from None
                continue  # another request created this openid a moment ago: use theirs
            return user, True
        raise RuntimeError(f"could not create or find the user after 3 attempts: {openid[:6]}…")

    async def link_unionid(self, user_id: str, unionid: str) -> User:
        """Set the unionid of a user who has none (a user's unionid never changes once set)."""
        try:
            await self._users.update_one(
                {"_id": user_id, "unionid": {"$exists": False}}, {"$set": {"unionid": unionid}}
            )
        except DuplicateKeyError:
            raise Taken("unionid") from None
        return await self._must_get(user_id)

    async def set_phone(self, user_id: str, phone: str, *, replacing: str | None, now: float) -> bool:
        """Bind ``phone`` if the user's phone is still ``replacing``; False when it changed meanwhile.

        Raises :class:`Taken` when another user has the number.
        """
        current: dict[str, Any] = {"$exists": False} if replacing is None else {"$eq": replacing}
        try:
            result = await self._users.update_one(
                {"_id": user_id, "phone": current}, {"$set": {"phone": phone, "phone_bound_at": now}}
            )
        except DuplicateKeyError:
            raise Taken("phone") from None
        return result.matched_count == 1

    async def count_login(self, user_id: str, now: float, *, sealed_session_key: str | None = None) -> User:
        """Record one login: ``last_login_at`` and ``login_count``, and the login's sealed session_key
        when given (the same write); the user as counted."""
        changes: dict[str, Any] = {"last_login_at": now}
        if sealed_session_key is not None:
            changes |= {SESSION_KEY: sealed_session_key, SESSION_KEY_AT: now}
        doc = await self._users.find_one_and_update(
            {"_id": user_id},
            {"$set": changes, "$inc": {"login_count": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise RuntimeError(f"user {user_id} vanished")
        return User.from_doc(doc)

    async def keep_session_key(self, user_id: str, sealed_session_key: str, now: float) -> None:
        """Keep the user's latest session_key (sealed) without counting a login."""
        await self._users.update_one(
            {"_id": user_id}, {"$set": {SESSION_KEY: sealed_session_key, SESSION_KEY_AT: now}}
        )

    async def with_session_key(self, user_id: str) -> tuple[User, SessionKey | None] | None:
        """The user and the session_key kept on the user (None: none kept there yet), in one read."""
        doc = await self._users.find_one({"_id": user_id})
        if doc is None:
            return None
        sealed = doc.get(SESSION_KEY)
        kept = SessionKey(str(sealed), float(doc.get(SESSION_KEY_AT, 0.0))) if sealed else None
        return User.from_doc(doc), kept

    async def _must_get(self, user_id: str) -> User:
        user = await self.get(user_id)
        if user is None:
            raise RuntimeError(f"user {user_id} vanished")
        return user


# A confirmed scene must be collected within the redeem window (60 s by default); a user kept for its
# complete longer than this is not used. At 83 logins/s, 16,384 users cover more than that.
CONFIRMED_USER_SECONDS = 120.0
CONFIRMED_USERS = 16384


class ConfirmedUsers:
    """The user each login scene was confirmed for, as the confirm counted the login, kept in this
    replica's memory until the browser's complete takes it: that complete then reads no user.

    Memory only, about 300 bytes a scene, at most ``size`` of them, none older than ``max_age``
    seconds. A complete served by another replica, after a restart, or retried after its first answer
    was lost reads the user from Mongo, as every complete did before. The tokens then describe the
    user as the confirm counted it, a second or so earlier; a phone bound in between shows in the next
    refresh, as one bound after the complete would.
    """

    def __init__(
        self,
        *,
        size: int = CONFIRMED_USERS,
        max_age: float = CONFIRMED_USER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._size = size
        self._max_age = max_age
        self._clock = clock
        self._users: OrderedDict[str, tuple[float, User]] = OrderedDict()  # scene → (kept at, user)

    def keep(self, scene: str, user: User) -> None:
        """Remember ``user`` for the complete of ``scene`` (the oldest goes beyond ``size``)."""
        self._users[scene] = (self._clock(), user)
        self._users.move_to_end(scene)
        if len(self._users) > self._size:
            self._users.popitem(last=False)

    def take(self, scene: str, user_id: str) -> User | None:
        """The user kept for ``scene``, once, if it is ``user_id`` and young enough; else None."""
        kept = self._users.pop(scene, None)
        if kept is None:
            return None
        at, user = kept
        return user if user.id == user_id and self._clock() - at <= self._max_age else None


# --- wx.login code exchanges ----------------------------------------------------------------------

# WeChat's wx.login codes live five minutes; so does our record of exchanging one.
CODE_LIFETIME = 300.0
# Scans whose identified user a replica remembers until their confirm (about 100 bytes each): at
# 83 logins/s, the last three minutes of them, longer than a scene lives.
REMEMBERED_SCANS = 16384


@dataclass(frozen=True, slots=True)
class CodeUse:
    """The stored outcome of exchanging one wx.login code (keyed by the code's hash).

    ``purpose`` is what the code was spent on (``confirm:<scene>`` or ``mp_login``): a retry for the
    same purpose reuses the result, any other use is refused like WeChat's 40163. ``user_id`` and
    ``done`` are set together once the login is recorded (so it is counted once): for a scene, only
    after it is confirmed.
    """

    status: str  # exchanging | done | failed
    purpose: str = ""
    code_hash: str = ""
    created_at: float = 0.0
    openid: str | None = None
    unionid: str | None = None
    sealed_session_key: str | None = None
    errcode: int | None = None
    user_id: str | None = None
    done: bool = False
    scan_hash: str | None = None  # the phone that sent the code with its scan (or typed entry)
    identified_user_id: str | None = None  # the returning user the code showed at the scan

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> CodeUse:
        return cls(
            status=str(doc["status"]),
            purpose=str(doc.get("purpose", "")),
            code_hash=str(doc.get("_id", "")),
            created_at=float(doc.get("created_at", 0.0)),
            openid=doc.get("openid"),
            unionid=doc.get("unionid"),
            sealed_session_key=doc.get("session_key"),
            errcode=doc.get("errcode"),
            user_id=doc.get("user_id"),
            done=bool(doc.get("done", False)),
            scan_hash=doc.get("scan_hash"),
            identified_user_id=doc.get("identified_user_id"),
        )


class CodeUseStore:
    """At most one exchange per code: a claim document with a unique ``_id`` (the code's hash).

    Documents expire with the code (a TTL index on ``purge_at``); reads also check the age, since
    the TTL monitor runs only every 60 s.

    Which returning user a scan's code showed (:meth:`identify`), or that it showed a new one, is
    also kept in this replica's memory with the code's hash, for the confirm that follows: the fact
    never changes once written, so the memory needs no invalidation, and a confirm that another
    replica (or a restart) serves reads it from Mongo. Knowing the code, the confirm's write finds it
    by ``_id`` (on nx-27017 a ``find_one_and_update`` by any other field scans the collection).
    """

    def __init__(
        self, db: Database, *, keep_seconds: float = CODE_LIFETIME, remembered: int = REMEMBERED_SCANS
    ) -> None:
        self._uses = db[CODE_USES]
        self._keep = keep_seconds
        self._remembered = remembered
        # (scan_hash, purpose) → (the code's hash, the user id or None: a new user), oldest first
        self._identified: OrderedDict[tuple[str, str], tuple[str, str | None]] = OrderedDict()

    async def claim(
        self, code_hash: str, purpose: str, now: float, *, scan_hash: str | None = None
    ) -> CodeUse | None:
        """Claim the code; None when we got it, else what the first claimant stored.

        ``scan_hash`` records the scanning phone that sent the code with its scan, for
        :meth:`for_scan`.
        """
        doc: dict[str, Any] = {
            "_id": code_hash,
            "status": "exchanging",
            "purpose": purpose,
            "created_at": now,
            "purge_at": _date(now + self._keep),
        }
        if scan_hash is not None:
            doc["scan_hash"] = scan_hash
        try:
            await self._uses.insert_one(doc)
        except DuplicateKeyError:
            earlier = await self._uses.find_one({"_id": code_hash})
            return CodeUse.from_doc(earlier) if earlier else CodeUse("exchanging", purpose, created_at=now)
        return None

    async def get(self, code_hash: str) -> CodeUse | None:
        doc = await self._uses.find_one({"_id": code_hash})
        return CodeUse.from_doc(doc) if doc else None

    async def for_scan(self, scan_hash: str, purpose: str) -> CodeUse | None:
        """The exchanged code the phone holding ``scan_hash`` sent with its scan for ``purpose``."""
        doc = await self._uses.find_one(_done_for_scan(scan_hash, purpose))
        return CodeUse.from_doc(doc) if doc else None

    async def attach_for_scan(
        self, scan_hash: str, purpose: str, user_id: str
    ) -> tuple[CodeUse | None, bool]:
        """:meth:`for_scan` and :meth:`attach_user` in one round trip where it can: the exchanged code of
        the phone holding ``scan_hash``, its login recorded for ``user_id``; the flag is True only the
        first time. A repeat (the user was attached already) costs a second read, as before; so does
        a scan this replica remembers whose code no longer matches (then the scan's filter decides)."""
        unattached = {**_done_for_scan(scan_hash, purpose), "user_id": {"$exists": False}}
        attach = {"$set": {"user_id": user_id, "done": True}}
        remembered = self._identified.get((scan_hash, purpose))
        if remembered is not None:
            doc = await self._uses.find_one_and_update({"_id": remembered[0], **unattached}, attach)
            if doc is not None:
                return CodeUse.from_doc(doc), True
        doc = await self._uses.find_one_and_update(unattached, attach)
        if doc is not None:
            return CodeUse.from_doc(doc), True
        return await self.for_scan(scan_hash, purpose), False

    async def identify(self, code_hash: str, scan_hash: str, purpose: str, user_id: str | None) -> None:
        """The code the phone holding ``scan_hash`` sent with its scan for ``purpose`` belongs to
        ``user_id``, who already has an account (None: to a new user): the confirm can confirm the
        scene for them first."""
        if user_id is not None:
            await self._uses.update_one({"_id": code_hash}, {"$set": {"identified_user_id": user_id}})
        self._remember(code_hash, scan_hash, purpose, user_id)

    def _remember(self, code_hash: str, scan_hash: str, purpose: str, user_id: str | None) -> None:
        """Keep what the scan showed; a new user (None) too, so that its confirm reads nothing."""
        self._identified[scan_hash, purpose] = (code_hash, user_id)
        if len(self._identified) > self._remembered:
            self._identified.popitem(last=False)

    async def identified_user(self, scan_hash: str, purpose: str) -> str | None:
        """The user :meth:`identify` recorded for the phone holding ``scan_hash`` (None: a new user, or
        a code that was not sent with the scan); from memory when this replica recorded it."""
        key = (scan_hash, purpose)
        if key in self._identified:
            return self._identified[key][1]
        use = await self.for_scan(scan_hash, purpose)
        return use.identified_user_id if use is not None else None

    async def succeed(
        self,
        code_hash: str,
        openid: str,
        unionid: str | None,
        sealed_session_key: str,
        *,
        identified: tuple[str, str, str | None] | None = None,
    ) -> None:
        """Store the exchange; ``identified`` (scan_hash, purpose, user id or None) as :meth:`identify`
        in the same write."""
        fields = {"status": "done", "openid": openid, "unionid": unionid, "session_key": sealed_session_key}
        if identified is not None and identified[2] is not None:
            fields["identified_user_id"] = identified[2]
        await self._uses.update_one({"_id": code_hash}, {"$set": fields})
        if identified is not None:
            self._remember(code_hash, *identified)

    async def fail(self, code_hash: str, errcode: int) -> None:
        await self._uses.update_one({"_id": code_hash}, {"$set": {"status": "failed", "errcode": errcode}})

    async def rebind(self, code_hash: str, *, from_purpose: str, purpose: str, scan_hash: str) -> bool:
        """Spend an exchanged code that was claimed for ``from_purpose`` on ``purpose`` instead, for the
        phone holding ``scan_hash`` (:meth:`for_scan` then finds it); False when it was not so claimed."""
        result = await self._uses.update_one(
            {"_id": code_hash, "purpose": from_purpose, "status": "done"},
            {"$set": {"purpose": purpose, "scan_hash": scan_hash}},
        )
        return bool(result.modified_count)

    async def release(self, code_hash: str) -> None:
        """Forget a claim whose exchange failed transiently, so a retry may exchange again."""
        await self._uses.delete_one({"_id": code_hash, "status": "exchanging"})

    async def attach_user(self, code_hash: str, user_id: str) -> bool:
        """Record that the code's login was counted for ``user_id`` and its purpose is complete (a
        scene is confirmed, or a mini-program login made); True only the first time."""
        result = await self._uses.update_one(
            {"_id": code_hash, "user_id": {"$exists": False}}, {"$set": {"user_id": user_id, "done": True}}
        )
        return result.modified_count == 1


def _done_for_scan(scan_hash: str, purpose: str) -> dict[str, Any]:
    """The filter of the exchanged code the phone holding ``scan_hash`` sent with its scan."""
    return {"scan_hash": scan_hash, "purpose": purpose, "status": "done"}


# --- session keys ---------------------------------------------------------------------------------


class MpSessionStore:
    """Session keys written by versions before the key moved onto the user document: read only.

    Until this release each user's latest session_key was kept here (``_id`` the user id). A key
    written here later than the one on the user (by a replica of the older version during a rolling
    upgrade) is the newer one; :meth:`SessionHandlers.decrypt` reads both and takes the newer.
    Nothing writes here any more; the collection and this store go one release later.
    """

    def __init__(self, db: Database) -> None:
        self._sessions = db[MP_SESSIONS]

    async def get(self, user_id: str) -> SessionKey | None:
        doc = await self._sessions.find_one({"_id": user_id})
        if doc is None or not doc.get("session_key"):
            return None
        return SessionKey(str(doc["session_key"]), float(doc.get("updated_at", 0.0)))


# --- refresh tokens -------------------------------------------------------------------------------

# How earlier versions stored a refresh token: the bare hex SHA-256 of it as ``_id``.
LEGACY_ID = r"^[0-9a-f]{64}$"


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """A refresh token as stored (its keyed hash only), in its family (one login, every rotation).

    ``rotated_at`` marks a spent token and ``successor`` names (by hash) the token it was rotated
    into. A family is revoked when any of its records is: revocation marks every record, and a
    record inserted concurrently is caught by the same "any revoked" check. ``session_started_at``
    is the family's login (its absolute lifetime counts from there); ``mac`` binds the id, family,
    user and lifetime with the server key (:func:`services.session.refresh.record_mac`).

    ``client_id`` is the client the family was issued to (None: the default client). An OpenID
    Connect grant also carries its ``scope`` and the ``auth_time`` of its login (None for the browser
    and mini-program API); both are under the MAC then, like the client.
    """

    token_hash: str
    family: str
    user_id: str
    created_at: float
    expires_at: float
    rotated_at: float | None = None
    successor: str | None = None
    revoked: bool = False
    session_started_at: float = 0.0
    mac: str = ""
    client_id: str | None = None
    scope: str | None = None
    auth_time: float | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> RefreshRecord:
        rotated_at = doc.get("rotated_at")
        return cls(
            token_hash=str(doc["_id"]),
            family=str(doc["family"]),
            user_id=str(doc["user_id"]),
            created_at=float(doc["created_at"]),
            expires_at=float(doc["expires_at"]),
            rotated_at=float(rotated_at) if rotated_at is not None else None,
            successor=doc.get("successor"),
            revoked=bool(doc.get("revoked", False)),
            session_started_at=float(doc.get("session_started_at", doc["created_at"])),
            mac=str(doc.get("mac", "")),
            client_id=doc.get("client_id"),
            scope=doc.get("scope"),
            auth_time=float(doc["auth_time"]) if doc.get("auth_time") is not None else None,
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.token_hash,
            "family": self.family,
            "user_id": self.user_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "rotated_at": self.rotated_at,
            "successor": self.successor,
            "revoked": self.revoked,
            "session_started_at": self.session_started_at,
            "mac": self.mac,
            "client_id": self.client_id,
            "scope": self.scope,
            "auth_time": self.auth_time,
            "purge_at": _date(self.expires_at),
        }


class RefreshTokenStore:
    """Refresh tokens by hash, grouped in families; every state change is one conditional update."""

    def __init__(self, db: Database) -> None:
        self._tokens = db[REFRESH_TOKENS]

    async def insert(self, record: RefreshRecord) -> bool:
        """Store a new token; False when it already exists (a concurrent twin inserted it)."""
        try:
            await self._tokens.insert_one(record.to_doc())
        except DuplicateKeyError:
            return False
        return True

    async def get(self, token_hash: str) -> RefreshRecord | None:
        doc = await self._tokens.find_one({"_id": token_hash})
        return RefreshRecord.from_doc(doc) if doc else None

    async def spend(self, token_hash: str, successor: str, now: float) -> bool:
        """Mark a live token spent, naming its successor; False when it was not live any more."""
        result = await self._tokens.update_one(
            {"_id": token_hash, "rotated_at": None, "revoked": False},
            {"$set": {"rotated_at": now, "successor": successor}},
        )
        return result.modified_count == 1

    async def family_revoked(self, family: str) -> bool:
        """True when any token of the family is revoked (so the whole family is)."""
        return await self._tokens.find_one({"family": family, "revoked": True}, {"_id": 1}) is not None

    async def family_owner(self, family: str) -> str | None:
        """The user a family belongs to (None when no token of it is stored)."""
        doc = await self._tokens.find_one({"family": family}, {"user_id": 1})
        return str(doc["user_id"]) if doc else None

    async def family_record(self, family: str) -> RefreshRecord | None:
        """A stored token of the family (its user, client and grant are the same on every one)."""
        doc = await self._tokens.find_one({"family": family})
        return RefreshRecord.from_doc(doc) if doc else None

    async def revoke_family(self, family: str, reason: str, now: float) -> int:
        """Revoke every token of the family; returns how many were live-flagged until now."""
        result = await self._tokens.update_many(
            {"family": family, "revoked": False},
            {"$set": {"revoked": True, "revoked_at": now, "revoked_reason": reason}},
        )
        return result.modified_count

    async def revoke_user(self, user_id: str, reason: str, now: float) -> int:
        """Revoke every token of every family of ``user_id`` (log out everywhere)."""
        result = await self._tokens.update_many(
            {"user_id": user_id, "revoked": False},
            {"$set": {"revoked": True, "revoked_at": now, "revoked_reason": reason}},
        )
        return result.modified_count

    async def count_legacy(self) -> int:
        """How many tokens an earlier version stored under a bare SHA-256 (never accepted as such)."""
        return await self._tokens.count_documents({"_id": {"$regex": LEGACY_ID}})

    async def migrate_legacy(
        self, rekey: Callable[[str], str], seal: Callable[[RefreshRecord], RefreshRecord]
    ) -> int:
        """Re-store every bare-SHA-256 record under ``rekey(id)`` (its successor too), sealed by
        ``seal`` (which adds the MAC); a family's start is its oldest record. Idempotent."""
        docs = [doc async for doc in self._tokens.find({"_id": {"$regex": LEGACY_ID}})]
        started: dict[str, float] = {}
        for doc in docs:
            started[doc["family"]] = min(started.get(doc["family"], doc["created_at"]), doc["created_at"])
        for doc in docs:
            old = RefreshRecord.from_doc(doc)
            successor = old.successor
            if successor is not None and re.fullmatch(LEGACY_ID, successor):
                successor = rekey(successor)
            record = seal(
                dataclasses.replace(
                    old,
                    token_hash=rekey(old.token_hash),
                    successor=successor,
                    session_started_at=float(started[old.family]),
                )
            )
            new_doc = record.to_doc()
            for extra in ("revoked_at", "revoked_reason"):
                if extra in doc:
                    new_doc[extra] = doc[extra]
            await self._tokens.replace_one({"_id": record.token_hash}, new_doc, upsert=True)
            await self._tokens.delete_one({"_id": old.token_hash})
        return len(docs)


# --- signing keys ---------------------------------------------------------------------------------

KEY_STATUSES = ("pending", "current", "previous", "retired")


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    """A signing key of ``alg`` (``EdDSA``: Ed25519, ``RS256``: RSA); the private half is sealed with
    the data key (and dropped at retirement). Records of earlier versions have no ``alg``: Ed25519.

    Lifecycle, per ``alg``: ``pending`` (being installed by a rotation) → ``current`` (published;
    signs from ``active_from``) → ``previous`` (published; signs only until the new current's
    ``active_from``, which is its ``demoted_at``) → ``retired`` (not published: its tokens fail).
    """

    kid: str
    status: str
    created_at: float
    sealed_private_key: str | None
    public_jwk: dict[str, Any]
    active_from: float = 0.0
    demoted_at: float | None = None
    retired_at: float | None = None
    alg: str = "EdDSA"

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SigningKeyRecord:
        demoted_at, retired_at = doc.get("demoted_at"), doc.get("retired_at")
        return cls(
            kid=str(doc["_id"]),
            status=str(doc["status"]),
            created_at=float(doc["created_at"]),
            sealed_private_key=doc.get("private_key"),
            public_jwk=dict(doc["public_jwk"]),
            active_from=float(doc.get("active_from", doc["created_at"])),
            demoted_at=float(demoted_at) if demoted_at is not None else None,
            retired_at=float(retired_at) if retired_at is not None else None,
            alg=str(doc.get("alg") or "EdDSA"),
        )

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "_id": self.kid,
            "status": self.status,
            "created_at": self.created_at,
            "active_from": self.active_from,
            "public_jwk": self.public_jwk,
            "alg": self.alg,
        }
        if self.status == "current":  # held only while current: one current key per alg (unique)
            doc["current_alg"] = self.alg
        if self.sealed_private_key is not None:
            doc["private_key"] = self.sealed_private_key
        return doc


class SigningKeyStore:
    """Signing keys; a partial unique index on ``current_alg`` keeps at most one ``current`` per alg."""

    def __init__(self, db: Database) -> None:
        self._keys = db[SIGNING_KEYS]

    async def upgrade(self) -> None:
        """Bring records and indexes of an earlier version (Ed25519 only) up to date; idempotent.

        Records without ``alg`` are Ed25519; the current one gets ``current_alg``; the earlier index
        that allowed one ``current`` key of any kind (``signing_keys_one_current``) is dropped, since an
        RSA key is current beside the Ed25519 one.
        """
        await self._keys.update_many({"alg": {"$exists": False}}, {"$set": {"alg": "EdDSA"}})
        async for doc in self._keys.find({"status": "current", "current_alg": {"$exists": False}}):
            try:
                await self._keys.update_one(
                    {"_id": doc["_id"], "status": "current"},
                    {"$set": {"current_alg": doc.get("alg") or "EdDSA"}},
                )
            except DuplicateKeyError:
                log.warning("signing_key_two_current", kid=doc["_id"])
        for name, spec in (await self._keys.index_information()).items():
            if [field for field, _ in spec.get("key", [])] == ["status"]:
                try:
                    await self._keys.drop_index(name)
                except OperationFailure:
                    pass  # another replica dropped it a moment ago
                else:
                    log.info("signing_keys_index_dropped", index=name)

    async def current(self, alg: str = "EdDSA") -> SigningKeyRecord | None:
        doc = await self._keys.find_one({"status": "current", "alg": alg})
        return SigningKeyRecord.from_doc(doc) if doc else None

    async def previous(self, alg: str = "EdDSA") -> SigningKeyRecord | None:
        doc = await self._keys.find_one({"status": "previous", "alg": alg})
        return SigningKeyRecord.from_doc(doc) if doc else None

    async def published(self) -> list[SigningKeyRecord]:
        """The keys whose public half verifies tokens: current and previous, of every alg."""
        cursor = self._keys.find({"status": {"$in": ["current", "previous"]}})
        return [SigningKeyRecord.from_doc(doc) async for doc in cursor]

    async def all(self) -> list[SigningKeyRecord]:
        """Every key, oldest first."""
        records = [SigningKeyRecord.from_doc(doc) async for doc in self._keys.find({})]
        return sorted(records, key=lambda r: r.created_at)

    async def insert_current(self, record: SigningKeyRecord) -> bool:
        """Insert ``record`` as the current key of its alg; False when another replica's key won."""
        try:
            await self._keys.insert_one(record.to_doc())
        except DuplicateKeyError:
            return False
        return True

    async def insert(self, record: SigningKeyRecord) -> None:
        """Insert a key in its stated status (rotation inserts ``pending`` keys)."""
        await self._keys.insert_one(record.to_doc())

    async def retire_previous(self, now: float, alg: str = "EdDSA") -> list[str]:
        """Retire every ``previous`` key of ``alg`` (its private half is deleted); returns their kids."""
        query = {"status": "previous", "alg": alg}
        kids = [str(doc["_id"]) async for doc in self._keys.find(query, {"_id": 1})]
        for kid in kids:
            await self._keys.update_one(
                {"_id": kid, "status": "previous"},
                {"$set": {"status": "retired", "retired_at": now}, "$unset": {"private_key": ""}},
            )
        return kids

    async def demote_current(self, kid: str, until: float) -> bool:
        """``current → previous`` for ``kid``, signing ``until`` its successor takes over."""
        result = await self._keys.update_one(
            {"_id": kid, "status": "current"},
            {"$set": {"status": "previous", "demoted_at": until}, "$unset": {"current_alg": ""}},
        )
        return result.modified_count == 1

    async def promote(self, kid: str, alg: str = "EdDSA") -> bool:
        """``pending → current``; False when another key of ``alg`` became current first."""
        try:
            result = await self._keys.update_one(
                {"_id": kid, "status": "pending"}, {"$set": {"status": "current", "current_alg": alg}}
            )
        except DuplicateKeyError:
            return False
        return result.modified_count == 1

    async def delete(self, kid: str) -> None:
        """Remove a key that never became current."""
        await self._keys.delete_one({"_id": kid, "status": "pending"})


# --- OpenID Connect: authorization codes and OP sessions ---------------------------------------------

# A spent or expired code is kept this long, so a reuse is recognised (and revokes what it issued).
CODE_KEEP_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class OidcCode:
    """An authorization code as stored: only its keyed hash (``code_id``), never the code.

    ``sid`` names the refresh family the exchange starts (known in advance, so a second use can
    revoke it); ``op_session`` the keyed id of the OP session it came from (the family is recorded
    there for logout). ``used_at`` is set by the one conditional update that spends it;
    ``reused_at`` by a second use, which the first exchange checks before it answers.
    """

    code_id: str
    client_id: str
    redirect_uri: str
    scope: str
    user_id: str
    sid: str
    auth_time: float
    created_at: float
    expires_at: float
    nonce: str | None = None
    code_challenge: str | None = None
    op_session: str | None = None
    used_at: float | None = None
    reused_at: float | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> OidcCode:
        used_at, reused_at = doc.get("used_at"), doc.get("reused_at")
        return cls(
            code_id=str(doc["_id"]),
            client_id=str(doc["client_id"]),
            redirect_uri=str(doc["redirect_uri"]),
            scope=str(doc["scope"]),
            user_id=str(doc["user_id"]),
            sid=str(doc["sid"]),
            auth_time=float(doc["auth_time"]),
            created_at=float(doc["created_at"]),
            expires_at=float(doc["expires_at"]),
            nonce=doc.get("nonce"),
            code_challenge=doc.get("code_challenge"),
            op_session=doc.get("op_session"),
            used_at=float(used_at) if used_at is not None else None,
            reused_at=float(reused_at) if reused_at is not None else None,
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.code_id,
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "user_id": self.user_id,
            "sid": self.sid,
            "auth_time": self.auth_time,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "nonce": self.nonce,
            "code_challenge": self.code_challenge,
            "op_session": self.op_session,
            "used_at": self.used_at,
            "reused_at": self.reused_at,
            "purge_at": _date(self.expires_at + CODE_KEEP_SECONDS),
        }


class OidcCodeStore:
    """Authorization codes by keyed hash; spending one is one conditional update."""

    def __init__(self, db: Database) -> None:
        self._codes = db[OIDC_CODES]

    async def insert(self, code: OidcCode) -> None:
        await self._codes.insert_one(code.to_doc())

    async def get(self, code_id: str) -> OidcCode | None:
        doc = await self._codes.find_one({"_id": code_id})
        return OidcCode.from_doc(doc) if doc else None

    async def spend(self, code_id: str, now: float) -> OidcCode | None:
        """Mark the code used; the code as it was, or None when it is unknown or was used already."""
        doc = await self._codes.find_one_and_update(
            {"_id": code_id, "used_at": None},
            {"$set": {"used_at": now}},
            return_document=ReturnDocument.BEFORE,
        )
        return OidcCode.from_doc(doc) if doc else None

    async def mark_reused(self, code_id: str, now: float) -> None:
        """Record that a used code came back (the exchange that spent it checks this before answering)."""
        await self._codes.update_one({"_id": code_id, "reused_at": None}, {"$set": {"reused_at": now}})


@dataclass(frozen=True, slots=True)
class OpSession:
    """The OP session of one browser (its cookie's keyed hash is ``op_id``): who logged in and when,
    and the refresh families (``grants``: client and ``sid``) issued from it, for logout."""

    op_id: str
    user_id: str
    auth_time: float
    created_at: float
    expires_at: float
    ended_at: float | None = None
    grants: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> OpSession:
        ended_at = doc.get("ended_at")
        return cls(
            op_id=str(doc["_id"]),
            user_id=str(doc["user_id"]),
            auth_time=float(doc["auth_time"]),
            created_at=float(doc["created_at"]),
            expires_at=float(doc["expires_at"]),
            ended_at=float(ended_at) if ended_at is not None else None,
            grants=tuple((str(g["client_id"]), str(g["sid"])) for g in doc.get("grants", [])),
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.op_id,
            "user_id": self.user_id,
            "auth_time": self.auth_time,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "ended_at": self.ended_at,
            "grants": [{"client_id": client_id, "sid": sid} for client_id, sid in self.grants],
            "purge_at": _date(self.expires_at),
        }

    def live(self, now: float) -> bool:
        """Not ended and not past its lifetime."""
        return self.ended_at is None and self.expires_at > now


class OpSessionStore:
    """OP sessions by the keyed hash of their cookie."""

    def __init__(self, db: Database) -> None:
        self._sessions = db[OP_SESSIONS]

    async def insert(self, session: OpSession) -> bool:
        """Store a new OP session; False when it exists (a retried scan login derives the same id)."""
        try:
            await self._sessions.insert_one(session.to_doc())
        except DuplicateKeyError:
            return False
        return True

    async def get(self, op_id: str) -> OpSession | None:
        doc = await self._sessions.find_one({"_id": op_id})
        return OpSession.from_doc(doc) if doc else None

    async def add_grant(self, op_id: str, client_id: str, sid: str) -> None:
        """Record a refresh family issued from the OP session."""
        await self._sessions.update_one(
            {"_id": op_id}, {"$addToSet": {"grants": {"client_id": client_id, "sid": sid}}}
        )

    async def end(self, op_id: str, now: float) -> OpSession | None:
        """End the OP session; the session as it was, or None when unknown or ended already."""
        doc = await self._sessions.find_one_and_update(
            {"_id": op_id, "ended_at": None},
            {"$set": {"ended_at": now}},
            return_document=ReturnDocument.BEFORE,
        )
        return OpSession.from_doc(doc) if doc else None

    async def by_sid(self, sid: str) -> OpSession | None:
        """The OP session that issued the refresh family ``sid``."""
        doc = await self._sessions.find_one({"grants.sid": sid})
        return OpSession.from_doc(doc) if doc else None

    async def live_of_user(self, user_id: str, now: float) -> list[OpSession]:
        """The OP sessions of ``user_id`` that have not ended."""
        cursor = self._sessions.find({"user_id": user_id, "ended_at": None})
        return [s for doc in [d async for d in cursor] if (s := OpSession.from_doc(doc)).live(now)]


# --- account linking ------------------------------------------------------------------------------

# How long a link request is kept after it can no longer be used, so its site can still ask about it.
LINK_REQUEST_KEEP_SECONDS = 86400.0


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """A site's request to link one of its accounts (``external_id``) to whoever scans its code.

    ``state``: ``open`` (its link token has shown no code yet, until ``expires_at``), ``issuing`` (a
    browser is getting a code with it right now), ``issued`` (a link scene shows it, bound to that
    browser's ticket), then ``linked`` or ``refused`` (``reason``). The link token is stored only as
    its keyed hash ``token_id``.
    """

    id: str
    token_id: str
    client_id: str
    external_id: str
    hint: str
    state: str
    created_at: float
    expires_at: float
    scene: str | None = None
    scene_expires_at: float | None = None
    user_id: str | None = None
    scan_hash: str | None = None
    reason: str | None = None
    decided_at: float | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> LinkRequest:
        def number(name: str) -> float | None:
            value = doc.get(name)
            return float(value) if value is not None else None

        return cls(
            id=str(doc["_id"]),
            token_id=str(doc["token_id"]),
            client_id=str(doc["client_id"]),
            external_id=str(doc["external_id"]),
            hint=str(doc["hint"]),
            state=str(doc["state"]),
            created_at=float(doc["created_at"]),
            expires_at=float(doc["expires_at"]),
            scene=doc.get("scene"),
            scene_expires_at=number("scene_expires_at"),
            user_id=doc.get("user_id"),
            scan_hash=doc.get("scan_hash"),
            reason=doc.get("reason"),
            decided_at=number("decided_at"),
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "token_id": self.token_id,
            "client_id": self.client_id,
            "external_id": self.external_id,
            "hint": self.hint,
            "state": self.state,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            # Kept a day past its last possible use (a scene outlives the request by at most its
            # lifetime and the redeem window, far less than a day).
            "purge_at": _date(self.expires_at + LINK_REQUEST_KEEP_SECONDS),
        }


class LinkRequestStore:
    """Link requests; every change of state is one conditional update."""

    def __init__(self, db: Database) -> None:
        self._requests = db[LINK_REQUESTS]

    async def insert(self, request: LinkRequest) -> None:
        await self._requests.insert_one(request.to_doc())

    async def get(self, request_id: str) -> LinkRequest | None:
        doc = await self._requests.find_one({"_id": request_id})
        return LinkRequest.from_doc(doc) if doc else None

    async def by_token(self, token_id: str) -> LinkRequest | None:
        doc = await self._requests.find_one({"token_id": token_id})
        return LinkRequest.from_doc(doc) if doc else None

    async def by_scene(self, scene: str) -> LinkRequest | None:
        doc = await self._requests.find_one({"scene": scene})
        return LinkRequest.from_doc(doc) if doc else None

    async def claim(self, token_id: str, now: float) -> LinkRequest | None:
        """Take an open, unexpired request for one browser (``open → issuing``); None when it is not."""
        doc = await self._requests.find_one_and_update(
            {"token_id": token_id, "state": "open", "expires_at": {"$gt": now}},
            {"$set": {"state": "issuing", "updated_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        return LinkRequest.from_doc(doc) if doc else None

    async def release(self, request_id: str, now: float) -> None:
        """Give a claim back (``issuing → open``): no code could be issued, a retry may use the token."""
        await self._requests.update_one(
            {"_id": request_id, "state": "issuing"}, {"$set": {"state": "open", "updated_at": now}}
        )

    async def issued(self, request_id: str, scene: str, scene_expires_at: float, now: float) -> bool:
        """Record the link scene that shows the request (``issuing → issued``)."""
        result = await self._requests.update_one(
            {"_id": request_id, "state": "issuing"},
            {
                "$set": {
                    "state": "issued",
                    "scene": scene,
                    "scene_expires_at": scene_expires_at,
                    "updated_at": now,
                }
            },
        )
        return result.modified_count == 1

    async def decide(
        self,
        request_id: str,
        *,
        state: str,
        now: float,
        scan_hash: str | None = None,
        user_id: str | None = None,
        reason: str | None = None,
    ) -> LinkRequest | None:
        """``issued → linked``, ``refused`` (with ``reason``) or ``expired``; the phone that decided it
        and its user. The request as decided, or None when it was decided already."""
        fields: dict[str, Any] = {"state": state, "decided_at": now, "updated_at": now}
        for name, value in (("scan_hash", scan_hash), ("user_id", user_id), ("reason", reason)):
            if value is not None:
                fields[name] = value
        doc = await self._requests.find_one_and_update(
            {"_id": request_id, "state": "issued"},
            {"$set": fields},
            return_document=ReturnDocument.AFTER,
        )
        return LinkRequest.from_doc(doc) if doc else None


@dataclass(frozen=True, slots=True)
class IdentityLink:
    """One WeChat user (``user_id``) linked to one account (``external_id``) of one client."""

    id: str
    client_id: str
    user_id: str
    external_id: str
    created_at: float
    link_request: str | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> IdentityLink:
        return cls(
            id=str(doc["_id"]),
            client_id=str(doc["client_id"]),
            user_id=str(doc["user_id"]),
            external_id=str(doc["external_id"]),
            created_at=float(doc["created_at"]),
            link_request=doc.get("link_request"),
        )

    def to_doc(self, *, exclusive: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "_id": self.id,
            "client_id": self.client_id,
            "user_id": self.user_id,
            "external_id": self.external_id,
            "created_at": self.created_at,
            "link_request": self.link_request,
        }
        if exclusive:  # the client allows one WeChat user per account: identity_links_account holds it
            doc["account_key"] = f"{self.client_id}|{self.external_id}"  # no "|" in a client id
        return doc


class IdentityLinkStore:
    """Links between the sites' accounts and WeChat users (no TTL: read on every token issued)."""

    def __init__(self, db: Database) -> None:
        self._links = db[IDENTITY_LINKS]

    async def of_user(self, client_id: str, user_id: str) -> IdentityLink | None:
        """The account of ``client_id`` that ``user_id`` is linked to, if any."""
        doc = await self._links.find_one({"client_id": client_id, "user_id": user_id})
        return IdentityLink.from_doc(doc) if doc else None

    async def of_account(self, client_id: str, external_id: str) -> list[IdentityLink]:
        """The WeChat users linked to the account ``external_id`` of ``client_id``."""
        cursor = self._links.find({"client_id": client_id, "external_id": external_id})
        return [IdentityLink.from_doc(doc) async for doc in cursor]

    async def insert(self, link: IdentityLink, *, exclusive: bool) -> bool:
        """Store ``link``; False when a unique index refused it (the user, or with ``exclusive`` the
        account, is linked already: read again to say which)."""
        try:
            await self._links.insert_one(link.to_doc(exclusive=exclusive))
        except DuplicateKeyError:
            return False
        return True

    async def delete(self, link_id: str) -> bool:
        """Remove one link; False when it was gone already."""
        result = await self._links.delete_one({"_id": link_id})
        return result.deleted_count == 1
