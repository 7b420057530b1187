"""``GET /``: what this simulator is, how to point a service at it, its endpoints and its dev AppID.

HTML for a browser; JSON for ``Accept: application/json`` (or ``?format=json``). The endpoint lists are
read from the router and the handlers' docstrings, so they cannot drift from what is served.
"""

# ruff: noqa: RUF001 - the page is bilingual, and Chinese text takes full-width punctuation

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

from aiohttp import web

from shared.config import DEV_SECRET
from sim.wechat.control import STATE
from sim.wechat.state import SimState

DOCS = "docs/simulator.md"
_CALL = re.compile(r"^``(?P<call>[^`]+)``\s*[:→]?\s*(?P<rest>.*)$")
_METHOD = re.compile(r"^(GET|POST|PATCH|DELETE|PUT)\b")
_ANY_CODE_NOTE = {
    "off": (
        "off: only codes from POST /sim/codes and /sim/phone-codes work; any other code is 40029, as on "
        "WeChat · 关闭：只接受 /sim/codes、/sim/phone-codes 签发的 code，其它 code 返回 40029"
    ),
    "sticky": (
        "sticky: a code never issued here (a real wx.login code from WeChat DevTools) logs in the "
        "developer user below; POST /sim/dev-user switches to a new one · 固定：未知 code（开发者工具"
        "里真实的 wx.login code）登录为下面的开发者用户；POST /sim/dev-user 换一个新用户"
    ),
    "new": (
        "new: every code never issued here is a brand-new user · 新建：每个未知 code 都是一个新用户"
    ),
}


def wants_json(request: web.Request) -> bool:
    """True when the client asked for JSON rather than a page (a browser always accepts text/html)."""
    if request.query.get("format") == "json":
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def endpoints(app: web.Application) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The WeChat endpoints and the control calls, each ``{method, path, call, summary}``."""
    wechat: list[dict[str, str]] = []
    control: list[dict[str, str]] = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "OPTIONS") or path == "/":
            continue
        lines = [line.strip() for line in (route.handler.__doc__ or "").strip().splitlines() if line.strip()]
        first = lines[0] if lines else ""
        match = _CALL.match(first)
        call, summary = (match["call"], match["rest"]) if match else (path, first)
        if summary.strip(" .") == "" and len(lines) > 1:  # the call filled the first line
            summary = lines[1]
        method = route.method
        if method == "*":  # WeChat endpoints take every method (a wrong one is 43001/43002)
            found = _METHOD.match(call)
            method = found.group(1) if found else "GET"
        entry = {"method": method, "path": path, "call": call, "summary": summary.replace("``", "")}
        (control if path.startswith("/sim/") else wechat).append(entry)
    return wechat, control


def describe(request: web.Request) -> dict[str, Any]:
    """Everything the index shows, as JSON."""
    state: SimState = request.app[STATE]
    base = f"{request.scheme}://{request.host}"
    dev_secret = state.secret == DEV_SECRET
    wechat, control = endpoints(request.app)
    mode = state.config.any_code
    return {
        "name": "wxlogin WeChat API simulator",
        "description": (
            "An offline stand-in for https://api.weixin.qq.com: the endpoints wxlogin uses, with "
            "WeChat's paths, errcodes and limits, plus a control API under /sim/ for development."
        ),
        "base_url": base,
        "use": f"WXLOGIN_WECHAT_API_BASE={base}",
        "appid": state.appid,
        # The public development secret is shown; a secret someone configured is not.
        "secret": state.secret if dev_secret else None,
        "secret_note": (
            "the public development secret (WXLOGIN_SECRET's default); useless against real WeChat"
            if dev_secret
            else "set by WXLOGIN_SECRET or --secret; not shown"
        ),
        "any_code": mode,
        "any_code_note": _ANY_CODE_NOTE[mode],
        "dev_user": state.dev_user().openid if mode == "sticky" else None,
        "wechat_endpoints": wechat,
        "control_endpoints": control,
        "docs": DOCS,
    }


async def index(request: web.Request) -> web.Response:
    """``GET /`` → what this simulator is, its endpoints and its dev AppID (HTML, or JSON on request)."""
    info = describe(request)
    if wants_json(request):
        return web.json_response(info, dumps=_dumps)
    return web.Response(text=render_html(info), content_type="text/html", charset="utf-8")


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)


def _rows(entries: list[dict[str, str]]) -> str:
    return "\n".join(
        f"<tr><td><code>{escape(e['call'])}</code></td><td>{escape(e['summary'])}</td></tr>" for e in entries
    )


def render_html(info: dict[str, Any]) -> str:
    """The index as a small self-contained page (no scripts, no external resources)."""
    e = {k: escape(str(v)) for k, v in info.items() if isinstance(v, str | None)}
    secret = (
        f"<code>{e['secret']}</code>" if info["secret"] else "<em>not shown · 不显示</em>"
    ) + f" <small>({e['secret_note']})</small>"
    dev_user = f"<p>Developer user · 开发者用户: <code>{e['dev_user']}</code></p>" if info["dev_user"] else ""
    base = e["base_url"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>WeChat API simulator · 微信接口模拟器</title>
<style>
body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}
code{{background:#f3f3f3;padding:0 .25em;border-radius:3px}}
pre{{background:#f3f3f3;padding:.75em;overflow:auto}}
table{{border-collapse:collapse;width:100%}}
td{{border-top:1px solid #ddd;padding:.3em .5em;vertical-align:top}}
td:first-child{{white-space:nowrap}} h2{{margin-top:2rem}}
</style></head><body>
<h1>WeChat API simulator · 微信接口模拟器</h1>
<p>{e['description']}</p>
<p>wxlogin 开发用的微信接口离线替身：与 <code>api.weixin.qq.com</code> 相同的路径、错误码和限额，另有
<code>/sim/</code> 控制接口（创建虚拟用户、拿 code、注入故障）。它不访问外网。</p>
<table>
<tr><td>Point services at it · 服务指向它</td><td><code>{e['use']}</code></td></tr>
<tr><td>AppID</td><td><code>{e['appid']}</code></td></tr>
<tr><td>AppSecret</td><td>{secret}</td></tr>
<tr><td>Any-code mode · 任意 code 模式</td><td><code>{e['any_code']}</code> — {e['any_code_note']}</td></tr>
</table>
{dev_user}
<h2>Try it · 试一试</h2>
<pre>curl -s -XPOST {base}/sim/users -d '{{"phone": "13800138000"}}'      # → {{"openid": "o…"}}
curl -s -XPOST {base}/sim/codes -d '{{"openid": "o…"}}'              # → {{"code": "…"}}
curl -s "{base}/sns/jscode2session?appid={e['appid']}&amp;secret=SECRET&amp;js_code=CODE\
&amp;grant_type=authorization_code"
curl -s -H 'Accept: application/json' {base}/                      # this page as JSON · 本页的 JSON 版</pre>
<h2>WeChat endpoints · 微信接口</h2>
<table>{_rows(info['wechat_endpoints'])}</table>
<h2>Control API · 控制接口</h2>
<table>{_rows(info['control_endpoints'])}</table>
<p>Everything in detail · 详细说明: <code>{e['docs']}</code> in the wxlogin repository
· 见仓库中的该文件。</p>
</body></html>
"""
