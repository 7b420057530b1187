"""Errors of the token service."""

from __future__ import annotations

from shared.errors import ServiceError


class NoToken(ServiceError):
    """No valid access_token is held yet (WeChat unreachable or not configured)."""

    code = "token_unavailable"
    default_message = "no valid access token yet"
