"""MongoDB access control of the compose stack (security review M1) against the code: deploy/mongo.

``roles.json`` must grant each service exactly the actions its code performs on exactly the
collections its code touches. Both are derived here from the services' modules (``db[NAME]``
collections, the PyMongo methods called on them, the ``INDEXES`` each store declares), so a new
collection or a new kind of operation fails this test until the table grants it, and a grant the code
no longer needs fails it too. No mongod runs here: ``entrypoint.sh`` runs under sh, and ``users.js`` and
``healthcheck.js`` under node against a hand-written stand-in for mongosh's API that enforces what
``--auth`` would (``mongosh_fake.js``). How compose hands out the credentials is checked in
test_compose.py.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from services.__main__ import SERVICES

ROOT = Path(__file__).resolve().parents[2]
MONGO_DIR = ROOT / "deploy" / "mongo"
ROLES_FILE = MONGO_DIR / "roles.json"
ROLES: dict[str, dict[str, list[str]]] = json.loads(ROLES_FILE.read_text())
# Granted for replicas of the previous release during a rolling upgrade, which this release's code no
# longer does: session kept each user's session_key in mp_sessions (an upsert). Goes in the next release.
FOR_OLDER_REPLICAS: dict[str, dict[str, set[str]]] = {"session": {"mp_sessions": {"insert", "update"}}}
FAKE_MONGOSH = Path(__file__).with_name("mongosh_fake.js")
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed here")

# What each PyMongo collection method needs (MongoDB's privilege actions). A method missing here fails
# the test: look up what it needs (an aggregate with $out or $merge, a bulk_write, … need more) first.
ACTIONS_OF: dict[str, frozenset[str]] = {
    "find": frozenset({"find"}),
    "find_one": frozenset({"find"}),
    "count_documents": frozenset({"find"}),  # an aggregate of $match and $group
    "distinct": frozenset({"find"}),
    "insert_one": frozenset({"insert"}),
    "insert_many": frozenset({"insert"}),
    "update_one": frozenset({"update"}),
    "update_many": frozenset({"update"}),
    "replace_one": frozenset({"update"}),
    "find_one_and_update": frozenset({"find", "update"}),
    "find_one_and_replace": frozenset({"find", "update"}),
    "find_one_and_delete": frozenset({"find", "remove"}),
    "delete_one": frozenset({"remove"}),
    "delete_many": frozenset({"remove"}),
    "create_index": frozenset({"createIndex"}),  # TTL indexes too; no createCollection needed
    "create_indexes": frozenset({"createIndex"}),
    "list_indexes": frozenset({"listIndexes"}),
    "index_information": frozenset({"listIndexes"}),
    "drop_index": frozenset({"dropIndex"}),
    "drop_indexes": frozenset({"dropIndex"}),
}
# With upsert=True these insert as well (an upsert needs the insert action).
UPSERTING = {"update_one", "update_many", "replace_one", "find_one_and_update", "find_one_and_replace"}
KNOWN_ACTIONS = frozenset().union(*ACTIONS_OF.values())


# --- what the code does -----------------------------------------------------------------------------


def _is_database(node: ast.expr) -> bool:
    """``db``, ``self._db``, ``app_db``…: what a collection is taken from by subscript."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name == "db" or name.endswith("_db")


def _resolve(node: ast.expr, module: ModuleType) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return getattr(module, node.id)
    if isinstance(node, ast.Attribute):
        return getattr(_resolve(node.value, module), node.attr)
    raise ValueError(ast.unparse(node))


def _collection(node: ast.expr, module: ModuleType) -> str | None:
    """The collection name of ``db[NAME]`` (NAME a constant of the module), else None."""
    if isinstance(node, ast.Subscript) and _is_database(node.value):
        name = _resolve(node.slice, module)
        assert isinstance(name, str), f"{module.__name__}: {ast.unparse(node)} is not a collection name"
        return name
    return None


