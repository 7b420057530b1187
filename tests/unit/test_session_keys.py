"""The signer and key rotation over a hand-written key store and a hand-turned clock."""

from __future__ import annotations

import asyncio
import dataclasses

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.session.keys import (
    RotationRefused,
    Signer,
    public_jwk,
    retire_previous_key,
    rotate_keys,
)
from services.session.store import SigningKeyRecord, User
from shared.sealing import Sealer, generate_key
from tests.support import ManualClock

TTL = 900


class DictKeys:
    """``SigningKeyStore`` semantics over a dict; at most one ``current`` per alg, like the partial index."""

    def __init__(self) -> None:
        self.records: dict[str, SigningKeyRecord] = {}

    def _one(self, status: str, alg: str) -> SigningKeyRecord | None:
        return next((r for r in self.records.values() if r.status == status and r.alg == alg), None)

    async def current(self, alg: str = "EdDSA") -> SigningKeyRecord | None:
        return self._one("current", alg)

    async def previous(self, alg: str = "EdDSA") -> SigningKeyRecord | None:
        return self._one("previous", alg)

    async def published(self) -> list[SigningKeyRecord]:
        return [r for r in self.records.values() if r.status in ("current", "previous")]

    async def all(self) -> list[SigningKeyRecord]:
        return sorted(self.records.values(), key=lambda r: r.created_at)

    async def insert_current(self, record: SigningKeyRecord) -> bool:
        if self._one("current", record.alg):
            return False
        self.records[record.kid] = record
        return True

    async def insert(self, record: SigningKeyRecord) -> None:
        self.records[record.kid] = record

    async def retire_previous(self, now: float, alg: str = "EdDSA") -> list[str]:
        kids = [r.kid for r in self.records.values() if r.status == "previous" and r.alg == alg]
        for kid in kids:
            self.records[kid] = dataclasses.replace(
                self.records[kid], status="retired", retired_at=now, sealed_private_key=None
            )
        return kids

    async def demote_current(self, kid: str, until: float) -> bool:
        record = self.records.get(kid)
        if record is None or record.status != "current":
            return False
        self.records[kid] = dataclasses.replace(record, status="previous", demoted_at=until)
        return True

    async def promote(self, kid: str, alg: str = "EdDSA") -> bool:
        if self._one("current", alg) or self.records[kid].status != "pending":
            return False
        self.records[kid] = dataclasses.replace(self.records[kid], status="current")
        return True

    async def delete(self, kid: str) -> None:
        self.records.pop(kid, None)


@pytest.fixture
def store() -> DictKeys:
    return DictKeys()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(2_000_000_000.0)


@pytest.fixture
def sealer() -> Sealer:
    return Sealer.from_text(generate_key())


@pytest.fixture
async def signer(store: DictKeys, sealer: Sealer, clock: ManualClock) -> Signer:
    signer = Signer(store, sealer, issuer="wxlogin", audience="site", ttl=TTL, clock=clock)
    await signer.load()
    return signer


USER = User("u_1", "o" * 28, "ocMvos6NjeKLIBqg5Mr9QjxrP1FA", "+8613800138000", 1.0, 1.0, 1)


def verify(signer: Signer, token: str, clock: ManualClock) -> dict[str, object]:
    jwk = next(k for k in signer.jwks() if k["kid"] == jwt.get_unverified_header(token)["kid"])
    claims: dict[str, object] = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=["EdDSA"],
        audience="site",
        issuer="wxlogin",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    return claims


async def test_the_first_replica_creates_a_key_and_tokens_carry_every_claim(
    signer: Signer, store: DictKeys, clock: ManualClock
) -> None:
    assert sorted((r.alg, r.status) for r in store.records.values()) == [
        ("EdDSA", "current"),
        ("RS256", "current"),
    ]
    token = signer.issue(USER, "family_1")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["kid"] == signer.kid
    claims = verify(signer, token, clock)
    assert claims["sub"] == "u_1" and claims["sid"] == "family_1"
    assert claims["unionid"] == USER.unionid and claims["phone"] == USER.phone
    assert claims["iat"] == int(clock.now) and claims["exp"] == int(clock.now) + TTL
    assert set(claims) >= {"iss", "aud", "jti", "nbf", "openid"}


