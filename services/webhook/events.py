"""The webhook event catalogue, and how bus events become the events a site receives (no I/O).

A site sees thin payloads: ``{type, timestamp, data}`` where ``data`` names the client, the user as
that client sees it (``sub``: the pairwise id for a pairwise client, never the internal id) and a
few ids; never a secret, a token, a code, an openid or a phone number (docs/webhooks.md).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict

from shared.clients import WEBHOOK_EVENTS, Client
from shared.messages import (
    Event,
    IdentityLinked,
    IdentityUnlinked,
    LoginConfirmed,
    PhoneNumberBound,
    SceneCancelled,
    SceneExpired,
    SessionRevoked,
    UserCreated,
)
from shared.subjects import subject

# Every event type a site can subscribe to (shared.clients validates endpoint filters against it).
CATALOGUE = WEBHOOK_EVENTS
# The bus events the webhook service consumes.
CONSUMED: tuple[type[Event], ...] = (
    LoginConfirmed,
    SceneCancelled,
    SceneExpired,
    UserCreated,
    PhoneNumberBound,
    SessionRevoked,
    IdentityLinked,
    IdentityUnlinked,
)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One thing to tell a client: its type, whose it is, and the ids it carries.

    ``source`` identifies what happened, so the same happening recorded twice (a redelivered bus
    event, a producer that announced twice) yields the same message ids and is delivered once.
    """

    type: str
    client_id: str | None  # None: the default client
    source: str
    user_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def from_bus(event: Event, message_id: str | None) -> WebhookEvent | None:
    """The webhook event a bus event makes, or None when it makes none.

    Events that are one per scene or user are keyed by it; the others by their bus message id.
    """
    by_message = f"{event.TYPE}:{message_id or ''}"
    if isinstance(event, LoginConfirmed):
        succeeded: dict[str, Any] = {"scene": event.scene}
        if event.external_id is not None:  # the site's own account of this WeChat user (linked)
            succeeded["external_id"] = event.external_id
        return WebhookEvent(
            "login.succeeded",
            event.client_id,
            f"login.confirmed:{event.scene}",
            user_id=event.user_id,
            data=succeeded,
        )
    if isinstance(event, IdentityLinked):
        linked: dict[str, Any] = {"external_id": event.external_id}
        if event.link_request is not None:
            linked["link_request"] = event.link_request
        source = f"identity.linked:{event.link_request}" if event.link_request else by_message
        return WebhookEvent("identity.linked", event.client_id, source, event.user_id, data=linked)
    if isinstance(event, IdentityUnlinked):
        return WebhookEvent(
            "identity.unlinked",
            event.client_id,
            by_message,
            event.user_id,
            data={"external_id": event.external_id, "reason": event.reason},
        )
    if getattr(event, "purpose", None) == "link":  # a link scene declined or expired: no login failed
        return None
    if isinstance(event, SceneCancelled):
        data: dict[str, Any] = {"scene": event.scene, "reason": "cancelled"}
        if event.reason:
            data["detail"] = event.reason  # declined, or not_me: the user did not ask for this login
        return WebhookEvent("login.failed", event.client_id, f"scene.cancelled:{event.scene}", data=data)
    if isinstance(event, SceneExpired):
        if not event.scanned:  # a code nobody scanned is no failed login
            return None
        return WebhookEvent(
            "login.failed",
            event.client_id,
            f"scene.expired:{event.scene}",
            data={"scene": event.scene, "reason": "expired"},
        )
    if isinstance(event, UserCreated):
        return WebhookEvent("user.created", event.client_id, f"user.created:{event.user_id}", event.user_id)
    if isinstance(event, PhoneNumberBound):
        return WebhookEvent("phone.bound", event.client_id, by_message, event.user_id)
    if isinstance(event, SessionRevoked):
        return WebhookEvent(
            "session.revoked",
            event.client_id,
            by_message,
            event.user_id,
            data={"sid": event.sid, "reason": event.reason},
        )
    return None


class WebhookPayload(BaseModel):
    """The body of a delivery (Standard Webhooks' recommended ``{type, timestamp, data}``)."""

    model_config = ConfigDict(frozen=True)

    type: str
    timestamp: AwareDatetime
    data: dict[str, Any]


def render(event: WebhookEvent, client: Client, at: datetime, subject_key: Callable[[], bytes]) -> bytes:
    """The JSON body ``client`` receives for ``event`` (its bytes are what gets signed).

    ``subject_key`` is asked only for a pairwise client (whose ``sub`` is a keyed hash).
    """
    data: dict[str, Any] = {"client_id": client.client_id}
    if event.user_id is not None:
        key = subject_key() if client.subject_type == "pairwise" else b""
        data["sub"] = subject(client, event.user_id, key)
    data.update(event.data)
    return WebhookPayload(type=event.type, timestamp=at, data=data).model_dump_json().encode()


def message_id(client_id: str, endpoint_id: str, source: str) -> str:
    """The ``webhook-id`` of one event for one endpoint: ``msg_`` + 26 base32 characters (128 bits).

    Derived, not drawn: a redelivered bus event gets the same id, which is the outbox document's
    ``_id``, so it is recorded (and delivered) once. Stable across retries and replays.
    """
    digest = hashlib.sha256("\x00".join((client_id, endpoint_id, source)).encode()).digest()
    return "msg_" + base64.b32encode(digest[:16]).decode().rstrip("=").lower()
