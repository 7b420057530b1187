"""Refresh-token rules (:class:`RefreshFamilies`) over a hand-written in-memory store.

The fake store yields to the event loop inside every operation, so concurrent refreshes interleave
the way two replicas would; its updates are conditional exactly like the Mongo store's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

from services.session.errors import RefreshInvalid, RefreshReused, SessionEnded
from services.session.refresh import (
    KEYED_PREFIX,
    Binding,
    RefreshFamilies,
    keyed_id,
    record_mac,
    sha256_hex,
)
from services.session.store import RefreshRecord
from tests.support import ManualClock

TTL, GRACE = 30 * 86400.0, 10.0


class DictStore:
    """``RefreshTokenStore`` semantics over a dict (hash → record)."""

    def __init__(self) -> None:
        self.records: dict[str, RefreshRecord] = {}

    async def insert(self, record: RefreshRecord) -> bool:
        await asyncio.sleep(0)
        if record.token_hash in self.records:
            return False
        self.records[record.token_hash] = record
        return True

    async def get(self, token_hash: str) -> RefreshRecord | None:
        await asyncio.sleep(0)
        return self.records.get(token_hash)

    async def spend(self, token_hash: str, successor: str, now: float) -> bool:
        await asyncio.sleep(0)
        record = self.records.get(token_hash)
        if record is None or record.rotated_at is not None or record.revoked:
            return False
        self.records[token_hash] = dataclasses.replace(record, rotated_at=now, successor=successor)
        return True

    async def family_revoked(self, family: str) -> bool:
        await asyncio.sleep(0)
        return any(r.revoked for r in self.records.values() if r.family == family)

    async def family_owner(self, family: str) -> str | None:
        await asyncio.sleep(0)
        return next((r.user_id for r in self.records.values() if r.family == family), None)

    async def family_record(self, family: str) -> RefreshRecord | None:
        await asyncio.sleep(0)
        return next((r for r in self.records.values() if r.family == family), None)

    async def revoke_family(self, family: str, reason: str, now: float) -> int:
        await asyncio.sleep(0)
        hit = [h for h, r in self.records.items() if r.family == family and not r.revoked]
        for h in hit:
            self.records[h] = dataclasses.replace(self.records[h], revoked=True)
        return len(hit)

    async def revoke_user(self, user_id: str, reason: str, now: float) -> int:
        await asyncio.sleep(0)
        hit = [h for h, r in self.records.items() if r.user_id == user_id and not r.revoked]
        for h in hit:
            self.records[h] = dataclasses.replace(self.records[h], revoked=True)
        return len(hit)

    def live(self, family: str) -> list[RefreshRecord]:
        return [r for r in self.records.values() if r.family == family and r.rotated_at is None]


@pytest.fixture
def store() -> DictStore:
    return DictStore()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000.0)


@pytest.fixture
def families(store: DictStore, clock: ManualClock) -> RefreshFamilies:
    return RefreshFamilies(store, os.urandom(32), ttl=TTL, grace=GRACE, clock=clock)


async def test_a_refresh_spends_the_token_and_hands_out_its_successor(
    families: RefreshFamilies, store: DictStore
) -> None:
    first = await families.start("u_1")
    second = await families.rotate(first.token)
    assert second.token != first.token and second.family == first.family and second.user_id == "u_1"
    third = await families.rotate(second.token)
    assert third.token not in (first.token, second.token)
    assert [r.token_hash for r in store.live(first.family)] == [families.token_id(third.token)]


async def test_only_keyed_hashes_are_stored(families: RefreshFamilies, store: DictStore) -> None:
    first = await families.start("u_1")
    second = await families.rotate(first.token)
    assert first.token not in store.records and second.token not in store.records
    assert set(store.records) == {families.token_id(first.token), families.token_id(second.token)}
    assert sha256_hex(first.token) not in store.records
    assert all(h.startswith(KEYED_PREFIX) for h in store.records)


# --- security review M1: write access to the database alone ------------------------------------------


def _planted(token_hash: str, user_id: str, now: float, mac: str = "") -> RefreshRecord:
    return RefreshRecord(
        token_hash, "planted_family", user_id, now, now + TTL, session_started_at=now, mac=mac
    )


async def test_a_token_planted_under_its_bare_sha256_is_refused(
    families: RefreshFamilies, store: DictStore, clock: ManualClock
) -> None:
    token = "attacker-chosen-refresh-token-0000"
    await store.insert(_planted(sha256_hex(token), "u_victim", clock.now))
    with pytest.raises(RefreshInvalid):
        await families.rotate(token)


async def test_a_token_planted_without_the_server_key_is_refused(
    families: RefreshFamilies, store: DictStore, clock: ManualClock
) -> None:
    token, guess = "attacker-chosen-refresh-token-0000", os.urandom(32)
    planted = _planted(keyed_id(guess, sha256_hex(token)), "u_victim", clock.now)
    await store.insert(dataclasses.replace(planted, mac=record_mac(guess, planted)))
    with pytest.raises(RefreshInvalid):
        await families.rotate(token)


async def test_a_stored_token_moved_to_another_user_is_refused(
    families: RefreshFamilies, store: DictStore
) -> None:
    mine = await families.start("u_attacker")
    key = families.token_id(mine.token)
    store.records[key] = dataclasses.replace(store.records[key], user_id="u_victim")
    with pytest.raises(RefreshInvalid):
        await families.rotate(mine.token)
    assert await families.family_of(mine.token) is None


async def test_tokens_stored_under_a_rotated_out_data_key_still_refresh(
    store: DictStore, clock: ManualClock
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    first = await RefreshFamilies(store, old, ttl=TTL, grace=GRACE, clock=clock).start("u_1")
    rotated = RefreshFamilies(store, new, older_keys=[old], ttl=TTL, grace=GRACE, clock=clock)
    second = await rotated.rotate(first.token)
    assert rotated.token_id(second.token) in store.records  # the successor under the new key
    # once the old key is dropped, the successor still refreshes
    assert (await RefreshFamilies(store, new, ttl=TTL, grace=GRACE, clock=clock).rotate(second.token)).user_id


# --- security review L5: sessions end ------------------------------------------------------------------


async def test_a_session_ends_at_its_maximum_lifetime_however_often_it_refreshes(
    store: DictStore, clock: ManualClock
) -> None:
    families = RefreshFamilies(
        store, os.urandom(32), ttl=7 * 86400, grace=GRACE, max_age=30 * 86400, clock=clock
    )
    grant = await families.start("u_1")
    for _ in range(4):  # a refresh every 6 days keeps a sliding session alive forever
        clock.now += 6 * 86400
        grant = await families.rotate(grant.token)
    assert store.records[families.token_id(grant.token)].expires_at == 1_000_000.0 + 30 * 86400
    clock.now += 6 * 86400
    with pytest.raises(SessionEnded):
        await families.rotate(grant.token)


async def test_log_out_everywhere_ends_every_session_of_the_user_only(families: RefreshFamilies) -> None:
    phone, laptop, other = (
        await families.start("u_1"),
        await families.start("u_1"),
        await families.start("u_2"),
    )
    assert await families.revoke_user("u_1", "logout_everywhere") == 2
    for grant in (phone, laptop):
        with pytest.raises(RefreshInvalid):
            await families.rotate(grant.token)
        with pytest.raises(SessionEnded):
            await families.check_live(grant.family, "u_1")
    assert (await families.rotate(other.token)).user_id == "u_2"
    assert await families.live_owner(phone.token) is None


async def test_reuse_after_the_grace_revokes_the_family(
    families: RefreshFamilies, store: DictStore, clock: ManualClock
) -> None:
    first = await families.start("u_1")
    second = await families.rotate(first.token)
    clock.now += GRACE + 1
    with pytest.raises(RefreshReused):
        await families.rotate(first.token)
    with pytest.raises(RefreshInvalid):
        await families.rotate(second.token)
    assert all(r.revoked for r in store.records.values())


async def test_reuse_within_the_grace_returns_the_same_successor_without_revoking(
    families: RefreshFamilies, store: DictStore, clock: ManualClock
) -> None:
    first = await families.start("u_1")
    second = await families.rotate(first.token)
    clock.now += GRACE - 1
    again = await families.rotate(first.token)
    assert again == second
    assert not any(r.revoked for r in store.records.values())
    assert len(store.live(first.family)) == 1


async def test_concurrent_refreshes_with_one_token_both_get_the_one_successor(
    families: RefreshFamilies, store: DictStore
) -> None:
    first = await families.start("u_1")
    grants = await asyncio.gather(*(families.rotate(first.token) for _ in range(5)))
    assert len({g.token for g in grants}) == 1
    assert len(store.live(first.family)) == 1
    assert store.records[families.token_id(first.token)].rotated_at is not None


async def test_within_the_grace_a_spent_successor_means_reuse(
    families: RefreshFamilies, store: DictStore
) -> None:
    first = await families.start("u_1")
    second = await families.rotate(first.token)
    await families.rotate(second.token)
    with pytest.raises(RefreshReused):
        await families.rotate(first.token)
    assert all(r.revoked for r in store.records.values())


async def test_an_unknown_or_expired_token_is_invalid_and_revokes_nothing(
    families: RefreshFamilies, store: DictStore, clock: ManualClock
) -> None:
    with pytest.raises(RefreshInvalid):
        await families.rotate("never-issued")
    first = await families.start("u_1")
    clock.now += TTL + 1
    with pytest.raises(RefreshInvalid):
        await families.rotate(first.token)
    assert not any(r.revoked for r in store.records.values())


async def test_logout_ends_refresh_and_the_session(families: RefreshFamilies) -> None:
    first = await families.start("u_1")
    await families.check_live(first.family, "u_1")
    assert await families.revoke(first.family, "logout")
    assert not await families.revoke(first.family, "logout")  # already ended
    with pytest.raises(RefreshInvalid):
        await families.rotate(first.token)
    with pytest.raises(SessionEnded):
        await families.check_live(first.family, "u_1")


async def test_a_session_belongs_to_its_user(families: RefreshFamilies) -> None:
    first = await families.start("u_1")
    with pytest.raises(SessionEnded):
        await families.check_live(first.family, "u_2")
    with pytest.raises(SessionEnded):
        await families.check_live("no-such-family", "u_1")


async def test_a_logout_racing_a_refresh_leaves_no_live_token(
    families: RefreshFamilies, store: DictStore
) -> None:
    first = await families.start("u_1")
    results = await asyncio.gather(
        families.rotate(first.token), families.revoke(first.family, "logout"), return_exceptions=True
    )
    assert results[1] is True
    assert isinstance(results[0], RefreshInvalid) or results[0].family == first.family  # type: ignore[union-attr]
    assert await store.family_revoked(first.family)
    for token in (first.token, families.successor_of(first.token)):
        with pytest.raises(RefreshInvalid):
            await families.rotate(token)


def test_successors_depend_on_the_server_key(store: DictStore) -> None:
    one = RefreshFamilies(store, b"k" * 32, ttl=TTL, grace=GRACE)
    same = RefreshFamilies(store, b"k" * 32, ttl=TTL, grace=GRACE)
    other = RefreshFamilies(store, b"x" * 32, ttl=TTL, grace=GRACE)
    assert one.successor_of("t") == same.successor_of("t") != other.successor_of("t")
    assert one.successor_of("t") != one.successor_of("u")
    assert len(one.successor_of("t")) == 43  # 256 bits, base64url


def test_a_short_successor_key_is_refused(store: DictStore) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        RefreshFamilies(store, b"short", ttl=TTL, grace=GRACE)


# --- clients and OpenID Connect grants ----------------------------------------------------------------

OIDC_A = Binding("site-a", "openid profile", 999_000.0)


async def test_a_family_keeps_its_client_and_grant_through_rotations(families: RefreshFamilies) -> None:
    grant = await families.start("u_1", family="fam_of_the_code", binding=OIDC_A)
    assert grant.family == "fam_of_the_code"
    for _ in range(3):
        grant = await families.rotate(grant.token, oidc_client="site-a")
    assert grant.binding == OIDC_A and grant.family == "fam_of_the_code"
    record = await families.live_family("fam_of_the_code")
    assert record is not None and (record.client_id, record.scope, record.auth_time) == (
        "site-a",
        "openid profile",
        999_000.0,
    )


async def test_the_token_endpoint_refuses_another_clients_refresh_token_and_spends_nothing(
    families: RefreshFamilies, store: DictStore
) -> None:
    grant = await families.start("u_1", binding=OIDC_A)
    with pytest.raises(RefreshInvalid, match="another client"):
        await families.rotate(grant.token, oidc_client="site-b")
    assert [r.rotated_at for r in store.records.values()] == [None]
    assert (await families.rotate(grant.token, oidc_client="site-a")).family == grant.family


async def test_browser_api_and_token_endpoint_tokens_do_not_cross(families: RefreshFamilies) -> None:
    oidc = await families.start("u_1", binding=OIDC_A)
    browser = await families.start("u_1", binding=Binding("site-a"))
    with pytest.raises(RefreshInvalid):  # /api/token/refresh: an OIDC token would lose its scope
        await families.rotate(oidc.token)
    with pytest.raises(RefreshInvalid):  # the token endpoint: not a grant of the code flow
        await families.rotate(browser.token, oidc_client="site-a")
    assert (await families.rotate(browser.token)).binding.client_id == "site-a"


async def test_a_stored_token_moved_to_another_client_is_refused(
    families: RefreshFamilies, store: DictStore
) -> None:
    grant = await families.start("u_1", binding=OIDC_A)
    (token_hash,) = store.records
    store.records[token_hash] = dataclasses.replace(store.records[token_hash], client_id="site-b")
    with pytest.raises(RefreshInvalid):
        await families.rotate(grant.token, oidc_client="site-b")


async def test_a_revoked_family_is_not_live(families: RefreshFamilies) -> None:
    grant = await families.start("u_1", binding=OIDC_A)
    assert await families.live_family(grant.family) is not None
    await families.revoke(grant.family, "logout")
    assert await families.live_family(grant.family) is None
    assert await families.live_family("never-issued") is None
