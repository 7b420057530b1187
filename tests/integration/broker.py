"""The least-privilege broker definitions of deploy/rabbitmq, rendered and loaded into a test vhost.

Renders ``definitions.json`` with the real ``entrypoint.sh`` (as the RabbitMQ container does), then
imports the service users and their permissions into this run's vhost under unique user names
(users are global to a broker, and other runs share it) with ``rabbitmqctl import_definitions``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
RABBITMQ_DIR = ROOT / "deploy" / "rabbitmq"
SERVICES = ("token", "qrcode", "session", "gateway", "webhook")
ACCOUNTS = ("admin", *SERVICES)


def render_definitions(prefix: str, passwords: dict[str, str], out: Path) -> dict[str, Any]:
    """Run ``entrypoint.sh`` the way the container does (with ``true`` as the broker) and parse its output."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DEFINITIONS_TEMPLATE": str(RABBITMQ_DIR / "definitions.json"),
        "DEFINITIONS_OUT": str(out),
        "WXLOGIN_BUS_PREFIX": prefix,
        **{f"RABBITMQ_{name.upper()}_PASSWORD": pw for name, pw in passwords.items()},
    }
    done = subprocess.run(
        ["sh", str(RABBITMQ_DIR / "entrypoint.sh"), "true"], env=env, capture_output=True, timeout=30
    )
    if done.returncode != 0:
        raise RuntimeError(f"entrypoint.sh failed ({done.returncode}): {done.stderr.decode()}")
    rendered: dict[str, Any] = json.loads(out.read_text())
    return rendered


def new_passwords() -> dict[str, str]:
    """A password per account, in the character set entrypoint.sh accepts."""
    return {name: secrets.token_hex(12) for name in ACCOUNTS}


def rabbitmqctl() -> str | None:
    """The path of rabbitmqctl, if this machine has one."""
    return shutil.which("rabbitmqctl")


@dataclass
class BrokerUsers:
    """The service users of the definitions, living in one test vhost under unique names."""

    host: str
    vhost: str
    prefix: str
    users: dict[str, tuple[str, str]]  # service -> (user name, password)
    permissions: dict[str, dict[str, str]]  # service -> {configure, write, read}

    def url(self, service: str) -> str:
        """The AMQP URL a service connects with (its own user)."""
        user, password = self.users[service]
        return f"amqp://{user}:{password}@{self.host}:5672/{self.vhost}"

    def delete(self) -> None:
        """Remove the users from the broker (they are global, not part of the vhost)."""
        ctl = rabbitmqctl()
        assert ctl is not None
        # In parallel: each rabbitmqctl call boots an Erlang VM (about a second).
        running = [
            subprocess.Popen([ctl, "delete_user", user], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for user, _ in self.users.values()
        ]
        for process in running:
            process.wait(timeout=60)


def load_service_users(amqp_base_url: str, prefix: str, tag: str, workdir: Path) -> BrokerUsers:
    """Render the definitions for ``prefix`` and import the service users into ``amqp_base_url``'s vhost.

    The administrator account is left out: a test has no business creating broker administrators.
    """
    ctl = rabbitmqctl()
    parts = urlsplit(amqp_base_url)
    vhost = parts.path.lstrip("/")
    if ctl is None or not vhost:
        raise RuntimeError("needs rabbitmqctl and a vhost of its own (see tests/conftest.py)")
    passwords = new_passwords()
    rendered = render_definitions(prefix, passwords, workdir / "definitions.json")
    rename = {f"wxlogin-{service}": f"wxlogin-{tag}-{service}" for service in SERVICES}
    users = [dict(u, name=rename[u["name"]]) for u in rendered["users"] if u["name"] in rename]
    permissions = [
        dict(p, user=rename[p["user"]], vhost=vhost) for p in rendered["permissions"] if p["user"] in rename
    ]
    exchanges = [dict(e, vhost=vhost) for e in rendered["exchanges"]]
    test_defs = {
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "exchanges": exchanges,
    }
    done = _import(ctl, json.dumps(test_defs))
    if done.returncode != 0:
        raise RuntimeError(f"import_definitions failed: {done.stderr.decode()[-500:]}")
    _wait_for_permissions(ctl, vhost, [u["name"] for u in users])
    by_service = {service: (rename[f"wxlogin-{service}"], passwords[service]) for service in SERVICES}
    perms = {
        service: next(
            {k: p[k] for k in ("configure", "write", "read")}
            for p in rendered["permissions"]
            if p["user"] == f"wxlogin-{service}"
        )
        for service in SERVICES
    }
    return BrokerUsers(parts.hostname or "127.0.0.1", vhost, prefix, by_service, perms)


def _import(ctl: str, definitions: str) -> subprocess.CompletedProcess[bytes]:
    """``rabbitmqctl import_definitions`` from a private file the broker's user can read.

    As root, rabbitmqctl switches to the rabbitmq user (and drops stdin), so the file is handed over
    the way deploy/rabbitmq/entrypoint.sh hands over the rendered definitions.
    """
    fd, path = tempfile.mkstemp(prefix="wxlogin-defs-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(definitions)
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                os.chown(path, pwd.getpwnam("rabbitmq").pw_uid, -1)
        return subprocess.run([ctl, "import_definitions", path], capture_output=True, timeout=120)
    finally:
        os.unlink(path)


def _wait_for_permissions(ctl: str, vhost: str, users: list[str], timeout: float = 20.0) -> None:
    """import_definitions returns before the import is done: wait until every user has its permissions."""
    deadline = time.monotonic() + timeout
    while True:
        listed = subprocess.run(
            [ctl, "list_permissions", "-p", vhost, "-q"], capture_output=True, timeout=60, text=True
        ).stdout
        present = {line.split("\t", 1)[0] for line in listed.splitlines()}
        if set(users) <= present:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"permissions of {sorted(set(users) - present)} did not appear")
        time.sleep(0.2)