def _target(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def _upserts(call: ast.Call) -> bool:
    for keyword in call.keywords:
        if keyword.arg == "upsert":
            return not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False)
    return False


def _scopes(tree: ast.Module) -> list[ast.AST]:
    """Each class (its attributes are shared by its methods), and the module's functions apart."""
    return [
        node for node in tree.body if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def accesses_of(service: str) -> dict[str, set[str]]:
    """Collection → the actions the code of ``services/<service>/`` performs on it."""
    found: dict[str, set[str]] = defaultdict(set)
    package = ROOT / "services" / service
    for path in sorted(package.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source, str(path))
        if "INDEXES" not in source and not any(
            isinstance(n, ast.Subscript) and _is_database(n.value) for n in ast.walk(tree)
        ):
            continue
        relative = path.relative_to(ROOT).with_suffix("")
        module = importlib.import_module(".".join(relative.parts))
        for index in getattr(module, "INDEXES", None) or []:
            if type(index).__name__ == "Index":  # the store declares them; mongo_context creates them
                found[index.collection].add("createIndex")
        for scope in _scopes(tree):
            bound: dict[str, str] = {}
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign) and (name := _collection(node.value, module)):
                    for target in node.targets:
                        if (key := _target(target)) is not None:
                            bound[key] = name
            for node in ast.walk(scope):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                on = node.func.value
                collection = _collection(on, module)
                if collection is None and (key := _target(on)) is not None:
                    collection = bound.get(key)
                if collection is None:
                    continue
                method = node.func.attr
                assert method in ACTIONS_OF, (
                    f"{path.relative_to(ROOT)}:{node.lineno}: {method}() on {collection}: add it to "
                    "ACTIONS_OF with the privilege actions it needs (and to deploy/mongo/roles.json)"
                )
                found[collection] |= ACTIONS_OF[method]
                if method in UPSERTING and _upserts(node):
                    found[collection].add("insert")
    return dict(found)


@pytest.fixture(scope="module")
def code_accesses() -> dict[str, dict[str, set[str]]]:
    return {service: accesses_of(service) for service in SERVICES}


def test_the_scan_sees_what_the_stores_are_known_to_do(code_accesses: dict[str, dict[str, set[str]]]) -> None:
    # Pins the derivation itself: were it blind, the next test would pass against an empty table.
    assert code_accesses["token"]["tokens"] == {"find", "insert", "update"}
    assert code_accesses["session"]["mp_sessions"] == {"find"}  # read only: keys moved onto users
    assert code_accesses["session"]["users"] >= {"find", "insert", "update"}
    upsert, plain = (ast.parse(f"c.update_one({{}}, {{}}{extra})").body[0] for extra in (", upsert=True", ""))
    assert _upserts(upsert.value) and not _upserts(plain.value)  # type: ignore[attr-defined]
    assert "remove" in code_accesses["qrcode"]["scene_pool"]
    assert "createIndex" in code_accesses["session"]["users"]


def test_each_role_grants_exactly_what_its_services_code_does(
    code_accesses: dict[str, dict[str, set[str]]],
) -> None:
    problems = []
    for service in sorted(set(SERVICES) | set(ROLES)):
        code = code_accesses.get(service, {})
        granted = {collection: set(actions) for collection, actions in ROLES.get(service, {}).items()}
        for collection in sorted(set(code) | set(granted)):
            missing = code.get(collection, set()) - granted.get(collection, set())
            older = FOR_OLDER_REPLICAS.get(service, {}).get(collection, set())
            extra = granted.get(collection, set()) - code.get(collection, set()) - older
            if older - granted.get(collection, set()) or older & code.get(collection, set()):
                problems.append(f"{service}: {collection}: FOR_OLDER_REPLICAS {sorted(older)} is out of date")
            if missing:
                problems.append(f"{service}: {collection}: the code needs {sorted(missing)}, not granted")
            if extra:
                problems.append(
                    f"{service}: {collection}: granted {sorted(extra)}, which the code never does"
                )
    assert not problems, "deploy/mongo/roles.json disagrees with the code:\n" + "\n".join(problems)


