"""Errors that cross service boundaries.

A service raises a subclass of :class:`ServiceError` (declared in its own ``errors.py``); the bus sends
it as ``{"error": {"code", "message"}}`` and the caller gets a :class:`RemoteError` with the same code.
The gateway alone turns codes into HTTP statuses.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """A domain error with a stable snake_case ``code``; safe to show to the caller."""

    code: ClassVar[str] = "service_error"
    default_message: ClassVar[str] = "the request could not be served"

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        self.message = message or self.default_message
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def error_code(self) -> str:
        """The code sent over the wire (instance-level so :class:`RemoteError` can vary it)."""
        return self.code

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` object of an RPC error reply."""
        body: dict[str, Any] = {"code": self.error_code, "message": self.message}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class RemoteError(ServiceError):
    """An error reply received from another service (its code is preserved)."""

    def __init__(self, code: str, message: str = "", *, retry_after: float | None = None) -> None:
        self._code = code
        super().__init__(message or code, retry_after=retry_after)

    @property
    def error_code(self) -> str:
        return self._code

    def __repr__(self) -> str:
        return f"RemoteError({self._code!r}, {self.message!r})"


class RpcTimeout(RemoteError):
    """No reply arrived within the caller's timeout."""

    def __init__(self, method: str, timeout: float) -> None:
        super().__init__("rpc_timeout", f"{method} did not answer within {timeout:g}s", retry_after=1)


class RpcUnavailable(RemoteError):
    """Nobody serves the method (no queue bound, no replica running)."""

    def __init__(self, method: str, reason: str = "no server") -> None:
        super().__init__("service_unavailable", f"{method}: {reason}", retry_after=1)


class BusUnavailable(RemoteError):
    """The bus itself is down (no connection, or it is being re-established): try again shortly.

    Raised at once while the bus is reconnecting, and for a call whose reply can no longer arrive
    because the connection it went out on was lost.
    """

    def __init__(self, method: str, reason: str = "reconnecting", *, retry_after: float = 2) -> None:
        super().__init__("bus_unavailable", f"{method}: {reason}", retry_after=retry_after)


class StoreUnavailable(ServiceError):
    """MongoDB did not answer (down, failing over, or a connection dropped mid-operation)."""

    code = "store_unavailable"
    default_message = "the database is unavailable, try again shortly"

    def __init__(self, message: str | None = None, *, retry_after: float | None = 2) -> None:
        super().__init__(message, retry_after=retry_after)


class InvalidRequest(ServiceError):
    """The request could not be decoded or failed validation."""

    code = "invalid_request"
    default_message = "the request is not valid"


class InternalError(ServiceError):
    """An unexpected failure inside a service; details are in that service's log only."""

    code = "internal"
    default_message = "internal error"
