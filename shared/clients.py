"""Registered clients: the sites a deployment serves, each with its own id, secret, redirect URIs,
origins and the site name the phone shows (OpenID Connect "clients", like Dex's static clients).

Declared in the YAML or TOML file named by ``WXLOGIN_CLIENTS_FILE`` and re-read when it changes (or
on SIGHUP). Every deployment also has a **default client** built from the older settings
(``WXLOGIN_JWT_AUDIENCE`` as its id, ``WXLOGIN_SITE_NAME``, ``WXLOGIN_ALLOWED_ORIGINS``), so the
browser API keeps working for a site that registers nothing; a file entry with the same id replaces
it. Secrets are never in the file: a confidential client carries ``client_secret_hash``
(``sha256:<hex>`` of a generated secret, see :func:`new_secret`), webhook endpoints name the
environment variables that hold their ``whsec_`` secrets.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote_plus, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.config import Settings
from shared.logging import get_logger

log = get_logger(__name__)

CLIENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$"
ClientId = Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
SECRET_HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"  # noqa: S105 (a pattern, not a secret)
# A generated secret is 43 characters (256 bits); anything much shorter was typed by a person.
MIN_SECRET_LENGTH = 32
SCOPES = ("openid", "profile", "phone")
# The events a webhook endpoint may subscribe to (docs/webhooks.md).
WEBHOOK_EVENTS = (
    "login.succeeded",
    "login.failed",
    "user.created",
    "identity.linked",
    "identity.unlinked",
    "phone.bound",
    "session.revoked",
)
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


class ClientsFileError(ValueError):
    """The clients file cannot be read or is invalid; ``problems`` has one line per mistake."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class UnknownClient(LookupError):
    """No registered client has this id."""


class MalformedCredentials(ValueError):
    """An ``Authorization: Basic`` header whose value is not base64 of ``id:secret``."""


def basic_credentials(header: str) -> tuple[str, str] | None:
    """``Authorization: Basic …`` → (client_id, secret), each form-url-decoded as RFC 6749 §2.3.1
    asks of client credentials; None for another scheme (raises :class:`MalformedCredentials`)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise MalformedCredentials() from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise MalformedCredentials()
    return unquote_plus(client_id), unquote_plus(secret)


def hash_secret(secret: str) -> str:
    """The ``client_secret_hash`` of a secret: ``sha256:<hex>``.

    A plain SHA-256 is enough because every secret is generated with 256 bits (:func:`new_secret`);
    the CLI refuses to hash anything shorter than :data:`MIN_SECRET_LENGTH`.
    """
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """A fresh client secret and its hash, for ``python -m services clients new-secret``."""
    secret = secrets.token_urlsafe(32)
    return secret, hash_secret(secret)


def _is_exact_origin(value: str) -> bool:
    parts = urlsplit(value)
    return (
        parts.scheme in ("http", "https")
        and bool(parts.netloc)
        and value == f"{parts.scheme}://{parts.netloc}"
        and "@" not in parts.netloc
    )


def _check_uri(value: str, *, what: str) -> str:
    """An absolute https URI without a fragment (http only for loopback hosts, for development)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or "#" in value:
        raise ValueError(f"{what} must be an absolute http(s) URI without a fragment: {value!r}")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials: {value!r}")
    if parts.scheme == "http" and parts.netloc.rsplit(":", 1)[0] not in _LOOPBACK_HOSTS:
        raise ValueError(f"{what} must use https (http only for 127.0.0.1 and localhost): {value!r}")
    return value


class WebhookEndpoint(BaseModel):
    """Where a client receives signed events (Standard Webhooks), and which ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    url: str
    # Names of environment variables that hold ``whsec_`` secrets: every one signs (rotation).
    secret_envs: Annotated[list[str], Field(min_length=1)]
    # Empty: every event.
    events: list[str] = Field(default_factory=list)
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise ValueError(f"url must be an absolute http(s) URL: {value!r}")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(WEBHOOK_EVENTS))
        if unknown:
            raise ValueError(f"unknown events {unknown}; known: {', '.join(WEBHOOK_EVENTS)}")
        return value

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint receives ``event_type``."""
        return self.enabled and (not self.events or event_type in self.events)

    def secrets(self, environ: dict[str, str] | None = None) -> list[str]:
        """The signing secrets, read from the environment (missing ones are skipped)."""
        env = os.environ if environ is None else environ
        return [env[name] for name in self.secret_envs if env.get(name)]


