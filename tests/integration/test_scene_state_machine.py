"""A Hypothesis state machine over the real scene handlers and store (nx-27017): issue, scan, confirm,
cancel, expire, redeem and duplicated or racing deliveries, checked against a model of DESIGN §2.

Properties held after every step: at most one user per scene, at most one redeem (the ticket holder
redeeming again within the redeem window gets the same user, not a second redeem), nothing granted at
or after ``expires_at``, nothing granted without the ticket, only the phone that scanned confirms or
cancels, and each expiry announced once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from pymongo import AsyncMongoClient

from services.qrcode import errors
from services.qrcode.handlers import SceneHandlers
from services.qrcode.store import INDEXES
from shared.errors import ServiceError
from shared.messages import (
    CancelScene,
    ConfirmScene,
    GetSceneStatus,
    IssueScene,
    RedeemScene,
    ScanScene,
    SceneConfirmed,
    SceneExpired,
    SceneScanned,
)
from shared.mongo import EmbeddedMongo, ensure_indexes, make_client
from tests.scenes import FakeClock, RecordingPublisher, new_ticket, scene_handlers, ticket_hash

T = TypeVar("T")

TTL = 120.0
REDEEM_WINDOW = 60.0
USERS = ("user-a", "user-b", "user-c")
NEVER_ISSUED = "N" * 32


@dataclass
class ModelScene:
    """What DESIGN §2 says a scene is, kept beside the real one."""

    ticket: str
    expires_at: float
    state: str = "pending"
    phone: str | None = None  # the scan token of the phone that scanned
    user: str | None = None
    confirmed_by: set[str] = field(default_factory=set)
    redeems: int = 0

    def visible(self, now: float) -> str:
        live = self.state in ("pending", "scanned", "confirmed")
        return "expired" if live and now >= self.expires_at else self.state


# The refusal for each (action, visible state); missing pairs succeed.
REFUSALS: dict[str, dict[str, type[ServiceError]]] = {
    "scan": {
        "scanned": errors.AlreadyScanned,
        "confirmed": errors.AlreadyScanned,
        "redeemed": errors.AlreadyScanned,
        "cancelled": errors.SceneCancelled,
        "expired": errors.SceneExpired,
    },
    "cancel": {
        "pending": errors.NotScanned,
        "confirmed": errors.AlreadyConfirmed,
        "redeemed": errors.AlreadyConfirmed,
        "cancelled": errors.SceneCancelled,  # except for the phone that cancelled (see expect)
        "expired": errors.SceneExpired,
    },
    "confirm": {
        "pending": errors.NotScanned,
        "confirmed": errors.AlreadyConfirmed,
        "redeemed": errors.AlreadyConfirmed,
        "cancelled": errors.SceneCancelled,
        "expired": errors.SceneExpired,
    },
    "redeem": {
        "pending": errors.NotConfirmed,
        "scanned": errors.NotConfirmed,
        "redeemed": errors.AlreadyRedeemed,
        "cancelled": errors.SceneCancelled,
        "expired": errors.SceneExpired,
    },
}


class SceneLifecycle(RuleBasedStateMachine):
    """Drives :class:`SceneHandlers` and checks every answer against :class:`ModelScene`."""

    scenes = Bundle("scenes")

    def __init__(self, mongo_url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()  # near real time: nx-27017 purges by real time (purge_at)
        self.publisher = RecordingPublisher()
        self.db_name = f"sm_{uuid.uuid4().hex[:10]}"
        self.client: AsyncMongoClient[dict[str, Any]] = self.run(self._connect(mongo_url))
        self.handlers: SceneHandlers = scene_handlers(
            self.client[self.db_name], self.clock, self.publisher, ttl=TTL
        )
        self.model: dict[str, ModelScene] = {}

    async def _connect(self, url: str) -> AsyncMongoClient[dict[str, Any]]:
        client: AsyncMongoClient[dict[str, Any]] = make_client(url)
        await ensure_indexes(client[self.db_name], INDEXES)
        return client

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def outcome(self, coro: Awaitable[Any]) -> Any:
        """The handler's reply, or the ServiceError it raised."""
        try:
            return self.run(coro)
        except ServiceError as exc:
            return exc

    def outcomes(self, *coros: Awaitable[Any]) -> list[Any]:
        """Replies or errors of requests handled at the same time (a duplicated delivery, a race)."""

        async def together() -> list[Any]:
            return list(await asyncio.gather(*coros, return_exceptions=True))

        results = self.run(together())
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, ServiceError):
                raise r
        return results

    def teardown(self) -> None:
        async def close() -> None:
            await self.client.drop_database(self.db_name)
            await self.client.close()

        self.run(close())
        self.loop.close()

    # -- expectations --

    def expect(self, action: str, scene: str, result: Any, *, same_phone: bool = True) -> bool:
        """Check ``result`` against the model; True when the action should have succeeded."""
        m = self.model[scene]
        visible = m.visible(self.clock())
        refusal = REFUSALS[action].get(visible)
        if action == "cancel" and m.state == "cancelled" and same_phone:
            refusal = None  # the phone that cancelled cancelling again answers "cancelled"
        if action in ("confirm", "cancel") and visible == "scanned" and not same_phone:
            refusal = errors.ScanTokenMismatch  # only the phone that scanned may decide
        if refusal is None:
            assert not isinstance(result, ServiceError), (
                f"{action} refused: {result!r}; {self.describe(scene)}"
            )
            return True
        assert isinstance(result, refusal), f"{action} on {visible}: {result!r}; {self.describe(scene)}"
        return False

    def describe(self, scene: str) -> str:
        """The model and the stored document side by side, for a failure message."""
        stored = self.run(self.client[self.db_name]["scenes"].find_one({"_id": scene}))
        keep = ("state", "expires_at", "updated_at", "user_id", "announced")
        doc = {k: stored.get(k) for k in keep} if stored else None
        return f"now={self.clock()!r} model={self.model[scene]!r} stored={doc!r}"

    def granted(self, scene: str) -> None:
        """Nothing is granted at or after the end of the scene's life."""
        assert self.clock() < self.model[scene].expires_at

    def phone_hash(self, scene: str, same_phone: bool) -> str:
        """The scan hash a confirm/cancel presents: the scanning phone's, or another phone's."""
        token = self.model[scene].phone if same_phone else None
        return ticket_hash(token or new_ticket())

    # -- rules --

    @rule(target=scenes)
    def issue(self) -> str:
        ticket = new_ticket()
        issued = self.run(
            self.handlers.issue(
                IssueScene(ticket_hash=ticket_hash(ticket), ip="203.0.113.9", user_agent="UA")
            )
        )
        assert issued.scene not in self.model
        self.model[issued.scene] = ModelScene(ticket, expires_at=self.clock() + TTL)
        return str(issued.scene)

    @rule(scene=scenes)
    def scan(self, scene: str) -> None:
        phone = new_ticket()
        request = ScanScene(scene=scene, scan_hash=ticket_hash(phone), ip="198.51.100.7")
        result = self.outcome(self.handlers.scan(request))
        if self.expect("scan", scene, result):
            self.granted(scene)
            self.model[scene].state = "scanned"
            self.model[scene].phone = phone
            assert result.requester.ip == ""  # the address stays in the scene (security review L2)
            assert result.requester.location is not None and result.scanner is not None

    @rule(scene=scenes, user=st.sampled_from(USERS), same_phone=st.booleans())
    def confirm(self, scene: str, user: str, same_phone: bool) -> None:
        m = self.model[scene]
        now = self.clock()
        request = ConfirmScene(scene=scene, scan_hash=self.phone_hash(scene, same_phone), user_id=user)
        result = self.outcome(self.handlers.confirm(request))
        if self.expect("confirm", scene, result, same_phone=same_phone):
            self.granted(scene)
            m.state, m.user = "confirmed", user
            m.confirmed_by.add(user)
            m.expires_at = min(m.expires_at + REDEEM_WINDOW, now + REDEEM_WINDOW)

    @rule(scene=scenes, same_phone=st.booleans())
    def cancel(self, scene: str, same_phone: bool) -> None:
        request = CancelScene(scene=scene, scan_hash=self.phone_hash(scene, same_phone))
        result = self.outcome(self.handlers.cancel(request))
        if self.expect("cancel", scene, result, same_phone=same_phone):
            self.model[scene].state = "cancelled"

    @rule(scene=scenes, right_ticket=st.booleans())
    def redeem(self, scene: str, right_ticket: bool) -> None:
        m = self.model[scene]
        ticket = m.ticket if right_ticket else new_ticket()
        result = self.outcome(self.handlers.redeem(RedeemScene(scene=scene, ticket_hash=ticket_hash(ticket))))
        if not right_ticket:
            assert isinstance(result, errors.TicketMismatch), result
            return
        if m.state == "redeemed" and self.clock() < m.expires_at:
            # The same ticket again within the redeem window (its first answer was lost): the same
            # user, and no second redeem.
            assert not isinstance(result, ServiceError), f"redeem again: {result!r}; {self.describe(scene)}"
            assert result.user_id == m.user
            return
        if self.expect("redeem", scene, result):
            self.granted(scene)
            assert result.user_id == m.user
            m.state = "redeemed"
            m.redeems += 1

    @rule(scene=scenes, ticket=st.sampled_from(["right", "wrong", "none"]))
    def status(self, scene: str, ticket: str) -> None:
        m = self.model[scene]
        hashed = {"right": ticket_hash(m.ticket), "wrong": ticket_hash(new_ticket()), "none": None}[ticket]
        result = self.outcome(self.handlers.status(GetSceneStatus(scene=scene, ticket_hash=hashed)))
        if ticket == "wrong":
            assert isinstance(result, errors.TicketMismatch), result
        else:
            assert result.state == m.visible(self.clock())

    @rule(seconds=st.sampled_from([0.5, 1.0, 30.0, 59.0, 61.0, 119.0, 121.0, 300.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(replicas=st.integers(min_value=1, max_value=3))
    def sweep(self, replicas: int) -> None:
        now = self.clock()
        due = {s for s, m in self.model.items() if m.state in ("pending", "scanned") and now >= m.expires_at}
        before = len(self.publisher.scenes_of(SceneExpired))
        # Several replicas sweeping at once: each overdue scene is expired and announced once.
        swept = self.outcomes(*(self.handlers.sweep() for _ in range(replicas)))
        announced = self.publisher.scenes_of(SceneExpired)[before:]
        assert sum(swept) == len(due) == len(announced)
        assert set(announced) == due
        for scene in due:
            self.model[scene].state = "expired"

    @rule(scene=scenes, action=st.sampled_from(["scan", "cancel", "redeem", "confirm"]))
    def duplicate_delivery(self, scene: str, action: str) -> None:
        """The same request delivered twice at once: it takes effect at most once."""
        m = self.model[scene]
        now = self.clock()
        phone = m.phone or new_ticket()
        if action == "scan":
            request_s = ScanScene(scene=scene, scan_hash=ticket_hash(phone))
            results = self.outcomes(*(self.handlers.scan(request_s) for _ in range(2)))
        elif action == "cancel":
            request_x = CancelScene(scene=scene, scan_hash=ticket_hash(phone))
            results = self.outcomes(*(self.handlers.cancel(request_x) for _ in range(2)))
        elif action == "redeem":
            request = RedeemScene(scene=scene, ticket_hash=ticket_hash(m.ticket))
            results = self.outcomes(*(self.handlers.redeem(request) for _ in range(2)))
        else:
            request_c = ConfirmScene(scene=scene, scan_hash=ticket_hash(phone), user_id=m.user or USERS[0])
            results = self.outcomes(*(self.handlers.confirm(request_c) for _ in range(2)))
        wins = [r for r in results if not isinstance(r, ServiceError)]
        visible = m.visible(now)
        if action == "scan":
            # Both answered (one transition): the phone that scanned may scan again with its own token,
            # as a retry whose answer was lost does.
            same_phone = visible == "pending" or (visible == "scanned" and phone == m.phone)
            assert len(wins) == (2 if same_phone else 0), results
            if wins:
                self.granted(scene)
                m.state = "scanned"
                m.phone = phone
        elif action == "cancel":
            expected = 2 if visible in ("scanned", "cancelled") else 0
            assert len(wins) == expected, results
            if wins:
                m.state = "cancelled"
        elif action == "redeem":
            # The ticket holder's twin requests both get the one user (one redeem, answered twice).
            again = m.state == "redeemed" and now < m.expires_at
            assert len(wins) == (2 if visible == "confirmed" or again else 0), results
            assert all(win.user_id == m.user for win in wins), results
            if wins and not again:
                self.granted(scene)
                m.state = "redeemed"
                m.redeems += 1
        else:
            user = m.user or USERS[0]
            assert len(wins) == (1 if visible == "scanned" else 0), results
            if wins:
                self.granted(scene)
                m.state, m.user = "confirmed", user
                m.confirmed_by.add(user)
                m.expires_at = min(m.expires_at + REDEEM_WINDOW, now + REDEEM_WINDOW)

    @rule(scene=scenes)
    def two_phones_race_to_confirm(self, scene: str) -> None:
        m = self.model[scene]
        now = self.clock()
        # Two confirms from the phone that scanned (say, two wx.login codes) and one from a stranger.
        phone = ticket_hash(m.phone or new_ticket())
        results = self.outcomes(
            self.handlers.confirm(ConfirmScene(scene=scene, scan_hash=phone, user_id="racer-1")),
            self.handlers.confirm(ConfirmScene(scene=scene, scan_hash=phone, user_id="racer-2")),
        )
        stranger = self.outcome(
            self.handlers.confirm(ConfirmScene(scene=scene, scan_hash=ticket_hash(new_ticket()), user_id="x"))
        )
        assert isinstance(stranger, ServiceError), stranger
        winners = [
            u for r, u in zip(results, ("racer-1", "racer-2"), strict=True) if not isinstance(r, ServiceError)
        ]
        if m.visible(now) == "scanned":
            assert len(winners) == 1, results
            self.granted(scene)
            m.state, m.user = "confirmed", winners[0]
            m.confirmed_by.add(winners[0])
            m.expires_at = min(m.expires_at + REDEEM_WINDOW, now + REDEEM_WINDOW)
        else:
            assert winners == [], results

    @rule()
    def unknown_scene_is_never_expired(self) -> None:
        for coro in (
            self.handlers.scan(ScanScene(scene=NEVER_ISSUED, scan_hash=ticket_hash(new_ticket()))),
            self.handlers.confirm(
                ConfirmScene(scene=NEVER_ISSUED, scan_hash=ticket_hash(new_ticket()), user_id=USERS[0])
            ),
            self.handlers.cancel(CancelScene(scene=NEVER_ISSUED, scan_hash=ticket_hash(new_ticket()))),
            self.handlers.redeem(RedeemScene(scene=NEVER_ISSUED, ticket_hash=ticket_hash(new_ticket()))),
            self.handlers.status(GetSceneStatus(scene=NEVER_ISSUED)),
        ):
            assert isinstance(self.outcome(coro), errors.SceneNotFound)

    # -- invariants --

    @invariant()
    def at_most_one_user_and_one_redeem_per_scene(self) -> None:
        for m in self.model.values():
            assert len(m.confirmed_by) <= 1
            assert m.redeems <= 1

    @invariant()
    def each_expiry_announced_at_most_once(self) -> None:
        counts = Counter(self.publisher.scenes_of(SceneExpired))
        assert all(n == 1 for n in counts.values())
        assert set(counts) == {s for s, m in self.model.items() if m.state == "expired"}

    @invariant()
    def each_confirm_announced_once(self) -> None:
        confirmed = Counter(self.publisher.scenes_of(SceneConfirmed))
        assert all(n == 1 for n in confirmed.values())
        assert set(confirmed) == {s for s, m in self.model.items() if m.confirmed_by}

    @invariant()
    def each_scan_announced_once(self) -> None:
        scanned = Counter(self.publisher.scenes_of(SceneScanned))
        assert all(n == 1 for n in scanned.values())


def test_scene_lifecycle_holds_its_invariants_under_any_sequence_of_events(
    mongo_server: EmbeddedMongo,
) -> None:
    run_state_machine_as_test(
        lambda: SceneLifecycle(mongo_server.url),
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
