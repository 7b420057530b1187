"""What a gateway remembers of the scenes it issued, and when it will not vouch for them."""

from __future__ import annotations

from services.gateway.store import IssuedHere

SCENE = "S" * 32
HASH = "a" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_scene_issued_here_is_pending_to_its_own_ticket_under_the_same_bus_session() -> None:
    issued = IssuedHere(clock=Clock())
    issued.add(SCENE, HASH, 1_300.0, session=7)

    assert issued.status(SCENE, HASH, 7) == "pending"
    assert issued.status(SCENE, "b" * 64, 7) is None  # another ticket: qrcode refuses it
    assert issued.status(SCENE, HASH, 8) is None  # the bus reconnected since: events may be missing
    assert issued.status(SCENE, HASH, None) is None  # the bus is down
    assert issued.status("T" * 32, HASH, 7) is None  # issued elsewhere


def test_events_move_it_forward_only_and_a_final_state_is_left_to_qrcode() -> None:
    issued = IssuedHere(clock=Clock())
    issued.add(SCENE, HASH, 1_300.0, session=1)

    issued.saw(SCENE, "scanned")
    issued.saw(SCENE, "pending")
    assert issued.status(SCENE, HASH, 1) == "scanned"
    issued.saw(SCENE, "confirmed")  # whether its redeem window is still open is qrcode's to say
    assert issued.status(SCENE, HASH, 1) is None
    issued.saw("T" * 32, "confirmed")  # not issued here: nothing is kept
    assert len(issued) == 1


def test_a_scene_past_its_expiry_is_left_to_qrcode_and_dropped_at_the_next_issue() -> None:
    clock = Clock()
    issued = IssuedHere(clock=clock)
    issued.add(SCENE, HASH, 1_300.0, session=1)

    clock.now = 1_300.0
    assert issued.status(SCENE, HASH, 1) is None
    issued.add("T" * 32, HASH, 1_600.0, session=1)
    assert len(issued) == 1


def test_it_holds_at_most_max_entries_the_oldest_going_first() -> None:
    issued = IssuedHere(max_entries=3, clock=Clock())
    scenes = [f"{i:032d}" for i in range(5)]
    for scene in scenes:
        issued.add(scene, HASH, 2_000.0, session=1)

    assert len(issued) == 3
    assert issued.status(scenes[0], HASH, 1) is None
    assert issued.status(scenes[4], HASH, 1) == "pending"


def test_nothing_is_kept_when_the_bus_was_down_at_the_issue() -> None:
    issued = IssuedHere(clock=Clock())
    issued.add(SCENE, HASH, 1_300.0, session=None)
    assert len(issued) == 0
