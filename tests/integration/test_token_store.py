"""The token store and the lease against nx-27017: conditional updates decide, whatever the concurrency."""

from __future__ import annotations

import asyncio

import pytest

from services.token.store import (
    TOKENS,
    LeaseStore,
    StoredToken,
    TokenStore,
    TokenUnreadable,
    beijing_day,
)
from shared.sealing import Sealer, generate_key
from tests.integration.conftest import Client

APPID = "wx0123456789abcdef"
NOW = 1_800_000_000.0
DAY = 86400.0
SEALER = Sealer.from_text(generate_key())


@pytest.fixture
def dbname(unique: str) -> str:
    return f"t_{unique}"


def token(name: str, expires_at: float = NOW + 7200) -> StoredToken:
    return StoredToken(f"86_{name}_" + "x" * 30, expires_at, NOW)


# --- the lease -------------------------------------------------------------------------------------


async def test_the_first_replica_creates_the_lease_and_others_are_refused_while_it_is_held(
    clients: list[Client], dbname: str
) -> None:
    a, b = LeaseStore(clients[0][dbname], APPID), LeaseStore(clients[1][dbname], APPID)
    assert await a.acquire("a", NOW, 30)
    assert not await b.acquire("b", NOW + 29, 30)
    assert await a.acquire("a", NOW + 29, 30)  # renewed: now until NOW + 59
    assert not await b.acquire("b", NOW + 58, 30)
    holder = await a.holder()
    assert holder is not None and (holder.owner, holder.until) == ("a", NOW + 59)


async def test_a_lapsed_lease_is_taken_by_another_replica_and_the_old_owner_cannot_renew_it(
    clients: list[Client], dbname: str
) -> None:
    a, b = LeaseStore(clients[0][dbname], APPID), LeaseStore(clients[1][dbname], APPID)
    assert await a.acquire("a", NOW, 30)
    assert await b.acquire("b", NOW + 31, 30)
    assert not await a.acquire("a", NOW + 32, 30)


async def test_a_released_lease_is_free_at_once_and_only_its_owner_can_release_it(
    clients: list[Client], dbname: str
) -> None:
    a, b = LeaseStore(clients[0][dbname], APPID), LeaseStore(clients[1][dbname], APPID)
    assert await a.acquire("a", NOW, 30)
    assert not await b.release("b")
    assert not await b.acquire("b", NOW + 1, 30)
    assert await a.release("a")
    assert await b.acquire("b", NOW + 1, 30)


async def test_of_many_replicas_racing_for_a_free_lease_exactly_one_gets_it(
    clients: list[Client], dbname: str
) -> None:
    leases = [LeaseStore(clients[i % 3][dbname], APPID) for i in range(30)]
    won = await asyncio.gather(*(lease.acquire(f"r{i}", NOW, 30) for i, lease in enumerate(leases)))
    assert sum(won) == 1
    won = await asyncio.gather(*(lease.acquire(f"r{i}", NOW + 31, 30) for i, lease in enumerate(leases)))
    assert sum(won) == 1  # and again once it has lapsed


async def test_the_lease_and_the_token_are_per_appid(clients: list[Client], dbname: str) -> None:
    db = clients[0][dbname]
    assert await LeaseStore(db, APPID).acquire("a", NOW, 30)
    assert await LeaseStore(db, "wxother").acquire("b", NOW, 30)
    await TokenStore(db, APPID, sealer=SEALER).save(token("one"), expected_version=None)
    assert await TokenStore(db, "wxother", sealer=SEALER).load() is None


# --- saving the token ------------------------------------------------------------------------------


async def test_a_save_from_an_older_version_never_overwrites_a_newer_token(
    clients: list[Client], dbname: str
) -> None:
    store = TokenStore(clients[0][dbname], APPID, sealer=SEALER)
    first = await store.save(token("one"), expected_version=None)
    assert first is not None and first.version == 1
    assert await store.save(token("again"), expected_version=None) is None
    second = await store.save(token("two"), expected_version=1)
    assert second is not None and second.version == 2
    assert await store.save(token("late"), expected_version=1) is None
    assert await store.load() == second