def test_every_collection_belongs_to_one_service_and_the_gateway_to_none(
    code_accesses: dict[str, dict[str, set[str]]],
) -> None:
    owners: dict[str, list[str]] = defaultdict(list)
    for service, collections in ROLES.items():
        for collection in collections:
            owners[collection].append(service)
    assert {c: s for c, s in owners.items() if len(s) > 1} == {}
    assert "gateway" not in ROLES and code_accesses["gateway"] == {}
    assert set(ROLES) <= set(SERVICES)
    for actions in (a for collections in ROLES.values() for a in collections.values()):
        assert actions and set(actions) <= KNOWN_ACTIONS and len(set(actions)) == len(actions)


def test_the_architecture_names_each_collection_under_its_owner() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## 4. Services and what each owns", 1)[1].split("\n## 5.", 1)[0]
    for service, collections in ROLES.items():
        part = section.split(f"\n### {service}\n", 1)[1].split("\n### ", 1)[0]
        missing = [c for c in collections if f"`{c}`" not in part]
        assert not missing, f"docs/architecture.md §4 {service}: {missing}"


def test_the_roles_file_keeps_one_line_per_collection() -> None:
    # Adding a collection is adding one line (docs/deploy.md §6); entrypoint.sh reads the services
    # from the two-space-indented keys.
    lines = ROLES_FILE.read_text().splitlines()
    for service, collections in ROLES.items():
        assert f'  "{service}": {{' in lines
        for collection, actions in collections.items():
            line = f'    "{collection}": {json.dumps(actions)}'
            assert line in lines or f"{line}," in lines, f"{service}.{collection} is not on one line"


# --- entrypoint.sh ----------------------------------------------------------------------------------


def passwords() -> dict[str, str]:
    names = ["ROOT", *(service.upper() for service in ROLES)]
    return {f"MONGO_{name}_PASSWORD": secrets.token_hex(12) for name in names}


def run_entrypoint(keyfile: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(MONGO_DIR / "entrypoint.sh"), "sh", "-c", "echo started $*", "-", "mongod", "--auth"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MONGO_KEYFILE": str(keyfile),
            "MONGO_ROLES": str(ROLES_FILE),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_entrypoint_makes_a_key_file_once_and_starts_mongod(tmp_path: Path) -> None:
    keyfile = tmp_path / "wxlogin.keyfile"
    done = run_entrypoint(keyfile, passwords())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started mongod --auth"
    key = keyfile.read_text()
    assert re.fullmatch(r"[A-Za-z0-9+/=]{1008}", key)  # MongoDB: 6 to 1024 base64 characters
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o400
    again = run_entrypoint(keyfile, passwords())
    assert again.returncode == 0, again.stderr
    assert keyfile.read_text() == key  # the set's members keep authenticating with it


@pytest.mark.parametrize("name", ["ROOT", *(service.upper() for service in ROLES)])
def test_the_entrypoint_refuses_to_start_without_each_password(tmp_path: Path, name: str) -> None:
    env = passwords()
    del env[f"MONGO_{name}_PASSWORD"]
    done = run_entrypoint(tmp_path / "keyfile", env)
    assert done.returncode == 64
    assert f"set MONGO_{name}_PASSWORD" in done.stderr
    assert "started" not in done.stdout and not (tmp_path / "keyfile").exists()


@pytest.mark.parametrize(("password", "why"), [("short-but-ok", "16"), ("a" * 20 + "@x", "may only contain")])
def test_the_entrypoint_refuses_a_password_unfit_for_the_url(tmp_path: Path, password: str, why: str) -> None:
    env = passwords() | {"MONGO_SESSION_PASSWORD": password}
    done = run_entrypoint(tmp_path / "keyfile", env)
    assert done.returncode == 64 and why in done.stderr and "MONGO_SESSION_PASSWORD" in done.stderr


# --- users.js and healthcheck.js under node -----------------------------------------------------------


def mongosh(script: str, state: dict[str, Any]) -> dict[str, Any]:
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(FAKE_MONGOSH), str(MONGO_DIR / script), json.dumps(state)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=MONGO_DIR,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"MONGO_ROLES": str(ROLES_FILE), "MONGO_USERS_SCRIPT": str(MONGO_DIR / "users.js"),
            "MONGO_USERS_MARK": str(tmp_path / "mark"), **passwords(), **extra}  # fmt: skip


