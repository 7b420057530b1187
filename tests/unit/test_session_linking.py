"""Account linking's rules in the session service (services/session/linking.py) with hand-written fakes:
what a confirm stores, refuses and announces, what happens when the store's unique indexes win a race
the code lost, or the scene cannot be confirmed after the link was stored; the link token's single use;
and the webhook events the bus events become (services/webhook/events.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from services.session.errors import (
    AccountAlreadyLinked,
    AlreadyLinked,
    LinkClientMismatch,
    LinkRequestExpired,
    LinkRequestUsed,
)
from services.session.linking import LinkHandlers
from services.session.store import IdentityLink, LinkRequest
from services.webhook.events import from_bus
from shared.clients import Client
from shared.errors import RemoteError
from shared.messages import (
    CancelScene,
    ConfirmScene,
    IdentityLinked,
    IdentityUnlinked,
    IssuedScene,
    IssueLinkScene,
    IssueScene,
    LoginConfirmed,
    OpenLink,
    SceneCancelled,
    SceneExpired,
    SceneStatus,
    utcnow,
)
from tests.scenes import RecordingPublisher

SCENE = "S" * 32
SCAN = "a" * 64
TICKET = "b" * 64
KEY = bytes(32)


class Sites:
    def __init__(self, *clients: Client) -> None:
        self.clients = {c.client_id: c for c in clients}

    @property
    def default(self) -> Client:
        return self.clients["default"]

    def get(self, client_id: str | None) -> Client | None:
        return self.clients.get(client_id or "default")


class Requests:
    """Link requests in a dict, with the store's conditional updates."""

    def __init__(self) -> None:
        self.docs: dict[str, LinkRequest] = {}

    async def insert(self, request: LinkRequest) -> None:
        self.docs[request.id] = request

    async def get(self, request_id: str) -> LinkRequest | None:
        return self.docs.get(request_id)

    async def by_token(self, token_id: str) -> LinkRequest | None:
        return next((r for r in self.docs.values() if r.token_id == token_id), None)

    async def by_scene(self, scene: str) -> LinkRequest | None:
        return next((r for r in self.docs.values() if r.scene == scene), None)

    async def claim(self, token_id: str, now: float) -> LinkRequest | None:
        found = await self.by_token(token_id)
        if found is None or found.state != "open" or found.expires_at <= now:
            return None
        self.docs[found.id] = dataclasses.replace(found, state="issuing")
        return self.docs[found.id]

    async def release(self, request_id: str, now: float) -> None:
        if self.docs[request_id].state == "issuing":
            self.docs[request_id] = dataclasses.replace(self.docs[request_id], state="open")

    async def issued(self, request_id: str, scene: str, scene_expires_at: float, now: float) -> bool:
        self.docs[request_id] = dataclasses.replace(
            self.docs[request_id], state="issued", scene=scene, scene_expires_at=scene_expires_at
        )
        return True

    async def decide(self, request_id: str, *, state: str, now: float, **fields: Any) -> LinkRequest | None:
        found = self.docs[request_id]
        if found.state != "issued":
            return None
        set_fields = {k: v for k, v in fields.items() if v is not None}
        self.docs[request_id] = dataclasses.replace(found, state=state, decided_at=now, **set_fields)
        return self.docs[request_id]


class Links:
    """Identity links in a list, refusing what the unique indexes refuse."""

    def __init__(self) -> None:
        self.links: list[IdentityLink] = []
        self.asked: list[tuple[str, str]] = []  # of_user lookups
        self.exclusive: dict[str, bool] = {}
        self.race: IdentityLink | None = None  # stored by "another request" just before the next insert

    async def of_user(self, client_id: str, user_id: str) -> IdentityLink | None:
        self.asked.append((client_id, user_id))
        return next((x for x in self.links if (x.client_id, x.user_id) == (client_id, user_id)), None)

    async def of_account(self, client_id: str, external_id: str) -> list[IdentityLink]:
        return [x for x in self.links if (x.client_id, x.external_id) == (client_id, external_id)]

    async def insert(self, link: IdentityLink, *, exclusive: bool) -> bool:
        if self.race is not None:
            self.links.append(self.race)
            self.exclusive[self.race.id], self.race = exclusive, None
        if await self.of_user(link.client_id, link.user_id) is not None:
            return False
        taken = [
            x for x in await self.of_account(link.client_id, link.external_id) if self.exclusive.get(x.id)
        ]
        if exclusive and taken:
            return False
        self.links.append(link)
        self.exclusive[link.id] = exclusive
        return True

    async def delete(self, link_id: str) -> bool:
        before = len(self.links)
        self.links = [x for x in self.links if x.id != link_id]
        return len(self.links) < before


