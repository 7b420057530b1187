"""docs/architecture.md is the design of record: it fails here when it drifts from the code.

Checked: every bus message (type, version, fields, publishers, RPC callers and replies), every error
code with its HTTP status, every gateway route, every Mongo collection and index, every scene state,
the queue limits, and that every ``WXLOGIN_`` setting and ``/api/`` path the page names exists.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from services.gateway.errors import STATUS_BY_CODE
from services.qrcode import store as qrcode_store
from services.session import store as session_store
from services.token import store as token_store
from services.webhook import store as webhook_store
from shared import messages as m
from shared.bus import topology
from shared.bus.acl import CALLERS
from shared.config import Settings
from shared.errors import ServiceError

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
LINES = DOC.splitlines()

# Modules whose ServiceError subclasses define the error codes that can cross a service boundary.
ERROR_MODULES = [
    "shared.errors",
    "shared.tokens",
    "shared.bus.acl",
    "shared.bus.interface",
    "services.gateway.errors",
    "services.qrcode.errors",
    "services.session.errors",
    "services.token.errors",
    "services.webhook.errors",
]


def _messages() -> list[type[m.Message]]:
    return [
        cls
        for _, cls in inspect.getmembers(m, inspect.isclass)
        if issubclass(cls, m.Message) and cls.__dict__.get("TYPE")
    ]


def _row(first_cell: str) -> str:
    """The table row whose first cell is ``first_cell`` (in backticks)."""
    prefix = f"| `{first_cell}` |"
    rows = [line for line in LINES if line.startswith(prefix)]
    assert rows, f"docs/architecture.md has no table row for `{first_cell}`"
    assert len(rows) == 1, f"docs/architecture.md has {len(rows)} table rows for `{first_cell}`"
    return rows[0]


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def test_every_message_type_is_named() -> None:
    missing = sorted(cls.TYPE for cls in _messages() if f"`{cls.TYPE}`" not in DOC)
    assert not missing, f"message types missing from docs/architecture.md: {missing}"


@pytest.mark.parametrize("event", [c for c in _messages() if issubclass(c, m.Event)], ids=lambda c: c.TYPE)
def test_event_row_has_version_fields_and_publishers(event: type[m.Event]) -> None:
    row = _row(event.TYPE)
    cells = _cells(row)
    assert cells[1] == str(event.VERSION), f"{event.TYPE}: version column says {cells[1]}"
    for field in event.model_fields:
        assert f"`{field}`" in cells[2], f"{event.TYPE}: field `{field}` missing from its row"
    for publisher in event.PUBLISHERS:
        assert publisher in cells[3], f"{event.TYPE}: publisher {publisher} missing from its row"


@pytest.mark.parametrize(
    "request_cls", [c for c in _messages() if issubclass(c, m.Request)], ids=lambda c: c.TYPE
)
def test_rpc_row_has_fields_reply_server_and_callers(request_cls: type[m.Request[m.Reply]]) -> None:
    row = _row(request_cls.TYPE)
    _method, version, fields, reply, served_by, callers = _cells(row)[:6]
    assert version == str(request_cls.VERSION), f"{request_cls.TYPE}: version column says {version}"
    for field in request_cls.model_fields:
        assert f"`{field}`" in fields, f"{request_cls.TYPE}: request field `{field}` missing"
    assert f"`{request_cls.REPLY.TYPE}`" in reply, f"{request_cls.TYPE}: reply type missing"
    for field in request_cls.REPLY.model_fields:
        assert f"`{field}`" in reply, f"{request_cls.TYPE}: reply field `{field}` missing"
    assert served_by == request_cls.service(), f"{request_cls.TYPE}: served by {served_by}?"
    named = {name.strip() for name in callers.split(",")}
    assert named == set(CALLERS[request_cls.TYPE]), f"{request_cls.TYPE}: callers {named} in the doc"


def test_every_error_code_has_its_http_status() -> None:
    wrong = []
    for code, status in STATUS_BY_CODE.items():
        cells = _cells(_row(code))
        if cells[1] != str(status):
            wrong.append(f"{code}: doc {cells[1]}, code {status}")
    assert not wrong, f"error statuses differ: {wrong}"


def test_every_service_error_code_is_named() -> None:
    codes: set[str] = set()
    for name in ERROR_MODULES:
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, ServiceError) and cls is not ServiceError and "code" in cls.__dict__:
                codes.add(cls.code)
    missing = sorted(code for code in codes if f"`{code}`" not in DOC)
    assert not missing, f"error codes missing from docs/architecture.md: {missing}"


def _gateway_routes() -> set[tuple[str, str]]:
    from services.gateway.app import create_app

    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def test_every_gateway_route_is_named() -> None:
    missing = []
    for method, path in sorted(_gateway_routes()):
        prefix = f"| {method} | `{path}` |"
        if not any(line.startswith(prefix) for line in LINES):
            missing.append(f"{method} {path}")
    assert not missing, f"gateway routes missing from the HTTP API tables: {missing}"


def test_every_api_path_named_is_a_route() -> None:
    paths = {path for _, path in _gateway_routes()}
    named = set(re.findall(r"`(/api/[A-Za-z0-9_/]*|/\.well-known/[A-Za-z0-9_./-]*)", DOC))
    unknown = sorted(
        p for p in named if p not in paths and not (p.endswith("/") and any(x.startswith(p) for x in paths))
    )
    assert not unknown, f"docs/architecture.md names paths the gateway does not serve: {unknown}"


def test_every_collection_and_index_is_named() -> None:
    names = {token_store.TOKENS}
    for store in (qrcode_store, session_store, token_store, webhook_store):
        for index in store.INDEXES:
            names.add(index.collection)
            names.add(index.name)
    names.update({qrcode_store.SCENES, qrcode_store.POOL, qrcode_store.RATES})
    names.update({webhook_store.OUTBOX, webhook_store.DELIVERIES, webhook_store.ENDPOINTS})
    names.update(
        {
            session_store.USERS,
            session_store.CODE_USES,
            session_store.MP_SESSIONS,
            session_store.REFRESH_TOKENS,
            session_store.SIGNING_KEYS,
        }
    )
    missing = sorted(name for name in names if f"`{name}`" not in DOC)
    assert not missing, f"collections or indexes missing from docs/architecture.md: {missing}"


def test_scene_states_are_named() -> None:
    states = m.SceneState.__args__  # type: ignore[attr-defined]
    missing = [state for state in states if f"`{state}`" not in DOC]
    assert not missing, f"scene states missing: {missing}"
    terminal = ", ".join(f"`{state}`" for state in sorted(m.TERMINAL_STATES, key=states.index))
    assert f"Terminal: {terminal}." in DOC


def test_queue_limits_match_the_topology() -> None:
    assert f"`x-delivery-limit` {topology.DELIVERY_LIMIT}" in DOC
    assert f"{topology.DEAD_LETTER_MAX_LENGTH:,} messages" in DOC
    assert f"{topology.DEAD_LETTER_TTL_SECONDS // 86400} days" in DOC


def test_every_setting_named_exists() -> None:
    fields = set(Settings.model_fields)
    named = set(re.findall(r"\bWXLOGIN_([A-Z0-9_]+)\b", DOC))
    unknown = sorted(f"WXLOGIN_{name}" for name in named if name.lower() not in fields)
    assert not unknown, f"docs/architecture.md names settings that do not exist: {unknown}"
