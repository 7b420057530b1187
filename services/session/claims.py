"""What a client learns about a user: the claims of ID tokens, OpenID Connect access tokens and
userinfo (the policy is written down in docs/identity.md §9).

- ``sub``: the user id, or for a pairwise client an id of its own (:mod:`shared.subjects`).
- ``profile``: ``preferred_username`` (``wx_`` + a keyed hash, per client for a pairwise client),
  and names, since WeChat no longer hands out nicknames: ``family_name`` 微信用户, ``given_name`` four
  characters of the username's hash, ``name`` both (e.g. 微信用户 K3QX). Stable, and never the openid.
- ``phone``: ``phone_number`` (E.164) and ``phone_number_verified`` true, only once a number is bound
  (WeChat verified it).
- ``external_id``: the client's own account the user is linked to (docs/linking.md), whatever the
  scope, in this client's tokens and userinfo only (the caller looks it up for the client).
- ID tokens also carry ``auth_time`` (the phone's confirm), ``amr`` ``["wx_scan"]``, ``sid``, ``azp``,
  and ``nonce`` when the authorization request sent one (never after a refresh).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.session.errors import InvalidScope
from services.session.store import User
from shared.clients import SCOPES, Client
from shared.subjects import preferred_username, subject

# How the user authenticated (RFC 8176 has no value for it): approved on the phone's WeChat, after
# scanning the code shown by the browser (or entering it).
AMR = ["wx_scan"]
FAMILY_NAME = "微信用户"
PROFILE_CLAIMS = ("preferred_username", "name", "given_name", "family_name")
PHONE_CLAIMS = ("phone_number", "phone_number_verified")


def granted_scope(requested: str, client: Client) -> str:
    """The scope string granted for ``requested`` (space-separated; order kept, duplicates dropped).

    Raises :class:`InvalidScope` without ``openid`` or with a scope the client may not ask for.
    """
    scopes = list(dict.fromkeys(requested.split()))
    if "openid" not in scopes:
        raise InvalidScope("the scope must include openid")
    unknown = [scope for scope in scopes if scope not in SCOPES or scope not in client.scopes]
    if unknown:
        raise InvalidScope(f"scope not allowed for this client: {' '.join(unknown)}")
    return " ".join(scopes)


def narrowed_scope(requested: str | None, granted: str) -> str:
    """The scope of a refresh: ``requested`` when it is within ``granted`` (else :class:`InvalidScope`)."""
    if not requested:
        return granted
    asked = list(dict.fromkeys(requested.split()))
    beyond = [scope for scope in asked if scope not in granted.split()]
    if beyond:
        raise InvalidScope(f"scope beyond the original grant: {' '.join(beyond)}")
    return " ".join(asked)


def display_tag(username: str) -> str:
    """Four characters of the username's hash, upper-cased: what ``given_name`` and ``name`` show."""
    return username.removeprefix("wx_")[:4].upper()


def user_claims(
    client: Client, user: User, scope: Iterable[str], key: bytes, *, external_id: str | None = None
) -> dict[str, Any]:
    """``sub`` and the claims ``scope`` covers, as userinfo answers them (``sub`` first), and the
    client's ``external_id`` of the user when it linked one."""
    scopes = set(scope)
    claims: dict[str, Any] = {"sub": subject(client, user.id, key)}
    if external_id is not None:
        claims["external_id"] = external_id
    if "profile" in scopes:
        username = preferred_username(client, user.id, key)
        tag = display_tag(username)
        claims.update(
            preferred_username=username,
            name=f"{FAMILY_NAME} {tag}",
            given_name=tag,
            family_name=FAMILY_NAME,
        )
    if "phone" in scopes and user.phone:
        claims.update(phone_number=user.phone, phone_number_verified=True)
    return claims


@dataclass(frozen=True, slots=True)
class Issuance:
    """One issue of tokens to ``client`` for ``user`` in session ``sid``: what the ID token and the
    access token share."""

    issuer: str
    client: Client
    user: User
    scope: str
    key: bytes  # the subject key (shared.subjects)
    sid: str
    auth_time: float
    now: int
    ttl: int
    external_id: str | None = None


def id_token_claims(issue: Issuance, *, nonce: str | None = None) -> dict[str, Any]:
    """The claims of an ID token (OpenID Connect Core §2, §5.4)."""
    client = issue.client
    claims = user_claims(client, issue.user, issue.scope.split(), issue.key, external_id=issue.external_id)
    claims.update(
        iss=issue.issuer,
        aud=client.client_id,
        azp=client.client_id,
        iat=issue.now,
        exp=issue.now + issue.ttl,
        auth_time=int(issue.auth_time),
        amr=list(AMR),
        sid=issue.sid,
    )
    if nonce is not None:
        claims["nonce"] = nonce
    return claims


def access_token_claims(issue: Issuance) -> dict[str, Any]:
    """The claims of an OpenID Connect access token (RFC 9068): ``sub`` as the ID token's, ``aud`` and
    ``client_id`` the client, ``scope``, ``sid``, and the client's ``external_id`` of a linked user;
    nothing else about the user."""
    claims: dict[str, Any] = {
        "iss": issue.issuer,
        "sub": subject(issue.client, issue.user.id, issue.key),
        "aud": issue.client.client_id,
        "client_id": issue.client.client_id,
        "scope": issue.scope,
        "sid": issue.sid,
        "auth_time": int(issue.auth_time),
        "iat": issue.now,
        "nbf": issue.now,
        "exp": issue.now + issue.ttl,
        "jti": secrets.token_urlsafe(16),
    }
    if issue.external_id is not None:
        claims["external_id"] = issue.external_id
    return claims
