"""The session replica's memory of whom each scene was confirmed for, which spares the browser's
complete a read of the user: it hands out only that scene's user, once, while the login can still be
collected, and holds a bounded number."""

from __future__ import annotations

from services.session.store import ConfirmedUsers, User
from tests.support import ManualClock


def user(user_id: str) -> User:
    return User(user_id, f"openid-{user_id}", None, None, 1.0, 2.0, 3)


def test_the_complete_of_a_scene_gets_the_user_its_confirm_counted_once() -> None:
    memory = ConfirmedUsers(clock=ManualClock(100.0))
    memory.keep("scene-a", user("u1"))
    memory.keep("scene-b", user("u2"))
    assert memory.take("scene-a", "u1") == user("u1")
    assert memory.take("scene-a", "u1") is None  # a retried complete reads the user from Mongo
    assert memory.take("scene-c", "u1") is None  # a scene this replica did not confirm


def test_another_user_than_the_redeemed_one_is_never_handed_out() -> None:
    memory = ConfirmedUsers(clock=ManualClock(100.0))
    memory.keep("scene-a", user("u1"))
    assert memory.take("scene-a", "u2") is None
    assert memory.take("scene-a", "u1") is None  # and the entry is gone, not left for a later caller


def test_a_user_kept_longer_than_a_login_can_be_collected_is_not_used() -> None:
    clock = ManualClock(100.0)
    memory = ConfirmedUsers(max_age=120.0, clock=clock)
    memory.keep("scene-a", user("u1"))
    memory.keep("scene-b", user("u2"))
    clock.now += 120.0
    assert memory.take("scene-a", "u1") == user("u1")
    clock.now += 0.5
    assert memory.take("scene-b", "u2") is None


def test_memory_holds_at_most_its_size_dropping_the_oldest() -> None:
    memory = ConfirmedUsers(size=2, clock=ManualClock(100.0))
    for n in range(3):
        memory.keep(f"scene-{n}", user(f"u{n}"))
    assert memory.take("scene-0", "u0") is None
    assert memory.take("scene-1", "u1") == user("u1")
    assert memory.take("scene-2", "u2") == user("u2")
