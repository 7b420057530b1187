"""structlog configured once for every service, with a processor that keeps secrets out of logs.

Secrets are removed three ways: by key name (``secret=...``), by query-string parameter inside any
text (URLs in exception messages), and by exact value for secrets registered at run time (the
appsecret, the current access tokens). Standard-library loggers (aiohttp, aio-pika, pymongo) go
through the same processors.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections import deque
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"

# Keys whose values are secrets wherever they appear in an event.
SECRET_KEYS = frozenset(
    {
        "secret",
        "appsecret",
        "access_token",
        "refresh_token",
        "session_key",
        "js_code",
        "code",
        "wx_code",
        "phone_code",
        "ticket",
        "link_token",
        "login_code",
        "scan_token",
        "client_secret",
        "code_verifier",
        "id_token",
        "id_token_hint",
        "logout_token",
        "op_session",
        "set-cookie",
        "encrypted_data",
        "authorization",
        "data_key",
        "private_key",
        "password",
        "cookie",
    }
)

_QUERY_SECRET = re.compile(
    r"(?i)\b(access_token|secret|appsecret|js_code|code|ticket|refresh_token|session_key|signature|link_token"
    r"|client_secret|code_verifier|id_token|id_token_hint|logout_token|login_code)"
    r"(=|%3D)[^&\s\"'<>]+"
)
_BEARER = re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=-]+")
# Registered values shorter than this are not secrets (and not registered); "Bearer x" is as long.
SHORTEST_SECRET = 8


class SecretRegistry:
    """Exact secret values to scrub from every log line.

    Rotating values (access tokens) are kept in a bounded window, newest first; long-lived ones
    (the appsecret) are pinned and never pushed out by newer tokens.
    """

    def __init__(self, capacity: int = 16) -> None:
        self._values: deque[str] = deque(maxlen=capacity)
        self._pinned: set[str] = set()
        self._lock = threading.Lock()
        self._all: tuple[str, ...] = ()  # pinned and rotating, rebuilt on add: a log line reads it unlocked

    def add(self, value: str | None, *, pin: bool = False) -> None:
        """Remember ``value`` (ignored when too short to be a secret)."""
        if not value or len(value) < SHORTEST_SECRET:
            return
        with self._lock:
            if pin:
                self._pinned.add(value)
            elif value not in self._values:
                self._values.append(value)
            self._all = (*self._pinned, *self._values)

    def scrub(self, text: str) -> str:
        """Replace every registered value inside ``text``."""
        if len(text) < SHORTEST_SECRET:
            return text
        for value in self._all:
            if value in text:
                text = text.replace(value, REDACTED)
        return text


secrets_registry = SecretRegistry()


def register_secret(value: str | None, *, pin: bool = False) -> None:
    """Never log ``value``, wherever it turns up: access tokens, and (``pin``) the appsecret."""
    secrets_registry.add(value, pin=pin)


def scrub_text(text: str) -> str:
    """Remove secrets from free text: query parameters, bearer tokens and registered values.

    Most values of a log line (event names, ids, levels, times) hold no ``=``, ``%`` or "bearer" and
    are shorter than a secret: the patterns, which cost more than the rest of the line, run only on
    text they could match."""
    if "=" in text or "%" in text:  # a query parameter: name=value or name%3Dvalue
        text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    if len(text) >= SHORTEST_SECRET and "bearer" in text.lower():
        text = _BEARER.sub("Bearer " + REDACTED, text)
    return secrets_registry.scrub(text)


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and k.lower() in SECRET_KEYS else _scrub(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v, depth + 1) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the formatter runs it last before rendering, after exceptions are formatted,
    for structlog's lines and the standard library's alike."""
    for key in list(event_dict):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


class _BoundLogger(structlog.stdlib.BoundLogger):
    """structlog's standard-library logger, which drops a debug or info line below the level before
    anything is built for it (about 1 µs instead of 8: every login makes a dozen such calls).

    It drops only what the first processor, ``filter_by_level``, would drop: under another chain
    (``structlog.testing.capture_logs``) every line goes through as before."""

    def __init__(self, logger: Any, processors: Iterable[Any], context: Any) -> None:
        super().__init__(logger, processors, context)
        self._filtered = next(iter(processors), None) is structlog.stdlib.filter_by_level

    def _below_level(self, level: int) -> bool:
        return self._filtered and not self._logger.isEnabledFor(level)

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if self._below_level(logging.DEBUG):
            return None
        return super().debug(event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if self._below_level(logging.INFO):
            return None
        return super().info(event, *args, **kw)


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]


def configure_logging(
    *, service: str, fmt: str = "auto", level: str = "INFO", stream: Any = None, cache_loggers: bool = True
) -> None:
    """Configure structlog and the standard library once per process.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console on a TTY, JSON otherwise). ``cache_loggers``:
    each logger keeps the configuration it first logged with (a written line costs about half), which
    is what a service wants; tests that swap the configuration (``structlog.testing.capture_logs``)
    turn it off, as a cached logger would not see the swap.
    """
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared = _shared_processors()
    structlog.configure(
        # A line below the level is dropped before anything is done to it (at WARNING, the info lines
        # of every login cost nothing). Secrets are redacted once, by the formatter, last before
        # rendering: the same step runs for the standard library's records.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=_BoundLogger,
        cache_logger_on_first_use=cache_loggers,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _stdlib_message_to_event],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,
            renderer,
        ],
    )
    # No line shows the caller's file, process or thread (the JSON is structlog's event, not the record's
    # fields): the standard library's documented switches skip gathering them (a stack walk and a
    # getpid() for every record, about a fifth of a line's cost).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("pymongo", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # The AMQP client logs an error (with a traceback) for every failed reconnect attempt and every
    # closed connection; the bus logs each state change once itself (bus_disconnected,
    # bus_connect_failed, bus_reconnected), so an outage is a few lines, not a flood.
    for chatty in ("aiormq", "aio_pika"):
        logging.getLogger(chatty).setLevel(logging.CRITICAL)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def _stdlib_message_to_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Foreign (stdlib) records carry their text in "event"; make sure it is scrubbed like the rest.
    event = event_dict.get("event")
    if isinstance(event, str):
        event_dict["event"] = scrub_text(event)
    return event_dict


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger; ``initial`` key-values are bound to it."""
    return structlog.get_logger(name).bind(**initial) if initial else structlog.get_logger(name)


def bind_context(**values: Any) -> None:
    """Bind key-values (``correlation_id``, ``scene``) to every log line of the current task."""
    structlog.contextvars.bind_contextvars(**values)


def unbind_context(keys: Iterable[str]) -> None:
    """Undo :func:`bind_context` for ``keys``."""
    structlog.contextvars.unbind_contextvars(*keys)
