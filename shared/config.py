"""Settings for every service: environment variables prefixed ``WXLOGIN_``, with ``.env`` support.

Only composition roots (``services/*/app.py`` and ``services/__main__.py``) build a ``Settings``;
nothing reads the environment at import time.
"""

from __future__ import annotations

import os
import re
import sys
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

# The simulator accepts these by default, so the embedded demo works with no configuration at all.
# They are useless against the real api.weixin.qq.com.
DEV_APPID = "wx0123456789abcdef"
DEV_SECRET = "sim0secret0for0development0only"  # noqa: S105 - public development value

LogFormat = Literal["auto", "json", "console"]
EnvVersion = Literal["release", "trial", "develop"]


def _is_origin(text: str) -> bool:
    """True for exactly ``http(s)://host[:port]``, the form browsers send in ``Origin``."""
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not (parts.path or parts.query or parts.fragment or parts.username or parts.password)
        and text == f"{parts.scheme}://{parts.netloc}"
    )


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the system; ``.env.example`` documents each one."""

    model_config = SettingsConfigDict(
        env_prefix="WXLOGIN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- WeChat ---------------------------------------------------------------------------------
    appid: str = DEV_APPID
    secret: SecretStr = SecretStr(DEV_SECRET)
    wechat_api_base: str = "http://127.0.0.1:9100"
    wechat_timeout_seconds: float = Field(default=5.0, gt=0)

    # --- infrastructure -------------------------------------------------------------------------
    # "memory://" selects the in-process bus; it only works when all services share one process.
    # Several comma-separated amqp:// URLs name the nodes of a RabbitMQ cluster: the bus connects to
    # the first that answers and moves to another when its node goes away.
    amqp_url: str = "memory://"
    # Durable service queues: "quorum" (replicated, delivery limit) or "classic" (an old broker's
    # queues until they are migrated; docs/deploy.md).
    bus_queue_type: Literal["quorum", "classic"] = "quorum"
    # Prefix for every exchange and queue name; lets several systems (or test runs) share a vhost.
    bus_prefix: str = ""
    rpc_timeout_seconds: float = Field(default=3.0, gt=0)
    # base64 of 32 random bytes shared by every service: encrypts the secret fields of bus messages
    # (wx.login codes, refresh tokens). Empty is allowed only in the embedded one-process mode.
    bus_key: SecretStr = SecretStr("")
    # Empty selects the embedded MongoDB wire server (nx-27017), only for `run all`.
    mongo_url: str = ""
    mongo_db: str = "wxlogin"

    # --- scan login -----------------------------------------------------------------------------
    scene_ttl_seconds: int = Field(default=120, ge=10, le=3600)
    site_name: str = "wxlogin demo"
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8080", "http://localhost:8080"]
    )
    miniprogram_page: str = "pages/login/index"
    miniprogram_env_version: EnvVersion = "release"
    miniprogram_check_path: bool = True
    miniprogram_code_width: int = Field(default=430, ge=280, le=1280)
    # Publish `scene.issued` for every new scene. No service consumes it (docs/architecture.md §5);
    # it is off unless something of yours listens, so a login costs one bus message fewer.
    announce_scene_issued: bool = False
    # The offline IP databases that place the browser and the phone on the confirm screen: ip2region
    # xdb files, comma-separated (each one's IP version is read from its header). Empty: the IPv4
    # database installed with the package (IPv6 addresses are then shown as unknown).
    ip2region_db: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- scene lifecycle ------------------------------------------------------------------------
    # Pre-rendered codes kept in `scene_pool` so issuing never waits for WeChat (0 disables the pool).
    code_pool_size: int = Field(default=20, ge=0, le=10000)
    # The refill starts when fewer than this many codes are ready (at most code_pool_size), and fills
    # up to code_pool_size.
    code_pool_refill_below: int = Field(default=10, ge=0, le=10000)
    code_pool_refill_concurrency: int = Field(default=4, ge=1, le=32)
    # Every getwxacodeunlimit call of every qrcode replica (pool refill and on-demand renders), counted
    # in 10 s windows of per_minute/6 in Mongo. Any sliding minute then sees at most 7/6 of this, so
    # 4285 is the most that stays under WeChat's 5000/min.
    code_renders_per_minute: int = Field(default=4200, ge=1, le=4285)
    # Scenes issued per minute by all replicas together (Mongo, 10 s windows): a guard against abuse
    # and load, not WeChat's quota. A code from the pool calls no WeChat API, so this may be above the
    # render budget: a burst above it is served from the pool while the pool lasts, then an issue
    # waits for a render within the budget (503 code_quota_exhausted with Retry-After meanwhile).
    limit_issue_global_per_minute: int = Field(default=3000, ge=1, le=100_000)
    # Per client IP (IPv6 per /64), token buckets in each gateway's memory: with N gateways behind a
    # balancer that spreads one IP, a client gets up to N times these. 0 disables a limit.
    limit_issue_per_ip_per_minute: int = Field(default=30, ge=0)
    limit_issue_per_ip_burst: int = Field(default=10, ge=1)
    limit_mp_per_ip_per_minute: int = Field(default=120, ge=0)  # scan, confirm, cancel
    limit_mp_per_ip_burst: int = Field(default=30, ge=1)
    limit_ws_per_ip_per_minute: int = Field(default=60, ge=0)  # WebSocket connects
    limit_ws_per_ip_burst: int = Field(default=20, ge=1)
    limit_poll_per_ip_per_minute: int = Field(default=120, ge=0)  # long-poll status and complete
    limit_poll_per_ip_burst: int = Field(default=30, ge=1)
    # Every per-IP limit also counts each wider prefix of the address (security M2: one attacker owns a
    # whole /56, not one /64). The first length of each list is the address's own key; each further
    # one allows limit_prefix_factor times the one before it (with the defaults: a /24 or /56 four
    # times an address, a /48 sixteen times a /64).
    limit_ipv4_prefixes: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [32, 24])
    limit_ipv6_prefixes: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [64, 56, 48])
    limit_prefix_factor: int = Field(default=4, ge=1, le=1000)
    # No widest prefix (the last of the lists above: a /24, a /48) may take more than this share of
    # the global issue limit, counted in Mongo by every qrcode replica like the global limit itself.
    limit_issue_prefix_share_percent: int = Field(default=10, ge=1, le=100)
    # POST /api/mp/login per client IP (each a jscode2session call; WeChat allows 100 per user per
    # minute, error 45011, and the user is unknown until the code is exchanged).
    limit_login_per_ip_per_minute: int = Field(default=60, ge=0)
    limit_login_per_ip_burst: int = Field(default=20, ge=1)
    # Refresh, logout, phone binding and decrypt per client IP (database writes, crypto, WeChat calls).
    limit_session_per_ip_per_minute: int = Field(default=120, ge=0)
    limit_session_per_ip_burst: int = Field(default=30, ge=1)
    # Phone binding, decrypt and bearer logout per user (the token's sub), below WeChat's per-user quota.
    limit_user_per_minute: int = Field(default=30, ge=0)
    limit_user_burst: int = Field(default=10, ge=1)
    # Proxies whose X-Forwarded-For is believed (CIDRs, comma-separated); empty: the socket peer.
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(default_factory=list)
    # The longest a GET /api/login/status long-poll is held open.
    status_max_wait_seconds: int = Field(default=25, ge=1, le=60)

    # --- log in on the phone itself (docs/embed.md; the arithmetic in docs/security.md) ---------
    # Scenes that get an 8-character typed login code (a phone's browser asks for one), per minute,
    # all qrcode replicas together (Mongo, 10 s windows). 0: no typed codes.
    login_code_per_minute: int = Field(default=60, ge=0, le=4285)
    # Code entries that name no live code, per hour, all qrcode replicas together (Mongo). The
    # service uses at most what keeps guessing any live code below 10^-6 a day at
    # WXLOGIN_LOGIN_CODE_PER_MINUTE and WXLOGIN_SCENE_TTL_SECONDS (262 with the defaults).
    login_code_misses_per_hour: int = Field(default=250, ge=0)
    # How often one scene's code may be entered (the first entry scans the scene).
    login_code_entries_per_scene: int = Field(default=3, ge=1, le=100)
    # Code entries per client IP (and prefix), token buckets in each gateway; 0 disables.
    limit_code_entry_per_ip_per_minute: int = Field(default=10, ge=0)
    limit_code_entry_per_ip_burst: int = Field(default=5, ge=1)
    # Code entries per WeChat user per hour, counted in Mongo by every qrcode replica; 0 disables.
    limit_code_entry_per_user_per_hour: int = Field(default=10, ge=0)
    # A phone's browser gets an "打开微信" button: a URL Link (wxa/generate_urllink) to the scan page.
    # WeChat gives URL Links only to non-personal mini-programs (40002 otherwise): off by default.
    url_link: bool = False

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies_from_csv(cls, value: object) -> object:
        items = _split_csv(value)
        if isinstance(items, list):
            try:
                return [ip_network(item, strict=False) if isinstance(item, str) else item for item in items]
            except ValueError as exc:
                raise ValueError(f"trusted_proxies must be IP addresses or CIDRs: {exc}") from None
        return items

    @field_validator("ip2region_db", mode="before")
    @classmethod
    def _databases_from_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("ip2region_db")
    @classmethod
    def _databases_are_files(cls, value: list[str]) -> list[str]:
        missing = [path for path in value if not os.path.isfile(path)]
        if missing:
            raise ValueError(f"no such file: {', '.join(missing)}")
        return value

    @field_validator("limit_ipv4_prefixes", "limit_ipv6_prefixes", mode="before")
    @classmethod
    def _prefixes_from_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("limit_ipv4_prefixes", "limit_ipv6_prefixes")
    @classmethod
    def _prefixes_narrow_to_wide(cls, value: list[int], info: ValidationInfo) -> list[int]:
        bits = 32 if info.field_name == "limit_ipv4_prefixes" else 128
        if not value or any(not 1 <= n <= bits for n in value) or value != sorted(set(value), reverse=True):
            raise ValueError(f"{info.field_name} must be prefix lengths from 1 to {bits}, narrowest first")
        return value

    # --- end of scene lifecycle ---

    # --- identity -------------------------------------------------------------------------------
    jwt_issuer: str = "wxlogin"
    # The default client's id (and so its tokens' audience): logins that name no client are its.
    jwt_audience: str = "wxlogin-site"
    # The registered clients (sites), YAML or TOML; re-read on change and on SIGHUP (docs/oidc.md).
    clients_file: str = ""
    # The OpenID Connect issuer: the public base URL of the gateway, e.g. https://login.example.com
    # (no trailing slash). Empty: http://127.0.0.1:<WXLOGIN_GATEWAY_PORT>, for development only.
    issuer_url: str = ""
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=86400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86400, ge=3600)
    # base64 of 32 random bytes; encrypts session keys and signing keys at rest.
    # Empty is allowed only in the embedded demo, which then makes a throw-away key.
    data_key: SecretStr = SecretStr("")
    # base64 of 32 random bytes that never rotates: keys pairwise subjects and preferred usernames
    # (shared/subjects.py). Empty: derived from the data key (development only).
    subject_key: SecretStr = SecretStr("")
    # A spent refresh token presented again within this many seconds gets the same successor (two
    # tabs refreshing at once, a retried request), and only while that successor is unused; later,
    # it revokes the whole family. Short: within it, a copied token gets the live successor too.
    refresh_grace_seconds: float = Field(default=5.0, ge=0, le=60)
    # The longest a login lasts however often it refreshes: afterwards refresh answers session_ended
    # and the user logs in again.
    session_max_seconds: int = Field(default=30 * 86400, ge=3600)
    # How often session replicas re-read the signing keys (a rotation is picked up without restart).
    signing_keys_reload_seconds: float = Field(default=30.0, gt=0)
    # `keys rotate` publishes the new key this long before it signs, so every gateway and every site
    # backend caching the JWKS (we send max-age=300) knows it before the first token it signs.
    signing_key_lead_seconds: float = Field(default=300.0, ge=0)
    # How often gateways re-fetch the JWKS besides on an unknown kid and on `signing_keys.changed`.
    jwks_refresh_seconds: float = Field(default=60.0, gt=0)

    # --- token service ---------------------------------------------------------------------------
    # Refresh the access_token this long before it expires. WeChat's stable_token hands out a new
    # token only in the last 300 s of the old one, so a margin under 300 s makes every refresh a single
    # call that gets a new token: one call per 7200 - margin seconds, 13 a day at most. The margin is
    # also the time left for retries before the old token truly expires (docs/token.md).
    token_refresh_margin_seconds: float = Field(default=240.0, ge=30, le=290)
    # One replica refreshes: the holder of a lease in Mongo, renewed every tick. When the holder dies,
    # another replica takes over once the lease has lapsed, so within lease + tick seconds. Keep it
    # longer than a refresh call with its retries (about 3 x WXLOGIN_WECHAT_TIMEOUT_SECONDS).
    token_lease_seconds: float = Field(default=30.0, ge=1, le=600)
    # How often every replica renews (or tries to take) the lease and re-reads the stored token.
    token_tick_seconds: float = Field(default=5.0, gt=0, le=60)

    @model_validator(mode="after")
    def _token_timing_is_consistent(self) -> Settings:
        # The holder renews every tick: a lease shorter than two ticks lapses between renewals. A
        # takeover must still leave time to refresh before the old token expires.
        if self.token_lease_seconds < 2 * self.token_tick_seconds:
            raise ValueError("token_lease_seconds must be at least twice token_tick_seconds")
        if self.token_refresh_margin_seconds <= self.token_lease_seconds + self.token_tick_seconds:
            raise ValueError(
                "token_refresh_margin_seconds must exceed token_lease_seconds + token_tick_seconds"
            )
        return self

    # --- webhooks (services/webhook, docs/webhooks.md) ------------------------------------------
    # Hosts a webhook may reach over plain http (exact host names or IP addresses, comma separated);
    # every other endpoint must be https.
    webhook_http_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Hosts (names) and networks (IP addresses, CIDRs) a webhook may reach although they are loopback,
    # private, link-local, CGNAT, multicast, reserved or cloud-metadata addresses (refused otherwise).
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # One delivery (connect, send, answer) may take this long.
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    # Seconds before each attempt (the first: at once), jittered; after the last failed attempt the
    # message fails and its endpoint is disabled. Standard Webhooks' schedule by default.
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    # How often each replica looks for messages other replicas recorded (its own: at once).
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # How long messages and the delivery log are kept: replay works within it.
    webhook_retention_days: int = Field(default=7, ge=1, le=90)

    @field_validator(
        "webhook_http_hosts", "webhook_allowed_networks", "webhook_retry_schedule", mode="before"
    )
    @classmethod
    def _webhook_lists_from_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _webhook_networks_parse(cls, value: list[str]) -> list[str]:
        for entry in value:
            if "/" in entry:
                try:
                    ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"not a network: {entry!r}") from None
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _webhook_schedule_is_sane(cls, value: list[float]) -> list[float]:
        if not value or any(delay < 0 or delay > 7 * 86400 for delay in value):
            raise ValueError("must list at least one delay, each from 0 to 604800 seconds")
        return value

    # --- processes ------------------------------------------------------------------------------
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=0, le=65535)
    # Port of /healthz, /readyz and /metrics for the token, qrcode and session services.
    ops_port: int = Field(default=8081, ge=0, le=65535)
    sim_host: str = "127.0.0.1"
    sim_port: int = Field(default=9100, ge=0, le=65535)
    # What the simulator does with a code it never issued (WeChat DevTools' real wx.login codes):
    # "off" refuses it like WeChat (40029); "sticky" logs in one developer user; "new" a new user each
    # time. The demo (`run all` with WXLOGIN_DEMO on) uses "sticky" unless this is set.
    sim_any_code: Literal["off", "sticky", "new"] = "off"
    demo: bool = False
    log_format: LogFormat = "auto"
    log_level: str = "INFO"
    # The asyncio event loop every service runs on: uvloop (libuv) where it is installed, which spends
    # about a fifth less CPU per login (docs/benchmarks.md), or the standard library's ("asyncio").
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    # --- deploy ---------------------------------------------------------------------------------
    # Address of the ops endpoints (/healthz, /readyz, /metrics) of token, qrcode and session:
    # every interface in a container (Prometheus scrapes it), 127.0.0.1 for processes on one host.
    ops_host: str = "0.0.0.0"
    # After SIGTERM: how long in-flight HTTP requests and bus messages may take to finish. Work still
    # running then is cancelled and its message requeued for another replica. Keep the container's
    # stop grace period a few seconds longer.
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins_from_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_exact(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _is_origin(origin):
                raise ValueError(f"origin must be scheme://host[:port] with nothing after it: {origin!r}")
        return value

    @field_validator("issuer_url")
    @classmethod
    def _issuer_is_base_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("must be an http(s) base URL such as https://login.example.com")
        if value.endswith("/"):
            raise ValueError("must not end with a slash")
        return value

    @property
    def issuer(self) -> str:
        """The OpenID Connect issuer (``WXLOGIN_ISSUER_URL``, or the local gateway in development)."""
        return self.issuer_url or f"http://127.0.0.1:{self.gateway_port}"

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        if value.startswith("memory://"):
            return value
        for url in value.split(","):
            if not url.strip().startswith(("amqp://", "amqps://")):
                raise ValueError(
                    "amqp_url must be memory:// or one or more comma-separated amqp:// or amqps:// URLs"
                )
        return value

    @property
    def embedded_bus(self) -> bool:
        """True when the in-process bus is selected."""
        return self.amqp_url.startswith("memory://")

    @property
    def uses_dev_credentials(self) -> bool:
        """True while the public development appid/secret are configured."""
        return self.secret.get_secret_value() == DEV_SECRET

    @property
    def empty_wechat_credentials(self) -> list[str]:
        """The variables of the WeChat AppID and AppSecret that are set but empty (``.env.example``)."""
        empty = [("WXLOGIN_APPID", self.appid), ("WXLOGIN_SECRET", self.secret.get_secret_value())]
        return [name for name, value in empty if not value.strip()]

    @classmethod
    def from_environment(cls) -> Settings:
        """The settings of this process (environment, then ``.env``); :class:`InvalidSettings` when
        any is unusable, with one line per variable naming it."""
        try:
            return cls()
        except ValidationError as exc:
            raise InvalidSettings(describe_invalid(exc)) from None
        except SettingsError as exc:  # a value that is not even parseable (e.g. bad JSON)
            found = re.search(r'field "(\w+)"', str(exc))
            name = env_name(found.group(1)) if found else "a WXLOGIN_ setting"
            raise InvalidSettings([f"{name}: cannot be parsed"]) from None

    @classmethod
    def for_command_line(cls) -> Settings:
        """:meth:`from_environment` for a command's entry point: an unusable setting prints its one
        line per variable on stderr and exits 2, with no traceback."""
        try:
            return cls.from_environment()
        except InvalidSettings as exc:
            print("\n".join(exc.problems), file=sys.stderr)
            raise SystemExit(2) from None


class InvalidSettings(ValueError):
    """Settings that cannot be used; ``problems`` has one line per variable, naming it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def env_name(field: str) -> str:
    """The environment variable of a setting: ``scene_ttl_seconds`` → ``WXLOGIN_SCENE_TTL_SECONDS``."""
    return f"WXLOGIN_{field.upper()}"


