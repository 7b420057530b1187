"""What a gateway remembers of the scenes it issued, and when it will not vouch for them."""

from __future__ import annotations

from services.gateway.store import IssuedHere
from tests.support import ManualClock

SCENE = "S" * 32
HASH = "a" * 64


class BusSession:
    """What ``Bus.session`` reads now (None: the bus is down)."""

    def __init__(self, now: int | None = 1) -> None:
        self.now = now

    def __call__(self) -> int | None:
        return self.now


def test_a_scene_issued_here_is_pending_to_its_own_ticket_under_the_same_bus_session() -> None:
    bus = BusSession(7)
    issued = IssuedHere(clock=ManualClock(1_000.0), session=bus)
    issued.add(SCENE, HASH, 1_300.0, session=7)

    assert issued.status(SCENE, HASH) == "pending"
    assert issued.status(SCENE, "b" * 64) is None  # another ticket: qrcode refuses it
    assert issued.status("T" * 32, HASH) is None  # issued elsewhere
    bus.now = 8
    assert issued.status(SCENE, HASH) is None  # the bus reconnected since: events may be missing
    bus.now = None
    assert issued.status(SCENE, HASH) is None  # the bus is down


def test_events_move_it_forward_only_and_a_final_state_is_left_to_qrcode() -> None:
    issued = IssuedHere(clock=ManualClock(1_000.0), session=BusSession())
    issued.add(SCENE, HASH, 1_300.0, session=1)

    issued.saw(SCENE, "scanned")
    issued.saw(SCENE, "pending")
    assert issued.status(SCENE, HASH) == "scanned"
    issued.saw(SCENE, "confirmed")  # whether its redeem window is still open is qrcode's to say
    assert issued.status(SCENE, HASH) is None
    issued.saw("T" * 32, "confirmed")  # not issued here: nothing is kept
    assert len(issued) == 1


def test_a_scene_past_its_expiry_is_left_to_qrcode_and_dropped_at_the_next_issue() -> None:
    clock = ManualClock(1_000.0)
    issued = IssuedHere(clock=clock, session=BusSession())
    issued.add(SCENE, HASH, 1_300.0, session=1)

    clock.now = 1_300.0
    assert issued.status(SCENE, HASH) is None
    issued.add("T" * 32, HASH, 1_600.0, session=1)
    assert len(issued) == 1


def test_it_holds_at_most_max_entries_the_oldest_going_first() -> None:
    issued = IssuedHere(max_entries=3, clock=ManualClock(1_000.0), session=BusSession())
    scenes = [f"{i:032d}" for i in range(5)]
    for scene in scenes:
        issued.add(scene, HASH, 2_000.0, session=1)

    assert len(issued) == 3
    assert issued.status(scenes[0], HASH) is None
    assert issued.status(scenes[4], HASH) == "pending"


def test_nothing_is_kept_when_the_bus_was_down_at_the_issue() -> None:
    issued = IssuedHere(clock=ManualClock(1_000.0), session=BusSession())
    issued.add(SCENE, HASH, 1_300.0, session=None)
    assert len(issued) == 0
