"""The session service's record of wx.login codes against nx-27017: which returning user a scan's code
showed reaches the confirm whichever replica serves it."""

from __future__ import annotations

from services.session.store import CodeUseStore
from tests.integration.conftest import Client

NOW = 1_800_000_000.0
SCAN = "a" * 64
OTHER_SCAN = "b" * 64
PURPOSE = "confirm:" + "s" * 32


async def exchanged(store: CodeUseStore, code_hash: str, scan_hash: str) -> None:
    """A code sent with a scan, claimed and exchanged."""
    assert await store.claim(code_hash, PURPOSE, NOW, scan_hash=scan_hash) is None
    await store.succeed(code_hash, "openid-1", None, "sealed")


async def test_the_identified_user_of_a_scan_reaches_a_confirm_on_another_replica(
    clients: list[Client], unique: str
) -> None:
    here, there = (CodeUseStore(client[f"t_{unique}"]) for client in clients[:2])
    await exchanged(here, "c1", SCAN)
    assert await here.identified_user(SCAN, PURPOSE) is None  # not identified: a new user
    await here.identify("c1", SCAN, PURPOSE, "u_returning")

    assert await here.identified_user(SCAN, PURPOSE) == "u_returning"
    assert await there.identified_user(SCAN, PURPOSE) == "u_returning"  # read from Mongo
    # Bound to the scan and to its scene: another phone, or another scene, has nobody.
    assert await there.identified_user(OTHER_SCAN, PURPOSE) is None
    assert await there.identified_user(SCAN, "confirm:" + "t" * 32) is None
    # Identifying does not mark the code used: the confirm still counts the login, once.
    use, first = await there.attach_for_scan(SCAN, PURPOSE, "u_returning")
    assert use is not None and use.identified_user_id == "u_returning" and first is True
    assert (await there.attach_for_scan(SCAN, PURPOSE, "u_returning"))[1] is False


async def test_a_replica_remembers_a_bounded_number_of_scans_and_reads_the_rest(
    clients: list[Client], unique: str
) -> None:
    db = clients[0][f"t_{unique}"]
    store = CodeUseStore(db, remembered=1)
    await exchanged(store, "c1", SCAN)
    await exchanged(store, "c2", OTHER_SCAN)
    await store.identify("c1", SCAN, PURPOSE, "u_first")
    await store.identify("c2", OTHER_SCAN, PURPOSE, "u_second")
    # The newest is answered from memory (Mongo's copy is gone here), the first, which fell out of
    # memory, from Mongo.
    await db["code_uses"].update_one({"_id": "c2"}, {"$unset": {"identified_user_id": ""}})
    assert await store.identified_user(OTHER_SCAN, PURPOSE) == "u_second"
    assert await store.identified_user(SCAN, PURPOSE) == "u_first"


async def test_an_exchange_is_stored_with_the_user_it_identified_in_one_write(
    clients: list[Client], unique: str
) -> None:
    here, there = (CodeUseStore(client[f"t_{unique}"]) for client in clients[:2])
    assert await here.claim("c1", PURPOSE, NOW, scan_hash=SCAN) is None
    await here.succeed("c1", "openid-1", None, "sealed", identified=(SCAN, PURPOSE, "u_returning"))
    assert await here.identified_user(SCAN, PURPOSE) == "u_returning"
    assert await there.identified_user(SCAN, PURPOSE) == "u_returning"
    use = await there.for_scan(SCAN, PURPOSE)
    assert use is not None and use.status == "done" and use.openid == "openid-1" and not use.done


async def test_a_scan_that_showed_a_new_user_is_answered_from_memory_on_its_replica(
    clients: list[Client], unique: str
) -> None:
    db = clients[0][f"t_{unique}"]
    here, there = CodeUseStore(db), CodeUseStore(clients[1][f"t_{unique}"])
    assert await here.claim("c1", PURPOSE, NOW, scan_hash=SCAN) is None
    await here.succeed("c1", "openid-1", None, "sealed", identified=(SCAN, PURPOSE, None))
    use = await here.for_scan(SCAN, PURPOSE)
    assert use is not None and use.identified_user_id is None  # nothing written for a new user
    # Were Mongo to say otherwise, the replica that saw the scan still answers from memory (no read).
    await db["code_uses"].update_one({"_id": "c1"}, {"$set": {"identified_user_id": "u_planted"}})
    assert await here.identified_user(SCAN, PURPOSE) is None
    assert await there.identified_user(SCAN, PURPOSE) == "u_planted"
    await here.identify("c2", OTHER_SCAN, PURPOSE, None)  # a typed entry's new user: remembered too
    assert await here.identified_user(OTHER_SCAN, PURPOSE) is None


async def test_the_confirm_marks_the_very_code_the_replica_saw_at_the_scan(
    clients: list[Client], unique: str
) -> None:
    """The replica that saw the scan knows its code and marks it by ``_id`` (a primary-key write; a
    write by the scan's fields scans the whole collection on nx-27017), even when an older exchanged
    code of the same scan and scene is stored first; a replica that did not see it finds one by the
    scan's fields."""
    db = clients[0][f"t_{unique}"]
    here, there = CodeUseStore(db), CodeUseStore(clients[1][f"t_{unique}"])
    await exchanged(there, "c_older", SCAN)
    assert await here.claim("c_scan", PURPOSE, NOW, scan_hash=SCAN) is None
    await here.succeed("c_scan", "openid-1", None, "sealed", identified=(SCAN, PURPOSE, "u_returning"))

    use, first = await here.attach_for_scan(SCAN, PURPOSE, "u_returning")
    assert use is not None and use.code_hash == "c_scan" and first is True
    assert (await db["code_uses"].find_one({"_id": "c_older"}) or {}).get("user_id") is None
    # Another replica, with nothing in memory, attaches the code the scan's fields find.
    use, first = await there.attach_for_scan(SCAN, PURPOSE, "u_returning")
    assert use is not None and use.code_hash == "c_older" and first is True
    # Both marked: a repeat is told so, from either replica.
    assert (await here.attach_for_scan(SCAN, PURPOSE, "u_returning"))[1] is False
    assert (await there.attach_for_scan(SCAN, PURPOSE, "u_returning"))[1] is False
