"""Transport-neutral delivery handling: the trace id, decoding, running handlers, and the ack policy.

Both transports hand a :class:`Delivery` to the one :class:`Adapter`, so handlers behave the same in
the embedded process and over RabbitMQ. The ack policy is written down once, in :class:`Outcome` and
:meth:`Adapter.handle_event`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import structlog
from pymongo.errors import PyMongoError

from shared.bus.acl import CallerNotAllowed, Gate
from shared.errors import (
    InternalError,
    InvalidRequest,
    RemoteError,
    ServiceError,
    StoreUnavailable,
)
from shared.logging import get_logger
from shared.messages import (
    Event,
    InvalidMessage,
    Reply,
    Request,
    UnknownMessage,
    decode,
    decode_as,
    decode_error,
    encode,
    encode_error,
    new_id,
)
from shared.sealing import Sealer

log = get_logger("shared.bus")

E = TypeVar("E", bound=Event)
R = TypeVar("R", bound=Reply)
EventHandler = Callable[[Any], Awaitable[None]]
RpcHandler = Callable[[Any], Awaitable[Reply]]
Routes = Mapping[str, tuple[type[Request[Any]], RpcHandler]]

_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
_message_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("message_id", default=None)

# Error codes that mean "a dependency is down for now", not "this request is wrong": counted as
# ``unavailable`` in the metrics, and an event whose handler hit one is retried, not dead-lettered.
UNAVAILABLE_CODES = frozenset(
    {
        "bus_unavailable",
        "store_unavailable",
        "service_unavailable",
        "rpc_timeout",
        "token_unavailable",
        "wechat_unavailable",
    }
)


def current_correlation_id() -> str:
    """The trace id of the flow being handled, or a fresh one."""
    return _correlation.get() or new_id()


def current_message_id() -> str | None:
    """The ``message_id`` of the event being handled (None outside an event handler).

    A redelivered event keeps its id, so a consumer can use it to act once per event.
    """
    return _message_id.get()


def set_correlation_id(value: str | None) -> contextvars.Token[str | None]:
    """Make ``value`` the trace id for the current task (returns a token for ``reset``)."""
    return _correlation.set(value)


def reset_correlation_id(token: contextvars.Token[str | None]) -> None:
    """Undo :func:`set_correlation_id`."""
    _correlation.reset(token)


def is_transient(exc: BaseException) -> bool:
    """True for failures that go away by themselves: the store or the bus or a callee is down."""
    # BusUnavailable, StoreUnavailable and RpcTimeout are ServiceErrors with codes of that set.
    return isinstance(exc, PyMongoError) or (
        isinstance(exc, ServiceError) and exc.error_code in UNAVAILABLE_CODES
    )


class Outcome(Enum):
    """What the transport does with a delivery after the adapter is done.

    * ``ACK``: handled (a :class:`ServiceError` counts as handled: the handler decided the outcome);
    * ``REJECT``: dead-letter, never requeue (undecodable, unknown type or version, failed twice);
    * ``REQUEUE``: give it back at once, for one more try (the first unexpected failure);
    * ``RETRY``: a dependency is down; give it back after a pause. Retries are bounded by the queue's
      delivery limit (quorum queues), after which the broker dead-letters the message.
    """

    ACK = "ack"
    REJECT = "reject"
    REQUEUE = "requeue"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A received message, stripped of its transport."""

    type: str
    version: int
    body: bytes
    message_id: str | None = None
    correlation_id: str | None = None
    app_id: str | None = None
    redelivered: bool = False
    attempt: int = 0  # how many times it was delivered before (the broker's delivery count)
    user_id: str | None = None  # the sender's broker user, validated by RabbitMQ (shared.bus.acl)


def version_of(headers: Mapping[str, Any] | None) -> int:
    """``headers.v`` as an int (0 when absent or garbage, which no schema uses)."""
    try:
        return int((headers or {}).get("v", 0))
    except (TypeError, ValueError):
        return 0


