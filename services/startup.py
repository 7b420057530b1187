"""What stops ``python -m services`` before it serves, said in one line naming the setting to change:
a port already in use (or a host that cannot be listened on), WeChat credentials left empty, and in
production mode (``run <service>`` without ``WXLOGIN_DEMO``) the demo's values.
``services.__main__`` prints a :class:`StartupError` without a traceback and exits non-zero."""

from __future__ import annotations

import atexit
import errno
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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


# Services that talk to WeChat (the gateway does not); which show the site name (on the phone).
_WECHAT_SERVICES = frozenset({"token", "qrcode", "session"})
_SITE_SERVICES = frozenset({"qrcode", "gateway"})
# Services that compute the subjects sites see; that issue or check the issuer's tokens.
_SUBJECT_SERVICES = frozenset({"session", "webhook"})
_ISSUER_SERVICES = frozenset({"session", "gateway"})
DEMO_SITE_NAME = "wxlogin demo"


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def production_problems(service: str, settings: Settings) -> list[str]:
    """What production mode (``run <service>`` unless ``WXLOGIN_DEMO`` is on) refuses: one line each,
    naming the variable to change. A WeChat base on this machine is a simulator (development): its
    development AppID and plain http are then allowed."""
    if settings.demo:
        return []
    problems: list[str] = []
    if service in _WECHAT_SERVICES and not _loopback(settings.wechat_api_base):
        if settings.appid == DEV_APPID or settings.uses_dev_credentials:
            problems.append(
                "WXLOGIN_APPID/WXLOGIN_SECRET are the simulator's development values: set your "
                "mini-program's AppID and AppSecret (or WXLOGIN_DEMO=true for a demo)"
            )
        if urlsplit(settings.wechat_api_base).scheme != "https":
            problems.append(
                f"WXLOGIN_WECHAT_API_BASE={settings.wechat_api_base}: must be https:// in production "
                "(https://api.weixin.qq.com), or WXLOGIN_DEMO=true for a simulator elsewhere"
            )
    if service == "gateway" and "*" in settings.allowed_origins:
        problems.append(
            "WXLOGIN_ALLOWED_ORIGINS contains *: list your site's origins (https://www.example.com) "
            "in production"
        )
    if service in _SITE_SERVICES and settings.site_name.strip().lower() in ("", DEMO_SITE_NAME):
        problems.append(
            "WXLOGIN_SITE_NAME is the demo's: set your site's name, shown on the phone before the user "
            "confirms"
        )
    if service in _SUBJECT_SERVICES and not settings.subject_key.get_secret_value():
        problems.append(
            "WXLOGIN_SUBJECT_KEY is empty: set it once (base64 of 32 random bytes) and never change it; "
            "it keys the subjects and usernames the sites see"
        )
    if service in _ISSUER_SERVICES and urlsplit(settings.issuer).scheme != "https":
        problems.append(
            f"WXLOGIN_ISSUER_URL={settings.issuer_url or '(empty)'}: set the public https URL of the "
            "gateway (https://login.example.com); OpenID Connect requires an https issuer"
        )
    return problems


# The demo's registered clients (the "Log in with OIDC" of the demo page), shipped in the repository.
DEMO_CLIENTS_FILE = Path(__file__).resolve().parents[1] / "deploy" / "clients.demo.yaml"
DEMO_CLIENTS_PORT = 8080  # the gateway port its redirect URIs and origins name


def demo_clients_file(gateway_port: int) -> str:
    """The demo's clients file for a gateway on ``gateway_port``: the shipped one on 8080, else a copy
    (in the temporary directory, removed at exit) whose URIs name that port. Empty when the
    repository's ``deploy/`` is not there (an installed package): the demo then has no OIDC client."""
    if not DEMO_CLIENTS_FILE.is_file():
        return ""
    if gateway_port == DEMO_CLIENTS_PORT:
        return str(DEMO_CLIENTS_FILE)
    text = DEMO_CLIENTS_FILE.read_text(encoding="utf-8").replace(f":{DEMO_CLIENTS_PORT}", f":{gateway_port}")
    handle, name = tempfile.mkstemp(prefix="wxlogin-demo-clients-", suffix=".yaml")
    with os.fdopen(handle, "w", encoding="utf-8") as copy:
        copy.write(text)
    atexit.register(lambda: Path(name).unlink(missing_ok=True))
    return name


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