def calls(result: dict[str, Any], name: str) -> list[list[Any]]:
    return [call[1:] for call in result["calls"] if call[0] == name]


def expected_privileges(service: str, db: str = "wxlogin") -> list[dict[str, Any]]:
    return [
        {"resource": {"db": db, "collection": collection}, "actions": actions}
        for collection, actions in ROLES[service].items()
    ]


@needs_node
@pytest.mark.parametrize("script", ["users.js", "healthcheck.js"])
def test_the_mongosh_scripts_are_valid_javascript(script: str) -> None:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "--check", str(MONGO_DIR / script)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr


@needs_node
def test_users_on_a_new_database_creates_root_then_one_user_per_service_with_only_its_role(
    tmp_path: Path,
) -> None:
    env = script_env(tmp_path)
    result = mongosh("users.js", {"env": env})
    assert result["error"] is None
    # No user yet: the localhost exception creates the administrator, who then does the rest.
    assert calls(result, "createUser")[0] == ["admin", "wxlogin-root", [{"role": "root", "db": "admin"}]]
    assert result["users"]["admin.wxlogin-root"] == env["MONGO_ROOT_PASSWORD"]
    for service in ROLES:
        name = f"wxlogin-{service}"
        assert ["wxlogin", name, expected_privileges(service), []] in calls(result, "createRole")
        assert ["wxlogin", name, [{"role": name, "db": "wxlogin"}]] in calls(result, "createUser")
        assert result["users"][f"wxlogin.{name}"] == env[f"MONGO_{service.upper()}_PASSWORD"]
    assert len(calls(result, "createUser")) == 1 + len(ROLES)  # nobody else, no root for a service


@needs_node
def test_users_run_again_updates_roles_and_passwords_in_place(tmp_path: Path) -> None:
    first = mongosh("users.js", {"env": script_env(tmp_path)})
    rotated = script_env(tmp_path, MONGO_ROOT_PASSWORD=first["users"]["admin.wxlogin-root"])
    again = mongosh("users.js", {"env": rotated, "users": first["users"], "roles": first["roles"]})
    assert again["error"] is None
    assert calls(again, "createUser") == [] and calls(again, "createRole") == []
    assert calls(again, "auth") == [["admin", "wxlogin-root"]]
    for service in ROLES:
        assert again["users"][f"wxlogin.wxlogin-{service}"] == rotated[f"MONGO_{service.upper()}_PASSWORD"]
        assert ["wxlogin", f"wxlogin-{service}", expected_privileges(service), []] in calls(
            again, "updateRole"
        )


@needs_node
def test_users_follow_the_database_setting(tmp_path: Path) -> None:
    result = mongosh("users.js", {"env": script_env(tmp_path, WXLOGIN_MONGO_DB="login")})
    assert result["error"] is None
    assert ["login", "wxlogin-session", expected_privileges("session", "login"), []] in calls(
        result, "createRole"
    )


@needs_node
def test_users_change_nothing_while_a_password_is_missing(tmp_path: Path) -> None:
    env = script_env(tmp_path)
    del env["MONGO_QRCODE_PASSWORD"]
    result = mongosh("users.js", {"env": env})
    assert "set MONGO_QRCODE_PASSWORD" in result["error"]
    assert result["users"] == {} and result["roles"] == {}