class Client(BaseModel):
    """One registered site."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: ClientId
    # Absent: a public client (a single-page app), which must use PKCE.
    client_secret_hash: Annotated[str, Field(pattern=SECRET_HASH_PATTERN)] | None = None
    # What the phone shows before the user approves: "log in to <site_name>".
    site_name: Annotated[str, Field(min_length=1, max_length=40)]
    redirect_uris: list[str] = Field(default_factory=list)
    post_logout_redirect_uris: list[str] = Field(default_factory=list)
    # Origins whose pages may call the browser API (SDK, WebSocket) for this client.
    web_origins: list[str] = Field(default_factory=list)
    id_token_signed_response_alg: Literal["RS256", "EdDSA"] = "RS256"  # noqa: S105
    scopes: list[str] = Field(default_factory=lambda: list(SCOPES))
    # pairwise: a ``sub`` of its own per client, so two sites cannot correlate one WeChat user.
    subject_type: Literal["public", "pairwise"] = "public"
    backchannel_logout_uri: str | None = None
    # Account linking: may one account of this site link more than one WeChat user?
    allow_multiple_links: bool = False
    webhooks: list[WebhookEndpoint] = Field(default_factory=list)

    @field_validator("redirect_uris", "post_logout_redirect_uris")
    @classmethod
    def _uris(cls, value: list[str]) -> list[str]:
        return [_check_uri(uri, what="a redirect URI") for uri in value]

    @field_validator("backchannel_logout_uri")
    @classmethod
    def _backchannel(cls, value: str | None) -> str | None:
        return None if value is None else _check_uri(value, what="backchannel_logout_uri")

    @field_validator("web_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        bad = [origin for origin in value if not _is_exact_origin(origin)]
        if bad:
            raise ValueError(f"web_origins must be exact origins like https://example.com: {bad}")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SCOPES))
        if unknown or "openid" not in value:
            raise ValueError(f"scopes must include openid and be among {', '.join(SCOPES)}")
        return value

    @model_validator(mode="after")
    def _unique_webhook_ids(self) -> Client:
        ids = [endpoint.id for endpoint in self.webhooks]
        if len(ids) != len(set(ids)):
            raise ValueError("webhook ids must be unique within a client")
        return self

    @property
    def public(self) -> bool:
        """A public client has no secret: the token endpoint then requires PKCE."""
        return self.client_secret_hash is None

    def check_secret(self, presented: str) -> bool:
        """Whether ``presented`` is this client's secret (constant time; False for public clients)."""
        if self.client_secret_hash is None:
            return False
        return hmac.compare_digest(hash_secret(presented), self.client_secret_hash)

    def allows_redirect(self, uri: str) -> bool:
        """Exact match against a registered redirect URI (no prefix or pattern matching)."""
        return uri in self.redirect_uris

    def allows_post_logout_redirect(self, uri: str) -> bool:
        """Exact match against a registered post-logout redirect URI."""
        return uri in self.post_logout_redirect_uris

    def allows_origin(self, origin: str) -> bool:
        """Byte-for-byte match against the client's web origins."""
        return origin in self.web_origins


def default_client(settings: Settings) -> Client:
    """The client the older settings describe; logins that name no client belong to it."""
    return Client(
        client_id=settings.jwt_audience,
        site_name=settings.site_name.strip() or Settings.model_fields["site_name"].default,
        web_origins=[origin for origin in settings.allowed_origins if origin != "*"],
    )


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        return tomllib.loads(text)
    import yaml  # only when a YAML file is used

    return yaml.safe_load(text)


def load_clients_file(path: Path) -> list[Client]:
    """The clients declared in ``path`` (``{clients: [...]}`` in YAML or TOML ``[[clients]]``)."""
    try:
        data = _read(path)
    except OSError as exc:
        raise ClientsFileError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    except Exception as exc:  # a YAML or TOML syntax error: its own message says where
        raise ClientsFileError(path, [f"not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}"]) from None
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("clients", []), list):
        raise ClientsFileError(path, ["the file must hold a list named `clients`"])
    clients: list[Client] = []
    problems: list[str] = []
    for index, entry in enumerate(data.get("clients", [])):
        name = entry.get("client_id", f"#{index + 1}") if isinstance(entry, dict) else f"#{index + 1}"
        try:
            clients.append(Client.model_validate(entry))
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"]) or "entry"
                problems.append(f"client {name}: {where}: {error['msg']}")
    seen: set[str] = set()
    for client in clients:
        if client.client_id in seen:
            problems.append(f"client {client.client_id}: declared twice")
        seen.add(client.client_id)
    if problems:
        raise ClientsFileError(path, problems)
    return clients


