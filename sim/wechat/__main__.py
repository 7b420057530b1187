"""``python -m sim.wechat --host 127.0.0.1 --port 9100``: run the WeChat simulator alone.

The control API (``/sim/...``) is documented in ``docs/simulator.md``.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from services.startup import Address, StartupError, check_free
from shared.config import Settings
from sim.wechat.app import create_app
from sim.wechat.state import ANY_CODE_MODES, DEFAULT_PAGES


def main() -> None:
    """Parse the command line and serve until interrupted."""
    settings = Settings.for_command_line()
    parser = argparse.ArgumentParser(prog="python -m sim.wechat", description=__doc__)
    parser.add_argument("--host", default=settings.sim_host)
    parser.add_argument("--port", type=int, default=settings.sim_port)
    parser.add_argument("--appid", default=settings.appid)
    parser.add_argument("--secret", default=settings.secret.get_secret_value())
    parser.add_argument(
        "--page",
        action="append",
        default=[],
        help="a published page (repeatable); WXLOGIN_MINIPROGRAM_PAGE and the defaults are always published",
    )
    parser.add_argument(
        "--no-open-platform",
        action="store_true",
        help="the app is not bound to an Open Platform account: jscode2session returns no unionid",
    )
    parser.add_argument(
        "--any-code",
        choices=ANY_CODE_MODES,
        default=settings.sim_any_code,
        help="codes never issued here (WeChat DevTools' real wx.login codes): off = 40029 as on WeChat "
        "(default: WXLOGIN_SIM_ANY_CODE, off), sticky = the developer user, new = a new user each",
    )
    parser.add_argument(
        "--personal",
        action="store_true",
        help="a mini-program registered by a person: wxa/generate_urllink answers 40002 (no URL Links)",
    )
    args = parser.parse_args()
    try:
        check_free(Address(args.host, args.port, "WXLOGIN_SIM_HOST (--host)", "WXLOGIN_SIM_PORT (--port)"))
    except StartupError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    app = create_app(
        appid=args.appid,
        secret=args.secret,
        open_platform_bound=not args.no_open_platform,
        published_pages={*DEFAULT_PAGES, settings.miniprogram_page, *args.page},
        any_code=args.any_code,
        personal=args.personal,
    )
    print(
        f"WeChat simulator on http://{args.host}:{args.port} (appid {args.appid}, any-code {args.any_code})",
        flush=True,
    )
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
