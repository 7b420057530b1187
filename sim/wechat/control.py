"""The simulator's control API under ``/sim`` (DESIGN §6): users, codes, faults, clock, counters, reset.

Scripts and tests rely on these paths and bodies; ``docs/simulator.md`` documents each. Bad input gets
a 4xx with ``{"error": {"code", "message"}}``, the project's error shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any, NoReturn

from aiohttp import web

from shared.wxcrypto import encrypt_data
from sim.wechat.faults import ENDPOINTS, FaultSpecError
from sim.wechat.state import ANY_CODE_MODES, Limits, SimState, User

STATE = web.AppKey("state", SimState)

PHONE_SHAPE = re.compile(r"^[0-9]{5,15}$")
COUNTRY_CODE_SHAPE = re.compile(r"^[1-9][0-9]{0,3}$")
# WeChat's launch scene of a mini-program opened from a URL Link (场景值 1194).
URL_LINK_LAUNCH_SCENE = 1194


class ControlError(Exception):
    """A refused control call; rendered as ``{"error": {"code", "message"}}`` by the middleware."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        """The JSON error answer."""
        return web.json_response({"error": {"code": self.code, "message": self.message}}, status=self.status)


def fail(status: int, code: str, message: str) -> NoReturn:
    """Stop the request with a JSON error."""
    raise ControlError(status, code, message)


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object body; an empty body is ``{}``."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested ~1000 deep, a 500 before
        fail(400, "invalid_json", "the body must be JSON")
    if not isinstance(data, dict):
        fail(400, "invalid_json", "the body must be a JSON object")
    return data


def _only(body: dict[str, Any], *allowed: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        fail(400, "unknown_field", f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        fail(400, "invalid_field", f"{key} must be true or false")
    return value


def _user(state: SimState, openid: Any) -> User:
    if not isinstance(openid, str) or not openid:
        fail(400, "invalid_field", "openid (a string) is required")
    user = state.users.get(openid)
    if user is None:
        fail(404, "unknown_openid", "no such user; create one with POST /sim/users")
    return user


# --- users and codes ------------------------------------------------------------------------------


async def create_user(request: web.Request) -> web.Response:
    """``POST /sim/users {unionid?: bool, phone?: str, country_code?: str, blocked?: bool}`` → a user."""
    body = await read_body(request)
    _only(body, "unionid", "phone", "country_code", "blocked")
    phone = body.get("phone")
    if phone is not None and (not isinstance(phone, str) or not PHONE_SHAPE.match(phone)):
        fail(400, "invalid_field", "phone must be 5 to 15 digits (the national number)")
    country_code = body.get("country_code", "86")
    if not isinstance(country_code, str) or not COUNTRY_CODE_SHAPE.match(country_code):
        fail(400, "invalid_field", 'country_code must be 1 to 4 digits, like "86"')
    user = request.app[STATE].add_user(
        unionid=_bool(body, "unionid"), phone=phone, blocked=_bool(body, "blocked"), country_code=country_code
    )
    out: dict[str, Any] = {"openid": user.openid}
    if user.unionid:
        out["unionid"] = user.unionid
    if user.phone:
        out["phone"] = user.phone
    return web.json_response(out, status=201)


async def get_user(request: web.Request) -> web.Response:
    """``GET /sim/users/{openid}`` → the user, with its current session_key."""
    return web.json_response(_user(request.app[STATE], request.match_info["openid"]).view())


async def update_user(request: web.Request) -> web.Response:
    """``PATCH /sim/users/{openid} {blocked?: bool}`` → flag (or clear) a user as high-risk."""
    user = _user(request.app[STATE], request.match_info["openid"])
    body = await read_body(request)
    _only(body, "blocked")
    user.blocked = _bool(body, "blocked", user.blocked)
    return web.json_response(user.view())


async def create_code(request: web.Request) -> web.Response:
    """``POST /sim/codes {openid}`` → what ``wx.login()`` returns on that user's phone."""
    state = request.app[STATE]
    body = await read_body(request)
    _only(body, "openid")
    user = _user(state, body.get("openid"))
    return web.json_response({"code": state.issue_code(user.openid).code}, status=201)


async def create_phone_code(request: web.Request) -> web.Response:
    """``POST /sim/phone-codes {openid}`` → what a getPhoneNumber button returns."""
    state = request.app[STATE]
    body = await read_body(request)
    _only(body, "openid")
    user = _user(state, body.get("openid"))
    if not user.phone:
        fail(409, "no_phone", "this user has no phone number; create users with POST /sim/users {phone}")
    return web.json_response({"code": state.issue_phone_code(user.openid).code}, status=201)