async def test_a_second_replica_adopts_the_existing_key(
    signer: Signer, store: DictKeys, sealer: Sealer, clock: ManualClock
) -> None:
    other = Signer(store, sealer, issuer="wxlogin", audience="site", ttl=TTL, clock=clock)
    await other.load()
    assert other.kid == signer.kid and other.kid_of("RS256") == signer.kid_of("RS256")
    assert len(store.records) == 2


async def test_a_rotated_in_key_is_published_at_once_and_signs_after_the_lead(
    signer: Signer, store: DictKeys, sealer: Sealer, clock: ManualClock
) -> None:
    old = signer.kid
    rotated = await rotate_keys(store, sealer, now=clock.now, min_age=TTL, lead=300)
    assert await signer.reload()  # the published set changed: announce it
    assert {k["kid"] for k in signer.jwks() if k["alg"] == "EdDSA"} == {old, rotated.current}
    assert jwt.get_unverified_header(signer.issue(USER, "f"))["kid"] == old
    clock.now += 299
    assert signer.kid == old
    clock.now += 1
    assert signer.kid == rotated.current
    assert jwt.get_unverified_header(signer.issue(USER, "f"))["kid"] == rotated.current
    assert not await signer.reload()  # nothing new to announce


async def test_retiring_waits_until_the_previous_keys_tokens_have_expired(
    signer: Signer, store: DictKeys, sealer: Sealer, clock: ManualClock
) -> None:
    rotated = await rotate_keys(store, sealer, now=clock.now, min_age=TTL, lead=60)
    for elapsed in (0, 60, 60 + TTL - 1):
        with pytest.raises(RotationRefused):
            await retire_previous_key(store, now=clock.now + elapsed, min_age=TTL)
    assert await retire_previous_key(store, now=clock.now + 60 + TTL, min_age=TTL) == [rotated.previous]
    assert store.records[str(rotated.previous)].sealed_private_key is None
    await signer.reload()
    assert [k["kid"] for k in signer.jwks() if k["alg"] == "EdDSA"] == [rotated.current]


async def test_rotating_twice_in_a_row_needs_force(
    store: DictKeys, sealer: Sealer, signer: Signer, clock: ManualClock
) -> None:
    first = await rotate_keys(store, sealer, now=clock.now, min_age=TTL)
    with pytest.raises(RotationRefused, match="--force"):
        await rotate_keys(store, sealer, now=clock.now + 1, min_age=TTL)
    forced = await rotate_keys(store, sealer, now=clock.now + 1, min_age=TTL, force=True)
    assert forced.retired == [first.previous] and forced.previous == first.current