@needs_node
def test_users_with_the_wrong_root_password_stop_and_say_so(tmp_path: Path) -> None:
    state = {"env": script_env(tmp_path), "users": {"admin.wxlogin-root": "another-password-1234"}}
    result = mongosh("users.js", state)
    assert "MONGO_ROOT_PASSWORD" in result["error"]
    assert result["roles"] == {} and list(result["users"]) == ["admin.wxlogin-root"]


@needs_node
def test_users_run_by_a_logged_in_administrator_act_as_that_administrator(tmp_path: Path) -> None:
    # An external MongoDB: `mongosh -u ops … --file users.js`, no wxlogin-root there.
    env = script_env(tmp_path)
    del env["MONGO_ROOT_PASSWORD"]
    state = {"env": env, "users": {"admin.ops": "x"}, "admins": ["admin.ops"], "authenticated": "admin.ops"}
    result = mongosh("users.js", state)
    assert result["error"] is None
    assert calls(result, "auth") == [] and "admin.wxlogin-root" not in result["users"]
    assert len(calls(result, "createRole")) == len(ROLES)


PRIMARY = {"isWritablePrimary": True, "setName": "rs0"}


@needs_node
def test_healthcheck_initiates_a_new_replica_set_and_waits_for_the_primary(tmp_path: Path) -> None:
    result = mongosh("healthcheck.js", {"env": script_env(tmp_path), "hello": {"isreplicaset": True}})
    assert result["exit"] == 1
    assert calls(result, "rs.initiate") == [[{"_id": "rs0", "members": [{"_id": 0, "host": "mongo:27017"}]}]]
    starting = mongosh("healthcheck.js", {"env": script_env(tmp_path), "hello": {"setName": "rs0"}})
    assert starting["exit"] == 1 and starting["calls"] == []


@needs_node
def test_healthcheck_creates_the_users_once_primary_and_again_when_roles_or_passwords_change(
    tmp_path: Path,
) -> None:
    env = script_env(tmp_path)
    first = mongosh("healthcheck.js", {"env": env, "hello": PRIMARY})
    assert first["exit"] == 0, first["calls"]
    assert calls(first, "load") == [[env["MONGO_USERS_SCRIPT"]]]
    assert len(calls(first, "createRole")) == len(ROLES)
    assert stat.S_IMODE((tmp_path / "mark").stat().st_mode) == 0o600
    state = {"env": env, "hello": PRIMARY, "users": first["users"], "roles": first["roles"]}
    assert mongosh("healthcheck.js", state)["calls"] == []  # nothing changed: no login at all
    roles = tmp_path / "roles.json"
    roles.write_text(ROLES_FILE.read_text().replace('"tokens": ["find"', '"tokens": ["remove", "find"'))
    edited = mongosh("healthcheck.js", state | {"env": env | {"MONGO_ROLES": str(roles)}})
    assert edited["exit"] == 0
    assert edited["roles"]["wxlogin.wxlogin-token"]["privileges"][0]["actions"][0] == "remove"
    rotated = mongosh("healthcheck.js", state | {"env": env | {"MONGO_TOKEN_PASSWORD": "t" * 24}})
    assert rotated["exit"] == 0 and rotated["users"]["wxlogin.wxlogin-token"] == "t" * 24


@needs_node
def test_healthcheck_is_unhealthy_while_the_users_cannot_be_made(tmp_path: Path) -> None:
    env = script_env(tmp_path)
    del env["MONGO_SESSION_PASSWORD"]
    result = mongosh("healthcheck.js", {"env": env, "hello": PRIMARY})
    assert result["exit"] == 1
    assert any("set MONGO_SESSION_PASSWORD" in line for (line,) in calls(result, "print"))
    assert not (tmp_path / "mark").exists()