async def create_encrypted_data(request: web.Request) -> web.Response:
    """``POST /sim/encrypted-data {openid, data, appid?}`` → ``{encrypted_data, iv}``.

    ``data`` is encrypted with the user's current session_key and gets a watermark; ``appid``
    overrides the watermark's appid, to test that a wrong one is refused.
    """
    state = request.app[STATE]
    body = await read_body(request)
    _only(body, "openid", "data", "appid")
    user = _user(state, body.get("openid"))
    data = body.get("data")
    if not isinstance(data, dict):
        fail(400, "invalid_field", "data must be a JSON object")
    appid = body.get("appid", state.appid)
    if not isinstance(appid, str):
        fail(400, "invalid_field", "appid must be a string")
    if user.session_key is None:
        fail(409, "no_session_key", "this user has no session_key yet; call POST /sim/codes first")
    encrypted, iv = encrypt_data(user.session_key, data, appid=appid, timestamp=int(state.now()))
    return web.json_response({"encrypted_data": encrypted, "iv": iv})


async def get_dev_user(request: web.Request) -> web.Response:
    """``GET /sim/dev-user`` → the user unknown codes log in as in sticky any-code mode."""
    return web.json_response(_dev_user_view(request.app[STATE]))


async def choose_dev_user(request: web.Request) -> web.Response:
    """``POST /sim/dev-user {index?: int, openid?: str}`` → a new (or chosen) developer user.

    No body: the next numbered developer user, a new WeChat identity. ``index`` picks a numbered
    one (the same openid every time); ``openid`` picks any user of the simulator.
    """
    state = request.app[STATE]
    body = await read_body(request)
    _only(body, "index", "openid")
    if "index" in body and "openid" in body:
        fail(400, "invalid_field", "give index or openid, not both")
    index = body.get("index")
    whole = isinstance(index, int) and not isinstance(index, bool)
    if index is not None and not (whole and 1 <= index <= 10**6):
        fail(400, "invalid_field", "index must be a whole number from 1")
    openid = body.get("openid")
    if openid is not None:
        _user(state, openid)
    state.choose_dev_user(index=index, openid=openid)
    return web.json_response(_dev_user_view(state), status=201)


def _dev_user_view(state: SimState) -> dict[str, Any]:
    return {
        **state.dev_user().view(),
        "index": state.dev_user_number(),
        "any_code": state.config.any_code,
    }


# --- faults ---------------------------------------------------------------------------------------


async def add_fault(request: web.Request) -> web.Response:
    """``POST /sim/faults {endpoint, errcode?, errmsg?, count?, latency_ms?, mode?}`` → the fault."""
    body = await read_body(request)
    try:
        fault = request.app[STATE].faults.add(body)
    except FaultSpecError as exc:
        fail(400, "invalid_fault", str(exc))
    return web.json_response(fault.view(), status=201)


async def list_faults(request: web.Request) -> web.Response:
    """``GET /sim/faults`` → the faults in force, oldest first."""
    return web.json_response({"faults": [f.view() for f in request.app[STATE].faults.list()]})


async def clear_faults(request: web.Request) -> web.Response:
    """``DELETE /sim/faults[?endpoint=…]`` → removes faults and releases hanging calls."""
    endpoint = request.query.get("endpoint")
    if endpoint is not None:
        endpoint = endpoint.strip("/")
        if endpoint not in ENDPOINTS:
            fail(400, "invalid_field", f"endpoint must be one of {list(ENDPOINTS)}")
    return web.json_response({"cleared": request.app[STATE].faults.clear(endpoint)})


# --- clock, counters, config, reset ---------------------------------------------------------------


async def get_clock(request: web.Request) -> web.Response:
    """``GET /sim/clock`` → ``{now, offset_s}``."""
    state = request.app[STATE]
    return web.json_response({"now": state.now(), "offset_s": state.clock_offset})


async def advance_clock(request: web.Request) -> web.Response:
    """``POST /sim/clock {advance_s}`` → moves the simulated clock forward."""
    body = await read_body(request)
    _only(body, "advance_s")
    seconds = body.get("advance_s")
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        fail(400, "invalid_field", "advance_s (a number of seconds) is required")
    if seconds < 0:
        fail(400, "invalid_field", "the clock only moves forward")
    state = request.app[STATE]
    return web.json_response({"now": state.advance(seconds), "offset_s": state.clock_offset})


async def counters(request: web.Request) -> web.Response:
    """``GET /sim/counters`` → calls per endpoint (faulted calls included)."""
    return web.json_response(dict(request.app[STATE].counters))


