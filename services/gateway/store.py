"""The gateway's only state: which WebSockets of this instance watch which scene (in memory).

Pushes are hints and Mongo is the truth, so each subscription only ever moves forward
(pending → scanned → a final state), and nothing is sent before its ticket is verified.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# What the browser is told; ``redeemed`` reads as ``confirmed`` to any late subscriber.
VISIBLE = {"redeemed": "confirmed"}
RANK = {"pending": 0, "scanned": 1, "confirmed": 2, "cancelled": 2, "expired": 2}
FINAL_STATES = frozenset({"confirmed", "cancelled", "expired"})

Sender = Callable[[dict[str, Any]], Awaitable[None]]


def visible_state(state: str) -> str:
    """The state a browser sees for a stored state."""
    return VISIBLE.get(state, state)


@dataclass(eq=False)
class Subscription:
    """One browser's interest in one scene."""

    scene: str
    send: Sender
    close: Callable[[], Awaitable[None]]
    verified: bool = False
    last_rank: int = -1
    held: str | None = None  # the newest state seen before the ticket was verified
    finished: bool = False
    # Why the scene was cancelled (declined, not_me), from the event or the status read; sent with
    # the ``cancelled`` state.
    reason: str | None = None

    def offer(self, state: str, reason: str | None = None) -> str | None:
        """The state to send now, or None (not verified yet, or not newer than what was sent)."""
        state = visible_state(state)
        self._note(state, reason)
        rank = RANK.get(state, -1)
        if not self.verified:
            if self.held is None or rank > RANK.get(self.held, -1):
                self.held = state
            return None
        if self.finished or rank <= self.last_rank:
            return None
        self.last_rank = rank
        self.finished = state in FINAL_STATES
        return state

    def verify(self, current: str, reason: str | None = None) -> str:
        """Mark the ticket as checked; returns the state to offer first (current, or newer if held)."""
        self.verified = True
        self._note(visible_state(current), reason)
        candidates = [visible_state(current)] + ([self.held] if self.held else [])
        self.held = None
        return max(candidates, key=lambda s: RANK.get(s, -1))

    def _note(self, state: str, reason: str | None) -> None:
        if state == "cancelled" and reason and self.reason is None:
            self.reason = reason


@dataclass
class SubscriptionStore:
    """scene → subscriptions of this gateway instance."""

    by_scene: dict[str, set[Subscription]] = field(default_factory=dict)

    def add(self, subscription: Subscription) -> None:
        self.by_scene.setdefault(subscription.scene, set()).add(subscription)

    def remove(self, subscription: Subscription) -> None:
        subs = self.by_scene.get(subscription.scene)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self.by_scene[subscription.scene]

    def watching(self, scene: str) -> list[Subscription]:
        return list(self.by_scene.get(scene, ()))

    def __len__(self) -> int:
        return sum(len(s) for s in self.by_scene.values())


@dataclass
class _Issued:
    ticket_hash: str
    expires_at: float  # epoch seconds, as the qrcode service answered
    session: int  # the bus session (Bus.session) it was issued under
    state: str = "pending"


class IssuedHere:
    """The scenes this gateway issued and what its broadcast queue has said of them since.

    A browser subscribes right after its issue, usually to the same gateway. That gateway minted the
    ticket, and its broadcast queue, bound before the issue, gets every event of the scene; so while
    it stays connected it knows whether the scene is still pending or scanned as well as
    ``qrcode.status`` would, and the subscribe costs no RPC and no Mongo read. Anything it cannot vouch
    for is left to ``qrcode.status``: a scene issued elsewhere, a ticket that does not match (the
    refusal is qrcode's to give), a scene past its expiry or in a final state (a confirmed scene's
    redeem window is qrcode's to judge), and a scene issued under another bus session (``Bus.session``:
    the connection broke since, and events may have been missed while cut off), or while the bus is
    down.

    Entries live as long as their scene; the oldest go first beyond ``max_entries``. ``session``
    reads the bus session now (``Bus.session``; None while the bus is down: nothing is vouched for).
    """

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.time,
        session: Callable[[], int | None] = lambda: None,
    ) -> None:
        self._scenes: dict[str, _Issued] = {}  # insertion order is issue order
        self._max = max_entries
        self._clock = clock
        self._session = session

    def __len__(self) -> int:
        return len(self._scenes)

    def add(self, scene: str, ticket_hash: str, expires_at: float, session: int | None) -> None:
        """Remember a scene just issued here, with the hash of the ticket minted for it, under bus
        session ``session`` (None, the bus is down: nothing to vouch for)."""
        self._prune()
        if session is not None:
            self._scenes[scene] = _Issued(ticket_hash, expires_at, session)

    def saw(self, scene: str, state: str) -> None:
        """An event said ``scene`` moved to ``state`` (kept only if it is further on)."""
        issued = self._scenes.get(scene)
        if issued is not None and RANK.get(visible_state(state), -1) > RANK.get(issued.state, -1):
            issued.state = visible_state(state)

    def status(self, scene: str, ticket_hash: str) -> str | None:
        """``pending`` or ``scanned`` when this gateway can vouch for the scene (issued here under the
        bus session that is still the current one) and the ticket is its own, else None (ask
        ``qrcode.status``)."""
        issued = self._scenes.get(scene)
        session = self._session()
        if issued is None or session is None or issued.session != session:
            return None
        if issued.state in FINAL_STATES or self._clock() >= issued.expires_at:
            return None
        if not hmac.compare_digest(issued.ticket_hash, ticket_hash):
            return None
        return issued.state

    def _prune(self) -> None:
        now = self._clock()
        scenes = self._scenes
        while scenes:
            oldest = next(iter(scenes))
            if scenes[oldest].expires_at > now and len(scenes) < self._max:
                break
            del scenes[oldest]
