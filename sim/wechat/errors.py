"""WeChat's errcodes with the wording real responses use, the ``rid`` suffix, and the JSON answers.

WeChat answers errors with HTTP 200 and ``{"errcode", "errmsg"}``. The wording is the real one
(``../shared/wechat-api.md`` §10), not the run-together text of the documentation tables.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from aiohttp import web

# Observed on the QR endpoints' JSON errors; used for every JSON answer except jscode2session's.
JSON_CONTENT_TYPE = "application/json; encoding=utf-8"
# jscode2session is reported to answer with text/plain (the contract leaves it open): the stricter
# choice, so that a client that trusts the header is caught here rather than in production.
TEXT_CONTENT_TYPE = "text/plain"
CONTENT_TYPES = {"sns/jscode2session": TEXT_CONTENT_TYPE}


def content_type_for(endpoint: str) -> str:
    """The Content-Type of ``endpoint``'s JSON answers, errors and successes alike."""
    return CONTENT_TYPES.get(endpoint, JSON_CONTENT_TYPE)


ERRMSG: dict[int, str] = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40013: "invalid appid",
    40014: "invalid access_token",
    40029: "invalid code",
    40097: "invalid args",
    40125: "invalid appsecret",
    40129: "invalid scene",
    40163: "code been used",
    40169: "invalid length for scene, or the data is not json string",
    40165: "invalid weapp pagepath",
    40212: "invalid query",
    40226: "code blocked",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    41008: "missing code",
    41030: "invalid page",
    42001: "access_token expired",
    43001: "require GET method",
    43002: "require POST method",
    44002: "empty post data",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit, must slower, retry next minute",
    47001: "data format error",
    48001: "api unauthorized",
    85096: "not allow include scancode_time field",
    85401: "time limit between 1min and 30days",
    85402: "invalid expire_interval, must between 1 and 30",
    87007: "session_key is not existd or expired",
    87008: "invalid sig_method",
    87009: "invalid signature",
}
# 45009 on getwxacodeunlimit is its 5000/minute limit; the legacy wording of 45009 fits that better.
FREQ_LIMIT_ERRMSG = "api freq out of limit"

# Real samples put a comma before the rid for these ("invalid code, rid: ..."), not for others.
_COMMA_BEFORE_RID = frozenset({-1, 40029, 40125})


def rid() -> str:
    """A request id shaped like WeChat's: three groups of 8 hex digits."""
    return "-".join(secrets.token_hex(4) for _ in range(3))


def error_body(errcode: int, errmsg: str | None = None) -> dict[str, Any]:
    """``{"errcode", "errmsg"}`` with the real wording and a `` rid: …`` suffix."""
    text = errmsg or ERRMSG.get(errcode, "unknown error")
    sep = ", " if errcode in _COMMA_BEFORE_RID and errmsg is None else " "
    return {"errcode": errcode, "errmsg": f"{text}{sep}rid: {rid()}"}


def json_answer(body: dict[str, Any], *, content_type: str = JSON_CONTENT_TYPE) -> web.Response:
    """A JSON body with HTTP 200, labelled as WeChat labels it."""
    return web.Response(
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
        headers={"Content-Type": content_type},
    )


def error_response(
    errcode: int, errmsg: str | None = None, *, content_type: str = JSON_CONTENT_TYPE
) -> web.Response:
    """An error as WeChat sends it: HTTP 200 with a JSON body."""
    return json_answer(error_body(errcode, errmsg), content_type=content_type)
