"""The JWT negative matrix at a running gateway: every forged or stale token gets a JSON 401, never 500.

Tokens are made with the system's real signing key (read from MongoDB and opened with the data key,
as an attacker who stole it could), so only the one altered property makes each token invalid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.session.keys import public_jwk
from services.session.store import SigningKeyStore
from shared.mongo import EmbeddedMongo
from shared.sealing import Sealer
from tests.integration.identity_stack import IdentityStack, identity_stack

PROTECTED = [
    ("GET", "/api/me", None),
    ("POST", "/api/mp/phone", {"code": "c" * 64}),
    ("POST", "/api/mp/decrypt", {"encrypted_data": "AAAA", "iv": "AAAAAAAAAAAAAAAAAAAAAA=="}),
    ("POST", "/api/logout", None),
]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"


class Forger:
    """Makes tokens with the system's own key and claims, one property wrong at a time."""

    def __init__(self, key: Ed25519PrivateKey, kid: str, claims: dict[str, Any]) -> None:
        self.key, self.kid, self.claims = key, kid, claims

    def sign(
        self,
        key: Ed25519PrivateKey | None = None,
        kid: str | None = None,
        typ: str | None = "at+jwt",
        **changes: Any,
    ) -> str:
        payload = {k: v for k, v in {**self.claims, **changes}.items() if v is not None}
        headers = {"kid": kid or self.kid, "typ": typ}  # typ None: no typ at all
        return jwt.encode(payload, key or self.key, algorithm="EdDSA", headers=headers)

    def hs256_with_public_key(self) -> str:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = unsigned({"alg": "HS256", "typ": "JWT", "kid": self.kid}, self.claims)
        mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"

    def alg_none(self) -> str:
        return unsigned({"alg": "none", "kid": self.kid}, self.claims) + "."

    def flipped(self, index: int) -> str:
        token = self.sign()
        index %= len(token)
        return token[:index] + chr(ord(token[index]) ^ 1) + token[index + 1 :]


@pytest.fixture
async def setup(
    mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> AsyncIterator[tuple[IdentityStack, Forger]]:
    async with identity_stack("memory", mongo_server, amqp_base_url, unique) as stack:
        mp = await stack.phone().register()
        tokens = await mp.login()
        record = await SigningKeyStore(stack.db).current()
        assert record is not None and record.sealed_private_key is not None
        sealer = Sealer.from_text(stack.settings.data_key.get_secret_value())
        pem = sealer.open(record.sealed_private_key, purpose=f"signing-key:{record.kid}")
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        forger = Forger(key, record.kid, claims)
        status, _ = await stack.request("GET", "/api/me", token=forger.sign())
        assert status == 200  # the forger's untouched token is valid: each case changes one thing
        yield stack, forger


def now() -> int:
    """Read when a case makes its token, not when the module is collected: a run whose earlier tests
    take over ten minutes (the browser tests on a slow machine) must still see ``nbf`` in the future."""
    return int(time.time())


CASES: dict[str, Callable[[Forger], str]] = {
    "alg none": lambda f: f.alg_none(),
    "HS256 signed with the public key": lambda f: f.hs256_with_public_key(),
    "wrong aud": lambda f: f.sign(aud="someone-else"),
    "wrong iss": lambda f: f.sign(iss="https://evil.example"),
    "expired": lambda f: f.sign(exp=now() - 60, iat=now() - 960, nbf=now() - 960),
    "nbf in the future": lambda f: f.sign(nbf=now() + 600),
    "unknown kid": lambda f: f.sign(key=Ed25519PrivateKey.generate(), kid="unknown-kid-1234"),
    "known kid, attacker key": lambda f: f.sign(key=Ed25519PrivateKey.generate()),
    "attacker key with its own kid": lambda f: (lambda k: f.sign(key=k, kid=str(public_jwk(k)["kid"])))(
        Ed25519PrivateKey.generate()
    ),
    "no exp": lambda f: f.sign(exp=None),
    "no sid": lambda f: f.sign(sid=None),
    "sid too long for the bus": lambda f: f.sign(sid="s" * 65),
    "flipped bit in the header": lambda f: f.flipped(5),
    "flipped bit in the payload": lambda f: f.flipped(60),
    "flipped bit in the signature": lambda f: f.flipped(-10),
    "flipped last character": lambda f: f.flipped(-1),
    "garbage": lambda f: "not-a-jwt",
    # RFC 9068: only an access token (typ at+jwt) is one; other JWTs signed by the same key are not.
    "no typ": lambda f: f.sign(typ=None),
    "typ of another kind of JWT": lambda f: f.sign(typ="secevent+jwt"),
    "typ JOSE": lambda f: f.sign(typ="JOSE"),
}


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
async def test_every_forged_or_stale_token_is_a_json_401_on_every_protected_route(
    setup: tuple[IdentityStack, Forger], make: Callable[[Forger], str]
) -> None:
    stack, forger = setup
    token = make(forger)
    for method, path, body in PROTECTED:
        status, answer = await stack.request(method, path, body, token=token)
        assert status == 401, (path, answer)
        assert answer["error"]["code"] == "unauthorized"


async def test_access_tokens_are_typed_at_jwt_and_ones_issued_before_typ_still_verify(
    setup: tuple[IdentityStack, Forger],
) -> None:
    stack, forger = setup
    tokens = await (await stack.phone().register()).login()
    assert jwt.get_unverified_header(tokens["access_token"])["typ"] == "at+jwt"
    for typ in ("at+jwt", "application/at+jwt", "JWT"):  # JWT: what the session service wrote before
        status, answer = await stack.request("GET", "/api/me", token=forger.sign(typ=typ))
        assert status == 200, (typ, answer)