async def test_concurrent_saves_from_the_same_version_let_exactly_one_through(
    clients: list[Client], dbname: str
) -> None:
    stores = [TokenStore(clients[i % 3][dbname], APPID, sealer=SEALER) for i in range(3)]
    await stores[0].save(token("one"), expected_version=None)
    results = await asyncio.gather(
        *(s.save(token(f"r{i}"), expected_version=1) for i, s in enumerate(stores))
    )
    assert sum(r is not None for r in results) == 1


async def test_a_token_saved_by_the_first_version_of_the_service_is_upgraded_and_can_be_forced(
    clients: list[Client], dbname: str
) -> None:
    db = clients[0][dbname]
    old = token("legacy")
    await db[TOKENS].insert_one(
        {
            "_id": f"access_token:{APPID}",
            "access_token": old.access_token,
            "expires_at": old.expires_at,
            "fetched_at": NOW,
        }
    )
    store = TokenStore(db, APPID, sealer=SEALER)
    loaded = await store.load()
    assert loaded is not None and loaded.version == 0
    saved = await store.save(token("new"), expected_version=0)
    assert saved is not None and saved.version == 1
    decision = await store.claim_force(saved.fingerprint, NOW, min_interval=30, per_day=20)
    assert decision.claimed


async def test_a_forced_token_is_saved_over_whatever_is_stored(clients: list[Client], dbname: str) -> None:
    store = TokenStore(clients[0][dbname], APPID, sealer=SEALER)
    await store.save(token("one"), expected_version=None)
    await store.save(token("two"), expected_version=1)
    forced = await store.save_forced(token("forced"))
    assert forced.version == 3
    assert await store.load() == forced


# --- claiming a force refresh ----------------------------------------------------------------------


async def test_a_force_refresh_is_refused_for_a_token_that_is_no_longer_stored(
    clients: list[Client], dbname: str
) -> None:
    store = TokenStore(clients[0][dbname], APPID, sealer=SEALER)
    old = await store.save(token("one"), expected_version=None)
    assert old is not None
    await store.save(token("two"), expected_version=1)
    decision = await store.claim_force(old.fingerprint, NOW, min_interval=30, per_day=20)
    assert (decision.claimed, decision.refusal) == (False, "stale")
    assert (await store.claim_force("0" * 16, NOW, min_interval=30, per_day=20)).refusal == "stale"


async def test_claims_are_30_s_apart_counted_from_the_later_of_claim_and_answer(
    clients: list[Client], dbname: str
) -> None:
    store = TokenStore(clients[0][dbname], APPID, sealer=SEALER)
    saved = await store.save(token("one"), expected_version=None)
    assert saved is not None
    fp = saved.fingerprint
    assert (await store.claim_force(fp, NOW, min_interval=30, per_day=20)).claimed
    assert (await store.claim_force(fp, NOW + 29, min_interval=30, per_day=20)).refusal == "throttled"
    await store.force_finished(NOW + 4)  # WeChat answered 4 s after the claim
    assert (await store.claim_force(fp, NOW + 30, min_interval=30, per_day=20)).refusal == "throttled"
    await store.force_finished(NOW + 1)  # never moves the time back
    assert (await store.claim_force(fp, NOW + 34, min_interval=30, per_day=20)).claimed


