"""Errors raised at the gateway, and the one table that turns error codes into HTTP statuses."""

from __future__ import annotations

from shared.errors import ServiceError


class BadRequest(ServiceError):
    """The body or query is missing, malformed or fails validation."""

    code = "invalid_request"
    default_message = "the request is not valid"


class UnsupportedMediaType(ServiceError):
    """A body where JSON is required, sent as another type (``text/plain`` is what a cross-site form or
    a no-preflight ``fetch`` sends)."""

    code = "unsupported_media_type"
    default_message = "send the body as JSON (Content-Type: application/json)"


class Unauthorized(ServiceError):
    """No bearer token, or one that does not verify."""

    code = "unauthorized"
    default_message = "a valid bearer token is required"


class OriginNotAllowed(ServiceError):
    """The page's Origin is not in ``WXLOGIN_ALLOWED_ORIGINS``."""

    code = "origin_not_allowed"
    default_message = "this origin may not use the login service"


class TicketRequired(ServiceError):
    """Scene calls from the browser must prove they hold the ticket."""

    code = "ticket_required"
    default_message = "the login ticket is missing"


class TicketInUrl(ServiceError):
    """The ticket was put in the URL, where logs, proxies and history keep it; it goes in a header."""

    code = "ticket_in_url"
    default_message = "send the login ticket in the X-Login-Ticket header, never in the URL"


class ClientUnknown(ServiceError):
    """The request names a client that is not registered (``WXLOGIN_CLIENTS_FILE``)."""

    code = "client_unknown"
    default_message = "no client with this client_id is registered"


class ClientAuthRequired(ServiceError):
    """A site's backend route needs the client's id and secret (HTTP Basic), of a confidential client."""

    code = "client_auth_required"
    default_message = "authenticate with the client id and client secret (HTTP Basic)"


class RateLimited(ServiceError):
    """This client sent more requests of this kind than its limit allows."""

    code = "rate_limited"
    default_message = "too many requests, slow down"


# Codes from any service → HTTP status (DESIGN §5). Unknown codes are upstream failures (502).
STATUS_BY_CODE: dict[str, int] = {
    "invalid_request": 400,
    "ticket_in_url": 400,
    "code_invalid": 400,
    "code_required": 400,
    "unauthorized": 401,
    "token_invalid": 401,
    "ticket_required": 401,
    "ticket_invalid": 403,
    "scan_token_invalid": 403,
    "origin_not_allowed": 403,
    "user_blocked": 403,
    "launch_scene_refused": 403,
    "scene_not_found": 404,
    "login_code_invalid": 404,
    "user_not_found": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "already_scanned": 409,
    "already_confirmed": 409,
    "already_redeemed": 409,
    "scene_not_scanned": 409,
    "scene_not_confirmed": 409,
    "code_in_progress": 409,
    "scene_state_conflict": 409,
    "scene_expired": 410,
    "scene_cancelled": 410,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "internal": 500,
    "service_unavailable": 503,
    "bus_unavailable": 503,
    "store_unavailable": 503,
    "rpc_timeout": 503,
    "token_unavailable": 503,
    "wechat_unavailable": 503,
    "code_quota_exhausted": 503,
    # --- identity ---
    "refresh_invalid": 401,
    "refresh_reused": 401,
    "session_ended": 401,
    "phone_code_invalid": 400,
    "decrypt_failed": 400,
    "watermark_invalid": 400,
    "phone_unavailable": 403,
    "phone_taken": 409,
    "unionid_taken": 409,
    "no_session_key": 409,
    # --- clients and OpenID Connect (OAuth endpoints answer RFC 6749 bodies: gateway/oidc.py) ---
    "client_unknown": 400,
    "client_mismatch": 403,
    "invalid_grant": 400,
    "invalid_scope": 400,
    "unauthorized_client": 400,
    "unsupported_grant_type": 400,
    "invalid_client": 401,
    "login_required": 401,
    # --- account linking (gateway/linking.py; docs/linking.md) ---
    "client_auth_required": 401,
    "scene_purpose_mismatch": 403,
    "link_request_not_found": 404,
    "link_not_found": 404,
    "link_request_used": 409,
    "already_linked": 409,
    "account_already_linked": 409,
    "link_request_expired": 410,
}


def status_for(code: str) -> int:
    """The HTTP status for an error code."""
    return STATUS_BY_CODE.get(code, 502)
