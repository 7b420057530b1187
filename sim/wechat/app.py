"""The WeChat API simulator as an aiohttp app: WeChat's endpoints, their faults and counters, and /sim.

WeChat answers errors with HTTP 200 and ``{"errcode", "errmsg"}``; so does this simulator. Every call
of a WeChat endpoint is counted, then the scripted faults (``sim/wechat/faults.py``) get the first word,
then the endpoint answers (``sim/wechat/api.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from sim.wechat import api
from sim.wechat.control import STATE, ControlError, setup_control_routes
from sim.wechat.errors import content_type_for, error_response
from sim.wechat.index import index
from sim.wechat.render import render_code
from sim.wechat.state import DEFAULT_PAGES, AnyCode, Limits, SimState

__all__ = ["STATE", "create_app", "render_code"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EndpointHandler = Callable[[web.Request, SimState], Awaitable[web.StreamResponse]]

ROUTES: dict[str, EndpointHandler] = {
    "cgi-bin/token": api.get_token,
    "cgi-bin/stable_token": api.stable_token,
    "wxa/getwxacodeunlimit": api.getwxacodeunlimit,
    "sns/jscode2session": api.jscode2session,
    "wxa/business/getuserphonenumber": api.getuserphonenumber,
    "wxa/checksession": api.checksession,
    "wxa/generate_urllink": api.generate_urllink,
}

# mode "malformed": a JSON answer cut short, and for the code endpoint an image cut short (both as
# a dropped connection behind a proxy would deliver them, with a consistent Content-Length).
MALFORMED_JSON = b'{"errcode":0,"errmsg":"ok","'


def _malformed(endpoint: str, content_type: str) -> web.Response:
    if endpoint == "wxa/getwxacodeunlimit":
        image = render_code("malformed", 430)
        return web.Response(body=image[: len(image) // 2], headers={"Content-Type": api.IMAGE_CONTENT_TYPE})
    return web.Response(body=MALFORMED_JSON, headers={"Content-Type": content_type})


def wechat_endpoint(name: str, handler: EndpointHandler) -> Handler:
    """Wrap an endpoint: count the call, apply the scripted faults, turn a refusal into its errcode."""
    content_type = content_type_for(name)

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        state.counters[name] += 1
        plan = state.faults.plan(name)
        if plan.delay_s:
            await asyncio.sleep(plan.delay_s)
        fault = plan.outcome
        if fault is not None and fault.mode == "hang":
            await state.faults.hang(name)
            # Released by DELETE /sim/faults, a reset or shutdown: still no answer, just a closed socket.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=204)
        if fault is not None and fault.mode == "malformed":
            return _malformed(name, content_type)
        if fault is not None and fault.errcode is not None:
            return error_response(fault.errcode, fault.errmsg, content_type=content_type)
        try:
            return await handler(request, state)
        except api.Reply as refusal:
            return error_response(refusal.errcode, refusal.errmsg, content_type=content_type)

    handle.__doc__ = handler.__doc__
    return handle


@web.middleware
async def control_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Control calls answer errors as JSON (a wrong path or method too), with CORS for the demo page."""
    if not request.path.startswith("/sim/"):
        return await handler(request)
    try:
        response = web.Response(status=204) if request.method == "OPTIONS" else await handler(request)
    except ControlError as exc:
        response = exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
        response = ControlError(exc.status, code, exc.reason).response()
    # The demo page's simulated phone (another origin) drives the control API.
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type"
    return response


async def _release_hanging_calls(app: web.Application) -> None:
    # Without this a hanging call would hold the server's shutdown for its whole timeout.
    app[STATE].faults.release()


def create_app(
    *,
    appid: str,
    secret: str,
    open_platform_bound: bool = True,
    published_pages: Iterable[str] = DEFAULT_PAGES,
    limits: Limits | None = None,
    any_code: AnyCode = "off",
    personal: bool = False,
) -> web.Application:
    """The simulator as an aiohttp application for one mini-program (``appid``/``secret``).

    ``any_code`` (off by default) takes codes it never issued, such as WeChat DevTools' real
    wx.login codes, as a virtual user's: ``"sticky"`` the developer user's, ``"new"`` a new user's.
    ``personal`` simulates a mini-program registered by a person: no URL Links (40002).
    """
    app = web.Application(middlewares=[control_errors])
    app[STATE] = SimState(
        appid=appid,
        secret=secret,
        open_platform_bound=open_platform_bound,
        published_pages=published_pages,
        limits=limits,
        any_code=any_code,
        personal=personal,
    )
    app.router.add_get("/", index)
    for name, handler in ROUTES.items():
        # Every method reaches the handler: a wrong one is WeChat's 43001/43002, not an HTTP 405.
        app.router.add_route("*", f"/{name}", wechat_endpoint(name, handler))
    setup_control_routes(app)
    app.on_shutdown.append(_release_hanging_calls)
    return app