async def test_claims_stop_at_the_daily_cap_and_start_again_on_the_next_beijing_day(
    clients: list[Client], dbname: str
) -> None:
    store = TokenStore(clients[0][dbname], APPID, sealer=SEALER)
    saved = await store.save(token("one"), expected_version=None)
    assert saved is not None
    midnight = (beijing_day(NOW) + 1) * DAY - 8 * 3600  # a Beijing midnight, as epoch seconds
    t = midnight + 1
    for n in range(1, 4):
        decision = await store.claim_force(saved.fingerprint, t, min_interval=30, per_day=3)
        assert (decision.claimed, decision.count_today) == (True, n)
        t += 31
    refused = await store.claim_force(saved.fingerprint, t, min_interval=30, per_day=3)
    assert (refused.refusal, refused.count_today) == ("daily_cap", 3)
    again = await store.claim_force(saved.fingerprint, midnight + DAY + 1, min_interval=30, per_day=3)
    assert (again.claimed, again.count_today) == (True, 1)


async def test_of_a_hundred_concurrent_claims_from_three_replicas_exactly_one_wins(
    clients: list[Client], dbname: str
) -> None:
    stores = [TokenStore(client[dbname], APPID, sealer=SEALER) for client in clients]
    saved = await stores[0].save(token("one"), expected_version=None)
    assert saved is not None
    decisions = await asyncio.gather(
        *(stores[i % 3].claim_force(saved.fingerprint, NOW, min_interval=30, per_day=20) for i in range(100))
    )
    assert sum(d.claimed for d in decisions) == 1
    assert {d.refusal for d in decisions if not d.claimed} == {"throttled"}


async def test_a_claim_bumps_the_version_so_a_refresh_that_started_before_it_cannot_save(
    clients: list[Client], dbname: str
) -> None:
    store = TokenStore(clients[0][dbname], APPID, sealer=SEALER)
    saved = await store.save(token("one"), expected_version=None)
    assert saved is not None
    assert (await store.claim_force(saved.fingerprint, NOW, min_interval=30, per_day=20)).claimed
    assert await store.save(token("normal"), expected_version=saved.version) is None


# --- the token at rest (security review L8) ---------------------------------------------------------


async def test_the_stored_document_holds_the_token_only_sealed(clients: list[Client], dbname: str) -> None:
    db = clients[0][dbname]
    store = TokenStore(db, APPID, sealer=SEALER)
    saved = await store.save(token("one"), expected_version=None)
    assert saved is not None
    forced = await store.save_forced(token("forced"))
    doc = await db[TOKENS].find_one({"_id": f"access_token:{APPID}"})
    assert doc is not None and "access_token" not in doc
    assert forced.access_token not in repr(doc) and saved.access_token not in repr(doc)
    assert SEALER.open(doc["sealed_token"], purpose=f"access-token:{APPID}") == forced.access_token
    assert await store.load() == forced
    # Sealed for this appid: the document copied under another appid's id does not open there.
    await db[TOKENS].insert_one({**doc, "_id": "access_token:wxother"})
    with pytest.raises(TokenUnreadable):
        await TokenStore(db, "wxother", sealer=SEALER).load()
    with pytest.raises(TokenUnreadable):
        await TokenStore(db, APPID, sealer=Sealer.from_text(generate_key())).load()


async def test_a_token_stored_in_clear_by_the_previous_version_is_used_and_sealed_at_the_next_write(
    clients: list[Client], dbname: str
) -> None:
    db = clients[0][dbname]
    old = token("clear")
    await db[TOKENS].insert_one(
        {
            "_id": f"access_token:{APPID}",
            "access_token": old.access_token,
            "fingerprint": old.fingerprint,
            "expires_at": old.expires_at,
            "fetched_at": NOW,
            "version": 4,
            "force_last": 0.0,
            "force_day": 0,
            "force_count": 0,
        }
    )
    store = TokenStore(db, APPID, sealer=SEALER)
    assert await store.load() == StoredToken(old.access_token, old.expires_at, NOW, 4)
    saved = await store.save(token("next"), expected_version=4)
    assert saved is not None and saved.version == 5
    doc = await db[TOKENS].find_one({"_id": f"access_token:{APPID}"})
    assert doc is not None and "access_token" not in doc and old.access_token not in repr(doc)
    assert await store.load() == saved