class ClientRegistry:
    """The registered clients, looked up by id; re-read from the file when it changes.

    A file that turns invalid is logged and ignored: the clients read last stay in force, so a typo
    saved during a deploy does not log every site out.
    """

    def __init__(self, default: Client, clients: Iterable[Client] = (), *, path: Path | None = None) -> None:
        self._default_id = default.client_id
        self._fallback = default
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._clients: dict[str, Client] = {}
        self._origins: tuple[str, ...] = ()
        self._install(list(clients))

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientRegistry:
        """The default client plus the file ``WXLOGIN_CLIENTS_FILE`` names (raises
        :class:`ClientsFileError` at start-up when that file is missing or invalid)."""
        path = Path(settings.clients_file) if settings.clients_file else None
        registry = cls(default_client(settings), path=path)
        if path is not None:
            registry._stamp = registry._file_stamp()
            registry._install(load_clients_file(path))
        return registry

    def _install(self, clients: list[Client]) -> None:
        table = {self._default_id: self._fallback}
        table.update({client.client_id: client for client in clients})
        # Every client's web origins, once per table: CORS and the WebSocket ask at every request.
        seen: dict[str, None] = {}
        for client in table.values():
            seen.update(dict.fromkeys(client.web_origins))
        self._clients, self._origins = table, tuple(seen)

    def _file_stamp(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            stat = self._path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    @property
    def default(self) -> Client:
        """The client of logins that name none."""
        return self._clients[self._default_id]

    def get(self, client_id: str | None) -> Client | None:
        """The client ``client_id`` (the default client for ``None``), or None when unknown."""
        if client_id is None:
            return self.default
        return self._clients.get(client_id)

    def require(self, client_id: str | None) -> Client:
        """Like :meth:`get`, raising :class:`UnknownClient`."""
        client = self.get(client_id)
        if client is None:
            raise UnknownClient(client_id)
        return client

    def all(self) -> list[Client]:
        """Every client, the default one included."""
        return list(self._clients.values())

    def origins(self) -> list[str]:
        """Every client's web origins (what CORS and the WebSocket may allow)."""
        return list(self._origins)

    def audiences(self) -> list[str]:
        """The audiences of access tokens this deployment issues: one per client."""
        return list(self._clients)

    def reload(self, *, force: bool = False) -> bool:
        """Re-read the file when it changed (or always with ``force``); True when clients changed."""
        if self._path is None:
            return False
        stamp = self._file_stamp()
        if not force and stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            clients = load_clients_file(self._path)
        except ClientsFileError as exc:
            log.error("clients_file_invalid", path=str(self._path), problems=exc.problems)
            return False
        before = self._clients
        self._install(clients)
        changed = before != self._clients
        if changed:
            log.info("clients_reloaded", path=str(self._path), clients=sorted(self._clients))
        return changed

    async def watch(self, interval: float = 2.0) -> None:
        """Re-read the file whenever it changes, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload()


def describe(client: Client) -> str:
    """One line for ``python -m services clients list``."""
    kind = "public (PKCE)" if client.public else "confidential"
    redirects = ", ".join(client.redirect_uris) or "no redirect URIs"
    return f"{client.client_id}\t{kind}\t{client.site_name}\t{redirects}"


_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def webhook_secret_problems(clients: Iterable[Client], environ: dict[str, str] | None = None) -> list[str]:
    """Webhook secrets named but not set (or not ``whsec_`` values), one line each."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    for client in clients:
        for endpoint in client.webhooks:
            for name in endpoint.secret_envs:
                value = env.get(name, "")
                if not _ENV_NAME.match(name):
                    problems.append(f"{client.client_id}/{endpoint.id}: {name!r} is not an environment name")
                elif not value.startswith("whsec_"):
                    problems.append(f"{client.client_id}/{endpoint.id}: {name} must hold a whsec_ secret")
    return problems
