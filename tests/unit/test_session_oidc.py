"""The OpenID Connect handlers of the session service over hand-written fakes: codes (single use,
revoke on reuse, client, expiry, redirect URI, PKCE), OP sessions (silent logins, max_age, logout
with back-channel notices), the claims policy and revocation."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from pydantic import SecretStr

from services.session.claims import AMR, display_tag, granted_scope, user_claims
from services.session.errors import (
    ClientUnknown,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    LoginRequired,
    OidcInvalidRequest,
    SessionEnded,
)
from services.session.keys import Signer
from services.session.oidc import OidcHandlers, s256
from services.session.refresh import RefreshFamilies
from services.session.store import OidcCode, OpSession, User
from shared.clients import Client, ClientRegistry, hash_secret
from shared.messages import (
    AuthorizationRequest,
    Authorize,
    EndOpSession,
    ExchangeGrant,
    GetUserInfo,
    RedeemedScene,
    RedeemScene,
    RevokeToken,
    SessionRevoked,
)
from shared.sealing import Sealer, generate_key
from tests.support import ManualClock
from tests.unit.test_session_keys import DictKeys
from tests.unit.test_session_refresh import DictStore

NOW = 2_000_000_000.0
ISSUER = "https://login.example.com"
SCENE = "S" * 32
TICKET = "a" * 64
VERIFIER = "v" * 43 + "-._~"
SITE_A = Client(
    client_id="site-a",
    client_secret_hash=hash_secret("s" * 43),
    site_name="站点 A",
    redirect_uris=["https://a.example/cb"],
    backchannel_logout_uri="https://a.example/logout",
)
SITE_B = Client(
    client_id="site-b",
    site_name="站点 B",
    redirect_uris=["https://b.example/cb"],
    subject_type="pairwise",
    id_token_signed_response_alg="EdDSA",
    scopes=["openid", "profile"],
)

USER = User("u_1", "o" * 28, None, "+8613800138000", NOW, NOW, 1)


class DictCodes:
    """``OidcCodeStore`` semantics: ``spend`` is one conditional update."""

    def __init__(self) -> None:
        self.codes: dict[str, OidcCode] = {}

    async def insert(self, code: OidcCode) -> None:
        assert code.code_id not in self.codes
        self.codes[code.code_id] = code

    async def get(self, code_id: str) -> OidcCode | None:
        return self.codes.get(code_id)

    async def spend(self, code_id: str, now: float) -> OidcCode | None:
        code = self.codes.get(code_id)
        if code is None or code.used_at is not None:
            return None
        self.codes[code_id] = dataclasses.replace(code, used_at=now)
        return code

    async def mark_reused(self, code_id: str, now: float) -> None:
        self.codes[code_id] = dataclasses.replace(self.codes[code_id], reused_at=now)


class DictOpSessions:
    def __init__(self) -> None:
        self.sessions: dict[str, OpSession] = {}

    async def insert(self, session: OpSession) -> bool:
        if session.op_id in self.sessions:
            return False
        self.sessions[session.op_id] = session
        return True

    async def get(self, op_id: str) -> OpSession | None:
        return self.sessions.get(op_id)

    async def add_grant(self, op_id: str, client_id: str, sid: str) -> None:
        session = self.sessions[op_id]
        if (client_id, sid) not in session.grants:
            self.sessions[op_id] = dataclasses.replace(session, grants=(*session.grants, (client_id, sid)))

    async def end(self, op_id: str, now: float) -> OpSession | None:
        session = self.sessions.get(op_id)
        if session is None or session.ended_at is not None:
            return None
        self.sessions[op_id] = dataclasses.replace(session, ended_at=now)
        return session

    async def by_sid(self, sid: str) -> OpSession | None:
        return next((s for s in self.sessions.values() if any(g[1] == sid for g in s.grants)), None)

    async def live_of_user(self, user_id: str, now: float) -> list[OpSession]:
        return [s for s in self.sessions.values() if s.user_id == user_id and s.live(now)]


class DictUsers:
    def __init__(self, *users: User) -> None:
        self.users = {user.id: user for user in users}

    async def get(self, user_id: str) -> User | None:
        return self.users.get(user_id)


class Qrcode:
    """``qrcode.redeem``: the confirmed scene of the test, once per client check."""

    def __init__(self) -> None:
        self.calls: list[RedeemScene] = []

    async def call(self, request: Any, *, timeout: float | None = None) -> Any:
        assert isinstance(request, RedeemScene)
        self.calls.append(request)
        return RedeemedScene(
            scene=request.scene,
            user_id=USER.id,
            client_id=request.client_id,
            confirmed_at=datetime.fromtimestamp(NOW - 5, UTC),
        )


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def publish(self, event: Any) -> None:
        self.events.append(event)

    def revoked(self) -> list[tuple[str, str | None, str]]:
        return [(e.sid, e.client_id, e.reason) for e in self.events if isinstance(e, SessionRevoked)]


class RecordingLogout:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def notify(self, client: Client, user_id: str, sid: str) -> bool:
        self.sent.append((client.client_id, user_id, sid))
        return client.backchannel_logout_uri is not None


@dataclasses.dataclass
class World:
    handlers: OidcHandlers
    codes: DictCodes
    op_sessions: DictOpSessions
    refresh: DictStore
    families: RefreshFamilies
    signer: Signer
    logout: RecordingLogout
    clock: ManualClock
    qrcode: Qrcode
    publisher: RecordingPublisher


@pytest.fixture
async def world() -> World:
    clock = ManualClock(NOW)
    signer = Signer(
        DictKeys(),
        Sealer.from_text(generate_key()),
        issuer="wxlogin",
        audience="wxlogin-site",
        ttl=900,
        clock=clock,
    )
    await signer.load()
    refresh = DictStore()
    families = RefreshFamilies(refresh, os.urandom(32), ttl=30 * 86400.0, grace=10.0, clock=clock)
    codes, op_sessions, logout, qrcode = DictCodes(), DictOpSessions(), RecordingLogout(), Qrcode()
    publisher = RecordingPublisher()
    registry = ClientRegistry(Client(client_id="wxlogin-site", site_name="默认站点"), [SITE_A, SITE_B])
    handlers = OidcHandlers(
        registry,
        DictUsers(USER),
        codes,
        op_sessions,
        families,
        signer,
        qrcode,
        logout,
        publisher=publisher,
        issuer=ISSUER,
        keys=[os.urandom(32)],
        subject_key=bytes(range(32)),
        op_session_ttl=30 * 86400.0,
        clock=clock,
    )
    return World(handlers, codes, op_sessions, refresh, families, signer, logout, clock, qrcode, publisher)


def ask(client: Client = SITE_A, **fields: Any) -> AuthorizationRequest:
    values: dict[str, Any] = {
        "client_id": client.client_id,
        "redirect_uri": client.redirect_uris[0],
        "scope": "openid profile phone" if client is SITE_A else "openid profile",
        "nonce": "n-0S6_WzA2Mj",
        "code_challenge": s256(VERIFIER),
        "code_challenge_method": "S256",
    }
    values.update(fields)
    return AuthorizationRequest(**values)


async def scan_login(
    world: World, client: Client = SITE_A, *, ticket: str = TICKET, **fields: Any
) -> tuple[str, str]:
    """``session.authorize`` after a scan; (code, OP session cookie)."""
    done = await world.handlers.authorize(
        Authorize(request=ask(client, **fields), scene=SCENE, ticket_hash=ticket)
    )
    assert done.op_session is not None
    return done.code.get_secret_value(), done.op_session.get_secret_value()


def exchange(client: Client = SITE_A, code: str = "", **fields: Any) -> ExchangeGrant:
    values: dict[str, Any] = {
        "client_id": client.client_id,
        "grant_type": "authorization_code",
        "code": SecretStr(code),
        "redirect_uri": client.redirect_uris[0],
        "code_verifier": SecretStr(VERIFIER),
    }
    values.update(fields)
    return ExchangeGrant(**values)


def id_claims(world: World, token: str) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    jwk = next(k for k in world.signer.jwks() if k["kid"] == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=[header["alg"]],
        issuer=ISSUER,
        options={"verify_aud": False, "verify_exp": False, "verify_iat": False},
    )
    return claims


# --- codes -----------------------------------------------------------------------------------------


async def test_a_scan_login_gives_a_code_that_exchanges_once_for_verifiable_tokens(world: World) -> None:
    code, cookie = await scan_login(world)
    assert world.qrcode.calls[0].client_id == "site-a"  # the scene is redeemed for this client only
    (stored,) = world.codes.codes.values()
    assert code not in str(stored) and stored.auth_time == NOW - 5 and stored.expires_at == NOW + 60

    tokens = await world.handlers.token(exchange(code=code))
    assert tokens.scope == "openid profile phone" and tokens.expires_in == 900
    assert tokens.id_token is not None and tokens.refresh_token is not None
    header = jwt.get_unverified_header(tokens.id_token.get_secret_value())
    assert header["alg"] == "RS256" and header["typ"] == "JWT"
    claims = id_claims(world, tokens.id_token.get_secret_value())
    assert claims["aud"] == "site-a" and claims["azp"] == "site-a" and claims["sub"] == USER.id
    assert claims["nonce"] == "n-0S6_WzA2Mj" and claims["auth_time"] == int(NOW - 5)
    assert claims["amr"] == AMR and claims["sid"] == stored.sid
    assert claims["phone_number"] == USER.phone and claims["phone_number_verified"] is True
    assert claims["preferred_username"].startswith("wx_") and "openid" not in claims
    access = world.signer.access_claims(tokens.access_token.get_secret_value())
    assert access is not None
    assert (access["aud"], access["client_id"], access["scope"], access["sid"], access["iss"]) == (
        "site-a",
        "site-a",
        "openid profile phone",
        stored.sid,
        ISSUER,
    )
    assert jwt.get_unverified_header(tokens.access_token.get_secret_value())["typ"] == "at+jwt"
    # the OP session records the family, for logout
    (session,) = world.op_sessions.sessions.values()
    assert session.grants == (("site-a", stored.sid),) and cookie not in session.op_id


async def test_a_reused_code_is_refused_and_revokes_what_it_issued(world: World) -> None:
    code, _ = await scan_login(world)
    first = await world.handlers.token(exchange(code=code))
    assert first.refresh_token is not None
    with pytest.raises(InvalidGrant, match="used already"):
        await world.handlers.token(exchange(code=code))
    sid = next(iter(world.codes.codes.values())).sid
    assert await world.families.live_family(sid) is None
    assert world.publisher.revoked() == [(sid, "site-a", "code_reuse")]  # the site's webhooks are told
    with pytest.raises(InvalidGrant):  # its refresh token is dead too
        await world.handlers.token(
            ExchangeGrant(client_id="site-a", grant_type="refresh_token", refresh_token=first.refresh_token)
        )


async def test_a_reuse_that_races_the_first_exchange_still_revokes_its_family(world: World) -> None:
    code, _ = await scan_login(world)
    code_id = world.handlers.code_id(code)
    spend = world.codes.spend

    async def spend_then_reuse(code_id_: str, now: float) -> OidcCode | None:
        world.codes.spend = spend  # type: ignore[method-assign]
        spent = await spend(code_id_, now)
        with pytest.raises(InvalidGrant):  # the second use arrives before the first one answered
            await world.handlers.token(exchange(code=code))
        return spent

    world.codes.spend = spend_then_reuse  # type: ignore[method-assign]
    with pytest.raises(InvalidGrant, match="twice"):
        await world.handlers.token(exchange(code=code))
    assert await world.families.live_family(world.codes.codes[code_id].sid) is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"redirect_uri": "https://a.example/other"}, "redirect_uri"),
        ({"code_verifier": SecretStr("w" * 43)}, "does not match"),
        ({"code_verifier": None}, "required"),
        ({"code_verifier": SecretStr("short")}, "43 to 128"),
    ],
)
async def test_a_code_exchange_with_a_wrong_detail_is_invalid_grant(
    world: World, change: dict[str, Any], match: str
) -> None:
    code, _ = await scan_login(world)
    with pytest.raises(InvalidGrant, match=match):
        await world.handlers.token(exchange(code=code, **change))
    with pytest.raises(InvalidGrant, match="unknown"):
        await world.handlers.token(exchange(code="not-a-code"))


async def test_a_code_is_refused_to_another_client_and_after_its_minute(world: World) -> None:
    code, _ = await scan_login(world)
    with pytest.raises(InvalidGrant, match="another client"):
        await world.handlers.token(exchange(SITE_B, code=code))
    late, _ = await scan_login(world)
    world.clock.now += 61
    with pytest.raises(InvalidGrant, match="expired"):
        await world.handlers.token(exchange(code=late))
    with pytest.raises(InvalidClient):
        await world.handlers.token(exchange(code=late, client_id="nobody-registered"))


async def test_a_verifier_without_a_challenge_is_refused(world: World) -> None:
    code, _ = await scan_login(world, code_challenge=None, code_challenge_method=None)
    with pytest.raises(InvalidGrant, match="no code_challenge"):
        await world.handlers.token(exchange(code=code))


@pytest.mark.parametrize(
    ("client", "fields", "error"),
    [
        (SITE_B, {"code_challenge": None, "code_challenge_method": None}, OidcInvalidRequest),  # public: PKCE
        (SITE_A, {"code_challenge_method": None}, OidcInvalidRequest),  # "plain" by default
        (SITE_A, {"redirect_uri": "https://a.example/cb/../evil"}, OidcInvalidRequest),
        (SITE_A, {"scope": "profile"}, InvalidScope),
        (SITE_B, {"scope": "openid phone"}, InvalidScope),  # not among site-b's scopes
        (SITE_A, {"client_id": "unknown-site"}, ClientUnknown),
    ],
)
async def test_authorization_requests_the_client_does_not_allow_get_no_code(
    world: World, client: Client, fields: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await scan_login(world, client, **fields)
    assert world.codes.codes == {} and world.qrcode.calls == []


# --- OP sessions -------------------------------------------------------------------------------------


async def test_the_op_session_logs_a_second_client_in_silently_until_max_age(world: World) -> None:
    _, cookie = await scan_login(world)
    silent = await world.handlers.authorize(Authorize(request=ask(SITE_B), op_session=SecretStr(cookie)))
    assert silent.op_session is None and silent.auth_time.timestamp() == NOW - 5
    tokens = await world.handlers.token(exchange(SITE_B, code=silent.code.get_secret_value()))
    assert tokens.id_token is not None
    assert jwt.get_unverified_header(tokens.id_token.get_secret_value())["alg"] == "EdDSA"
    claims = id_claims(world, tokens.id_token.get_secret_value())
    assert claims["sub"].startswith("p_") and claims["auth_time"] == int(NOW - 5)
    assert "phone_number" not in claims

    world.clock.now += 100
    with pytest.raises(LoginRequired, match="max_age"):
        await world.handlers.authorize(
            Authorize(request=ask(SITE_B), op_session=SecretStr(cookie), max_age=60)
        )
    assert await world.handlers.authorize(
        Authorize(request=ask(SITE_B), op_session=SecretStr(cookie), max_age=600)
    )
    with pytest.raises(LoginRequired):
        await world.handlers.authorize(Authorize(request=ask(SITE_B), op_session=SecretStr("unknown-cookie")))
    with pytest.raises(OidcInvalidRequest):  # neither a scan nor a session
        await world.handlers.authorize(Authorize(request=ask(SITE_B)))


async def test_a_retried_scan_completion_gets_the_same_op_session(world: World) -> None:
    first = await scan_login(world)
    second = await scan_login(world)
    assert first[1] == second[1] and first[0] != second[0]
    assert len(world.op_sessions.sessions) == 1


async def test_logout_ends_the_op_session_revokes_its_families_and_tells_the_clients(world: World) -> None:
    code_a, cookie = await scan_login(world)
    tokens_a = await world.handlers.token(exchange(code=code_a))
    silent = await world.handlers.authorize(Authorize(request=ask(SITE_B), op_session=SecretStr(cookie)))
    tokens_b = await world.handlers.token(exchange(SITE_B, code=silent.code.get_secret_value()))
    sids = {
        id_claims(world, t.id_token.get_secret_value())["sid"] for t in (tokens_a, tokens_b) if t.id_token
    }

    (session,) = world.op_sessions.sessions.values()
    assert {sid for _, sid in session.grants} == sids and len(sids) == 2
    ended = await world.handlers.end_session(EndOpSession(op_session=SecretStr(cookie)))
    assert ended.ended
    assert {(client, sid) for client, _, sid in world.logout.sent} == set(session.grants)
    assert sorted(world.publisher.revoked()) == sorted(
        (sid, client, "logout") for client, sid in session.grants
    )
    assert [await world.families.live_family(sid) for sid in sids] == [None, None]
    with pytest.raises(LoginRequired):
        await world.handlers.authorize(Authorize(request=ask(SITE_B), op_session=SecretStr(cookie)))
    assert not (await world.handlers.end_session(EndOpSession(op_session=SecretStr(cookie)))).ended


async def test_an_id_token_hint_ends_the_op_session_of_its_sid_only_for_its_client(world: World) -> None:
    code, _ = await scan_login(world)
    tokens = await world.handlers.token(exchange(code=code))
    assert tokens.id_token is not None
    sid = id_claims(world, tokens.id_token.get_secret_value())["sid"]
    assert not (await world.handlers.end_session(EndOpSession(sid=sid, client_id="site-b"))).ended
    assert (await world.handlers.end_session(EndOpSession(sid=sid, client_id="site-a"))).ended
    assert world.logout.sent == [("site-a", USER.id, sid)]


async def test_logging_out_everywhere_ends_every_op_session_of_the_user(world: World) -> None:
    for ticket in ("b" * 64, "c" * 64):  # two browsers, two OP sessions
        code, _ = await scan_login(world, ticket=ticket)
        await world.handlers.token(exchange(code=code))
    assert await world.handlers.end_user_sessions(USER.id) == 2
    assert len(world.logout.sent) == 2
    assert world.publisher.revoked() == []  # announced once, by the session.logout that asked
    assert all(not s.live(world.clock()) for s in world.op_sessions.sessions.values())


# --- refresh, userinfo, revocation ---------------------------------------------------------------------


async def test_refresh_rotates_for_its_client_only_and_may_narrow_the_scope(world: World) -> None:
    code, _ = await scan_login(world)
    tokens = await world.handlers.token(exchange(code=code))
    assert tokens.refresh_token is not None
    token = tokens.refresh_token
    with pytest.raises(InvalidGrant, match="another client"):
        await world.handlers.token(
            ExchangeGrant(client_id="site-b", grant_type="refresh_token", refresh_token=token)
        )
    with pytest.raises(InvalidScope):
        await world.handlers.token(
            ExchangeGrant(
                client_id="site-a", grant_type="refresh_token", refresh_token=token, scope="openid email"
            )
        )
    refreshed = await world.handlers.token(
        ExchangeGrant(client_id="site-a", grant_type="refresh_token", refresh_token=token, scope="openid")
    )
    assert refreshed.scope == "openid" and refreshed.id_token is not None
    claims = id_claims(world, refreshed.id_token.get_secret_value())
    assert (
        "nonce" not in claims and claims["auth_time"] == int(NOW - 5) and "preferred_username" not in claims
    )


async def test_userinfo_answers_the_scoped_claims_of_a_live_session_of_its_client(world: World) -> None:
    code, _ = await scan_login(world)
    tokens = await world.handlers.token(exchange(code=code))
    access = world.signer.access_claims(tokens.access_token.get_secret_value())
    assert access is not None
    info = await world.handlers.userinfo(
        GetUserInfo(client_id="site-a", sid=access["sid"], scope="openid phone")
    )
    assert info.claims == {"sub": USER.id, "phone_number": USER.phone, "phone_number_verified": True}
    assert next(iter(info.claims)) == "sub"
    with pytest.raises(SessionEnded):
        await world.handlers.userinfo(GetUserInfo(client_id="site-b", sid=access["sid"], scope="openid"))
    assert (await world.handlers.revoke(RevokeToken(client_id="site-a", token=tokens.access_token))).revoked
    with pytest.raises(SessionEnded):
        await world.handlers.userinfo(GetUserInfo(client_id="site-a", sid=access["sid"], scope="openid"))


async def test_revocation_only_touches_the_callers_own_tokens(world: World) -> None:
    code, _ = await scan_login(world)
    tokens = await world.handlers.token(exchange(code=code))
    assert tokens.refresh_token is not None
    other = RevokeToken(client_id="site-b", token=tokens.refresh_token, token_type_hint="refresh_token")
    assert not (await world.handlers.revoke(other)).revoked
    assert not (
        await world.handlers.revoke(RevokeToken(client_id="site-a", token=SecretStr("garbage")))
    ).revoked
    assert (await world.handlers.revoke(RevokeToken(client_id="site-a", token=tokens.refresh_token))).revoked
    with pytest.raises(InvalidGrant):
        await world.handlers.token(
            ExchangeGrant(client_id="site-a", grant_type="refresh_token", refresh_token=tokens.refresh_token)
        )


# --- the claims policy ----------------------------------------------------------------------------------


def test_pairwise_subjects_and_usernames_are_per_client_and_stable() -> None:
    key = bytes(range(32))
    pairwise_c = SITE_B.model_copy(update={"client_id": "site-c"})
    b, b_again, c = (user_claims(cl, USER, ["openid", "profile"], key) for cl in (SITE_B, SITE_B, pairwise_c))
    assert b == b_again and b["sub"] != c["sub"] and b["preferred_username"] != c["preferred_username"]
    public = user_claims(SITE_A, USER, ["openid", "profile"], key)
    assert public["sub"] == USER.id
    tag = display_tag(public["preferred_username"])
    assert public["given_name"] == tag and len(tag) == 4 and tag == tag.upper()
    assert public["family_name"] == "微信用户" and public["name"] == f"微信用户 {tag}"
    # no number, no phone claims; no scope, nothing but sub
    nobody = dataclasses.replace(USER, phone=None)
    assert user_claims(SITE_A, nobody, ["openid", "phone"], key) == {"sub": USER.id}


def test_scopes_must_include_openid_and_stay_within_the_client() -> None:
    assert granted_scope("openid profile openid", SITE_A) == "openid profile"
    with pytest.raises(InvalidScope):
        granted_scope("openid email", SITE_A)
    with pytest.raises(InvalidScope):
        granted_scope("openid phone", SITE_B)
