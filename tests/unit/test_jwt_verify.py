"""The gateway's JWT check (``KeySet.verify``) against forged, altered and stale tokens.

Keys come from a hand-written fake of the session service's ``session.jwks``; tokens are made with
PyJWT or, for forgeries PyJWT refuses to make, by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.gateway.auth import KeySet, bearer_token, canonical_segments
from services.gateway.errors import Unauthorized
from services.session.keys import public_jwk
from shared.messages import GetJwks, Jwks
from tests.support import ManualClock

ISS, AUD = "wxlogin", "wxlogin-site"


class FakeSession:
    """Answers ``session.jwks`` with whatever keys the test publishes; counts the calls."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.keys = list(keys)
        self.calls = 0

    async def call(self, request: Any, *, timeout: float | None = None) -> Any:
        assert isinstance(request, GetJwks)
        self.calls += 1
        return Jwks(keys=[public_jwk(k) for k in self.keys])


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def kid_of(key: Ed25519PrivateKey) -> str:
    return str(public_jwk(key)["kid"])


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "u_1",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": "j1",
        "sid": "family_1",
        "openid": "o" * 28,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Ed25519PrivateKey, payload: dict[str, Any] | None = None, **header: Any) -> str:
    headers = {"kid": kid_of(key), **header}
    return jwt.encode(payload or claims(), key, algorithm="EdDSA", headers=headers)


def handmade(
    header: dict[str, Any], payload: dict[str, Any], signature: bytes | None = None, *, hs_key: bytes = b""
) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if signature is None:
        signature = hmac.new(hs_key, signing_input.encode(), hashlib.sha256).digest() if hs_key else b""
    return f"{signing_input}.{b64(signature)}"


def ed_handmade(key: Ed25519PrivateKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A correctly signed token with a header PyJWT would refuse to write."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
async def keyset(key: Ed25519PrivateKey) -> KeySet:
    keys = KeySet(FakeSession(key), issuer=ISS, audience=AUD)
    assert await keys.refresh(force=True)
    return keys


async def test_a_token_signed_with_a_published_key_verifies(keyset: KeySet, key: Ed25519PrivateKey) -> None:
    verified = await keyset.verify(sign(key))
    assert verified["sub"] == "u_1" and verified["sid"] == "family_1"


def _public_forms(key: Ed25519PrivateKey) -> list[bytes]:
    public = key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return [pem, raw, public_jwk(key)["x"].encode(), json.dumps(public_jwk(key)).encode()]


NEGATIVE = {
    "alg none": lambda k: handmade({"alg": "none", "kid": kid_of(k)}, claims()),
    "alg None": lambda k: handmade({"alg": "None", "kid": kid_of(k)}, claims()),
    "alg none with a signature": lambda k: handmade({"alg": "none", "kid": kid_of(k)}, claims(), b"x" * 64),
    "wrong aud": lambda k: sign(k, claims(aud="another-site")),
    "aud list without ours": lambda k: sign(k, claims(aud=["a", "b"])),
    "wrong iss": lambda k: sign(k, claims(iss="https://evil.example")),
    "expired": lambda k: sign(k, claims(exp=int(time.time()) - 60, iat=int(time.time()) - 960)),
    "nbf in the future": lambda k: sign(k, claims(nbf=int(time.time()) + 600)),
    "iat in the future": lambda k: sign(k, claims(iat=int(time.time()) + 600, nbf=None)),
    "no exp": lambda k: sign(k, claims(exp=None)),
    "no aud": lambda k: sign(k, claims(aud=None)),
    "no iss": lambda k: sign(k, claims(iss=None)),
    "no sub": lambda k: sign(k, claims(sub=None)),
    "no jti": lambda k: sign(k, claims(jti=None)),
    "sub not a string": lambda k: sign(k, claims(sub=42)),
    "sid not a string": lambda k: sign(k, claims(sid=["family_1"])),
    "no sid": lambda k: sign(k, claims(sid=None)),
    "sid not one of ours": lambda k: sign(k, claims(sid="x")),
    "sub not one of ours": lambda k: sign(k, claims(sub="u/../1")),
    "unknown kid": lambda k: sign(Ed25519PrivateKey.generate()),
    "known kid, other key": lambda k: jwt.encode(
        claims(), Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid_of(k)}
    ),
    "no kid": lambda k: jwt.encode(claims(), k, algorithm="EdDSA"),
    "kid not a string": lambda k: ed_handmade(k, {"alg": "EdDSA", "kid": 7}, claims()),
    "embedded jwk of the attacker": lambda k: (
        lambda attacker: jwt.encode(
            claims(),
            attacker,
            algorithm="EdDSA",
            headers={"kid": kid_of(attacker), "jwk": public_jwk(attacker)},
        )
    )(Ed25519PrivateKey.generate()),
    "jku pointing elsewhere": lambda k: jwt.encode(
        claims(),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": kid_of(k), "jku": "https://evil.example/jwks.json"},
    ),
    "ES256 header": lambda k: handmade({"alg": "ES256", "kid": kid_of(k)}, claims(), b"x" * 64),
    "RS256 header": lambda k: handmade({"alg": "RS256", "kid": kid_of(k)}, claims(), b"x" * 256),
    "two segments": lambda k: ".".join(sign(k).split(".")[:2]),
    "four segments": lambda k: sign(k) + ".AAAA",
    "empty": lambda k: "",
    "not base64": lambda k: "eyJ!.eyJ.sig",
    "header not json": lambda k: f"{b64(b'not json')}.{b64(b'{}')}.{b64(b'x')}",
    "header a list": lambda k: f"{b64(b'[1]')}.{b64(b'{}')}.{b64(b'x')}",
    "payload not json": lambda k: (
        handmade({"alg": "EdDSA", "kid": kid_of(k)}, {}, b"x").split(".")[0]
        + f".{b64(b'garbage')}.{b64(b'x' * 64)}"
    ),
    "too long": lambda k: sign(k, claims(pad="x" * 5000)),
    "padded with =": lambda k: sign(k) + "==",
    "non-ascii": lambda k: sign(k)[:-1] + "é",
}


