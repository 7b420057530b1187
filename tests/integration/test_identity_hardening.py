"""Security review M1 and L5 over a running system: with write access to MongoDB alone, a planted
refresh token, a token moved to another user and a planted public key are refused; refresh tokens of
an earlier version are re-keyed by one command; "log out everywhere" ends every session of a user."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.session.app import successor_keys
from services.session.keys import new_key_record, public_jwk
from services.session.refresh import KEYED_PREFIX, migrate_legacy_tokens
from services.session.store import RefreshTokenStore
from shared.mongo import EmbeddedMongo
from shared.sealing import Sealer, generate_key
from tests.integration.identity_stack import IdentityStack, identity_stack


@pytest.fixture
async def stack(mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str) -> AsyncIterator[IdentityStack]:
    async with identity_stack("memory", mongo_server, amqp_base_url, unique) as running:
        yield running


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def refresh(stack: IdentityStack, token: str) -> tuple[int, Any]:
    return await stack.request("POST", "/api/token/refresh", {"refresh_token": token})


async def test_a_refresh_token_planted_in_mongodb_is_refused(stack: IdentityStack) -> None:
    victim = await stack.phone().register()
    await victim.login()
    record = await stack.db.refresh_tokens.find_one({"user_id": victim.tokens["user"]["id"]})
    planted = "attacker-chosen-refresh-token-000000"
    # What an earlier version would have accepted: the victim's record under the token's bare SHA-256.
    await stack.db.refresh_tokens.insert_one({**record, "_id": sha256_hex(planted)})
    status, body = await refresh(stack, planted)
    assert status == 401 and body["error"]["code"] == "refresh_invalid"


async def test_a_stored_refresh_token_moved_to_another_user_is_refused(stack: IdentityStack) -> None:
    victim, attacker = await stack.phone().register(), await stack.phone().register()
    await victim.login()
    await attacker.login()
    await stack.db.refresh_tokens.update_many(
        {"user_id": attacker.tokens["user"]["id"]}, {"$set": {"user_id": victim.tokens["user"]["id"]}}
    )
    status, body = await refresh(stack, attacker.tokens["refresh_token"])
    assert status == 401 and body["error"]["code"] == "refresh_invalid"


async def test_only_keyed_hashes_of_tokens_and_codes_are_stored(stack: IdentityStack) -> None:
    mp = await stack.phone().register()
    code = await mp.phone.wx_login()
    await mp.login(code)
    ids = [doc["_id"] async for doc in stack.db.refresh_tokens.find({})]
    assert ids and all(i.startswith(KEYED_PREFIX) for i in ids)
    assert sha256_hex(mp.tokens["refresh_token"]) not in ids
    assert await stack.db.code_uses.count_documents({}) == 1
    assert await stack.db.code_uses.find_one({"_id": sha256_hex(code)}) is None


async def test_refresh_tokens_of_an_earlier_version_work_after_the_migration_command(
    stack: IdentityStack,
) -> None:
    mp = await stack.phone().register()
    await mp.login()
    token = mp.tokens["refresh_token"]
    # Store it the way the earlier version did: bare SHA-256 id, no MAC, no session start.
    doc = await stack.db.refresh_tokens.find_one({"user_id": mp.tokens["user"]["id"]})
    await stack.db.refresh_tokens.delete_one({"_id": doc["_id"]})
    legacy = {k: v for k, v in doc.items() if k not in ("mac", "session_started_at")}
    await stack.db.refresh_tokens.insert_one({**legacy, "_id": sha256_hex(token)})
    store = RefreshTokenStore(stack.db)
    assert await store.count_legacy() == 1
    status, _ = await refresh(stack, token)
    assert status == 401  # never accepted as it is: anyone could have written it
    assert await migrate_legacy_tokens(store, successor_keys(stack.settings)[0]) == 1
    assert await store.count_legacy() == 0
    status, body = await refresh(stack, token)
    assert status == 200, body
    assert body["user"]["id"] == mp.tokens["user"]["id"]


async def test_a_public_key_planted_in_mongodb_is_not_published_nor_accepted(stack: IdentityStack) -> None:
    attacker_key = Ed25519PrivateKey.generate()
    jwk = public_jwk(attacker_key)
    # A "previous" key: sealed with a data key of the attacker's choosing (not ours).
    record = new_key_record(Sealer.from_text(generate_key()), 0.0, status="previous")
    await stack.db.signing_keys.insert_one({**record.to_doc(), "_id": jwk["kid"], "public_jwk": jwk})
    mp = await stack.phone().register()
    await mp.login()
    forged = jwt.encode(
        {**jwt.decode(mp.access_token, options={"verify_signature": False})},
        attacker_key,
        algorithm="EdDSA",
        headers={"kid": jwk["kid"], "typ": "JWT"},
    )
    await asyncio.sleep(0.5)  # the session service re-reads its keys every 0.2 s here (FAST)
    status, document = await stack.request("GET", "/.well-known/jwks.json")
    assert status == 200 and jwk["kid"] not in [k["kid"] for k in document["keys"]]
    status, _ = await mp.me(forged)
    assert status == 401
    assert (await mp.me())[0] == 200


async def test_log_out_everywhere_ends_every_session_of_the_user(stack: IdentityStack) -> None:
    mp = await stack.phone().register()
    phone_session = await mp.login()
    laptop_session = await mp.login()
    other = await stack.phone().register()
    await other.login()
    status, _ = await stack.request(
        "POST", "/api/logout", {"everywhere": True}, token=phone_session["access_token"]
    )
    assert status == 204
    for session in (phone_session, laptop_session):
        status, body = await refresh(stack, session["refresh_token"])
        assert status == 401, body
    status, body = await stack.request(
        "POST", "/api/mp/phone", {"code": "x" * 32}, token=laptop_session["access_token"]
    )
    assert status == 401 and body["error"]["code"] == "session_ended"
    assert (await other.refresh())[0] == 200
