"""What stops ``python -m services`` before it serves, said in one line naming the setting to change:
a port already in use (or a host that cannot be listened on), and WeChat credentials left empty.
``services.__main__`` prints a :class:`StartupError` without a traceback and exits non-zero."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

from shared.config import DEV_APPID, DEV_SECRET, Settings
from shared.logging import get_logger

log = get_logger("services")


class StartupError(Exception):
    """A start-up failure a user fixes by changing a setting; the message is one line naming it."""


@dataclass(frozen=True)
class Address:
    """Where something listens and the variables that set it."""

    host: str
    port: int
    host_var: str
    port_var: str
    what: str = ""

    def problem(self, exc: OSError) -> str:
        """One line saying why listening here failed and what to change."""
        where = f"{self.what} " if self.what else ""
        if exc.errno == errno.EADDRINUSE:
            return (
                f"port {self.port} is already in use ({self.port_var}): stop what listens there or "
                f"set {self.port_var} to a free port"
            )
        if exc.errno == errno.EACCES:
            return f"not allowed to listen on port {self.port} ({self.port_var}): choose a port above 1023"
        return (
            f"cannot listen {where}on {self.host}:{self.port} ({self.host_var}, {self.port_var}): "
            f"{exc.strerror or exc}"
        )


def check_free(address: Address) -> None:
    """Raise :class:`StartupError` now when ``address`` cannot be listened on (before anything starts).

    Binds the way aiohttp will (``SO_REUSEADDR``) and lets go at once; port 0 is always free.
    """
    if address.port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {address.host} ({address.host_var}): {exc.strerror or exc}"
        ) from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise StartupError(address.problem(exc)) from None


async def start_site(runner: web.AppRunner, address: Address) -> None:
    """``TCPSite(...).start()`` whose failure is a :class:`StartupError` (the port may be taken since
    :func:`check_free`)."""
    try:
        await web.TCPSite(runner, address.host, address.port).start()
    except OSError as exc:
        raise StartupError(address.problem(exc)) from None


def credentials_problem(settings: Settings) -> str | None:
    """One line when the WeChat AppID or AppSecret is set but empty (``cp .env.example .env``)."""
    empty = settings.empty_wechat_credentials
    if not empty:
        return None
    names = {"WXLOGIN_APPID": "AppID", "WXLOGIN_SECRET": "AppSecret"}
    verb = "are" if len(empty) > 1 else "is"
    return (
        f"{' and '.join(empty)} {verb} empty: fill in the mini-program's "
        f"{' and '.join(names[n] for n in empty)} (mp.weixin.qq.com → 开发管理 → 开发设置) in .env or the "
        "environment"
    )


def demo_credentials(settings: Settings) -> Settings:
    """The demo's simulator needs no real AppID: empty ones (a copied ``.env.example``) become the
    simulator's development values, said once in the log."""
    empty = settings.empty_wechat_credentials
    if not empty:
        return settings
    log.info("wechat_dev_credentials", empty=empty, note="the demo's simulator uses its development AppID")
    update: dict[str, object] = {}
    if "WXLOGIN_APPID" in empty:
        update["appid"] = DEV_APPID
    if "WXLOGIN_SECRET" in empty:
        update["secret"] = SecretStr(DEV_SECRET)
    return settings.model_copy(update=update)
