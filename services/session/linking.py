"""Account linking (docs/linking.md): a site's backend opens a link request for one of its accounts,
the browser of that signed-in user shows its code (a link scene, bound to that browser's ticket), and
the phone that scans it and confirms links its WeChat user to the account; the site asks where a
request stands and removes links. Every token and userinfo answer for that site then carries the
account's ``external_id`` (for that site only: :meth:`LinkHandlers.external_id`).

The rules, each held by a unique index of ``identity_links`` as well as checked here: a WeChat user is
linked to at most one account of a site (another one is refused ``already_linked``, never moved); an
account has at most one WeChat user unless its client sets ``allow_multiple_links``
(``account_already_linked``); linking the same pair again changes nothing. A refusal cancels the
scene with its reason, so the browser that shows the code learns it as the phone does. The link token
is single use (spent on the first code issued with it) and short-lived; only its keyed hash is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol, cast

from pydantic import SecretStr

from services.session.errors import (
    AccountAlreadyLinked,
    AlreadyLinked,
    ClientUnknown,
    LinkClientMismatch,
    LinkNotFound,
    LinkRequestExpired,
    LinkRequestNotFound,
    LinkRequestUsed,
)
from services.session.store import IdentityLink, LinkRequest
from shared.bus import Caller, Publisher
from shared.clients import Client
from shared.errors import RemoteError, ServiceError
from shared.logging import bind_context, get_logger
from shared.messages import (
    CancelScene,
    CompleteLink,
    ConfirmScene,
    GetLinkStatus,
    GetSceneStatus,
    IdentityLinked,
    IdentityUnlinked,
    IssuedScene,
    IssueLinkScene,
    IssueScene,
    LinkCompleted,
    LinkOpened,
    LinkRefusal,
    LinkState,
    LinkStatus,
    OpenLink,
    RedeemScene,
    Unlink,
    Unlinked,
)
from shared.subjects import subject

log = get_logger(__name__)

# What a link scene's state says about its request while no phone has decided it.
_FROM_SCENE: dict[str, LinkState] = {
    "pending": "pending",
    "scanned": "scanned",
    "confirmed": "scanned",  # decided an instant later, by the confirm that moved it
    "redeemed": "scanned",
    "cancelled": "refused",
    "expired": "expired",
}
_REFUSALS: dict[str, type[ServiceError]] = {
    AlreadyLinked.code: AlreadyLinked,
    AccountAlreadyLinked.code: AccountAlreadyLinked,
}


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class Sites(Protocol):
    """The registered clients (:class:`shared.clients.ClientRegistry`, or a fake)."""

    @property
    def default(self) -> Client: ...

    def get(self, client_id: str | None) -> Client | None: ...


class Requests(Protocol):
    """Link requests (:class:`services.session.store.LinkRequestStore`, or a fake)."""

    async def insert(self, request: LinkRequest) -> None: ...
    async def get(self, request_id: str) -> LinkRequest | None: ...
    async def by_token(self, token_id: str) -> LinkRequest | None: ...
    async def by_scene(self, scene: str) -> LinkRequest | None: ...
    async def claim(self, token_id: str, now: float) -> LinkRequest | None: ...
    async def release(self, request_id: str, now: float) -> None: ...
    async def issued(self, request_id: str, scene: str, scene_expires_at: float, now: float) -> bool: ...
    async def decide(
        self,
        request_id: str,
        *,
        state: str,
        now: float,
        scan_hash: str | None = None,
        user_id: str | None = None,
        reason: str | None = None,
    ) -> LinkRequest | None: ...


class Links(Protocol):
    """Identity links (:class:`services.session.store.IdentityLinkStore`, or a fake)."""

    async def of_user(self, client_id: str, user_id: str) -> IdentityLink | None: ...
    async def of_account(self, client_id: str, external_id: str) -> list[IdentityLink]: ...
    async def insert(self, link: IdentityLink, *, exclusive: bool) -> bool: ...
    async def delete(self, link_id: str) -> bool: ...


class LinkHandlers:
    """The ``session.*`` linking RPCs, the link side of ``session.confirm``, and the ``external_id``
    lookup of the token code."""

    def __init__(
        self,
        clients: Sites,
        requests: Requests,
        links: Links,
        bus: Caller,
        publisher: Publisher,
        *,
        keys: Sequence[bytes],
        subject_key: bytes,
        request_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys or any(len(key) < 32 for key in keys):
            raise ValueError("the link-token keys must be at least 32 bytes")
        self._clients = clients
        self._requests = requests
        self._links = links
        self._bus = bus
        self._publisher = publisher
        # The first key makes new ids; every key is tried (a data key being rotated out).
        self._keys = tuple(keys)
        self._subject_key = subject_key
        self._request_ttl = request_ttl
        self._clock = clock

    def token_ids(self, token: str) -> list[str]:
        """The ids a link token may be stored under (keyed: a database reader learns no token)."""
        return [
            hmac.new(key, f"link-token:{token}".encode(), hashlib.sha256).hexdigest() for key in self._keys
        ]

    def _client(self, client_id: str | None) -> Client:
        client = self._clients.get(client_id)
        if client is None:
            raise ClientUnknown()
        return client

    # -- the site's backend --

    async def open_link(self, request: OpenLink) -> LinkOpened:
        """RPC ``session.open_link``: a new link request of ``client_id`` for its account
        ``external_id``, open for one code until it expires (the scene lifetime)."""
        client = self._client(request.client_id)
        now = self._clock()
        token = secrets.token_urlsafe(32)
        opened = LinkRequest(
            id="lr_" + secrets.token_urlsafe(16),
            token_id=self.token_ids(token)[0],
            client_id=client.client_id,
            external_id=request.external_id,
            hint=request.hint,
            state="open",
            created_at=now,
            expires_at=now + self._request_ttl,
        )
        await self._requests.insert(opened)
        log.info("link_request_opened", client=client.client_id, link_request=opened.id)
        return LinkOpened(
            link_request=opened.id, link_token=SecretStr(token), expires_at=_at(opened.expires_at)
        )

    async def status(self, request: GetLinkStatus) -> LinkStatus:
        """RPC ``session.link_status``: where the client's link request stands (another client's, or
        one purged a day after its end, is ``link_request_not_found``)."""
        found = await self._requests.get(request.link_request)
        if found is None or found.client_id != request.client_id:
            raise LinkRequestNotFound()
        now = self._clock()
        state: LinkState
        reason = found.reason
        expires_at = found.scene_expires_at if found.scene_expires_at is not None else found.expires_at
        if found.state in ("linked", "refused", "expired"):
            state = found.state  # type: ignore[assignment]
        elif found.state == "issued" and found.scene is not None:
            state, reason = await self._scene_state(found, now)
        else:  # open, or a claim in flight
            state = "expired" if found.expires_at <= now else "pending"
        sub = None
        if state == "linked" and found.user_id is not None:
            sub = subject(self._client(found.client_id), found.user_id, self._subject_key)
        linked_at = _at(found.decided_at) if state == "linked" and found.decided_at is not None else None
        return LinkStatus(
            link_request=found.id,
            state=state,
            reason=reason if state == "refused" else None,
            external_id=found.external_id,
            expires_at=_at(expires_at),
            linked_at=linked_at,
            sub=sub,
        )

    async def _scene_state(self, found: LinkRequest, now: float) -> tuple[LinkState, str | None]:
        """The state of an issued request, from its scene; an end (declined, expired) is recorded."""
        assert found.scene is not None
        try:
            scene = await self._bus.call(GetSceneStatus(scene=found.scene))
            state, reason = _FROM_SCENE[scene.state], scene.reason
        except RemoteError as exc:
            if exc.error_code != "scene_not_found":  # purged an hour after its end
                raise
            state, reason = "expired", None
        if state in ("refused", "expired"):
            await self._requests.decide(found.id, state=state, now=now, reason=reason)
        return state, reason

    async def unlink(self, request: Unlink) -> Unlinked:
        """RPC ``session.unlink``: remove the links of the client's account ``external_id`` (only the
        WeChat user ``sub`` names, when given); each one removed is announced."""
        client = self._client(request.client_id)
        links = await self._links.of_account(client.client_id, request.external_id)
        if request.sub is not None:
            links = [
                link for link in links if subject(client, link.user_id, self._subject_key) == request.sub
            ]
        unlinked = 0
        for link in links:
            if await self._links.delete(link.id):
                unlinked += 1
                await self._publisher.publish(
                    IdentityUnlinked(
                        client_id=link.client_id, user_id=link.user_id, external_id=link.external_id
                    )
                )
                log.info("identity_unlinked", client=link.client_id, user_id=link.user_id)
        if not unlinked:
            raise LinkNotFound()
        return Unlinked(unlinked=unlinked)

    # -- the browser --

    async def issue_link(self, request: IssueLinkScene) -> IssuedScene:
        """RPC ``session.issue_link``: spend the link token on a link scene for this browser's ticket.

        Single use: the first browser to present the token gets the code, any later one
        ``link_request_used``; an expired one ``link_request_expired``. A code that could not be issued
        (a limit, a dependency down) gives the token back, so the browser's retry may use it.
        """
        token_ids = self.token_ids(request.link_token.get_secret_value())
        found = None
        for token_id in token_ids:
            if (found := await self._requests.by_token(token_id)) is not None:
                break
        if found is None:
            raise LinkRequestNotFound()
        named = self._client(request.client_id)
        if named.client_id != found.client_id:
            log.warning("link_request_client_mismatch", security=True, client=named.client_id)
            raise LinkClientMismatch()
        now = self._clock()
        claimed = await self._requests.claim(found.token_id, now)
        if claimed is None:
            if found.state == "open" and found.expires_at <= now:
                raise LinkRequestExpired()
            log.warning("link_request_reused", security=True, link_request=found.id, state=found.state)
            raise LinkRequestUsed()
        try:
            issued = await self._bus.call(
                IssueScene(
                    ticket_hash=request.ticket_hash,
                    ip=request.ip,
                    user_agent=request.user_agent,
                    client_id=claimed.client_id,
                    with_login_code=request.with_login_code,
                    with_url_link=request.with_url_link,
                    purpose="link",
                    account_hint=claimed.hint,
                )
            )
        except BaseException:
            await self._requests.release(claimed.id, now)
            raise
        bind_context(scene=issued.scene)
        await self._requests.issued(claimed.id, issued.scene, issued.expires_at.timestamp(), now)
        log.info("link_scene_issued", client=claimed.client_id, link_request=claimed.id)
        return issued

    async def complete(self, request: CompleteLink) -> LinkCompleted:
        """RPC ``session.complete_link``: the browser that showed the link code collects the outcome
        once the phone confirmed (ticket checked: ``confirmed → redeemed``); the link is stored by then."""
        bind_context(scene=request.scene)
        redeemed = await self._bus.call(
            RedeemScene(
                scene=request.scene,
                ticket_hash=request.ticket_hash,
                client_id=request.client_id,
                purpose="link",
            )
        )
        found = await self._requests.by_scene(redeemed.scene)
        if found is None:
            raise LinkRequestNotFound()
        log.info("link_completed", link_request=found.id)
        return LinkCompleted(scene=redeemed.scene, link_request=found.id)

    # -- the phone --

    async def confirm(self, scene: str, scan_hash: str, user_id: str) -> LinkRequest:
        """The phone that scanned link scene ``scene`` confirmed, as WeChat user ``user_id``.

        Applies the rules, stores the link, confirms the scene (the browser is pushed ``confirmed``)
        and announces ``identity.linked``. A refusal cancels the scene with its reason first. A retry
        by the same phone answers as the first time.
        """
        found = await self._requests.by_scene(scene)
        if found is None:
            raise LinkRequestNotFound()
        bind_context(link_request=found.id)
        if found.state in ("linked", "refused"):
            return self._decided_already(found, scan_hash, user_id)
        client = self._client(found.client_id)
        exclusive = not client.allow_multiple_links
        now = self._clock()
        created: IdentityLink | None = None
        refusal, linked_already = await self._refusal(client, found, user_id)
        if refusal is None and not linked_already:
            created = IdentityLink(
                id="ln_" + secrets.token_urlsafe(12),
                client_id=client.client_id,
                user_id=user_id,
                external_id=found.external_id,
                created_at=now,
                link_request=found.id,
            )
            if not await self._links.insert(created, exclusive=exclusive):
                created = None  # a twin of this request linked it, or a race with another request
                refusal, linked_already = await self._refusal(client, found, user_id)
                if refusal is None and not linked_already:
                    refusal = AccountAlreadyLinked
        if refusal is not None:
            await self._refuse(found, scene, scan_hash, user_id, refusal)
        try:
            await self._bus.call(
                ConfirmScene(scene=scene, scan_hash=scan_hash, user_id=user_id, purpose="link")
            )
        except BaseException:
            if created is not None:  # nothing stays linked without the scene confirmed
                await self._links.delete(created.id)
            raise
        decided = await self._requests.decide(
            found.id, state="linked", scan_hash=scan_hash, user_id=user_id, now=now
        )
        await self._publisher.publish(
            IdentityLinked(
                client_id=client.client_id,
                user_id=user_id,
                external_id=found.external_id,
                link_request=found.id,
            )
        )
        log.info("identity_linked", client=client.client_id, user_id=user_id, again=created is None)
        return decided or found

    async def _refusal(
        self, client: Client, found: LinkRequest, user_id: str
    ) -> tuple[type[ServiceError] | None, bool]:
        """Which rule refuses linking ``user_id`` to the request's account, if any; and whether this
        very pair is linked already (then nothing is stored: relinking is idempotent)."""
        mine = await self._links.of_user(client.client_id, user_id)
        if mine is not None:
            return (None, True) if mine.external_id == found.external_id else (AlreadyLinked, False)
        if not client.allow_multiple_links:
            others = await self._links.of_account(client.client_id, found.external_id)
            if any(link.user_id != user_id for link in others):
                return AccountAlreadyLinked, False
        return None, False

    async def _refuse(
        self, found: LinkRequest, scene: str, scan_hash: str, user_id: str, error: type[ServiceError]
    ) -> None:
        """Cancel the scene with the refusal's reason (the browser is told), record it, raise it."""
        try:
            await self._bus.call(
                CancelScene(scene=scene, scan_hash=scan_hash, reason=cast(LinkRefusal, error.code))
            )
        except RemoteError as exc:  # expired meanwhile, say: the phone still hears the rule
            log.info("link_scene_not_cancelled", error_code=exc.error_code)
        await self._requests.decide(
            found.id,
            state="refused",
            scan_hash=scan_hash,
            user_id=user_id,
            reason=error.code,
            now=self._clock(),
        )
        log.warning("link_refused", security=True, client=found.client_id, user_id=user_id, reason=error.code)
        raise error()

    def _decided_already(self, found: LinkRequest, scan_hash: str, user_id: str) -> LinkRequest:
        """A confirm of a request decided already: the same phone's retry hears the first answer."""
        same = (
            found.scan_hash is not None
            and hmac.compare_digest(found.scan_hash, scan_hash)
            and found.user_id == user_id
        )
        if not same:
            raise RemoteError("already_confirmed", "the link was already confirmed")
        if found.state == "linked":
            log.info("link_confirm_repeated")
            return found
        raise _REFUSALS.get(found.reason or "", AlreadyLinked)()

    # -- tokens --

    async def external_id(self, client_id: str | None, user_id: str) -> str | None:
        """The account of client ``client_id`` (None: the default client) ``user_id`` is linked to:
        the ``external_id`` claim of tokens for that client, and for no other.

        Only a confidential client has links (opening and removing one takes its secret), so a public
        client's tokens carry none and nothing is read: the usual browser login costs no lookup. Links
        of a client made public later stay stored, unused, until it has a secret again.
        """
        client = self._clients.get(client_id)
        if client is None or client.public:
            return None
        link = await self._links.of_user(client.client_id, user_id)
        return link.external_id if link is not None else None