@pytest.mark.parametrize("make", NEGATIVE.values(), ids=NEGATIVE.keys())
async def test_forged_or_stale_tokens_are_unauthorized(
    keyset: KeySet, key: Ed25519PrivateKey, make: Any
) -> None:
    with pytest.raises(Unauthorized):
        await keyset.verify(make(key))


@pytest.mark.parametrize("form", range(4), ids=["pem", "raw", "x", "jwk-json"])
async def test_hs256_signed_with_the_public_key_is_unauthorized(
    keyset: KeySet, key: Ed25519PrivateKey, form: int
) -> None:
    hs_key = _public_forms(key)[form]
    token = handmade({"alg": "HS256", "kid": kid_of(key), "typ": "JWT"}, claims(), hs_key=hs_key)
    with pytest.raises(Unauthorized):
        await keyset.verify(token)


def _same_bytes(a: str, b: str) -> bool:
    try:
        return base64.urlsafe_b64decode(a + "=" * (-len(a) % 4)) == base64.urlsafe_b64decode(
            b + "=" * (-len(b) % 4)
        )
    except ValueError:
        return False


def _malleable_token(key: Ed25519PrivateKey) -> str:
    """A token whose signature's last character has a one-bit neighbour that decodes identically."""
    for n in range(1000):
        token = sign(key, claims(jti=f"j{n}"))
        signature = token.rsplit(".", 1)[1]
        for bit in range(8):
            other = signature[:-1] + chr(ord(signature[-1]) ^ (1 << bit))
            if other != signature and _same_bytes(signature, other):
                return token
    raise AssertionError("no such token found")


async def test_every_single_bit_flip_of_a_valid_token_is_unauthorized(
    keyset: KeySet, key: Ed25519PrivateKey
) -> None:
    token = _malleable_token(key)  # includes a flip that only touches base64 padding bits
    await keyset.verify(token)  # the original is fine
    accepted = []
    for index in range(len(token)):
        for bit in range(8):
            flipped = token[:index] + chr(ord(token[index]) ^ (1 << bit)) + token[index + 1 :]
            try:
                await keyset.verify(flipped)
            except Unauthorized:
                continue
            accepted.append((index, bit))
    assert accepted == []


def test_only_the_canonical_spelling_of_a_segment_is_accepted() -> None:
    # 64 signature bytes = 86 base64url characters whose last carries 4 unused bits.
    signature = b64(b"\x00" * 64)
    assert signature.endswith("A")
    assert canonical_segments(f"e30.e30.{signature}")
    assert not canonical_segments(f"e30.e30.{signature[:-1]}B")  # decodes to the same bytes


async def test_an_unknown_kid_refetches_the_keys_at_most_every_30_seconds(key: Ed25519PrivateKey) -> None:
    session, clock = FakeSession(key), ManualClock(1000.0)
    keys = KeySet(session, issuer=ISS, audience=AUD, clock=clock)
    await keys.refresh(force=True)
    newcomer = Ed25519PrivateKey.generate()
    for _ in range(5):
        with pytest.raises(Unauthorized):
            await keys.verify(sign(newcomer))
    assert session.calls == 1  # only the start-up fetch: still within 30 s

    session.keys.append(newcomer)  # rotated in
    clock.now += 31
    assert (await keys.verify(sign(newcomer)))["sub"] == "u_1"
    assert session.calls == 2


async def test_a_key_that_leaves_the_jwks_stops_verifying_after_the_next_fetch(
    key: Ed25519PrivateKey,
) -> None:
    newer = Ed25519PrivateKey.generate()
    session = FakeSession(newer, key)
    keys = KeySet(session, issuer=ISS, audience=AUD)
    await keys.refresh(force=True)
    old_token = sign(key)
    await keys.verify(old_token)  # previous key: still published

    session.keys.remove(key)  # retired
    await keys.refresh(force=True)
    with pytest.raises(Unauthorized):
        await keys.verify(old_token)
    assert [k["kid"] for k in keys.document()["keys"]] == [kid_of(newer)]


async def test_jwks_entries_that_are_not_ed25519_are_ignored(key: Ed25519PrivateKey) -> None:
    class Mixed(FakeSession):
        async def call(self, request: Any, *, timeout: float | None = None) -> Any:
            good = public_jwk(key)
            return Jwks(
                keys=[
                    {"kty": "oct", "k": b64(b"secret"), "kid": "hmac"},
                    {"kty": "OKP", "crv": "X25519", "x": good["x"], "kid": "x25519"},
                    {"kty": "OKP", "crv": "Ed25519", "x": "not-base64!", "kid": "broken"},
                    good,
                ]
            )

    keys = KeySet(Mixed(), issuer=ISS, audience=AUD)
    await keys.refresh(force=True)
    assert [k["kid"] for k in keys.document()["keys"]] == [kid_of(key)]
    token = handmade({"alg": "HS256", "kid": "hmac"}, claims(), hs_key=b"secret")
    with pytest.raises(Unauthorized):
        await keys.verify(token)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "bearer"])
def test_a_missing_or_malformed_authorization_header_is_unauthorized(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        bearer_token(header)


def test_the_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"
