"""Who may send what on the bus: the one table of callers per RPC method, and the check on delivery.

The sender of a message is the broker user of the connection it came on. Every message carries that
user in the AMQP ``user_id`` property, which RabbitMQ **validates** (a publish whose ``user_id`` is not
the connection's user is refused), so it cannot be forged by a service that has only its own broker
credentials. A broker user belongs to a service by its name: ``wxlogin-qrcode`` (or any name ending in
``-qrcode``, like the per-run users of the tests) is the qrcode service.

* An RPC request is served only if its sender is one of :data:`CALLERS` of its method.
* An event is handled only if its sender is one of the event's ``PUBLISHERS``.

A service that runs as its own broker user (every deployment: deploy/rabbitmq) refuses anything from
a user that belongs to no service. On a development broker where every service shares one user
(``guest``), nobody can be told apart and the check is off: :class:`Gate` says so once at start-up.
In one process (``memory://``) the sender is the sending bus itself, so the table is enforced there
too and every in-process test exercises it.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import ServiceError
from shared.messages import Event

SERVICES = ("token", "qrcode", "session", "gateway", "webhook")

# RPC method → the services that may call it. Every request type has an entry (tested).
CALLERS: Mapping[str, frozenset[str]] = {
    "token.current": frozenset({"qrcode", "session"}),
    # The session service issues link scenes, for the link request a browser presented (docs/linking.md).
    "qrcode.issue": frozenset({"gateway", "session"}),
    "qrcode.status": frozenset({"gateway", "session"}),
    "qrcode.scan": frozenset({"gateway"}),
    # The session service cancels a link scene whose link it refused (already_linked…): the browser
    # that shows it is told why.
    "qrcode.cancel": frozenset({"gateway", "session"}),
    # Only the session service decides a confirm (it identified the scanner): a gateway cannot
    # confirm a scene for a user of its choosing, nor identify or redeem one.
    "qrcode.confirm": frozenset({"session"}),
    "qrcode.identify": frozenset({"session"}),
    "qrcode.redeem": frozenset({"session"}),
    # A typed login code scans a scene for the WeChat user the session service identified (the
    # per-user limit counts that user): the gateway cannot enter codes for a user of its choosing.
    "qrcode.scan_code": frozenset({"session"}),
    "session.confirm": frozenset({"gateway"}),
    "session.identify": frozenset({"gateway"}),
    "session.enter_code": frozenset({"gateway"}),
    "session.complete": frozenset({"gateway"}),
    "session.jwks": frozenset({"gateway"}),
    "session.mp_login": frozenset({"gateway"}),
    "session.refresh": frozenset({"gateway"}),
    "session.logout": frozenset({"gateway"}),
    "session.bind_phone": frozenset({"gateway"}),
    "session.decrypt": frozenset({"gateway"}),
    # OpenID Connect: the gateway is the HTTP face of the OP, the session service holds its state.
    "session.authorize": frozenset({"gateway"}),
    "session.token": frozenset({"gateway"}),
    "session.userinfo": frozenset({"gateway"}),
    "session.end_session": frozenset({"gateway"}),
    "session.revoke": frozenset({"gateway"}),
    # Account linking: the gateway authenticated the site's backend, or holds the browser's ticket.
    "session.open_link": frozenset({"gateway"}),
    "session.issue_link": frozenset({"gateway"}),
    "session.complete_link": frozenset({"gateway"}),
    "session.link_status": frozenset({"gateway"}),
    "session.unlink": frozenset({"gateway"}),
}


class CallerNotAllowed(ServiceError):
    """The sender of a request may not call this method (see :data:`CALLERS`)."""

    code = "caller_not_allowed"
    default_message = "this service may not call this method"


def service_of_user(user: str | None) -> str | None:
    """The service a broker user belongs to (``wxlogin-qrcode`` → ``qrcode``), or None."""
    if not user:
        return None
    last = user.rsplit("-", 1)[-1]
    return last if last in SERVICES and last != user else None


class Gate:
    """Decides whether a delivery's sender may send it, for a service running as broker user ``own_user``."""

    def __init__(self, own_user: str | None) -> None:
        self.own_user = own_user
        # Only a service with a broker user of its own can trust that others have theirs.
        self.enforced = service_of_user(own_user) is not None

    def sender(self, user: str | None) -> str | None:
        """The service that sent a message whose validated ``user_id`` is ``user``."""
        return service_of_user(user)

    def may_call(self, method: str, user: str | None) -> bool:
        """True if the sender with broker user ``user`` may call ``method``."""
        if not self.enforced:
            return True
        return self.sender(user) in CALLERS.get(method, frozenset())

    def may_publish(self, event: type[Event], user: str | None) -> bool:
        """True if the sender with broker user ``user`` may publish ``event``."""
        if not self.enforced:
            return True
        return self.sender(user) in event.PUBLISHERS
