"""The arguments of the queues a service owns on RabbitMQ, in one place.

* A service's **durable queues** (its RPC queue ``<service>.rpc`` and its event queues
  ``<service>.<event type>``, shared by its replicas) are **quorum queues**: replicated on a cluster
  (they survive the loss of a node), with a delivery limit so a poison message is dead-lettered
  after :data:`DELIVERY_LIMIT` deliveries instead of being redelivered forever.
* Its **dead-letter queue** ``<service>.dead`` is bounded: at most :data:`DEAD_LETTER_MAX_LENGTH`
  messages (the oldest are dropped first) kept for at most :data:`DEAD_LETTER_TTL_SECONDS`.
* **Broadcast queues** (one per instance) stay classic, exclusive and auto-delete: they die with
  the connection by design.

``WXLOGIN_BUS_QUEUE_TYPE=classic`` keeps classic durable queues, for a broker whose queues were
declared by an earlier version until they are migrated (docs/deploy.md). A queue that already
exists with other arguments is used as it is, with one warning (RabbitMQ refuses to change a
queue's arguments in place).
"""

from __future__ import annotations

from typing import Any, Literal

QueueType = Literal["quorum", "classic"]

# Deliveries of one message before a quorum queue dead-letters it. The adapter's own policy
# dead-letters a message whose handler failed twice; this limit also catches the messages that
# kill their consumer and those whose dependency stays down (each retry pauses up to 5 s).
DELIVERY_LIMIT = 20
DEAD_LETTER_MAX_LENGTH = 10_000
DEAD_LETTER_TTL_SECONDS = 7 * 24 * 3600


def durable_queue_arguments(queue_type: QueueType, dead_letter_exchange: str | None) -> dict[str, Any]:
    """Arguments of a service's shared durable queue (RPC or events)."""
    args: dict[str, Any] = {}
    if queue_type == "quorum":
        args["x-queue-type"] = "quorum"
        args["x-delivery-limit"] = DELIVERY_LIMIT
    if dead_letter_exchange is not None:
        args["x-dead-letter-exchange"] = dead_letter_exchange
    return args


def dead_letter_queue_arguments(queue_type: QueueType) -> dict[str, Any]:
    """Arguments of a service's dead-letter queue: bounded in length and age."""
    args: dict[str, Any] = {
        "x-max-length": DEAD_LETTER_MAX_LENGTH,
        "x-overflow": "drop-head",
        "x-message-ttl": DEAD_LETTER_TTL_SECONDS * 1000,
    }
    if queue_type == "quorum":
        args["x-queue-type"] = "quorum"
    return args


def retry_pause(attempt: int) -> float:
    """Seconds to hold a delivery whose dependency is down before giving it back (0.5, 1, 2, 4, 5, …)."""
    return float(min(5.0, 0.5 * 2 ** max(0, attempt)))
