"""The gateway's public HTTP API as an OpenAPI 3.1 document, served at ``/openapi.json``.

Request bodies are the pydantic models the routes validate with (their JSON Schema), so the document
cannot drift from what is accepted; tests compare its paths with the router and fuzz the running
gateway against it (Schemathesis). The ops endpoints (``/healthz``, ``/readyz``, ``/metrics``) are
for the load balancer and Prometheus, not the public, and are left out.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from services.gateway.identity import CodeBody, DecryptBody, LogoutBody, RefreshBody
from services.gateway.linking import LinkRequestBody
from services.gateway.longpoll import StatusQuery
from services.gateway.routes import (
    CancelBody,
    CompleteBody,
    ConfirmBody,
    EnterCodeBody,
    IssueBody,
    ScanBody,
)

OPENAPI_VERSION = "3.1.0"

ERROR_CODES = {
    400: "invalid_request, client_unknown, code_invalid, code_required, phone_code_invalid, decrypt_failed…",
    401: "unauthorized, token_invalid, ticket_required, refresh_invalid, refresh_reused, session_ended, "
    "client_auth_required (with WWW-Authenticate: Basic)",
    403: "origin_not_allowed, ticket_invalid, scan_token_invalid, user_blocked, phone_unavailable, "
    "launch_scene_refused, client_mismatch, scene_purpose_mismatch",
    404: "not_found, scene_not_found, user_not_found, login_code_invalid, link_request_not_found, "
    "link_not_found",
    405: "method_not_allowed",
    408: "scene_expired (long-poll)",
    409: "already_scanned, already_confirmed, already_redeemed, scene_not_scanned, link_request_used, "
    "already_linked, account_already_linked…",
    410: "scene_expired, scene_cancelled, link_request_expired",
    413: "payload_too_large (bodies over 16 KB)",
    415: "unsupported_media_type (a body that is not application/json)",
    429: "rate_limited (with Retry-After)",
    503: "bus_unavailable, store_unavailable, rpc_timeout, wechat_unavailable… (with Retry-After)",
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error answer of the API.",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

_STRING = {"type": "string"}
_USER = {
    "type": "object",
    "required": ["id", "openid"],
    "properties": {"id": _STRING, "openid": _STRING, "unionid": _STRING, "phone": _STRING},
}
_TOKENS = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "refresh_token", "user"],
    "properties": {
        "access_token": _STRING,
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer"},
        "refresh_token": _STRING,
        "user": {"$ref": "#/components/schemas/User"},
    },
}
_STATUS = {
    "type": "object",
    "required": ["scene", "state"],
    "properties": {
        "scene": _STRING,
        "state": {"enum": ["pending", "scanned", "confirmed", "cancelled", "expired", "unknown"]},
        "reason": {"type": "string", "description": "cancelled: declined, or not_me (不是我)"},
        "error": {"$ref": "#/components/schemas/Error/properties/error"},
    },
}
_PLACE = {
    "type": "object",
    "description": "A coarse location from the offline IP database (never the address itself)",
    "required": ["kind", "label"],
    "properties": {
        "kind": {"enum": ["public", "local", "unknown"]},
        "label": _STRING,
        "country": _STRING,
        "province": _STRING,
        "city": _STRING,
        "isp": _STRING,
    },
}
_SCANNED = {
    "type": "object",
    "required": [
        "scan_token",
        "identified",
        "site",
        "requester",
        "phone",
        "location_mismatch",
        "launch",
        "expires_at",
    ],
    "properties": {
        "scan_token": _STRING,
        "identified": {"type": "boolean"},
        "identify_error": _STRING,
        "site": _STRING,
        "requester": {
            "type": "object",
            "description": "the browser that asked: browser and OS as it reported them, where it is",
            "required": ["browser", "os", "location", "requested_at"],
            "properties": {
                "browser": _STRING,
                "os": _STRING,
                "location": _PLACE,
                "requested_at": {"type": "string", "format": "date-time"},
            },
        },
        "phone": {"type": "object", "required": ["location"], "properties": {"location": _PLACE}},
        "location_mismatch": {"type": "boolean"},
        "launch": {"enum": ["camera", "image", "unknown"]},
        "expires_at": {"type": "string", "format": "date-time"},
        "purpose": {"enum": ["login", "link"], "description": "link: the confirm links an account"},
        "account_hint": {"type": "string", "description": "link: the site's account, as the site names it"},
    },
}


def _naming_the_scene(scanned: dict[str, Any]) -> dict[str, Any]:
    """A typed login code answers as a scan does, and names the scene it opened."""
    return {
        "type": "object",
        "required": ["scene", *scanned["required"]],
        "properties": {"scene": _STRING, **scanned["properties"]},
    }


_ENTERED = _naming_the_scene(_SCANNED)
_ISSUED = {
    "type": "object",
    "required": ["scene", "ticket", "image", "expires_at", "expires_in"],
    "properties": {
        "scene": _STRING,
        "ticket": _STRING,
        "image": _STRING,
        "expires_at": {"type": "string", "format": "date-time"},
        "expires_in": {"type": "integer"},
        "login_code": {"type": "string", "description": "asked for with login_code: 8 characters to type"},
        "url_link": {"type": "string", "description": "asked for with url_link, when the service gives one"},
    },
}


_LINK_OPENED = {
    "type": "object",
    "required": ["link_request", "link_token", "expires_at", "expires_in"],
    "properties": {
        "link_request": {"type": "string", "description": "its id, for GET /api/link/requests/{id}"},
        "link_token": {"type": "string", "description": "for the signed-in user's page (single use)"},
        "expires_at": {"type": "string", "format": "date-time"},
        "expires_in": {"type": "integer"},
    },
}
_LINK_STATUS = {
    "type": "object",
    "required": ["link_request", "state", "external_id", "expires_at"],
    "properties": {
        "link_request": _STRING,
        "state": {"enum": ["pending", "scanned", "linked", "refused", "expired"]},
        "reason": {
            "type": "string",
            "description": "refused: already_linked, account_already_linked, declined, not_me",
        },
        "external_id": _STRING,
        "expires_at": {"type": "string", "format": "date-time"},
        "linked_at": {"type": "string", "format": "date-time"},
        "sub": {"type": "string", "description": "linked: the WeChat user as this client sees it"},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json({"$ref": "#/components/schemas/Error"}, ERROR_CODES[s]) for s in sorted(statuses)}


def _body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"required": required, "content": {"application/json": {"schema": schema}}}


# Every JSON route can answer these; a body route also 400 (malformed), 413 and 415.
_ALWAYS = (405, 503)
_BODY = (400, 405, 413, 415, 503)
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
# A site's backend: its client id and secret (HTTP Basic), a confidential client only.
_CLIENT_BASIC: list[dict[str, list[str]]] = [{"basic": []}]
_TICKET_HEADER = {
    "name": "X-Login-Ticket",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "minLength": 16, "maxLength": 128, "pattern": "^[A-Za-z0-9_-]+$"},
}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def _operations() -> dict[str, dict[str, Any]]:
    ok = _json
    return {
        "/api/login/qrcode": {
            "post": {
                "summary": "A login code for this browser, and the ticket that alone can redeem it",
                "requestBody": _body(IssueBody, required=False),
                # With a link_token: 404, 409, 410 for an unknown, used or expired link request.
                "responses": {"201": ok(_ISSUED, "issued"), **_errors(403, 404, 409, 410, 429, *_BODY)},
            }
        },
        "/api/login/ws": {
            "get": {
                "summary": "WebSocket: subscribe {type, scene, ticket}; state pushes until a final state",
                "responses": {
                    "101": {"description": "switched to the WebSocket protocol"},
                    **_errors(400, 403, 429, *_ALWAYS),
                },
            }
        },
        "/api/login/status": {
            "get": {
                "summary": "Long-poll a scene's state (the WebSocket's fallback)",
                "parameters": [*_query_parameters(StatusQuery), _TICKET_HEADER],
                "responses": {
                    "200": ok(_STATUS, "confirmed: redeem with /api/login/complete"),
                    "202": ok(_STATUS, "pending or scanned"),
                    "404": ok(_STATUS, "unknown scene (state unknown, with error)"),
                    "408": ok(_STATUS, "expired"),
                    "410": ok(_STATUS, "cancelled"),
                    **_errors(400, 401, 403, 429, *_ALWAYS),
                },
            }
        },
        "/api/login/complete": {
            "post": {
                "summary": "Redeem a confirmed scene (once) for tokens",
                "requestBody": _body(CompleteBody),
                "responses": {"200": ok(_TOKENS, "tokens"), **_errors(403, 404, 409, 410, 429, *_BODY)},
            }
        },
        "/api/me": {
            "get": {
                "summary": "The user of the bearer token",
                "security": _BEARER,
                "responses": {"200": ok(_USER, "the user"), **_errors(401, *_ALWAYS)},
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "summary": "The public keys that verify access tokens",
                "responses": {
                    "200": ok({"type": "object", "required": ["keys"]}, "JWKS"),
                    **_errors(*_ALWAYS),
                },
            }
        },
        "/api/mp/scan": {
            "post": {
                "summary": "Mini-program: this phone scanned a code; what it is about to approve",
                "requestBody": _body(ScanBody),
                "responses": {"200": ok(_SCANNED, "scanned"), **_errors(403, 404, 409, 410, 429, *_BODY)},
            }
        },
        "/api/mp/enter_code": {
            "post": {
                "summary": "Mini-program: this phone typed the login code its browser shows; as a scan",
                "requestBody": _body(EnterCodeBody),
                "responses": {
                    "200": ok(_ENTERED, "scanned"),
                    **_errors(403, 404, 409, 410, 429, *_BODY),
                },
            }
        },
        "/api/mp/confirm": {
            "post": {
                "summary": "Mini-program: approve the login (the scanning phone only)",
                "requestBody": _body(ConfirmBody),
                "responses": {
                    "200": ok({"type": "object", "required": ["state"]}, "confirmed"),
                    **_errors(403, 404, 409, 410, 429, *_BODY),
                },
            }
        },
        "/api/mp/cancel": {
            "post": {
                "summary": "Mini-program: refuse the login (the scanning phone only)",
                "requestBody": _body(CancelBody),
                "responses": {
                    "200": ok({"type": "object", "required": ["state"]}, "cancelled"),
                    **_errors(403, 404, 409, 410, 429, *_BODY),
                },
            }
        },
        "/api/token/refresh": {
            "post": {
                "summary": "New tokens for a refresh token (which is spent)",
                "requestBody": _body(RefreshBody),
                "responses": {"200": ok(_TOKENS, "tokens"), **_errors(401, 403, 429, *_BODY)},
            }
        },
        "/api/logout": {
            "post": {
                "summary": "End the session (bearer token, or {refresh_token})",
                "security": [*_BEARER, {}],
                "requestBody": _body(LogoutBody, required=False),
                "responses": {"204": {"description": "ended"}, **_errors(401, 429, *_BODY)},
            }
        },
        "/api/mp/login": {
            "post": {
                "summary": "Mini-program: tokens for a wx.login code",
                "requestBody": _body(CodeBody),
                "responses": {"200": ok(_TOKENS, "tokens"), **_errors(403, 429, *_BODY)},
            }
        },
        "/api/mp/phone": {
            "post": {
                "summary": "Mini-program: bind the phone number of a getPhoneNumber code",
                "security": _BEARER,
                "requestBody": _body(CodeBody),
                "responses": {
                    "200": ok({"type": "object", "required": ["user", "access_token"]}, "bound"),
                    **_errors(401, 403, 409, 429, *_BODY),
                },
            }
        },
        "/api/mp/decrypt": {
            "post": {
                "summary": "Mini-program: decrypt open data with the session's session_key",
                "security": _BEARER,
                "requestBody": _body(DecryptBody),
                "responses": {
                    "200": ok({"type": "object", "required": ["data", "user"]}, "decrypted"),
                    **_errors(401, 403, 409, 429, *_BODY),
                },
            }
        },
        "/": {
            "get": {
                "summary": "The demo page (WXLOGIN_DEMO only)",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}, **_errors(404)},
            }
        },
        "/demo/config.json": {
            "get": {
                "summary": "The demo page's settings (WXLOGIN_DEMO only)",
                "responses": {"200": ok({"type": "object"}, "settings"), **_errors(404)},
            }
        },
        "/sdk/wxlogin.js": {
            "get": {
                "summary": "The browser SDK (script)",
                "responses": {
                    "200": {
                        "description": "JavaScript (the type the platform's mimetypes names)",
                        "content": {"text/javascript": {}, "application/javascript": {}},
                    }
                },
            }
        },
        "/sdk/wxlogin.mjs": {
            "get": {
                "summary": "The browser SDK (ES module)",
                "responses": {"200": {"description": "JavaScript", "content": {"text/javascript": {}}}},
            }
        },
        "/static/{filename}": {
            "get": {
                "summary": "The demo page's files",
                "parameters": [{"name": "filename", "in": "path", "required": True, "schema": _STRING}],
                "responses": {"200": {"description": "a file"}, **_errors(404)},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": ok({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/api/link/requests": {
            "post": {
                "summary": "Site backend: open a link request for one of its accounts (docs/linking.md)",
                "security": _CLIENT_BASIC,
                "requestBody": _body(LinkRequestBody),
                "responses": {"201": ok(_LINK_OPENED, "opened"), **_errors(401, 429, *_BODY)},
            }
        },
        "/api/link/requests/{link_request}": {
            "get": {
                "summary": "Site backend: where a link request stands",
                "security": _CLIENT_BASIC,
                "parameters": [
                    {"name": "link_request", "in": "path", "required": True, "schema": _STRING}
                ],
                "responses": {"200": ok(_LINK_STATUS, "its state"), **_errors(400, 401, 404, 429, *_ALWAYS)},
            }
        },
        "/api/links/{external_id}": {
            "delete": {
                "summary": "Site backend: unlink an account (every WeChat user, or the one sub names)",
                "security": _CLIENT_BASIC,
                "parameters": [
                    {"name": "external_id", "in": "path", "required": True, "schema": _STRING},
                    {"name": "sub", "in": "query", "required": False, "schema": _STRING},
                ],
                "responses": {
                    "200": ok(
                        {"type": "object", "required": ["external_id", "unlinked"]}, "how many were unlinked"
                    ),
                    **_errors(400, 401, 404, 429, *_ALWAYS),
                },
            }
        },
        "/api/link/complete": {
            "post": {
                "summary": "The browser that showed a link code: its outcome, once the phone confirmed",
                "requestBody": _body(CompleteBody),
                "responses": {
                    "200": ok({"type": "object", "required": ["state", "scene", "link_request"]}, "linked"),
                    **_errors(403, 404, 409, 410, 429, *_BODY),
                },
            }
        },
    }


# --- OpenID Connect (services/gateway/oidc.py) ------------------------------------------------------

_FORM = "application/x-www-form-urlencoded"
_OAUTH_ERROR = {
    "type": "object",
    "description": "An OAuth error (RFC 6749 §5.2, RFC 6750 §3): the OAuth endpoints' only error format.",
    "required": ["error"],
    "properties": {"error": _STRING, "error_description": _STRING},
}
_HTML = {"text/html": {"schema": {"type": "string"}}}
_AUTHORIZE_PARAMETERS = {
    "response_type": {"type": "string", "enum": ["code"]},
    "client_id": _STRING,
    "redirect_uri": _STRING,
    "scope": _STRING,
    "state": _STRING,
    "nonce": _STRING,
    "code_challenge": _STRING,
    "code_challenge_method": {"type": "string", "enum": ["S256"]},
    "prompt": _STRING,
    "max_age": _STRING,
    "ui_locales": _STRING,
    "response_mode": _STRING,
}
_LOGOUT_PARAMETERS = {
    "id_token_hint": _STRING,
    "post_logout_redirect_uri": _STRING,
    "client_id": _STRING,
    "state": _STRING,
    "ui_locales": _STRING,
}
_OIDC_TOKENS = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": _STRING,
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer"},
        "refresh_token": _STRING,
        "id_token": _STRING,
        "scope": _STRING,
    },
}
_CLIENT_AUTH: list[dict[str, list[str]]] = [{"basic": []}, {}]  # or client_id (+ secret) in the form


def _oauth(*statuses: int) -> dict[str, Any]:
    descriptions = {
        400: "invalid_request, invalid_grant, invalid_scope, unsupported_grant_type, unauthorized_client",
        401: "invalid_client (WWW-Authenticate: Basic when Basic was used), invalid_token (Bearer)",
        403: "insufficient_scope",
        429: "temporarily_unavailable (a rate limit, with Retry-After)",
        502: "server_error",
        503: "temporarily_unavailable (a dependency is down, with Retry-After)",
    }
    return {str(s): _json({"$ref": "#/components/schemas/OAuthError"}, descriptions[s]) for s in statuses}


def _form_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"required": True, "content": {_FORM: {"schema": schema}}}


def _page(description: str) -> dict[str, Any]:
    return {"description": description, "content": _HTML}


def _query(properties: dict[str, Any], required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "query", "required": name in required, "schema": schema}
        for name, schema in properties.items()
    ]


def _oidc_operations() -> dict[str, dict[str, Any]]:
    """The OpenID Connect provider's routes: HTML pages and redirects, and the OAuth endpoints."""
    from services.gateway.oidc import AuthorizeCompleteBody  # it imports this package's routes

    ok = _json
    authorize_answers = {
        "200": _page("the hosted login page"),
        "302": {
            "description": "to the redirect_uri: code, state, iss; or error, error_description, state, iss"
        },
        "400": _page("an unknown client or an unregistered redirect_uri: an error page, never a redirect"),
        **_errors(405, 429),
    }
    logout_answers = {
        "200": _page("logged out, or the question whether to log out"),
        "302": {"description": "to the registered post_logout_redirect_uri, with state"},
        "400": _page("an invalid id_token_hint, client or post_logout_redirect_uri"),
        "503": _page("a dependency is down (Retry-After)"),
        **_errors(405, 429),
    }
    token_form = {
        "grant_type": {"type": "string", "enum": ["authorization_code", "refresh_token"]},
        "code": _STRING,
        "redirect_uri": _STRING,
        "code_verifier": _STRING,
        "refresh_token": _STRING,
        "scope": _STRING,
        "client_id": _STRING,
        "client_secret": _STRING,
    }
    return {
        "/.well-known/openid-configuration": {
            "get": {
                "summary": "OpenID Connect discovery: the issuer, its endpoints and what it supports",
                "responses": {
                    "200": ok({"type": "object", "required": ["issuer"]}, "metadata"),
                    **_errors(405),
                },
            }
        },
        "/oidc/authorize": {
            "get": {
                "summary": "The authorization endpoint (code flow): a silent login, or the hosted login page",
                "parameters": _query(_AUTHORIZE_PARAMETERS, ("client_id",)),
                "responses": authorize_answers,
            },
            "post": {
                "summary": "The authorization endpoint, with the parameters as a form",
                "requestBody": _form_body(_AUTHORIZE_PARAMETERS, ["client_id"]),
                "responses": authorize_answers,
            },
        },
        "/oidc/authorize/complete": {
            "post": {
                "summary": "The hosted login page's confirmed scan: where to go next (same origin only)",
                "requestBody": _body(AuthorizeCompleteBody),
                "responses": {
                    "200": ok({"type": "object", "required": ["redirect_to"]}, "the redirect"),
                    **_errors(403, 404, 409, 410, 429, *_BODY),
                },
            }
        },
        "/oidc/token": {
            "post": {
                "summary": "The token endpoint (authorization_code, refresh_token grants)",
                "security": _CLIENT_AUTH,
                "requestBody": _form_body(token_form, ["grant_type"]),
                "responses": {
                    "200": ok(_OIDC_TOKENS, "tokens"),
                    **_oauth(400, 401, 429, 502, 503),
                    **_errors(405),
                },
            }
        },
        "/oidc/userinfo": {
            method: {
                "summary": "The claims about the user of an OpenID Connect access token",
                "security": _BEARER,
                **(
                    {"requestBody": {**_form_body({"access_token": _STRING}, []), "required": False}}
                    if method == "post"
                    else {}
                ),
                "responses": {
                    "200": ok({"type": "object", "required": ["sub"]}, "claims"),
                    **_oauth(400, 401, 403, 429, 502, 503),
                    **_errors(405),
                },
            }
            for method in ("get", "post")
        },
        "/oidc/revoke": {
            "post": {
                "summary": "Token revocation (RFC 7009): 200 for any token of an authenticated client",
                "security": _CLIENT_AUTH,
                "requestBody": _form_body(
                    {
                        "token": _STRING,
                        "token_type_hint": _STRING,
                        "client_id": _STRING,
                        "client_secret": _STRING,
                    },
                    ["token"],
                ),
                "responses": {
                    "200": {"description": "revoked, or nothing to revoke"},
                    **_oauth(400, 401, 429, 503),
                    **_errors(405),
                },
            }
        },
        "/oidc/logout": {
            "get": {
                "summary": "RP-initiated logout: end the OP session, go to post_logout_redirect_uri",
                "parameters": _query(_LOGOUT_PARAMETERS),
                "responses": logout_answers,
            },
            "post": {
                "summary": "RP-initiated logout as a form (also the confirmation's answer)",
                "requestBody": {
                    **_form_body({**_LOGOUT_PARAMETERS, "confirm": _STRING}, []),
                    "required": False,
                },
                "responses": logout_answers,
            },
        },
        "/demo/callback": {
            "get": {
                "summary": "The demo's OpenID Connect relying party (WXLOGIN_DEMO only)",
                "responses": {"200": _page("HTML"), **_errors(404)},
            }
        },
    }


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway's public API."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "wxlogin gateway",
            "version": "1",
            "description": "WeChat mini-program scan login: the browser API, the mini-program API, the "
            'identity API and an OpenID Connect provider. Errors are {"error": {"code", "message"}}, '
            "except at the OAuth endpoints (token, userinfo, revoke), which answer RFC 6749 errors.",
        },
        "paths": {**_operations(), **_oidc_operations()},
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, "OAuthError": _OAUTH_ERROR, "User": _USER},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "basic": {"type": "http", "scheme": "basic", "description": "client_secret_basic"},
            },
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.json_response(document(), headers={"Cache-Control": "public, max-age=300"})
