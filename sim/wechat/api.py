"""The simulated WeChat endpoints, faithful to ``../shared/wechat-api.md``.

Each handler checks what WeChat checks, in the order it answers. Codes are spent and tokens minted
only on success; a rate or quota counts every call it lets through.
Where the contract marks a behaviour **[unverified]**, the choice made here is written at the check
and in ``docs/simulator.md``; the rule for such choices is "stricter than WeChat may be", so that a
bug shows up against the simulator rather than in production.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from aiohttp import web

from shared.wxcrypto import verify_session_signature
from sim.wechat.errors import FREQ_LIMIT_ERRMSG, content_type_for, json_answer
from sim.wechat.render import render_code
from sim.wechat.state import (
    CODE_LIFETIME,
    PHONE_CODE_LIFETIME,
    STABLE_RENEW_BEFORE,
    TOKEN_OVERLAP,
    SimState,
    User,
)

SCENE_ALLOWED = re.compile(r"^[0-9A-Za-z!#$&'()*+,/:;=?@\-._~]+$")
SCENE_MAX = 32
ENV_VERSIONS = frozenset({"release", "trial", "develop"})
WIDTH_MIN, WIDTH_MAX = 280, 1280
# Real WeChat labels the code image/jpeg; the bytes here are PNG (see render_code), so a client that
# trusts the header instead of sniffing the bytes is caught.
IMAGE_CONTENT_TYPE = "image/jpeg"
STABLE = "cgi-bin/stable_token"


class Reply(Exception):
    """Raised by a check to answer with an errcode at once."""

    def __init__(self, errcode: int, errmsg: str | None = None) -> None:
        super().__init__(errcode)
        self.errcode = errcode
        self.errmsg = errmsg


# --- shared checks --------------------------------------------------------------------------------


def require_method(request: web.Request, method: str) -> None:
    """43001 ``require GET method`` / 43002 ``require POST method``."""
    if request.method != method:
        raise Reply(43001 if method == "GET" else 43002)


async def json_body(request: web.Request, *, not_json: int = 47001) -> dict[str, Any]:
    """The JSON object body, parsed whatever the Content-Type says (as WeChat does).

    Empty → 44002; not a JSON object (a form body, say) → ``not_json`` (47001, or 40169 for codes).
    """
    raw = await request.read()
    if not raw.strip():
        raise Reply(44002)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested ~1000 deep, a 500 before
        raise Reply(not_json) from None
    if not isinstance(data, dict):
        raise Reply(not_json)
    return data


def check_app(state: SimState, appid: Any, secret: Any) -> None:
    """41002 / 40013 / 41004 / 40125 for the appid and appsecret of a request."""
    if not appid:
        raise Reply(41002)
    if appid != state.appid:
        raise Reply(40013)
    if not secret:
        raise Reply(41004)
    if not hmac.compare_digest(str(secret).encode(), state.secret.encode()):
        raise Reply(40125)


def check_token(state: SimState, token: str | None) -> None:
    """41001 missing; 40014 malformed; 40001 unknown or superseded; 42001 expired.

    [inferred] 40014 vs 40001: a string that is not shaped like an access_token at all gets 40014
    ``invalid access_token``; a well-shaped one WeChat does not (or no longer) accept gets 40001.
    """
    if not token:
        raise Reply(41001)
    verdict = state.token_state(token)
    if verdict == "malformed":
        raise Reply(40014)
    if verdict == "invalid":
        raise Reply(40001)
    if verdict == "expired":
        raise Reply(42001)


# --- access tokens --------------------------------------------------------------------------------


async def get_token(request: web.Request, state: SimState) -> web.Response:
    """``GET /cgi-bin/token``: a new 7200 s token each call; the previous one works 5 more minutes."""
    require_method(request, "GET")
    q = request.query
    if q.get("grant_type") != "client_credential":
        raise Reply(40002)
    check_app(state, q.get("appid"), q.get("secret"))
    if not state.take("cgi-bin/token", "day", state.limits.token_per_day):
        raise Reply(45009)
    token = state.mint_token("basic", overlap=TOKEN_OVERLAP)
    return json_answer({"access_token": token.value, "expires_in": round(token.expires_at - state.now())})


async def stable_token(request: web.Request, state: SimState) -> web.Response:
    """``POST /cgi-bin/stable_token``: the same token while valid; ``force_refresh`` mints a new one.

    Isolated from ``cgi-bin/token``: neither invalidates the other's tokens.
    """
    require_method(request, "POST")
    body = await json_body(request)
    if body.get("grant_type") != "client_credential":
        raise Reply(40002)
    check_app(state, body.get("appid"), body.get("secret"))
    force = body.get("force_refresh", False)
    if not isinstance(force, bool):
        raise Reply(47001)  # [choice] a non-boolean is a format error, not "false"
    limits, now = state.limits, state.now()
    if state.exhausted(STABLE, "minute", limits.stable_token_per_minute):
        raise Reply(45011)
    if state.exhausted(STABLE, "day", limits.stable_token_per_day):
        raise Reply(45009)
    if force:
        # [unverified] The errcodes for breaking the force-refresh limits are not published:
        # 45009 (daily quota) for the 21st of the day, 45011 (frequency) for under 30 s apart.
        if state.exhausted("force_refresh", "day", limits.force_refresh_per_day):
            raise Reply(45009)
        last = state.last_force_refresh
        if last is not None and now - last < limits.force_refresh_min_interval_s:
            raise Reply(45011)
    state.count(STABLE, "minute")
    state.count(STABLE, "day")
    current = state.current.get("stable")
    if force:
        state.count("force_refresh", "day")
        state.last_force_refresh = now
        # [unverified] Whether the old stable token gets a grace period: none here; the docs say it
        # "becomes invalid", and a consumer holding it must cope (40001 → invalidate → retry once).
        token = state.mint_token("stable", overlap=0)
    elif current is None or state.token_state(current.value) != "valid":
        token = state.mint_token("stable", overlap=0)
    elif current.expires_at - now <= STABLE_RENEW_BEFORE:
        # Renewed five minutes early; the old token keeps working until it expires.
        token = state.mint_token("stable", overlap=current.expires_at - now)
    else:
        token = current
    return json_answer({"access_token": token.value, "expires_in": round(token.expires_at - now)})


# --- mini-program codes ---------------------------------------------------------------------------


def _rgb(value: Any) -> tuple[int, int, int]:
    # The docs show strings ("0"), SDKs send strings, TS typings numbers: accept both.
    if not isinstance(value, dict):
        raise Reply(40097)
    out = []
    for key in ("r", "g", "b"):
        part = value.get(key, 0)
        try:
            number = int(part) if not isinstance(part, bool) else -1
        except (TypeError, ValueError):
            number = -1
        if not 0 <= number <= 255:
            raise Reply(40097)
        out.append(number)
    return out[0], out[1], out[2]


async def getwxacodeunlimit(request: web.Request, state: SimState) -> web.Response:
    """``POST /wxa/getwxacodeunlimit``: PNG bytes labelled image/jpeg on success, a JSON error otherwise."""
    require_method(request, "POST")
    check_token(state, request.query.get("access_token"))
    if not state.take("wxa/getwxacodeunlimit", "minute", state.limits.qrcode_per_minute):
        raise Reply(45009, FREQ_LIMIT_ERRMSG)  # older docs tie the 5000/min limit to 45009
    body = await json_body(request, not_json=40169)
    if "scancode_time" in body:
        raise Reply(85096)  # [inferred] a reserved name, whether as a field or inside page
    scene = body.get("scene")
    if not isinstance(scene, str) or not scene or len(scene) > SCENE_MAX:
        raise Reply(40169)
    if not SCENE_ALLOWED.match(scene):
        raise Reply(40129)
    page = body.get("page")
    check_path = body.get("check_path", True)
    if page is not None:
        if not isinstance(page, str):
            raise Reply(41030)
        if "scancode_time" in page:
            raise Reply(85096)
        if not page or page.startswith("/") or "?" in page:
            raise Reply(41030)
    if check_path is not False:
        # With check_path the page must exist in the *published* version, whatever env_version
        # says; an empty published set is an unpublished mini-program (even its home page fails).
        published = state.config.published_pages
        if not published or (page is not None and page not in published):
            raise Reply(41030)
    if body.get("env_version", "release") not in ENV_VERSIONS:
        raise Reply(40097)
    width = body.get("width", 430)
    # [unverified] Out-of-range width: WeChat's behaviour is unknown; the simulator refuses it with
    # 40097 rather than clamping, so a misconfigured width shows up in development.
    if not isinstance(width, int) or isinstance(width, bool) or not WIDTH_MIN <= width <= WIDTH_MAX:
        raise Reply(40097)
    auto_color = body.get("auto_color", False)
    line_color = (0, 0, 0) if auto_color is True else _rgb(body.get("line_color", {"r": 0, "g": 0, "b": 0}))
    image = render_code(scene, width, line_color=line_color, hyaline=body.get("is_hyaline") is True)
    return web.Response(body=image, headers={"Content-Type": IMAGE_CONTENT_TYPE})


# --- URL Links ------------------------------------------------------------------------------------

URL_LINK_QUERY_ALLOWED = re.compile(r"^[0-9A-Za-z!#$&'()*+,/:;=?@\-._~%]*$")
URL_LINK_QUERY_MAX = 1024
URL_LINK_MAX_DAYS = 30
# [unverified] The errmsg of 40002 for a personal mini-program is not published; the documentation
# table gives "暂无生成权限" (no permission to generate) for 40002.
NO_URL_LINK_ERRMSG = "no permission to generate url link (personal mini-program)"


async def generate_urllink(request: web.Request, state: SimState) -> web.Response:
    """``POST /wxa/generate_urllink``: a ``https://wxaurl.cn/…`` link that opens a page in WeChat.

    Non-personal mini-programs only (40002 for a personal one, POST /sim/config ``personal``).
    """
    require_method(request, "POST")
    check_token(state, request.query.get("access_token"))
    body = await json_body(request)
    if state.config.personal:
        raise Reply(40002, NO_URL_LINK_ERRMSG)
    path = body.get("path", "")
    if not isinstance(path, str) or "?" in path:
        raise Reply(40165)  # "不可携带 query": the query goes in its own field
    path = path.lstrip("/")  # the documentation's own example has a leading "/"
    if path and path not in state.config.published_pages:
        raise Reply(40165)  # "必须是已经发布的小程序存在的页面"
    query = body.get("query", "")
    if not isinstance(query, str) or len(query) > URL_LINK_QUERY_MAX:
        raise Reply(40212)
    if not URL_LINK_QUERY_ALLOWED.match(query):
        raise Reply(40212)
    env_version = body.get("env_version", "release")
    if env_version not in ENV_VERSIONS:
        raise Reply(40097)
    now = state.now()
    expire_type = body.get("expire_type")
    if expire_type == 1:
        days = body.get("expire_interval")
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= URL_LINK_MAX_DAYS:
            raise Reply(85402)
        expires_at = now + days * 86400
    elif expire_type == 0:
        at = body.get("expire_time")
        latest = now + URL_LINK_MAX_DAYS * 86400
        if not isinstance(at, int) or isinstance(at, bool) or not now + 60 <= at <= latest:
            raise Reply(85401)
        expires_at = float(at)
    else:
        raise Reply(40097)  # [choice] expire_type is required by the documentation; missing is refused
    if not state.take("wxa/generate_urllink", "day", state.limits.url_link_per_day):
        raise Reply(45009)
    link = state.add_url_link(path=path, query=query, env_version=env_version, expires_at=expires_at)
    return json_answer({"errcode": 0, "errmsg": "ok", "url_link": link.url})


# --- login ----------------------------------------------------------------------------------------


async def jscode2session(request: web.Request, state: SimState) -> web.Response:
    """``GET /sns/jscode2session``: a wx.login code works once, within five minutes."""
    require_method(request, "GET")
    q = request.query
    check_app(state, q.get("appid"), q.get("secret"))
    if q.get("grant_type") != "authorization_code":
        raise Reply(40002)  # [inferred] by analogy with cgi-bin/token; the field is required
    js_code = q.get("js_code")
    if not js_code:
        raise Reply(41008)
    code = state.codes.get(js_code)
    if code is None:
        # Any-code mode: a code from WeChat DevTools (never issued here) is a virtual user's.
        code = state.accept_unknown_code(js_code)
    if code is None or state.now() - code.issued_at >= CODE_LIFETIME:
        raise Reply(40029)
    if code.used:
        raise Reply(40163)
    user = state.users[code.openid]
    if user.blocked:
        raise Reply(40226)
    if not state.take(f"jscode2session:{user.openid}", "minute", state.limits.code2session_per_user_minute):
        raise Reply(45011)
    code.used = True
    assert user.session_key is not None  # issued with the code
    body: dict[str, Any] = {"session_key": user.session_key, "openid": user.openid}
    if user.unionid and state.open_platform_bound:
        body["unionid"] = user.unionid
    return json_answer(body, content_type=content_type_for("sns/jscode2session"))


# --- phone number ---------------------------------------------------------------------------------


async def getuserphonenumber(request: web.Request, state: SimState) -> web.Response:
    """``POST /wxa/business/getuserphonenumber``: a getPhoneNumber code works once, within 5 minutes."""
    require_method(request, "POST")
    check_token(state, request.query.get("access_token"))
    body = await json_body(request)
    value = body.get("code")
    openid = body.get("openid")
    code = state.phone_codes.get(value) if isinstance(value, str) else None
    if code is None and isinstance(value, str) and value:
        # Any-code mode: a getPhoneNumber code from WeChat DevTools gives a virtual phone.
        code = state.accept_unknown_phone_code(value, openid if isinstance(openid, str) else None)
    # A missing code ({} with the code in the query string, say) is 40029 too, as reported.
    if code is None or code.used or state.now() - code.issued_at >= PHONE_CODE_LIFETIME:
        raise Reply(40029)
    if openid is not None and openid != code.openid:
        raise Reply(40003)  # [unverified] the docs only say it "errors" when openid and code differ
    if not state.take("getuserphonenumber", "minute", state.limits.phone_per_minute):
        raise Reply(45011)
    code.used = True
    user = state.users[code.openid]
    assert user.phone is not None  # phone codes are only issued to users with a phone
    return json_answer(
        {"errcode": 0, "errmsg": "ok", "phone_info": _phone_info(state, user, int(code.issued_at))}
    )


def _phone_info(state: SimState, user: User, granted_at: int) -> dict[str, Any]:
    assert user.phone is not None
    cc = user.country_code
    return {
        # Foreign numbers carry their country code; Chinese ones are shown bare.
        "phoneNumber": user.phone if cc == "86" else f"+{cc}{user.phone}",
        "purePhoneNumber": user.phone,
        # [unverified] string or number: the field table, easywechat and the strict Go SDKs say
        # string, the doc example a number. String by default; POST /sim/config switches it.
        "countryCode": int(cc) if state.config.country_code_as == "number" else cc,
        "watermark": {"timestamp": granted_at, "appid": state.appid},
    }


# --- session check --------------------------------------------------------------------------------


async def checksession(request: web.Request, state: SimState) -> web.Response:
    """``GET /wxa/checksession``: is this the user's current session_key? (HMAC-SHA256 of "")."""
    require_method(request, "GET")
    q = request.query
    check_token(state, q.get("access_token"))
    if q.get("sig_method") != "hmac_sha256":
        raise Reply(87008)
    user = state.users.get(q.get("openid", ""))
    if user is None:
        raise Reply(40003)  # [inferred] an unknown or missing openid
    if user.session_key is None:
        raise Reply(87007)
    if not verify_session_signature(user.session_key, b"", q.get("signature", "")):
        raise Reply(87009)
    return json_answer({"errcode": 0, "errmsg": "ok"})