class Adapter:
    """Decodes deliveries, binds the log context, runs handlers, and decides acks and replies."""

    def __init__(self, service: str, sealer: Sealer, gate: Gate | None = None) -> None:
        self.service = service
        self.sealer = sealer
        self.gate = gate or Gate(None)

    async def handle_event(self, delivery: Delivery, handler: EventHandler) -> Outcome:
        """Run ``handler`` on the decoded event; the :class:`Outcome` says what to do with the message."""
        try:
            bound_to = delivery.message_id or ""
            event = decode(delivery.type, delivery.version, delivery.body, self.sealer, message_id=bound_to)
        except (UnknownMessage, InvalidMessage) as exc:
            log.warning("message_rejected", type=delivery.type, v=delivery.version, reason=str(exc)[:200])
            return Outcome.REJECT
        if not isinstance(event, Event) or not self.gate.may_publish(type(event), delivery.user_id):
            log.warning("message_rejected", type=delivery.type, reason="sender", user=delivery.user_id)
            return Outcome.REJECT
        token = set_correlation_id(delivery.correlation_id)
        message_token = _message_id.set(delivery.message_id)
        bound = structlog.contextvars.bind_contextvars(
            service=self.service, correlation_id=delivery.correlation_id, message=delivery.type
        )
        try:
            await handler(event)
        except Exception as exc:
            if is_transient(exc):
                log.info("event_deferred", type=delivery.type, reason=_reason(exc), attempt=delivery.attempt)
                return Outcome.RETRY
            if isinstance(exc, ServiceError):
                log.info("event_refused", type=delivery.type, error_code=exc.error_code, detail=exc.message)
                return Outcome.ACK
            log.exception("event_handler_failed", type=delivery.type, redelivered=delivery.redelivered)
            return Outcome.REJECT if delivery.redelivered else Outcome.REQUEUE
        finally:
            _correlation.reset(token)
            _message_id.reset(message_token)
            structlog.contextvars.reset_contextvars(**bound)
        return Outcome.ACK

    async def handle_request(self, delivery: Delivery, handlers: Routes) -> tuple[str, int, bytes]:
        """Run the handler; returns the reply's ``(type, version, body)``."""
        token = set_correlation_id(delivery.correlation_id)
        bound = structlog.contextvars.bind_contextvars(
            service=self.service, correlation_id=delivery.correlation_id, message=delivery.type
        )
        try:
            entry = handlers.get(delivery.type)
            if entry is None:
                raise InvalidRequest(f"{self.service} does not answer {delivery.type!r}")
            cls, handler = entry
            if not self.gate.may_call(delivery.type, delivery.user_id):
                log.warning("rpc_caller_refused", type=delivery.type, user=delivery.user_id)
                raise CallerNotAllowed(f"{delivery.user_id or 'this sender'} may not call {delivery.type}")
            if delivery.version != cls.VERSION:
                raise InvalidRequest(f"{delivery.type} version {delivery.version} is not served")
            try:
                request = decode_as(cls, delivery.body, self.sealer, message_id=delivery.message_id or "")
            except InvalidMessage as exc:
                raise InvalidRequest(str(exc)) from None
            reply = await handler(request)
            # A reply's sealed fields are bound to the request it answers (its correlation_id).
            return reply.TYPE, reply.VERSION, encode(reply, self.sealer, message_id=delivery.message_id or "")
        except ServiceError as exc:
            return "error", 1, encode_error(exc.to_wire())
        except PyMongoError as exc:
            # The database is down or a connection dropped mid-operation: the caller may try again.
            log.warning("rpc_store_unavailable", type=delivery.type, error=type(exc).__name__)
            return "error", 1, encode_error(StoreUnavailable().to_wire())
        except Exception:
            log.exception("rpc_handler_failed", type=delivery.type)
            return "error", 1, encode_error(InternalError().to_wire())
        finally:
            _correlation.reset(token)
            structlog.contextvars.reset_contextvars(**bound)

    def reply_from(self, request: Request[R], type_: str, body: bytes, *, message_id: str = "") -> R:
        """Decode a reply to ``request``, raising :class:`RemoteError` for an error reply."""
        if type_ == "error":
            err = decode_error(body)
            raise RemoteError(err["code"], str(err.get("message", "")), retry_after=err.get("retry_after"))
        try:
            return decode_as(request.REPLY, body, self.sealer, message_id=message_id)
        except InvalidMessage as exc:
            log.error("rpc_reply_invalid", type=request.TYPE, reason=str(exc)[:200])
            raise RemoteError("internal", "malformed reply") from None


def _reason(exc: BaseException) -> str:
    return exc.error_code if isinstance(exc, ServiceError) else type(exc).__name__
