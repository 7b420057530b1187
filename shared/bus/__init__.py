"""The message bus every service uses: events on per-service topic exchanges, and JSON RPC.

One interface (:class:`Bus`), one adapter (:mod:`shared.bus.adapter`: decoding, log context, the
ack policy), two transports:

* :class:`AmqpBus` (:mod:`shared.bus.amqp`): RabbitMQ through aio-pika; heals itself after
  connection, channel and broker faults; quorum queues (:mod:`shared.bus.topology`);
* :class:`MemoryBus` on a shared :class:`MemoryBroker` (:mod:`shared.bus.memory`): the same
  semantics inside one process.

Properties on every message: ``type`` (message type), ``headers.v`` (schema version), ``message_id``,
``correlation_id`` (the trace id of the whole flow), ``timestamp``, ``app_id`` (sending service). An
RPC reply's ``correlation_id`` is the request's ``message_id`` (the JMS convention), its ``type`` is the
reply type or ``error``.

Ack policy, in one place:

* an event is acked after its handler returns (a :class:`~shared.errors.ServiceError` counts as
  handled: the handler decided the outcome);
* an undecodable message, or one of unknown type/version, is rejected without requeue; it lands in
  the consumer's bounded dead-letter queue ``<consumer>.dead``;
* a handler that raises anything else gets the message back once (requeue); the second failure
  dead-letters it;
* a handler that found a dependency down (MongoDB, the bus, a callee: ``is_transient``) gets the
  message back after a pause growing to 5 s, until the quorum queue's delivery limit dead-letters it;
* an RPC request is always acked once its reply (or error reply) is sent; retrying is the caller's
  call, bounded by its timeout, which is also the request's AMQP ``expiration``. A MongoDB error in a
  handler is answered as ``store_unavailable``;
* shutting down (:meth:`Bus.drain`): consumers are cancelled first, so the broker sends new work to
  other replicas; a delivery that still arrives is requeued at once; deliveries being handled get
  until the deadline, then their handlers are cancelled and the messages requeued. Nothing is acked
  that was not handled, so a stopped replica never loses a message.
"""

from shared.bus.adapter import (
    Delivery,
    Outcome,
    current_correlation_id,
    current_message_id,
    is_transient,
    reset_correlation_id,
    set_correlation_id,
    version_of,
)
from shared.bus.amqp import AmqpBus, split_urls
from shared.bus.interface import Bus, Caller, EventUndeliverable, Publisher, call_outcome
from shared.bus.memory import MemoryBroker, MemoryBus
from shared.bus.metrics import BusMetrics, InFlight

__all__ = [
    "AmqpBus",
    "Bus",
    "BusMetrics",
    "Caller",
    "Delivery",
    "EventUndeliverable",
    "InFlight",
    "MemoryBroker",
    "MemoryBus",
    "Outcome",
    "Publisher",
    "call_outcome",
    "current_correlation_id",
    "current_message_id",
    "is_transient",
    "reset_correlation_id",
    "set_correlation_id",
    "split_urls",
    "version_of",
]
