"""The gateway's only state: which WebSockets of this instance watch which scene (in memory).

Pushes are hints and Mongo is the truth, so each subscription only ever moves forward
(pending → scanned → a final state), and nothing is sent before its ticket is verified.
"""

from __future__ import annotations

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
