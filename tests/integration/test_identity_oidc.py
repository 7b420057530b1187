"""OpenID Connect at the bus level, with registered clients: a login belongs to the site that started
it, the session service's five OIDC RPCs (authorize after a scan or silently, token, refresh,
userinfo, end_session with back-channel logout, revoke), a reused code revoking its family, pairwise
subjects, and the RSA key rotating like the Ed25519 one.

Four services, the WeChat simulator over real HTTP, nx-27017; the whole flow runs over RabbitMQ and
the in-memory bus, the rest over the in-memory bus. The gateway's bus is the caller (it is the only
one the session service accepts); the gateway's HTTP side of OIDC is tests/integration/test_oidc_rp.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from pydantic import SecretStr

from services.session.keys import rotate_keys
from services.session.oidc import s256
from services.session.store import SigningKeyStore
from shared.bus import Bus
from shared.clients import hash_secret
from shared.errors import RemoteError
from shared.messages import (
    AuthorizationRequest,
    Authorize,
    Authorized,
    CompleteLogin,
    EndOpSession,
    ExchangeGrant,
    GetUserInfo,
    LoginConfirmed,
    OidcTokens,
    RevokeToken,
    SessionRevoked,
)
from shared.mongo import EmbeddedMongo, free_port
from shared.runtime import BUS
from shared.sealing import Sealer
from sim.phone import Phone
from tests.integration.identity_stack import IdentityStack, identity_stack
from tests.support import eventually

VERIFIER = "correct-horse-battery-staple-0123456789-abcdefgh"
ORIGIN_A, ORIGIN_B, ORIGIN_C = "http://127.0.0.1:18081", "http://127.0.0.1:18082", "http://127.0.0.1:18083"
SITE_NAMES = {"site-a": "甲站", "site-b": "乙站", "site-c": "丙站"}


@dataclass
class Receiver:
    """A site's back-channel logout endpoint: records each ``logout_token`` it is sent."""

    port: int
    tokens: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/backchannel"

    async def start(self) -> None:
        async def receive(request: web.Request) -> web.Response:
            form = await request.post()
            self.tokens.append(str(form["logout_token"]))
            return web.Response(status=200, headers={"Cache-Control": "no-store"})

        app = web.Application()
        app.router.add_post("/backchannel", receive)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def clients_file(path: Path, receiver: Receiver) -> Path:
    """site-a: confidential, public subjects, RS256, back-channel logout; site-b and site-c: public
    (PKCE) pairwise clients, site-b with EdDSA ID tokens."""
    clients = [
        {
            "client_id": "site-a",
            "client_secret_hash": hash_secret("a" * 43),
            "site_name": SITE_NAMES["site-a"],
            "redirect_uris": ["http://127.0.0.1:9/a/callback"],
            "web_origins": [ORIGIN_A],
            "backchannel_logout_uri": receiver.uri,
        },
        {
            "client_id": "site-b",
            "site_name": SITE_NAMES["site-b"],
            "redirect_uris": ["http://127.0.0.1:9/b/callback"],
            "web_origins": [ORIGIN_B],
            "subject_type": "pairwise",
            "id_token_signed_response_alg": "EdDSA",
        },
        {
            "client_id": "site-c",
            "site_name": SITE_NAMES["site-c"],
            "redirect_uris": ["http://127.0.0.1:9/c/callback"],
            "web_origins": [ORIGIN_C],
            "subject_type": "pairwise",
        },
    ]
    path.write_text(json.dumps({"clients": clients}, ensure_ascii=False), encoding="utf-8")  # YAML ⊃ JSON
    return path