# Short English for the constraint failures settings can have, by pydantic error type.
_CONSTRAINTS = {
    "greater_than_equal": "must be ≥ {ge}",
    "less_than_equal": "must be ≤ {le}",
    "greater_than": "must be > {gt}",
    "less_than": "must be < {lt}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
    "literal_error": "must be {expected}",
}


def describe_invalid(exc: ValidationError) -> list[str]:
    """One line per invalid variable, e.g. ``WXLOGIN_SCENE_TTL_SECONDS=5: must be ≥ 10``.

    Secret values are never repeated; a rule between settings names the variables it involves.
    """
    fields = Settings.model_fields
    lines: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        ctx: dict[str, Any] = error.get("ctx") or {}
        template = _CONSTRAINTS.get(error["type"])
        if template is not None:
            message = template.format(**{k: _number(v) for k, v in ctx.items()})
        else:
            message = str(error["msg"]).removeprefix("Value error, ").removeprefix(f"{field} ")
        # Field names in a message (rules between settings) become the variables a user sets.
        message = re.sub(
            r"\b[a-z][a-z0-9_]+\b", lambda m: env_name(m[0]) if m[0] in fields else m[0], message
        )
        if field not in fields:
            lines.setdefault(message, message)
            continue
        name = env_name(field)
        secret = fields[field].annotation is SecretStr
        shown = name if secret or not isinstance(error.get("input"), str) else f"{name}={error['input']}"
        lines.setdefault(name, f"{shown}: {message}")
    return list(lines.values())


def _number(value: object) -> object:
    """``10.0`` as ``10`` in a message."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
