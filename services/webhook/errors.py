"""Errors of the webhook service; its admin route maps each ``code`` to an HTTP status."""

from __future__ import annotations

from shared.errors import ServiceError


class EndpointUnknown(ServiceError):
    """No such webhook endpoint (or it belongs to another client: the same answer)."""

    code = "webhook_endpoint_unknown"
    default_message = "no such webhook endpoint"


class MessageUnknown(ServiceError):
    """No such webhook message (or it belongs to another client, or was purged)."""

    code = "webhook_message_unknown"
    default_message = "no such webhook message"


class ClientAuthRequired(ServiceError):
    """The admin route needs the client's id and secret (HTTP Basic)."""

    code = "client_auth_required"
    default_message = "authenticate with the client id and client secret (HTTP Basic)"