@dataclass
class Oidc:
    stack: IdentityStack
    receiver: Receiver

    @property
    def bus(self) -> Bus:
        return self.stack.system.apps["gateway"][BUS]

    async def scan_login(self, phone: Phone, client_id: str, origin: str) -> tuple[str, str]:
        """A browser of ``client_id`` asks for a code, the phone scans (seeing that site's name) and
        confirms; (scene, ticket hash)."""
        url = f"{self.stack.gateway}/api/login/qrcode"
        async with self.stack.http.post(
            url, json={"client_id": client_id}, headers={"Origin": origin}
        ) as resp:
            issued = await resp.json()
            assert resp.status == 201, issued
        scanned = await phone.scan(issued["scene"])
        assert scanned["site"] == SITE_NAMES[client_id]
        await phone.confirm(issued["scene"])
        return issued["scene"], hashlib.sha256(issued["ticket"].encode()).hexdigest()

    def ask(self, client_id: str, **fields: Any) -> AuthorizationRequest:
        values: dict[str, Any] = {
            "client_id": client_id,
            "redirect_uri": f"http://127.0.0.1:9/{client_id[-1]}/callback",
            "scope": "openid profile" if client_id != "site-a" else "openid profile phone",
            "nonce": f"nonce-{client_id}",
            "code_challenge": s256(VERIFIER),
            "code_challenge_method": "S256",
        }
        values.update(fields)
        return AuthorizationRequest(**values)

    async def exchange(self, client: str, code: SecretStr, **fields: Any) -> OidcTokens:
        request: dict[str, Any] = {
            "client_id": client,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": f"http://127.0.0.1:9/{client[-1]}/callback",
            "code_verifier": SecretStr(VERIFIER),
        }
        request.update(fields)
        tokens: OidcTokens = await self.bus.call(ExchangeGrant(**request))
        return tokens

    async def login(self, phone: Phone, client_id: str, origin: str) -> tuple[Authorized, OidcTokens]:
        scene, ticket_hash = await self.scan_login(phone, client_id, origin)
        authorized: Authorized = await self.bus.call(
            Authorize(request=self.ask(client_id), scene=scene, ticket_hash=ticket_hash)
        )
        return authorized, await self.exchange(client_id, authorized.code)

    async def verify(self, token: SecretStr | str | None, audience: str) -> dict[str, Any]:
        """Verify a JWT as a relying party does: with the published JWKS (RS256 or EdDSA)."""
        assert token is not None
        text = token.get_secret_value() if isinstance(token, SecretStr) else token
        status, document = await self.stack.request("GET", "/.well-known/jwks.json")
        assert status == 200
        header = jwt.get_unverified_header(text)
        jwk = next(k for k in document["keys"] if k["kid"] == header["kid"])
        assert jwk["alg"] == header["alg"]
        claims: dict[str, Any] = jwt.decode(
            text,
            jwt.PyJWK(jwk).key,
            algorithms=[header["alg"]],
            audience=audience,
            issuer=self.stack.settings.issuer,
        )
        return claims


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = Receiver(free_port())
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def _oidc(bus: str, mongo: EmbeddedMongo, amqp: str, unique: str, tmp: Path, rx: Receiver) -> Any:
    return identity_stack(bus, mongo, amqp, unique, clients_file=str(clients_file(tmp / "clients.yaml", rx)))


@pytest.fixture(params=["amqp", "memory"])
async def both(
    request: pytest.FixtureRequest,
    mongo_server: EmbeddedMongo,
    amqp_base_url: str,
    unique: str,
    tmp_path: Path,
    receiver: Receiver,
) -> AsyncIterator[Oidc]:
    async with await _oidc(request.param, mongo_server, amqp_base_url, unique, tmp_path, receiver) as stack:
        yield Oidc(stack, receiver)


@pytest.fixture
async def mem(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str, tmp_path: Path, receiver: Receiver
) -> AsyncIterator[Oidc]:
    async with await _oidc("memory", mongo_server, amqp_base_url, unique, tmp_path, receiver) as stack:
        yield Oidc(stack, receiver)


# --- client binding ------------------------------------------------------------------------------------


async def test_a_login_belongs_to_the_site_that_started_it(mem: Oidc) -> None:
    phone = Phone(mem.stack.http, mem.stack.gateway, mem.stack.sim.url)
    await phone.register()
    scene, ticket_hash = await mem.scan_login(phone, "site-a", ORIGIN_A)  # the phone saw 甲站

    for other in ("site-b", None):  # another site, or the default client
        with pytest.raises(RemoteError) as refused:
            await mem.bus.call(CompleteLogin(scene=scene, ticket_hash=ticket_hash, client_id=other))
        assert refused.value.error_code == "client_mismatch"
    with pytest.raises(RemoteError) as refused:
        await mem.bus.call(Authorize(request=mem.ask("site-b"), scene=scene, ticket_hash=ticket_hash))
    assert refused.value.error_code == "client_mismatch"

    pair = await mem.bus.call(CompleteLogin(scene=scene, ticket_hash=ticket_hash, client_id="site-a"))
    claims = jwt.decode(pair.access_token.get_secret_value(), options={"verify_signature": False})
    assert claims["aud"] == "site-a"
    assert mem.stack.broker is not None
    await mem.stack.broker.drain()
    announced = [json.loads(d.body) for _, d in mem.stack.broker.published if d.type == LoginConfirmed.TYPE]
    assert [(e["scene"], e["client_id"]) for e in announced] == [(scene, "site-a")]

    # each site's name on the phone; the default client's is WXLOGIN_SITE_NAME
    _, _ = await mem.scan_login(phone, "site-b", ORIGIN_B)
    async with mem.stack.http.post(f"{mem.stack.gateway}/api/login/qrcode") as resp:
        default_scene = (await resp.json())["scene"]
    assert (await phone.scan(default_scene))["site"] == mem.stack.settings.site_name


