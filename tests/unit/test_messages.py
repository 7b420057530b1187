"""Wire schemas: every message round-trips, unknown types and versions are refused, secrets are sealed."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from shared import messages as m
from shared.sealing import Sealer, generate_key

SCENE = "A" * 31 + "b"
HASH = "ab" * 32
WHEN = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

SAMPLES: list[m.Message] = [
    m.TokenRefreshed(access_token=SecretStr("86_token"), expires_at=WHEN),
    m.TokenInvalidated(fingerprint="0123456789abcdef", errcode=40001),
    m.GetCurrentToken(),
    m.CurrentToken(access_token=SecretStr("86_token"), expires_at=WHEN),
    m.SceneIssued(scene=SCENE, expires_at=WHEN),
    m.SceneScanned(scene=SCENE),
    m.SceneCancelled(scene=SCENE, reason="not_me"),
    m.SceneExpired(scene=SCENE),
    m.IssueScene(ticket_hash=HASH, ip="127.0.0.1", user_agent="Mozilla/5.0"),
    m.IssuedScene(scene=SCENE, image="data:image/png;base64,AAAA", expires_at=WHEN),
    m.GetSceneStatus(scene=SCENE, ticket_hash=HASH),
    m.SceneStatus(scene=SCENE, state="scanned", expires_at=WHEN),
    m.ScanScene(scene=SCENE, scan_hash=HASH, ip="10.0.0.1", launch_scene=1047),
    m.ScanInfo(
        site="Example",
        requester=m.Requester(
            browser="Chrome 126",
            os="Windows",
            requested_at=WHEN,
            location=m.Place(kind="public", label="北京市 · 电信", country="中国", province="北京"),
        ),
        expires_at=WHEN + timedelta(seconds=120),
        scanner=m.Place(kind="local", label="本机/内网 (local network)"),
        location_mismatch=True,
        launch="image",
    ),
    m.CancelScene(scene=SCENE, scan_hash=HASH, reason="not_me"),
    m.ConfirmScene(scene=SCENE, scan_hash=HASH, user_id="u_1"),
    m.RedeemScene(scene=SCENE, ticket_hash=HASH),
    m.RedeemedScene(scene=SCENE, user_id="u_1"),
    m.LoginConfirmed(scene=SCENE, user_id="u_1"),
    m.UserCreated(user_id="u_1", openid="o" * 28),
    m.PhoneNumberBound(user_id="u_1", client_id="shop"),
    m.SessionRevoked(user_id="u_1", sid="family-0001", reason="reuse_detected"),
    m.ConfirmLogin(scene=SCENE, scan_hash=HASH, code=SecretStr("0716AVll20uHk94SLDml27etM946AVlq")),
    m.ConfirmResult(scene=SCENE, state="confirmed"),
    m.SceneConfirmed(scene=SCENE),
    m.IdentifyScene(scene=SCENE, scan_hash=HASH, user_id="u_1"),
    m.IdentifyScanner(scene=SCENE, scan_hash=HASH, code=SecretStr("0716AVll20uHk94SLDml27etM946AVlq")),
    m.Identified(identified=True),
    m.IssueScene(ticket_hash=HASH, ip="10.0.0.1", with_login_code=True, with_url_link=True),
    m.IssuedScene(
        scene=SCENE,
        image="data:image/png;base64,AAAA",
        expires_at=WHEN,
        login_code=SecretStr("K7QXM2PA"),
        url_link="https://wxaurl.cn/AbCdEfGhIjK",
    ),
    m.EnterLoginCode(
        login_code=SecretStr("K7QXM2PA"),
        code=SecretStr("0716AVll20uHk94SLDml27etM946AVlq"),
        scan_hash=HASH,
        ip="10.0.0.1",
    ),
    m.ScanLoginCode(login_code=SecretStr("K7QXM2PA"), scan_hash=HASH, ip="10.0.0.1", entrant="0" * 32),
    m.CodeScanned(
        scene=SCENE,
        scan=m.ScanInfo(
            site="Example",
            requester=m.Requester(browser="Safari 17", os="iOS", requested_at=WHEN),
            expires_at=WHEN,
            launch="unknown",
        ),
    ),
    m.CompleteLogin(scene=SCENE, ticket_hash=HASH),
    m.TokenPair(
        access_token=SecretStr("eyJ.a.b"),
        expires_in=900,
        refresh_token=SecretStr("refresh-secret"),
        user=m.UserView(id="u_1", openid="o" * 28),
    ),
    m.GetJwks(),
    m.Jwks(keys=[{"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "k1"}]),
    # --- identity ---
    m.SigningKeysChanged(kids=["k1", "k2"]),
    m.LoginMiniProgram(code=SecretStr("0716AVll20uHk94SLDml27etM946AVlq")),
    m.RefreshTokens(refresh_token=SecretStr("refresh-secret")),
    m.EndSession(user_id="u_1", sid="family_1"),
    m.EndSession(refresh_token=SecretStr("refresh-secret")),
    m.LoggedOut(revoked=True),
    m.BindPhone(user_id="u_1", sid="family_1", code=SecretStr("e31968a7" * 8)),
    m.PhoneBound(
        user=m.UserView(id="u_1", openid="o" * 28, phone="+8613800138000"),
        access_token=SecretStr("eyJ.a.b"),
        expires_in=900,
    ),
    m.DecryptData(
        user_id="u_1", sid="family_1", encrypted_data=SecretStr("CiyLU1Aw2Kjv"), iv="r7BXXKkLb8qrSNn05n0qiA=="
    ),
    m.DecryptedData(data=SecretStr('{"nickName": "Band"}'), user=m.UserView(id="u_1", openid="o" * 28)),
    # --- clients and OpenID Connect ---
    m.IssueScene(ticket_hash=HASH, ip="127.0.0.1", client_id="shop"),
    m.RedeemScene(scene=SCENE, ticket_hash=HASH, client_id="shop"),
    m.RedeemedScene(scene=SCENE, user_id="u_1", client_id="shop", confirmed_at=WHEN),
    m.LoginConfirmed(scene=SCENE, user_id="u_1", client_id="shop"),
    m.Authorize(
        request=m.AuthorizationRequest(
            client_id="shop",
            redirect_uri="https://shop.example/cb",
            scope="openid profile",
            nonce="n-0S6_WzA2Mj",
            code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            code_challenge_method="S256",
        ),
        scene=SCENE,
        ticket_hash=HASH,
    ),
    m.Authorize(
        request=m.AuthorizationRequest(client_id="shop", redirect_uri="https://shop.example/cb", scope="openid"),  # noqa: E501
        op_session=SecretStr("op-session-secret"),
        max_age=60,
    ),
    m.Authorized(code=SecretStr("code-secret"), op_session=SecretStr("op-session-secret"), auth_time=WHEN),
    m.ExchangeGrant(
        client_id="shop",
        grant_type="authorization_code",
        code=SecretStr("code-secret"),
        redirect_uri="https://shop.example/cb",
        code_verifier=SecretStr("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
    ),
    m.ExchangeGrant(client_id="shop", grant_type="refresh_token", refresh_token=SecretStr("refresh-secret")),
    m.OidcTokens(
        access_token=SecretStr("eyJ.a.b"),
        expires_in=900,
        refresh_token=SecretStr("refresh-secret"),
        id_token=SecretStr("eyJ.c.d"),
        scope="openid profile",
    ),
    m.GetUserInfo(client_id="shop", sid="family_1", scope="openid phone"),
    m.UserInfo(claims={"sub": "u_1", "preferred_username": "wx_abc"}),
    m.EndOpSession(op_session=SecretStr("op-session-secret")),
    m.OpSessionEnded(ended=True),
    m.RevokeToken(client_id="shop", token=SecretStr("refresh-secret"), token_type_hint="refresh_token"),
    m.TokenRevoked(revoked=True),
    # account linking
    m.IdentityLinked(client_id="shop", user_id="u_1", external_id="acct-42", link_request="lr_" + "a" * 22),
    m.IdentityUnlinked(client_id="shop", user_id="u_1", external_id="acct-42"),
    m.OpenLink(client_id="shop", external_id="acct-42", hint="张*三"),
    m.LinkOpened(link_request="lr_" + "a" * 22, link_token=SecretStr("link-token-secret"), expires_at=WHEN),
    m.IssueLinkScene(link_token=SecretStr("link-token-secret"), ticket_hash="a" * 64, ip="127.0.0.1"),
    m.CompleteLink(scene="s" * 32, ticket_hash="a" * 64, client_id="shop"),
    m.LinkCompleted(scene="s" * 32, link_request="lr_" + "a" * 22),
    m.GetLinkStatus(client_id="shop", link_request="lr_" + "a" * 22),
    m.LinkStatus(
        link_request="lr_" + "a" * 22,
        state="refused",
        reason="already_linked",
        external_id="acct-42",
        expires_at=WHEN,
    ),
    m.Unlink(client_id="shop", external_id="acct-42", sub="u_1"),
    m.Unlinked(unlinked=1),
]


@pytest.fixture
def sealer() -> Sealer:
    return Sealer.from_text(generate_key())


@pytest.mark.parametrize("message", SAMPLES, ids=lambda msg: msg.TYPE)
def test_every_message_round_trips_through_its_wire_form(message: m.Message, sealer: Sealer) -> None:
    body = m.encode(message, sealer)
    decoded = m.decode(message.TYPE, message.VERSION, body, sealer)
    assert type(decoded) is type(message)
    assert _plain(decoded) == _plain(message)


def test_every_registered_message_has_a_sample() -> None:
    registered = {key for key in m._REGISTRY}
    sampled = {(msg.TYPE, msg.VERSION) for msg in SAMPLES}
    assert registered == sampled


def test_unknown_type_is_refused(sealer: Sealer) -> None:
    with pytest.raises(m.UnknownMessage):
        m.decode("scene.teleported", 1, b"{}", sealer)


def test_unknown_version_is_refused(sealer: Sealer) -> None:
    body = m.encode(m.SceneScanned(scene=SCENE), sealer)
    with pytest.raises(m.UnknownMessage):
        m.decode("scene.scanned", 2, body, sealer)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"scene": "short"}', b"{}"])
def test_malformed_bodies_are_refused(body: bytes, sealer: Sealer) -> None:
    with pytest.raises(m.InvalidMessage):
        m.decode("scene.scanned", 1, body, sealer)


def test_sealed_fields_never_appear_in_clear_on_the_wire(sealer: Sealer) -> None:
    code = "0716AVll20uHk94SLDml27etM946AVlq"
    body = m.encode(m.ConfirmLogin(scene=SCENE, scan_hash=HASH, code=SecretStr(code)), sealer)
    assert code.encode() not in body
    assert json.loads(body)["code"].startswith(f"v2.{sealer.kid}.")


def test_sealed_fields_do_not_open_with_another_key(sealer: Sealer) -> None:
    body = m.encode(m.ConfirmLogin(scene=SCENE, scan_hash=HASH, code=SecretStr("secret-code")), sealer)
    with pytest.raises(m.InvalidMessage):
        m.decode("session.confirm", 1, body, Sealer.from_text(generate_key()))


def test_a_sealed_value_moved_to_another_field_does_not_open(sealer: Sealer) -> None:
    body = json.loads(m.encode(m.IdentifyScanner(scene=SCENE, scan_hash=HASH, code=SecretStr("c")), sealer))
    tampered = {"user_id": "u_1", "sid": "family_1", "code": body["code"]}  # into BindPhone.code
    with pytest.raises(m.InvalidMessage):
        m.decode("session.bind_phone", 1, json.dumps(tampered).encode(), sealer)


def test_a_sealed_value_moved_to_another_message_type_does_not_open(sealer: Sealer) -> None:
    token = json.loads(m.encode(m.RefreshTokens(refresh_token=SecretStr("r")), sealer))["refresh_token"]
    with pytest.raises(m.InvalidMessage):
        m.decode("session.logout", 1, json.dumps({"refresh_token": token}).encode(), sealer)


def test_a_sealed_field_is_bound_to_its_message_id_when_the_bus_passes_one(sealer: Sealer) -> None:
    body = m.encode(m.LoginMiniProgram(code=SecretStr("c")), sealer, message_id="id-1")
    assert m.decode("session.mp_login", 1, body, sealer, message_id="id-1") is not None
    with pytest.raises(m.InvalidMessage):
        m.decode("session.mp_login", 1, body, sealer, message_id="id-2")


def test_a_field_sealed_by_an_earlier_version_still_opens(sealer: Sealer) -> None:
    legacy = _seal_v1(sealer.keys[0], "refresh-secret", purpose="bus")
    decoded = m.decode("session.refresh", 1, json.dumps({"refresh_token": legacy}).encode(), sealer)
    assert isinstance(decoded, m.RefreshTokens)
    assert decoded.refresh_token.get_secret_value() == "refresh-secret"


def test_the_bus_key_rotates_without_downtime() -> None:
    old, new = generate_key(), generate_key()
    before, during, after = (
        Sealer.from_text(old),
        Sealer.from_text(f"{old},{new}"),
        Sealer.from_text(f"{new},{old}"),
    )
    done = Sealer.from_text(new)
    message = m.RefreshTokens(refresh_token=SecretStr("r"))
    # 1. every service learns the new key (old still seals); 2. the new key seals; 3. the old one goes.
    for sender, receiver in [
        (before, during),
        (during, before),
        (during, after),
        (after, during),
        (after, done),
    ]:
        decoded = m.decode("session.refresh", 1, m.encode(message, sender), receiver)
        assert isinstance(decoded, m.RefreshTokens) and decoded.refresh_token.get_secret_value() == "r"
    with pytest.raises(m.InvalidMessage, match="not configured"):
        m.decode("session.refresh", 1, m.encode(message, before), done)


def test_a_sealed_field_cannot_be_serialized_without_a_sealer() -> None:
    with pytest.raises(ValueError, match="Sealed field"):
        m.ConfirmLogin(scene=SCENE, scan_hash=HASH, code=SecretStr("x")).model_dump_json()


def test_secrets_do_not_show_in_a_message_repr() -> None:
    holding = [msg for msg in SAMPLES if "refresh-secret" in str(_plain(msg))]
    assert len(holding) == 6
    for message in holding:
        assert "refresh-secret" not in repr(message)


def test_a_confirm_without_a_code_crosses_the_wire_as_none(sealer: Sealer) -> None:
    body = m.encode(m.ConfirmLogin(scene=SCENE, scan_hash=HASH), sealer)
    decoded = m.decode("session.confirm", 1, body, sealer)
    assert isinstance(decoded, m.ConfirmLogin) and decoded.code is None


def test_error_replies_tolerate_garbage() -> None:
    assert m.decode_error(b"garbage")["code"] == "internal"
    assert (
        m.decode_error(m.encode_error({"code": "scene_expired", "message": "x"}))["code"] == "scene_expired"
    )


def test_rpc_requests_name_the_service_that_answers() -> None:
    assert m.IssueScene.service() == "qrcode"
    assert m.ConfirmLogin.service() == "session"
    assert m.GetCurrentToken.service() == "token"
    assert m.IssueScene.REPLY is m.IssuedScene


def _seal_v1(key: bytes, plaintext: str, *, purpose: str) -> str:
    """A value as earlier versions sealed it: ``v1.`` and no key id."""
    nonce = os.urandom(12)
    blob = nonce + AESGCM(key).encrypt(nonce, plaintext.encode(), purpose.encode())
    return "v1." + base64.urlsafe_b64encode(blob).decode().rstrip("=")


def _plain(message: m.Message) -> dict[str, object]:
    out = message.model_dump()
    return {k: (v.get_secret_value() if isinstance(v, SecretStr) else v) for k, v in out.items()}


def test_message_and_trace_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [m.new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