async def test_jwks_entries_are_public_ed25519_keys_named_by_thumbprint(signer: Signer) -> None:
    (jwk,) = [k for k in signer.jwks() if k["kty"] == "OKP"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert "d" not in jwk  # no private part


def test_kid_is_stable_for_a_key() -> None:
    key = Ed25519PrivateKey.generate()
    assert public_jwk(key)["kid"] == public_jwk(key)["kid"]
    assert public_jwk(key)["kid"] != public_jwk(Ed25519PrivateKey.generate())["kid"]


class SlowKeys(DictKeys):
    """A store whose reads take a turn of the event loop each, as a network round trip does."""

    def __init__(self) -> None:
        super().__init__()
        self.issued_during_reload: list[str] = []
        self.signer: Signer | None = None

    async def _turn(self) -> None:
        if self.signer is not None:  # a login handled while the reload waits for Mongo
            self.issued_during_reload.append(jwt.get_unverified_header(self.signer.issue(USER, "f"))["kid"])
        await asyncio.sleep(0)

    async def current(self, alg: str = "EdDSA") -> SigningKeyRecord | None:
        await self._turn()
        return await super().current(alg)

    async def previous(self, alg: str = "EdDSA") -> SigningKeyRecord | None:
        await self._turn()
        return await super().previous(alg)

    async def published(self) -> list[SigningKeyRecord]:
        await self._turn()
        return await super().published()


async def test_no_token_is_signed_with_a_rotated_in_key_before_its_lead_not_even_during_a_reload(
    sealer: Sealer, clock: ManualClock
) -> None:
    store = SlowKeys()
    signer = Signer(store, sealer, issuer="wxlogin", audience="site", ttl=TTL, clock=clock)
    await signer.load()
    old = signer.kid
    await rotate_keys(store, sealer, now=clock.now, min_age=TTL, lead=300)
    store.signer = signer
    assert await signer.reload()
    assert store.issued_during_reload and set(store.issued_during_reload) == {old}
    assert signer.kid == old


# --- RSA beside Ed25519: ID tokens and logout tokens (joserfc) ----------------------------------------


def jwk_of(signer: Signer, token: str) -> dict[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    return next(k for k in signer.jwks() if k["kid"] == kid)


async def test_the_jwks_publishes_an_rsa_key_beside_the_ed25519_one(signer: Signer) -> None:
    by_alg = {k["alg"]: k for k in signer.jwks()}
    assert set(by_alg) == {"EdDSA", "RS256"}
    rsa_jwk = by_alg["RS256"]
    assert set(rsa_jwk) == {"kty", "n", "e", "kid", "use", "alg"} and rsa_jwk["kty"] == "RSA"
    assert rsa_jwk["use"] == "sig" and rsa_jwk["kid"] == signer.kid_of("RS256")
    assert "d" not in rsa_jwk and "p" not in rsa_jwk
    # the signing keys come first, access tokens' first
    assert [k["kid"] for k in signer.jwks()[:2]] == [signer.kid, signer.kid_of("RS256")]


@pytest.mark.parametrize("alg", ["RS256", "EdDSA"])
async def test_id_tokens_are_signed_with_the_asked_algorithm_and_verify_with_the_jwks(
    signer: Signer, alg: str
) -> None:
    token = signer.sign({"iss": "https://op", "aud": "site-a", "sub": "u_1"}, alg=alg, typ="JWT")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": signer.kid_of(alg), "typ": "JWT"}
    jwk = jwk_of(signer, token)
    claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[alg], audience="site-a")
    assert claims["sub"] == "u_1"
    # an ID token is never an access token
    assert signer.access_claims(token) is None


async def test_access_claims_reads_our_access_tokens_expired_or_not(
    signer: Signer, clock: ManualClock
) -> None:
    token = signer.issue(USER, "family_1", audience="site-b")
    clock.now += 10 * TTL
    claims = signer.access_claims(token)
    assert claims is not None and claims["sid"] == "family_1" and claims["aud"] == "site-b"
    forged = jwt.encode(
        {"sid": "family_1"}, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": signer.kid}
    )
    assert signer.access_claims(forged) is None


async def test_rotating_the_rsa_key_leaves_the_ed25519_key_alone(
    signer: Signer, store: DictKeys, sealer: Sealer, clock: ManualClock
) -> None:
    ed, rsa = signer.kid, signer.kid_of("RS256")
    rotated = await rotate_keys(store, sealer, now=clock.now, min_age=TTL, lead=60, alg="RS256")
    assert rotated.previous == rsa and rotated.alg == "RS256"
    assert await signer.reload()
    assert {k["kid"] for k in signer.jwks()} == {ed, rsa, rotated.current}
    assert signer.kid == ed and signer.kid_of("RS256") == rsa  # not before the lead
    clock.now += 60
    assert signer.kid_of("RS256") == rotated.current and signer.kid == ed
    with pytest.raises(RotationRefused, match="RS256"):
        await retire_previous_key(store, now=clock.now, min_age=TTL, alg="RS256")
    assert await retire_previous_key(store, now=clock.now, min_age=TTL, force=True, alg="RS256") == [rsa]
    assert await retire_previous_key(store, now=clock.now, min_age=TTL) == []  # no previous Ed25519 key
    await signer.reload()
    assert {k["kid"] for k in signer.jwks()} == {ed, rotated.current}


def test_rsa_kid_is_the_rfc7638_thumbprint() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from joserfc.jwk import RSAKey

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = public_jwk(key)
    assert jwk["kid"] == RSAKey.import_key(key).thumbprint()[:16]