# --- the whole OpenID Connect flow ---------------------------------------------------------------------


async def test_authorize_token_refresh_userinfo_logout_and_revoke_over_the_bus(both: Oidc) -> None:
    mp = await both.stack.phone().register(phone="13800138000")
    await mp.login()
    assert (await mp.bind_phone())[0] == 200  # in the mini-program: the number is bound, verified
    phone = mp.phone
    authorized, tokens = await both.login(phone, "site-a", ORIGIN_A)
    assert authorized.op_session is not None

    id_a = await both.verify(tokens.id_token, "site-a")
    assert jwt.get_unverified_header(tokens.id_token.get_secret_value())["alg"] == "RS256"  # type: ignore[union-attr]
    assert id_a["nonce"] == "nonce-site-a" and id_a["azp"] == "site-a" and id_a["amr"] == ["wx_scan"]
    assert abs(id_a["auth_time"] - authorized.auth_time.timestamp()) < 1 and id_a["sub"].startswith("u_")
    assert id_a["preferred_username"].startswith("wx_") and id_a["family_name"] == "微信用户"
    access = jwt.decode(tokens.access_token.get_secret_value(), options={"verify_signature": False})
    assert (access["aud"], access["client_id"], access["sid"]) == ("site-a", "site-a", id_a["sid"])
    assert access["sub"] == id_a["sub"] and tokens.scope == "openid profile phone"

    # the gateway, the resource server, accepts the access token (its KeySet knows every client)
    status, me = await both.stack.request("GET", "/api/me", token=tokens.access_token.get_secret_value())
    assert status == 200 and me["id"] == id_a["sub"]

    refreshed = await both.bus.call(
        ExchangeGrant(client_id="site-a", grant_type="refresh_token", refresh_token=tokens.refresh_token)
    )
    again = await both.verify(refreshed.id_token, "site-a")
    assert again["sid"] == id_a["sid"] and again["auth_time"] == id_a["auth_time"] and "nonce" not in again
    with pytest.raises(RemoteError) as spent:  # rotated: the old refresh token is spent
        await both.bus.call(
            ExchangeGrant(
                client_id="site-b", grant_type="refresh_token", refresh_token=refreshed.refresh_token
            )
        )
    assert spent.value.error_code == "invalid_grant"

    info = await both.bus.call(GetUserInfo(client_id="site-a", sid=id_a["sid"], scope="openid profile phone"))
    assert info.claims["sub"] == id_a["sub"] and info.claims["phone_number"] == "+8613800138000"
    assert info.claims["phone_number_verified"] is True
    assert {k: info.claims[k] for k in ("preferred_username", "name")} == {
        k: id_a[k] for k in ("preferred_username", "name")
    }

    # a second site logs in silently from the OP session
    silent = await both.bus.call(Authorize(request=both.ask("site-b"), op_session=authorized.op_session))
    assert silent.op_session is None
    tokens_b = await both.exchange("site-b", silent.code)
    id_b = await both.verify(tokens_b.id_token, "site-b")
    assert id_b["sub"] != id_a["sub"] and id_b["sub"].startswith("p_")  # pairwise
    assert jwt.get_unverified_header(tokens_b.id_token.get_secret_value())["alg"] == "EdDSA"  # type: ignore[union-attr]

    # RP-initiated logout: the OP session ends, both families are revoked, site-a is told
    ended = await both.bus.call(EndOpSession(op_session=authorized.op_session))
    assert ended.ended
    (logout_token,) = await eventually(lambda: both.receiver.tokens, timeout=5)
    assert jwt.get_unverified_header(logout_token)["typ"] == "logout+jwt"
    logout = await both.verify(logout_token, "site-a")
    assert logout["sid"] == id_a["sid"] and logout["sub"] == id_a["sub"] and "nonce" not in logout
    assert logout["events"] == {"http://schemas.openid.net/event/backchannel-logout": {}}
    for client_id, sid in (("site-a", id_a["sid"]), ("site-b", id_b["sid"])):
        with pytest.raises(RemoteError) as gone:
            await both.bus.call(GetUserInfo(client_id=client_id, sid=sid, scope="openid"))
        assert gone.value.error_code == "session_ended"
    with pytest.raises(RemoteError) as required:
        await both.bus.call(Authorize(request=both.ask("site-b"), op_session=authorized.op_session))
    assert required.value.error_code == "login_required"

    # revocation: only the client's own tokens
    _, tokens_c = await both.login(phone, "site-c", ORIGIN_C)
    assert tokens_c.refresh_token is not None
    wrong = await both.bus.call(RevokeToken(client_id="site-a", token=tokens_c.refresh_token))
    right = await both.bus.call(RevokeToken(client_id="site-c", token=tokens_c.refresh_token))
    assert (wrong.revoked, right.revoked) == (False, True)
    with pytest.raises(RemoteError) as revoked:
        await both.bus.call(
            ExchangeGrant(
                client_id="site-c", grant_type="refresh_token", refresh_token=tokens_c.refresh_token
            )
        )
    assert revoked.value.error_code == "invalid_grant"