def _config_view(state: SimState) -> dict[str, Any]:
    config = state.config
    return {
        "appid": state.appid,
        "open_platform_bound": config.open_platform_bound,
        "published_pages": sorted(config.published_pages),
        "country_code_as": config.country_code_as,
        "limits": asdict(config.limits),
        "any_code": config.any_code,
        "personal": config.personal,
    }


async def get_config(request: web.Request) -> web.Response:
    """``GET /sim/config`` → how the simulated mini-program is set up."""
    return web.json_response(_config_view(request.app[STATE]))


async def update_config(request: web.Request) -> web.Response:
    """``POST /sim/config {open_platform_bound?, published_pages?, country_code_as?, limits?, any_code?,
    personal?}``.

    Changes the set-up; the answer is the new config.
    """
    state = request.app[STATE]
    body = await read_body(request)
    _only(body, "open_platform_bound", "published_pages", "country_code_as", "limits", "any_code", "personal")
    config = state.config
    bound = _bool(body, "open_platform_bound", config.open_platform_bound)
    personal = _bool(body, "personal", config.personal)
    pages = body.get("published_pages", sorted(config.published_pages))
    if not isinstance(pages, list) or not all(isinstance(p, str) and p for p in pages):
        fail(400, "invalid_field", "published_pages must be a list of page paths")
    country_code_as = body.get("country_code_as", config.country_code_as)
    if country_code_as not in ("string", "number"):
        fail(400, "invalid_field", 'country_code_as must be "string" or "number"')
    any_code = body.get("any_code", config.any_code)
    if any_code not in ANY_CODE_MODES:
        fail(400, "invalid_field", f"any_code must be one of {list(ANY_CODE_MODES)}")
    limits = body.get("limits", {})
    if not isinstance(limits, dict):
        fail(400, "invalid_field", "limits must be an object")
    unknown = sorted(set(limits) - set(Limits.names()))
    if unknown:
        fail(400, "unknown_field", f"unknown limit(s) {unknown}; known: {list(Limits.names())}")
    for name, value in limits.items():
        valid_number = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        if not valid_number and not (value is None and name != "force_refresh_min_interval_s"):
            fail(400, "invalid_field", f"limits.{name} must be a number ≥ 0 (or null: not enforced)")
    # Everything is checked before anything changes.
    config.open_platform_bound = bound
    config.published_pages = frozenset(pages)
    config.country_code_as = country_code_as
    config.any_code = any_code
    config.personal = personal
    for name, value in limits.items():
        setattr(config.limits, name, value)
    return web.json_response(_config_view(state))


async def open_url_link(request: web.Request) -> web.Response:
    """``GET /sim/url-link?url=…`` → what opening a URL Link in WeChat does: ``{path, query,
    env_version, expires_at, launch_scene}`` (404 for a link never handed out, 410 once expired)."""
    state = request.app[STATE]
    link = state.url_links.get(request.query.get("url", ""))
    if link is None:
        fail(404, "unknown_url_link", "this simulator never handed out that URL Link")
    if state.now() >= link.expires_at:
        fail(410, "url_link_expired", "the URL Link has expired")
    return web.json_response(
        {
            "path": link.path,
            "query": link.query,
            "env_version": link.env_version,
            "expires_at": link.expires_at,
            "launch_scene": URL_LINK_LAUNCH_SCENE,
        }
    )


async def reset(request: web.Request) -> web.Response:
    """``POST /sim/reset`` → forgets everything (faults, clock and config included)."""
    request.app[STATE].reset()
    return web.json_response({"ok": True})


def setup_control_routes(app: web.Application) -> None:
    """Every ``/sim`` route."""
    r = app.router
    r.add_post("/sim/users", create_user)
    r.add_get("/sim/users/{openid}", get_user)
    r.add_patch("/sim/users/{openid}", update_user)
    r.add_post("/sim/codes", create_code)
    r.add_post("/sim/phone-codes", create_phone_code)
    r.add_post("/sim/encrypted-data", create_encrypted_data)
    r.add_get("/sim/dev-user", get_dev_user)
    r.add_post("/sim/dev-user", choose_dev_user)
    r.add_post("/sim/faults", add_fault)
    r.add_get("/sim/faults", list_faults)
    r.add_delete("/sim/faults", clear_faults)
    r.add_get("/sim/clock", get_clock)
    r.add_post("/sim/clock", advance_clock)
    r.add_get("/sim/counters", counters)
    r.add_get("/sim/config", get_config)
    r.add_post("/sim/config", update_config)
    r.add_post("/sim/reset", reset)
    r.add_get("/sim/url-link", open_url_link)
