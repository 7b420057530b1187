"""The scene state machine: issue, status, scan, cancel, confirm, redeem, and the expiry sweeper.

``pending → scanned → confirmed → redeemed``; ``scanned → cancelled``; ``pending|scanned →
expired``. Every transition is one conditional update that also requires ``expires_at > now`` (Mongo's
TTL monitor lags, so a stored scene may be past its life); a refused one is explained by reading the
scene (unknown, expired, cancelled or a conflict), never guessed; one whose connection dropped is
settled by reading the scene back (a confirm that landed answers confirmed). Tickets are compared as
hashes, in constant time, before any state is revealed.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import SecretStr
from pymongo.errors import PyMongoError

from services.qrcode.errors import (
    AlreadyConfirmed,
    AlreadyRedeemed,
    AlreadyScanned,
    ClientMismatch,
    ClientUnknown,
    IssueRateLimited,
    LaunchSceneRefused,
    LoginCodeInvalid,
    NotConfirmed,
    NotIdentified,
    NotScanned,
    ScanTokenMismatch,
    SceneCancelled,
    SceneConflict,
    SceneExpired,
    SceneNotFound,
    ScenePurposeMismatch,
    TicketMismatch,
)
from services.qrcode.launch import LaunchKind, launch_kind
from services.qrcode.limits import Decision
from services.qrcode.location import IpLocator, differ
from services.qrcode.logincodes import LoginCodes, UrlLinks
from services.qrcode.metrics import SceneMetrics
from services.qrcode.pool import IssuedCode, data_uri
from services.qrcode.store import ANY_CLIENT, AnyClient, Scene
from services.qrcode.useragent import summarize
from shared.bus import Publisher
from shared.clients import Client
from shared.errors import ServiceError, StoreUnavailable
from shared.logging import bind_context, get_logger
from shared.messages import (
    CancelScene,
    CodeScanned,
    ConfirmScene,
    GetSceneStatus,
    IdentifyScene,
    IssuedScene,
    IssueScene,
    Place,
    RedeemedScene,
    RedeemScene,
    Requester,
    ScanInfo,
    ScanLoginCode,
    ScanScene,
    SceneConfirmed,
    SceneIssued,
    ScenePurpose,
    SceneScanned,
    SceneState,
    SceneStatus,
)
from shared.messages import (
    SceneCancelled as SceneCancelledEvent,
)
from shared.messages import (
    SceneExpired as SceneExpiredEvent,
)
from shared.mongo import maybe_applied

log = get_logger(__name__)

# An expired scene whose announcement failed is retried after this long, by one replica.
ANNOUNCE_RETRY_AFTER = 10.0
# A scene read back after a dropped write was changed by that write when its ``updated_at`` is the
# write's ``now``, give or take nx-27017's rounding of floats to 15 significant digits (~10 µs).
STAMP_TOLERANCE = 1e-4

# Why each action is refused in each live state (expired and cancelled are answered first).
_CONFLICTS: dict[str, dict[str, type[ServiceError]]] = {
    "scan": {"scanned": AlreadyScanned, "confirmed": AlreadyScanned, "redeemed": AlreadyScanned},
    "cancel": {"pending": NotScanned, "confirmed": AlreadyConfirmed, "redeemed": AlreadyConfirmed},
    "confirm": {"pending": NotScanned, "confirmed": AlreadyConfirmed, "redeemed": AlreadyConfirmed},
    "identify": {"pending": NotScanned, "confirmed": AlreadyConfirmed, "redeemed": AlreadyConfirmed},
    "redeem": {"pending": NotConfirmed, "scanned": NotConfirmed, "redeemed": AlreadyRedeemed},
}


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _stamped(scene: Scene, to_state: str, now: float, expected: dict[str, Any]) -> bool:
    """True when ``scene`` is what one write at ``now`` to ``to_state`` with ``expected`` left."""
    if scene.state != to_state or abs(scene.updated_at - now) > STAMP_TOLERANCE:
        return False
    held = {"ticket_hash": scene.ticket_hash, "scan_hash": scene.scan_hash, "user_id": scene.user_id}
    return all(held[key] == value for key, value in expected.items() if key in held and value is not None)


def _same_phone(scene: Scene, scan_hash: str) -> bool:
    """True when ``scan_hash`` is the hash of the scan token of the phone that scanned ``scene``."""
    return scene.scan_hash is not None and hmac.compare_digest(scene.scan_hash, scan_hash)


@dataclass(frozen=True)
class SceneSettings:
    """How long scenes live and what the phone is told (from configuration)."""

    scene_ttl: float
    site_name: str
    redeem_window: float = 60.0  # a confirmed scene must be collected within this
    announce_issued: bool = False  # publish scene.issued (nothing of ours consumes it)


class Codes(Protocol):
    """Where new scenes get their code (the pool, or a fake in tests)."""

    async def claim(self) -> IssuedCode | None:
        """A ready code, if there is one waiting."""
        ...

    async def give_back(self, code: IssuedCode) -> None:
        """Return a claimed code that was not used."""
        ...

    async def render_now(self) -> IssuedCode:
        """A code made for a new scene now."""
        ...


class Scenes(Protocol):
    """Where scenes are kept (:class:`services.qrcode.store.SceneStore`, or a fake in tests)."""

    async def insert(self, scene: Scene) -> None:
        """Store a new scene."""
        ...

    async def get(self, scene_id: str) -> Scene | None:
        """The scene, or None when unknown."""
        ...

    async def transition(
        self,
        scene_id: str,
        *,
        from_states: Collection[str],
        to_state: SceneState,
        now: float,
        unexpired: bool = True,
        ticket_hash: str | None = None,
        scan_hash: str | None = None,
        set_fields: dict[str, Any] | None = None,
        identified: bool = False,
        purpose: ScenePurpose | None = None,
        client_id: str | AnyClient | None = ANY_CLIENT,
    ) -> Scene | None:
        """One conditional update stamped ``updated_at = now``; None when refused."""
        ...

    async def overdue(self, now: float, *, limit: int = 200) -> list[str]:
        """Ids of live scenes past their lifetime."""
        ...

    async def mark_announced(self, scene_id: str) -> None:
        """Record that ``scene.expired`` went out."""
        ...

    async def claim_unannounced(self, now: float, *, older_than: float, limit: int = 50) -> list[str]:
        """Expired scenes whose announcement failed, each claimed by one replica."""
        ...


class IssueLimit(Protocol):
    """The global issue limit shared by every replica."""

    async def take(self, now: float) -> Decision:
        """Count one issue at ``now`` if the limit allows it."""
        ...


class Locator(Protocol):
    """Coarse places of IP addresses (:class:`services.qrcode.location.IpLocator`, or a fake)."""

    def locate(self, ip: str) -> Place:
        """Where ``ip`` is: a public place, the local network, or unknown."""
        ...


class Sites(Protocol):
    """The registered clients (:class:`shared.clients.ClientRegistry`, or a fake)."""

    @property
    def default(self) -> Client:
        """The client of logins that name none."""
        ...

    def get(self, client_id: str | None) -> Client | None:
        """The client ``client_id`` (the default one for None), or None when unknown."""
        ...


class PrefixLimit(Protocol):
    """The share of the global issue limit one address prefix may take, shared by every replica."""

    async def take(self, now: float, ip: str) -> Decision:
        """Count one issue of ``ip`` at ``now`` if its prefix's share allows it."""
        ...