async def test_a_reused_code_is_refused_and_revokes_the_tokens_of_its_first_use(mem: Oidc) -> None:
    phone = Phone(mem.stack.http, mem.stack.gateway, mem.stack.sim.url)
    await phone.register()
    authorized, tokens = await mem.login(phone, "site-a", ORIGIN_A)
    sid = (await mem.verify(tokens.id_token, "site-a"))["sid"]
    with pytest.raises(RemoteError) as reused:
        await mem.exchange("site-a", authorized.code)
    assert reused.value.error_code == "invalid_grant" and "used already" in str(reused.value)
    with pytest.raises(RemoteError) as dead:
        await mem.bus.call(
            ExchangeGrant(client_id="site-a", grant_type="refresh_token", refresh_token=tokens.refresh_token)
        )
    assert dead.value.error_code == "invalid_grant"
    with pytest.raises(RemoteError):
        await mem.bus.call(GetUserInfo(client_id="site-a", sid=sid, scope="openid"))
    status, _ = await mem.stack.request("GET", "/api/me", token=tokens.access_token.get_secret_value())
    assert status == 200  # a 15-minute access token lives on, its session does not (userinfo, refresh)
    assert mem.stack.broker is not None
    await mem.stack.broker.drain()
    revoked = [json.loads(d.body) for _, d in mem.stack.broker.published if d.type == SessionRevoked.TYPE]
    assert [(e["sid"], e["client_id"], e["reason"]) for e in revoked] == [(sid, "site-a", "code_reuse")]

    # a code of another client, a wrong verifier, a different redirect_uri: invalid_grant
    for change in (
        {"client_id": "site-b"},
        {"code_verifier": SecretStr("x" * 43)},
        {"redirect_uri": "http://127.0.0.1:9/a/elsewhere"},
    ):
        scene, ticket_hash = await mem.scan_login(phone, "site-a", ORIGIN_A)
        fresh = await mem.bus.call(Authorize(request=mem.ask("site-a"), scene=scene, ticket_hash=ticket_hash))
        with pytest.raises(RemoteError) as wrong:
            await mem.exchange("site-a", fresh.code, **change)
        assert wrong.value.error_code == "invalid_grant", change


async def test_pairwise_subjects_differ_per_client_and_stay_the_same_for_a_user(mem: Oidc) -> None:
    phone = Phone(mem.stack.http, mem.stack.gateway, mem.stack.sim.url)
    await phone.register()
    subs: dict[str, list[str]] = {"site-b": [], "site-c": []}
    for _ in range(2):
        for client_id, origin in (("site-b", ORIGIN_B), ("site-c", ORIGIN_C)):
            _, tokens = await mem.login(phone, client_id, origin)
            subs[client_id].append((await mem.verify(tokens.id_token, client_id))["sub"])
    assert len(set(subs["site-b"])) == len(set(subs["site-c"])) == 1
    assert subs["site-b"][0] != subs["site-c"][0]
    user_ids = [doc["_id"] async for doc in mem.stack.db.users.find({})]
    assert len(user_ids) == 1 and user_ids[0] not in subs["site-b"] + subs["site-c"]


async def test_the_rsa_key_rotates_like_the_ed25519_key_without_a_restart(mem: Oidc) -> None:
    phone = Phone(mem.stack.http, mem.stack.gateway, mem.stack.sim.url)
    await phone.register()
    _, before = await mem.login(phone, "site-a", ORIGIN_A)
    old = jwt.get_unverified_header(before.id_token.get_secret_value())["kid"]  # type: ignore[union-attr]
    sealer = Sealer.from_text(mem.stack.settings.data_key.get_secret_value())
    rotated = await rotate_keys(
        SigningKeyStore(mem.stack.db), sealer, now=time.time(), min_age=900, lead=0.5, alg="RS256"
    )
    assert rotated.previous == old

    async def new_kid() -> bool:
        _, tokens = await mem.login(phone, "site-a", ORIGIN_A)
        return jwt.get_unverified_header(tokens.id_token.get_secret_value())["kid"] == rotated.current  # type: ignore[union-attr]

    assert await eventually(new_kid, timeout=10, interval=0.2)
    status, document = await mem.stack.request("GET", "/.well-known/jwks.json")
    assert status == 200
    assert {k["kid"] for k in document["keys"] if k["alg"] == "RS256"} == {old, rotated.current}
    assert (await mem.verify(before.id_token, "site-a"))["aud"] == "site-a"  # the previous key still verifies
