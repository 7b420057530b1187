"""Signing-key rotation: running services adopt it without restart, the previous key keeps verifying
until it is retired, and the documented command works against the configured MongoDB."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from services.session.keys import RotationRefused, retire_previous_key, rotate_keys
from services.session.store import SigningKeyStore
from shared.mongo import EmbeddedMongo
from shared.sealing import Sealer, generate_key
from tests.integration.identity_stack import IdentityStack, identity_stack
from tests.support import drop_database, eventually, make_settings

ROOT = Path(__file__).parents[2]


@pytest.fixture(params=["amqp", "memory"])
async def stack(
    request: pytest.FixtureRequest, mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str
) -> AsyncIterator[IdentityStack]:
    # No periodic JWKS refresh within the test: the gateway must learn of a rotation from the
    # session service's signing_keys.changed event (or, for a new kid, from the token itself).
    async with identity_stack(
        request.param, mongo_server, amqp_base_url, unique, jwks_refresh_seconds=3600
    ) as running:
        yield running


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def published(stack: IdentityStack, alg: str = "EdDSA") -> list[str]:
    status, document = await stack.request("GET", "/.well-known/jwks.json")
    assert status == 200
    return [k["kid"] for k in document["keys"] if k["alg"] == alg]


def site_verifies(gateway: str, token: str, audience: str, issuer: str) -> dict[str, Any]:
    """What docs/identity.md tells a Python site backend to do (PyJWT's JWKS client)."""
    jwks = jwt.PyJWKClient(f"{gateway}/.well-known/jwks.json")
    signing_key = jwks.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token, signing_key.key, algorithms=["EdDSA"], audience=audience, issuer=issuer
    )
    return claims


async def test_a_rotated_out_key_verifies_until_it_is_retired(stack: IdentityStack) -> None:
    mp = await stack.phone().register()
    old = (await mp.login())["access_token"]
    old_kid = kid(old)
    store = SigningKeyStore(stack.db)
    sealer = Sealer.from_text(stack.settings.data_key.get_secret_value())

    lead = stack.settings.signing_key_lead_seconds
    rotated = await rotate_keys(store, sealer, now=time.time(), min_age=900, lead=lead)
    assert rotated.previous == old_kid and rotated.current != old_kid
    assert kid((await mp.login())["access_token"]) == old_kid  # published ahead, not signing yet

    async def new_kid_in_use() -> str | None:
        token = str((await mp.login())["access_token"])
        return token if kid(token) == rotated.current else None

    new = await eventually(new_kid_in_use, timeout=10, interval=0.1)  # replicas reload, no restart
    assert (await mp.me(old))[0] == 200  # signed with the previous key: still good
    assert (await mp.me(new))[0] == 200
    assert sorted(await published(stack)) == sorted([rotated.current, old_kid])
    claims = await asyncio.to_thread(
        site_verifies, stack.gateway, old, stack.settings.jwt_audience, stack.settings.jwt_issuer
    )
    assert claims["sub"] == mp.tokens["user"]["id"]

    with pytest.raises(RotationRefused, match="force"):  # tokens of the previous key are still alive
        await retire_previous_key(store, now=time.time(), min_age=900)
    assert await retire_previous_key(store, now=time.time(), min_age=900, force=True) == [old_kid]

    async def old_refused() -> bool:
        return (await mp.me(old))[0] == 401

    assert await eventually(old_refused, timeout=10, interval=0.1)
    assert (await mp.me(old))[1]["error"]["code"] == "unauthorized"
    assert (await mp.me(new))[0] == 200
    assert await published(stack) == [rotated.current]
    retired = await stack.db.signing_keys.find_one({"_id": old_kid})
    assert retired["status"] == "retired" and "private_key" not in retired


async def test_rotating_again_before_the_previous_key_aged_out_needs_force(stack: IdentityStack) -> None:
    store = SigningKeyStore(stack.db)
    sealer = Sealer.from_text(stack.settings.data_key.get_secret_value())
    first = await rotate_keys(store, sealer, now=time.time(), min_age=900)
    with pytest.raises(RotationRefused):
        await rotate_keys(store, sealer, now=time.time(), min_age=900)
    later = await rotate_keys(store, sealer, now=time.time() + 901, min_age=900)
    assert later.previous == first.current and later.retired == [first.previous]
    statuses = {r.kid: r.status for r in await store.all() if r.alg == "EdDSA"}
    assert statuses == {first.previous: "retired", first.current: "previous", later.current: "current"}
    rsa = [r.status for r in await store.all() if r.alg == "RS256"]
    assert rsa == ["current"]  # an Ed25519 rotation leaves the RSA key alone


def _keys_cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "services.session", "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    return done.returncode, done.stdout, done.stderr


async def test_the_keys_command_rotates_and_retires_in_the_configured_database(
    mongo_server: EmbeddedMongo, unique: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WXLOGIN_")},
        "WXLOGIN_MONGO_URL": mongo_server.url,
        "WXLOGIN_MONGO_DB": f"t_{unique}",
        "WXLOGIN_DATA_KEY": generate_key(),
    }
    try:
        code, out, _ = await asyncio.to_thread(_keys_cli, ["rotate"], env)
        assert code == 0, out
        first = {r["alg"]: r for r in json.loads(out)["rotated"]}
        assert set(first) == {"EdDSA", "RS256"}  # both kinds, from an empty database
        assert all(r["previous"] is None for r in first.values())
        assert sorted((k["alg"], k["status"]) for k in json.loads(out)["keys"]) == [
            ("EdDSA", "current"),
            ("RS256", "current"),
        ]

        code, out, _ = await asyncio.to_thread(_keys_cli, ["rotate", "--alg", "RS256"], env)
        assert code == 0, out
        (second,) = json.loads(out)["rotated"]
        assert second["alg"] == "RS256" and second["previous"] == first["RS256"]["current"]

        code, _, err = await asyncio.to_thread(_keys_cli, ["retire"], env)
        assert code == 2 and "--force" in err and "RS256" in err

        code, out, _ = await asyncio.to_thread(_keys_cli, ["retire", "--force"], env)
        assert code == 0
        assert json.loads(out)["retired"] == {"EdDSA": [], "RS256": [first["RS256"]["current"]]}
        listed = {k["kid"]: k["status"] for k in json.loads(out)["keys"]}
        assert listed == {
            first["EdDSA"]["current"]: "current",
            first["RS256"]["current"]: "retired",
            second["current"]: "current",
        }
    finally:
        await drop_database(make_settings(mongo_url=mongo_server.url, mongo_db=f"t_{unique}"))