class SceneHandlers:
    """RPC handlers of the qrcode service, and its expiry sweeper."""

    def __init__(
        self,
        store: Scenes,
        codes: Codes,
        publisher: Publisher,
        settings: SceneSettings,
        *,
        issue_limit: IssueLimit | None = None,
        prefix_limit: PrefixLimit | None = None,
        clients: Sites | None = None,
        locator: Locator | None = None,
        metrics: SceneMetrics | None = None,
        clock: Callable[[], float] = time.time,
        login_codes: LoginCodes | None = None,
        url_links: UrlLinks | None = None,
    ) -> None:
        self._store = store
        self._codes = codes
        self._publisher = publisher
        self._settings = settings
        self._issue_limit = issue_limit
        self._prefix_limit = prefix_limit
        # Without a registry (tests) every scene belongs to the default client.
        self._clients = clients
        # Without a database only local addresses are placed; every other one is "unknown".
        self._locator: Locator = locator or IpLocator()
        self._metrics = metrics or SceneMetrics()
        self._clock = clock
        # A phone's browser also gets a code to type and an "open WeChat" link (None: not offered).
        self._login_codes = login_codes
        self._url_links = url_links

    async def issue(self, request: IssueScene) -> IssuedScene:
        """RPC ``qrcode.issue``: a new pending scene bound to the ticket's hash and to the client that
        asked (unknown: ``client_unknown``), with its code."""
        client_id = self._bound_client(request.client_id)
        # The global limit and the pool claim are independent round trips, so they run together; a
        # refused issue gives its code back, and a code is rendered only once the limit allowed it.
        decision, pooled = await asyncio.gather(self._issue_allowance(request.ip), self._codes.claim())
        if decision is not None and not decision.allowed:
            if pooled is not None:
                await self._codes.give_back(pooled)
            self._metrics.refused.labels("issue", IssueRateLimited.code).inc()
            raise IssueRateLimited(retry_after=decision.retry_after)
        code = pooled or await self._codes.render_now()
        bind_context(scene=code.scene)
        scene = Scene.new(
            code.scene,
            ticket_hash=request.ticket_hash,
            ip=request.ip,
            user_agent=request.user_agent,
            now=self._clock(),
            ttl=self._settings.scene_ttl,
            client_id=client_id,
            purpose=request.purpose,
            account_hint=request.account_hint if request.purpose == "link" else None,
        )
        if self._settings.announce_issued:
            # Stored and announced together: scene.issued is a notice (Mongo is the truth), which no
            # service waits on; should the insert fail, the issue fails and the notice names no scene.
            await asyncio.gather(
                self._store.insert(scene),
                self._publisher.publish(SceneIssued(scene=scene.id, expires_at=_at(scene.expires_at))),
            )
        else:
            await self._store.insert(scene)
        self._metrics.issued.labels(code.source).inc()
        log.info("scene_issued", source=code.source, purpose=scene.purpose)
        login_code, url_link = await asyncio.gather(
            self._login_code_for(request, scene.id), self._url_link_for(request, scene.id)
        )
        return IssuedScene(
            scene=scene.id,
            image=data_uri(code.image),
            expires_at=_at(scene.expires_at),
            login_code=login_code,
            url_link=url_link,
        )

    async def _login_code_for(self, request: IssueScene, scene_id: str) -> SecretStr | None:
        """The typed login code of a phone's browser, stored on the new scene (None: not asked for,
        turned off, or this minute's new codes are spent)."""
        if not request.with_login_code or self._login_codes is None:
            return None
        code = await self._login_codes.mint(scene_id, self._clock())
        return None if code is None else SecretStr(code)

    async def _url_link_for(self, request: IssueScene, scene_id: str) -> str | None:
        """The URL Link that opens the scan page in WeChat (None: not asked for, off, or refused)."""
        if not request.with_url_link or self._url_links is None:
            return None
        return await self._url_links.link(scene_id)

    async def _issue_allowance(self, ip: str) -> Decision | None:
        # The prefix's share first: a prefix over its share must not spend the global budget.
        if self._prefix_limit is not None:
            share = await self._prefix_limit.take(self._clock(), ip)
            if not share.allowed:
                return share
        return None if self._issue_limit is None else await self._issue_limit.take(self._clock())

    async def status(self, request: GetSceneStatus) -> SceneStatus:
        """RPC ``qrcode.status``; with a ticket hash, only the browser that asked may read."""
        scene = await self._store.get(request.scene)
        if scene is None:
            raise SceneNotFound()
        if request.ticket_hash is not None and not hmac.compare_digest(
            scene.ticket_hash, request.ticket_hash
        ):
            raise TicketMismatch()
        if (
            request.scan_hash is not None
            and scene.scan_hash is not None
            and not _same_phone(scene, request.scan_hash)
        ):
            raise ScanTokenMismatch()
        state = scene.visible_state(self._clock())
        return SceneStatus(
            scene=scene.id,
            state=state,
            expires_at=_at(scene.expires_at),
            user_id=scene.user_id,
            client_id=scene.client_id,
            reason=scene.cancel_reason if state == "cancelled" else None,
        )

    async def scan(self, request: ScanScene) -> ScanInfo:
        """RPC ``qrcode.scan``: ``pending → scanned``; tells the phone what it is about to approve.

        A launch scene that cannot be a scan of the code on the user's screen (a share card, another
        mini-program) is refused before the scene changes. The phone is told where the browser and
        itself are (coarse places, never the browser's address: security review L2) and whether
        they differ, so a relayed code stands out.

        The phone that scanned may scan again with the same scan token (one it chose: a retry whose
        answer was lost) and is answered the same, without a second ``scene.scanned``; any other
        phone is refused ``already_scanned``.
        """
        bind_context(scene=request.scene)
        try:
            launch = launch_kind(request.launch_scene)
        except LaunchSceneRefused as exc:
            self._metrics.refused.labels("scan", exc.code).inc()
            log.info("scan_refused_launch_scene", launch_scene=request.launch_scene)
            raise
        fields: dict[str, Any] = {"scanned_ip": request.ip, "scan_hash": request.scan_hash}
        if request.launch_scene is not None:  # kept for operators, like the addresses
            fields["launch_scene"] = request.launch_scene
        scene = await self._transition(
            request.scene,
            from_states=("pending",),
            to_state="scanned",
            now=self._clock(),
            set_fields=fields,
        )
        if scene is None:
            scene = await self._store.get(request.scene)
            if scene is None or not self._scanned_by(scene, request.scan_hash):
                raise await self._refusal(request.scene, "scan", read=scene)
            # The same phone again with its own scan token: a retry whose answer was lost gets it now.
            # Announced once all the same: the browser reads the state when it (re)subscribes.
            log.info("scan_repeated")
            return self._scan_info(scene, request, launch)
        await self._publisher.publish(SceneScanned(scene=scene.id))
        self._metrics.scanned.inc()
        info = self._scan_info(scene, request, launch)
        log.info("scene_scanned", launch=launch, location_mismatch=info.location_mismatch)
        return info

    def _scanned_by(self, scene: Scene, scan_hash: str) -> bool:
        """True when ``scene`` is scanned, unexpired, by the phone holding ``scan_hash``'s token."""
        return scene.visible_state(self._clock()) == "scanned" and _same_phone(scene, scan_hash)

    def _scan_info(self, scene: Scene, request: ScanScene, launch: LaunchKind) -> ScanInfo:
        """What the phone that scanned ``scene`` is told it is about to approve."""
        requester_at, scanner_at = self._locator.locate(scene.ip), self._locator.locate(request.ip)
        browser, system = summarize(scene.user_agent)
        return ScanInfo(
            site=self._site_name(scene),
            requester=Requester(
                browser=browser, os=system, requested_at=_at(scene.requested_at), location=requester_at
            ),
            expires_at=_at(scene.expires_at),
            scanner=scanner_at,
            location_mismatch=differ(requester_at, scanner_at),
            launch=launch,
            purpose=scene.purpose,
            account_hint=scene.account_hint,
        )

    async def scan_code(self, request: ScanLoginCode) -> CodeScanned:
        """RPC ``qrcode.scan_code``: a phone typed a login code; its scene is scanned as by
        ``qrcode.scan`` (same transition, event and answer), for the phone's scan token.

        The entry is counted per WeChat user and, when the code is not stored, as a miss of the global
        budget; a scene's code is looked up only so often (see :class:`LoginCodes`).
        """
        if self._login_codes is None:  # typed codes are off: none is stored either
            raise LoginCodeInvalid()
        try:
            scene_id = await self._login_codes.enter(
                request.login_code.get_secret_value(), request.entrant, self._clock()
            )
        except ServiceError as exc:
            self._metrics.refused.labels("scan_code", exc.code).inc()
            raise
        info = await self.scan(ScanScene(scene=scene_id, scan_hash=request.scan_hash, ip=request.ip))
        log.info("login_code_entered")
        return CodeScanned(scene=scene_id, scan=info)

    async def cancel(self, request: CancelScene) -> SceneStatus:
        """RPC ``qrcode.cancel``: ``scanned → cancelled`` by the phone that scanned; again is a no-op.

        The reason (``declined``, or ``not_me``) is stored and announced: the browser says why.
        """
        bind_context(scene=request.scene)
        scene = await self._transition(
            request.scene,
            from_states=("scanned",),
            to_state="cancelled",
            now=self._clock(),
            scan_hash=request.scan_hash,
            set_fields={"cancel_reason": request.reason},
        )
        if scene is None:
            again = await self._store.get(request.scene)
            if again is not None and again.state == "cancelled" and _same_phone(again, request.scan_hash):
                # a retried or duplicated cancel from the same phone: the first one's reason stands
                return SceneStatus(
                    scene=again.id,
                    state="cancelled",
                    expires_at=_at(again.expires_at),
                    reason=again.cancel_reason,
                )
            raise await self._refusal(request.scene, "cancel", request.scan_hash)
        await self._publisher.publish(
            SceneCancelledEvent(
                scene=scene.id, reason=request.reason, client_id=scene.client_id, purpose=scene.purpose
            )
        )
        self._metrics.cancelled.inc()
        log.info("scene_cancelled", reason=request.reason)
        return SceneStatus(
            scene=scene.id, state="cancelled", expires_at=_at(scene.expires_at), reason=request.reason
        )

    async def confirm(self, request: ConfirmScene) -> SceneStatus:
        """RPC ``qrcode.confirm``: ``scanned → confirmed`` for ``user_id``; opens the redeem window.

        Exactly one request wins; any other, a duplicate of the winner included, is refused with
        ``already_confirmed`` (the session service answers its own retries, so that ``login.confirmed``
        is announced once).
        """
        bind_context(scene=request.scene)
        now = self._clock()
        # The transition requires an unexpired scene, so this is also before its expiry + the window.
        fields: dict[str, object] = {"expires_at": now + self._settings.redeem_window, "confirmed_at": now}
        if request.user_id is not None:
            fields["user_id"] = request.user_id
        scene = await self._transition(
            request.scene,
            from_states=("scanned",),
            to_state="confirmed",
            now=now,
            scan_hash=request.scan_hash,
            set_fields=fields,
            identified=request.user_id is None,
            purpose=request.purpose,
        )
        if scene is None:
            raise await self._refusal(request.scene, "confirm", request.scan_hash, purpose=request.purpose)
        try:
            await self._publisher.publish(SceneConfirmed(scene=scene.id))
        except ServiceError as exc:  # the session service's login.confirmed announces it as well
            log.warning("scene_confirmed_not_announced", error_code=exc.error_code)
        self._metrics.confirmed.inc()
        self._metrics.issue_to_confirm.observe(max(0.0, now - scene.requested_at))
        log.info("scene_confirmed", user_id=scene.user_id)
        return SceneStatus(
            scene=scene.id,
            state="confirmed",
            expires_at=_at(scene.expires_at),
            user_id=scene.user_id,
            client_id=scene.client_id,
        )

    async def identify(self, request: IdentifyScene) -> SceneStatus:
        """RPC ``qrcode.identify``: the scanning phone's code belongs to ``user_id``; kept on the scene."""
        bind_context(scene=request.scene)
        scene = await self._transition(
            request.scene,
            from_states=("scanned",),
            to_state="scanned",
            now=self._clock(),
            scan_hash=request.scan_hash,
            set_fields={"user_id": request.user_id},
        )
        if scene is None:
            raise await self._refusal(request.scene, "identify", request.scan_hash)
        return SceneStatus(scene=scene.id, state="scanned", expires_at=_at(scene.expires_at))

    async def redeem(self, request: RedeemScene) -> RedeemedScene:
        """RPC ``qrcode.redeem``: ``confirmed → redeemed``, by the ticket holder only, for the client
        the scene was issued to (another one: ``client_mismatch``).

        One conditional update that also requires the ticket's hash, the client and the purpose; only
        a refused one reads the scene, to say why (the ticket compared in constant time first).
        Redeeming again with the same ticket before the redeem window ends answers the same user (a
        retry whose first answer was lost); the session service then hands out the same session.
        """
        bind_context(scene=request.scene)
        now = self._clock()
        client_id = self._canonical(request.client_id)
        redeemed = await self._redeem_once(
            request.scene, now, request.ticket_hash, request.purpose, client_id
        )
        if redeemed is not None:
            return redeemed
        current = await self._store.get(request.scene)
        if current is None:
            raise SceneNotFound()
        if not hmac.compare_digest(current.ticket_hash, request.ticket_hash):
            raise TicketMismatch()
        if client_id != self._canonical(current.client_id):
            log.warning(
                "redeem_client_mismatch",
                security=True,
                scene_client=current.client_id,
                client=request.client_id,
            )
            self._metrics.refused.labels("redeem", ClientMismatch.code).inc()
            raise ClientMismatch()
        if current.purpose != request.purpose:
            # A link scene's browser gets no tokens for the WeChat user who linked (docs/linking.md).
            log.warning("redeem_purpose_mismatch", security=True, purpose=current.purpose)
            self._metrics.refused.labels("redeem", ScenePurposeMismatch.code).inc()
            raise ScenePurposeMismatch()
        if current.state == "confirmed" and current.expires_at > now:
            # Refused, yet redeemable as read: confirmed a moment after the update, or stored under
            # another name of the default client. Once more, with the scene's own values.
            redeemed = await self._redeem_once(
                request.scene, now, current.ticket_hash, current.purpose, current.client_id
            )
            if redeemed is not None:
                return redeemed
            current = await self._store.get(request.scene) or current  # lost a race, perhaps to a twin
        if current.state == "redeemed" and current.user_id is not None and current.expires_at > now:
            # The same ticket again within the redeem window: the browser's first answer was lost (a
            # dropped connection, a gateway that died), or a twin request won. The ticket is the
            # proof: the same user.
            log.info("scene_redeemed_again", user_id=current.user_id)
            return self._redeemed(current, current.user_id)
        raise await self._refusal(request.scene, "redeem", read=current)

    async def _redeem_once(
        self, scene_id: str, now: float, ticket_hash: str, purpose: ScenePurpose, client_id: str | None
    ) -> RedeemedScene | None:
        """``confirmed → redeemed`` if the scene has this ticket, purpose and client: the answer, or
        None when refused (or, never seen, when the confirmed scene had no user)."""
        scene = await self._transition(
            scene_id,
            from_states=("confirmed",),
            to_state="redeemed",
            now=now,
            ticket_hash=ticket_hash,
            purpose=purpose,
            client_id=client_id,
        )
        if scene is None or scene.user_id is None:
            return None
        self._metrics.redeemed.inc()
        log.info("scene_redeemed", user_id=scene.user_id)
        return self._redeemed(scene, scene.user_id)

    @staticmethod
    def _redeemed(scene: Scene, user_id: str) -> RedeemedScene:
        confirmed_at = _at(scene.confirmed_at) if scene.confirmed_at is not None else None
        return RedeemedScene(
            scene=scene.id, user_id=user_id, client_id=scene.client_id, confirmed_at=confirmed_at
        )

    def _canonical(self, client_id: str | None) -> str | None:
        """The id a scene stores for ``client_id``: None for the default client, however named."""
        if self._clients is not None and client_id == self._clients.default.client_id:
            return None
        return client_id

    def _bound_client(self, client_id: str | None) -> str | None:
        """The client a new scene is bound to; raises :class:`ClientUnknown` for an unregistered one."""
        if client_id is not None and self._clients is not None and self._clients.get(client_id) is None:
            self._metrics.refused.labels("issue", ClientUnknown.code).inc()
            raise ClientUnknown()
        return self._canonical(client_id)

    def _site_name(self, scene: Scene) -> str:
        """What the phone is told it logs in to: the site name of the scene's client (never a name
        from the request). A client removed from the file since the issue is refused."""
        if self._clients is None:
            return self._settings.site_name
        client = self._clients.get(scene.client_id)
        if client is None:
            log.warning("scan_client_gone", client=scene.client_id)
            raise ClientUnknown("the site that asked for this login code is no longer registered")
        return client.site_name

    async def sweep(self) -> int:
        """Expire overdue scenes; returns how many this replica expired.

        Each scene is expired by one conditional update, so exactly one replica wins it and announces
        ``scene.expired``. If that publish fails, the scene stays marked unannounced and a later sweep
        (of any replica, one at a time) retries it.
        """
        now = self._clock()
        expired = 0
        for scene_id in await self._store.overdue(now):
            scene = await self._store.transition(
                scene_id,
                from_states=("pending", "scanned"),
                to_state="expired",
                now=now,
                unexpired=False,
                set_fields={"announced": False},
            )
            if scene is not None:
                expired += 1
                self._metrics.expired.inc()
                await self._announce_expired(scene)
        for scene_id in await self._store.claim_unannounced(now, older_than=ANNOUNCE_RETRY_AFTER):
            unannounced = await self._store.get(scene_id)
            if unannounced is not None:
                await self._announce_expired(unannounced)
        return expired

    async def _announce_expired(self, scene: Scene) -> None:
        # Whether a phone had scanned it: the webhook service reports only those as failed logins.
        event = SceneExpiredEvent(
            scene=scene.id,
            client_id=scene.client_id,
            scanned=scene.scan_hash is not None,
            purpose=scene.purpose,
        )
        try:
            await self._publisher.publish(event)
        except Exception:  # the bus is down: the scene stays unannounced and is retried
            log.exception("scene_expiry_announce_failed", scene=scene.id)
            return
        await self._store.mark_announced(scene.id)
        log.info("scene_expired", scene=scene.id)

    async def _transition(
        self,
        scene_id: str,
        *,
        from_states: Collection[str],
        to_state: SceneState,
        now: float,
        ticket_hash: str | None = None,
        scan_hash: str | None = None,
        set_fields: dict[str, Any] | None = None,
        identified: bool = False,
        purpose: ScenePurpose | None = None,
        client_id: str | AnyClient | None = ANY_CLIENT,
    ) -> Scene | None:
        """:meth:`Scenes.transition`, settled by reading the scene back when its write may have landed.

        A connection dropped (or a timeout) after the update was sent leaves its outcome unknown. The
        scene is read back: if it is in ``to_state``, stamped with this write's ``now`` and held by
        the same ticket, phone and user, the write landed and the caller goes on as if it had
        answered (the same announcement, the same reply: nothing is lost and, the stamp being this
        request's own, nothing is done twice). Still in a state it would move from: the write did not
        land, ``store_unavailable`` (the caller retries). Moved by somebody else: None, explained by
        :meth:`_refusal` as any refused transition.
        """
        try:
            return await self._store.transition(
                scene_id,
                from_states=from_states,
                to_state=to_state,
                now=now,
                ticket_hash=ticket_hash,
                scan_hash=scan_hash,
                set_fields=set_fields,
                identified=identified,
                purpose=purpose,
                client_id=client_id,
            )
        except PyMongoError as exc:
            if not maybe_applied(exc):
                raise
            error = f"{type(exc).__name__}: {str(exc)[:120]}"
        try:
            scene = await self._store.get(scene_id)
        except PyMongoError:
            log.warning("scene_write_unsettled", to_state=to_state, error=error)
            raise StoreUnavailable() from None
        expected = {"ticket_hash": ticket_hash, "scan_hash": scan_hash, **(set_fields or {})}
        if scene is not None and _stamped(scene, to_state, now, expected):
            log.info("scene_write_landed_before_reset", to_state=to_state, error=error)
            return scene
        if scene is None or scene.state in from_states:
            log.warning("scene_write_lost", to_state=to_state, error=error)
            raise StoreUnavailable()
        return None

    async def _refusal(
        self,
        scene_id: str,
        action: str,
        scan_hash: str | None = None,
        *,
        purpose: str | None = None,
        read: Scene | None = None,
    ) -> ServiceError:
        """Why a transition did not happen, read from the stored scene (or ``read``, the scene as just
        read after the refusal)."""
        scene = read or await self._store.get(scene_id)
        if scene is None:
            error: ServiceError = SceneNotFound()
        else:
            state = scene.visible_state(self._clock())
            if state == "expired":
                error = SceneExpired()
            elif state == "cancelled":
                error = SceneCancelled()
            elif state == "scanned" and scan_hash is not None and not _same_phone(scene, scan_hash):
                error = ScanTokenMismatch()
            elif purpose is not None and scene.purpose != purpose:
                error = ScenePurposeMismatch()
            elif state == "scanned" and action == "confirm" and scene.user_id is None:
                error = NotIdentified()
            else:
                error = _CONFLICTS[action].get(state, SceneConflict)()
        self._metrics.refused.labels(action, error.code).inc()
        return error