class Bus:
    """The qrcode service as the link code sees it: records calls; ``refuse`` makes one fail."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.refuse: dict[type, RemoteError] = {}

    async def call(self, request: Any, **_: Any) -> Any:
        self.calls.append(request)
        if type(request) in self.refuse:
            raise self.refuse.pop(type(request))
        if isinstance(request, IssueScene):
            return IssuedScene(scene=SCENE, image="data:image/png;base64,AA==", expires_at=utcnow())
        return SceneStatus(scene=SCENE, state="confirmed", expires_at=utcnow(), user_id="u_1")


def handlers(*, multiple: bool = False) -> tuple[LinkHandlers, Requests, Links, Bus, RecordingPublisher]:
    shop = Client(client_id="shop", client_secret_hash="sha256:" + "0" * 64, site_name="Shop")
    shop = shop.model_copy(update={"allow_multiple_links": multiple})
    sites = Sites(Client(client_id="default", site_name="D"), shop, Client(client_id="blog", site_name="B"))
    requests, links, bus, published = Requests(), Links(), Bus(), RecordingPublisher()
    linking = LinkHandlers(
        sites,
        requests,
        links,
        bus,
        published,
        keys=[KEY],
        subject_key=KEY,
        request_ttl=120,
        clock=lambda: 1000.0,
    )
    return linking, requests, links, bus, published


async def shown(linking: LinkHandlers, external_id: str = "acct-1") -> str:
    """A link request opened and shown (its scene issued); its link token."""
    opened = await linking.open_link(OpenLink(client_id="shop", external_id=external_id, hint="张*三"))
    token = opened.link_token.get_secret_value()
    await linking.issue_link(
        IssueLinkScene(link_token=opened.link_token, client_id="shop", ticket_hash=TICKET, ip="")
    )
    return token


async def test_a_confirm_links_confirms_the_scene_for_the_link_and_announces_it() -> None:
    linking, _, links, bus, published = handlers()
    await shown(linking)
    issue = next(c for c in bus.calls if isinstance(c, IssueScene))
    assert issue.purpose == "link" and issue.account_hint == "张*三" and issue.client_id == "shop"
    await linking.confirm(SCENE, SCAN, "u_1")
    assert [(x.client_id, x.user_id, x.external_id) for x in links.links] == [("shop", "u_1", "acct-1")]
    confirm = next(c for c in bus.calls if isinstance(c, ConfirmScene))
    assert confirm.purpose == "link" and confirm.user_id == "u_1"
    (event,) = published.events
    assert isinstance(event, IdentityLinked) and event.external_id == "acct-1" and event.client_id == "shop"
    assert await linking.external_id("shop", "u_1") == "acct-1"
    assert await linking.external_id("blog", "u_1") is None and await linking.external_id(None, "u_1") is None
    # A public client (no secret) can neither open nor remove links: its tokens are not looked up.
    links.links.append(dataclasses.replace(links.links[0], id="il_planted", client_id="blog"))
    links.asked.clear()
    assert await linking.external_id("blog", "u_1") is None and links.asked == []
    assert await linking.external_id("shop", "u_1") == "acct-1" and links.asked == [("shop", "u_1")]
    links.links.pop()
    # The same phone again (its answer was lost): the same answer, nothing twice.
    await linking.confirm(SCENE, SCAN, "u_1")
    assert len(published.events) == 1 and len(links.links) == 1
    with pytest.raises(RemoteError) as other:
        await linking.confirm(SCENE, "c" * 64, "u_2")  # another phone
    assert other.value.error_code == "already_confirmed"


async def test_a_wechat_linked_to_another_account_is_refused_the_scene_cancelled_with_the_reason() -> None:
    linking, requests, links, bus, published = handlers()
    links.links.append(IdentityLink("ln_0", "shop", "u_1", "acct-0", 1.0))
    await shown(linking)
    with pytest.raises(AlreadyLinked):
        await linking.confirm(SCENE, SCAN, "u_1")
    cancel = next(c for c in bus.calls if isinstance(c, CancelScene))
    assert cancel.reason == "already_linked" and cancel.scan_hash == SCAN
    assert not any(isinstance(c, ConfirmScene) for c in bus.calls)
    assert [x.external_id for x in links.links] == ["acct-0"] and published.events == []
    (request,) = requests.docs.values()
    assert request.state == "refused" and request.reason == "already_linked"
    with pytest.raises(AlreadyLinked):  # the phone's retry hears the same
        await linking.confirm(SCENE, SCAN, "u_1")


async def test_an_account_keeps_one_wechat_unless_the_client_allows_several() -> None:
    linking, _, links, bus, _ = handlers()
    links.links.append(IdentityLink("ln_0", "shop", "u_0", "acct-1", 1.0))
    links.exclusive["ln_0"] = True
    await shown(linking)
    with pytest.raises(AccountAlreadyLinked):
        await linking.confirm(SCENE, SCAN, "u_1")
    assert next(c for c in bus.calls if isinstance(c, CancelScene)).reason == "account_already_linked"

    several, _, links, _, _ = handlers(multiple=True)
    links.links.append(IdentityLink("ln_0", "shop", "u_0", "acct-1", 1.0))
    await shown(several)
    await several.confirm(SCENE, SCAN, "u_1")
    assert sorted(x.user_id for x in links.links) == ["u_0", "u_1"]


async def test_a_race_the_unique_index_wins_is_refused_not_stored_twice() -> None:
    linking, _, links, _, published = handlers()
    await shown(linking)
    links.race = IdentityLink("ln_9", "shop", "u_9", "acct-1", 1.0)  # another phone, a moment earlier
    with pytest.raises(AccountAlreadyLinked):
        await linking.confirm(SCENE, SCAN, "u_1")
    assert [x.user_id for x in links.links] == ["u_9"] and published.events == []


async def test_a_scene_that_cannot_be_confirmed_leaves_no_link_behind() -> None:
    linking, _, links, bus, published = handlers()
    await shown(linking)
    bus.refuse[ConfirmScene] = RemoteError("scene_expired", "expired")
    with pytest.raises(RemoteError) as refused:
        await linking.confirm(SCENE, SCAN, "u_1")
    assert refused.value.error_code == "scene_expired"
    assert links.links == [] and published.events == []


async def test_a_link_token_shows_one_code_for_its_own_client_and_comes_back_after_a_failed_issue() -> None:
    linking, requests, _, bus, _ = handlers()
    opened = await linking.open_link(OpenLink(client_id="shop", external_id="acct-1", hint="x"))
    (stored,) = requests.docs.values()
    assert stored.token_id != opened.link_token.get_secret_value()  # only a keyed hash is stored
    ask = IssueLinkScene(link_token=opened.link_token, client_id="shop", ticket_hash=TICKET, ip="")
    with pytest.raises(LinkClientMismatch):
        await linking.issue_link(ask.model_copy(update={"client_id": "blog"}))
    bus.refuse[IssueScene] = RemoteError("rate_limited", "busy")
    with pytest.raises(RemoteError):
        await linking.issue_link(ask)
    assert requests.docs[stored.id].state == "open"  # given back: the browser's retry may use it
    await linking.issue_link(ask)
    with pytest.raises(LinkRequestUsed):
        await linking.issue_link(ask)
    late, requests, _, _, _ = handlers()
    expired = await late.open_link(OpenLink(client_id="shop", external_id="acct-2", hint="x"))
    (request,) = requests.docs.values()
    requests.docs[request.id] = dataclasses.replace(request, expires_at=999.0)
    with pytest.raises(LinkRequestExpired):
        await late.issue_link(ask.model_copy(update={"link_token": expired.link_token}))


def test_link_events_become_identity_webhooks_and_a_link_scene_is_no_failed_login() -> None:
    linked = from_bus(
        IdentityLinked(client_id="shop", user_id="u_1", external_id="acct-1", link_request="lr_" + "a" * 22),
        "m1",
    )
    assert linked is not None and linked.type == "identity.linked" and linked.user_id == "u_1"
    assert linked.data == {"external_id": "acct-1", "link_request": "lr_" + "a" * 22}
    assert linked.source == "identity.linked:lr_" + "a" * 22  # one message per request, redelivered or not
    unlinked = from_bus(IdentityUnlinked(client_id="shop", user_id="u_1", external_id="acct-1"), "m2")
    assert unlinked is not None and unlinked.type == "identity.unlinked"
    assert unlinked.data == {"external_id": "acct-1", "reason": "unlinked_by_client"}
    login = from_bus(LoginConfirmed(scene=SCENE, user_id="u_1", client_id="shop", external_id="acct-1"), "m3")
    assert login is not None and login.data == {"scene": SCENE, "external_id": "acct-1"}
    assert from_bus(SceneCancelled(scene=SCENE, reason="already_linked", purpose="link"), "m4") is None
    assert from_bus(SceneExpired(scene=SCENE, scanned=True, purpose="link"), "m5") is None
    assert from_bus(SceneCancelled(scene=SCENE, reason="declined", purpose="login"), "m6") is not None
