"""Private RabbitMQ nodes for chaos tests: one node or a 3-node cluster on free ports and temp dirs,
started and stopped by PID, with the faults the tests inject (close connections, restart the app,
stop, kill). The machine's own broker (``rabbit@localhost`` on 5672) is never touched."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Debian's /usr/sbin wrappers `su` to the rabbitmq user and read /etc/rabbitmq (node rabbit@localhost,
# port 5672); the scripts they wrap take our environment as it is.
SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin",)
STARTUP_TIMEOUT = 90.0
CTL_TIMEOUT = 60.0
# The CLI tools listen on RABBITMQ_DIST_PORT + 10000 … + 10010: keep both ranges below 65535.
DIST_PORT_RANGE = (20000, 45000)


class RabbitError(RuntimeError):
    """A node did not start, or rabbitmqctl failed."""


def binary(name: str) -> str | None:
    """The RabbitMQ script ``name`` (``rabbitmq-server``, ``rabbitmqctl``) that honours our env."""
    for folder in SCRIPT_DIRS:
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def installed() -> bool:
    """True when this machine can run a private RabbitMQ node."""
    return binary("rabbitmq-server") is not None and binary("rabbitmqctl") is not None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free TCP port from the kernel's ephemeral range."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_dist_port(taken: set[int]) -> int:
    """A free Erlang distribution port whose CLI range (+10000…+10010) is free too."""
    for _ in range(200):
        port = random.randint(*DIST_PORT_RANGE)
        if port in taken or not _port_free(port) or not _port_free(port + 10000):
            continue
        taken.add(port)
        return port
    raise RabbitError("no free Erlang distribution port")


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
    except OSError:
        return False
    return True


@dataclass
class RabbitNode:
    """One private node ``chaos-<id>@localhost``: its ports, directories and process."""

    name: str
    port: int
    dist_port: int
    base: Path
    home: Path  # holds the Erlang cookie the nodes of one cluster (and our rabbitmqctl) share
    process: subprocess.Popen[bytes] | None = None
    started_in: float = 0.0  # seconds the last start took (process start → await_startup)
    _log: object = field(default=None, repr=False)

    @property
    def nodename(self) -> str:
        """The Erlang node name, for ``rabbitmqctl -n``."""
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        """The AMQP URL of this node's default vhost."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        """The PID of the node's process group leader (the start script), while it runs."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the node's process runs (the app inside may be stopped)."""
        return self.pid is not None

    def _write_config(self) -> None:
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's (node rabbit@localhost)
        (self.base / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.1 = 127.0.0.1:{self.port}",
                    "disk_free_limit.absolute = 1MB",
                    "log.console = false",
                    "log.file.level = warning",
                    "",
                ]
            )
        )

    def env(self) -> dict[str, str]:
        """The environment of this node's server and of every rabbitmqctl call aimed at it."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **keep,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # A VM that cannot start (say its directory is gone) dumps here, not in the caller's cwd.
            "ERL_CRASH_DUMP": str(self.base / "erl_crash.dump"),
        }

    # --- the process ---------------------------------------------------------------------------

    def start(self, timeout: float = STARTUP_TIMEOUT) -> float:
        """Start the node's process and wait until the app runs; returns the seconds it took."""
        if self.running:
            raise RabbitError(f"{self.nodename} already runs")
        self._write_config()
        server = binary("rabbitmq-server")
        if server is None:
            raise RabbitError("rabbitmq-server is not installed")
        started = time.monotonic()
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - closed in _reap
        self._log = log
        self.process = subprocess.Popen(
            [server],
            env=self.env(),
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the VM and its helpers die with it
        )
        _STARTED.add(self)
        self.await_startup(timeout)
        self.started_in = time.monotonic() - started
        return self.started_in

    def await_startup(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the node's app runs and its AMQP port answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RabbitError(f"{self.nodename} exited:\n{self.log_tail()}")
            left = max(1.0, deadline - time.monotonic())
            done = self.ctl("await_startup", "--timeout", str(int(left)), timeout=left + 5, check=False)
            if done.returncode == 0 and _port_open(self.port):
                return
            time.sleep(0.3)
        raise RabbitError(f"{self.nodename} did not start in {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node by PID (SIGTERM to its group, SIGKILL after ``timeout``)."""
        self._signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10)
        self._reap()

    def kill(self) -> None:
        """``kill -9`` the node: its whole process group, by PID."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)
        self._reap()

    def _signal(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)  # the group is this node's own (start_new_session)

    def _reap(self) -> None:
        _STARTED.discard(self)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the start script's output and of the node's log, for error messages."""
        parts = []
        for path in [self.base / "server.out", *sorted((self.base / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                parts.append("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    # --- rabbitmqctl ---------------------------------------------------------------------------

    def ctl(
        self, *args: str, timeout: float = CTL_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <this node> …`` (always this node, never the machine's broker)."""
        ctl = binary("rabbitmqctl")
        if ctl is None:
            raise RabbitError("rabbitmqctl is not installed")
        try:
            done = subprocess.run(
                [ctl, "-n", self.nodename, *args],
                env=self.env(),
                cwd=self.base,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RabbitError(f"rabbitmqctl {' '.join(args)} on {self.nodename} timed out") from exc
        except FileNotFoundError as exc:  # the node's directory is gone: it was removed
            raise RabbitError(f"{self.nodename} has no directory any more") from exc
        if check and done.returncode != 0:
            said = done.stderr or done.stdout
            raise RabbitError(f"rabbitmqctl {' '.join(args)} on {self.nodename}: {said}")
        return done

    def close_all_connections(self, reason: str = "chaos") -> None:
        """Close every client connection (the clients see CONNECTION_FORCED)."""
        self.ctl("close_all_connections", reason)

    def stop_app(self) -> None:
        """Stop the RabbitMQ app (the Erlang VM keeps running; clients lose their connections)."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """Start the app again after :meth:`stop_app`."""
        self.ctl("start_app")
        self.await_startup()

    def connections(self) -> int:
        """How many client connections the node has now."""
        done = self.ctl("list_connections", "-q", "name", check=False)
        return len([line for line in done.stdout.splitlines() if line.strip()]) if done.returncode == 0 else 0

    def quorum_state(self) -> list[str]:
        """Each quorum queue as this node sees it: leader, members, those online, messages, consumers."""
        columns = ("name", "type", "leader", "members", "online", "messages", "consumers")
        done = self.ctl("list_queues", "-q", *columns, check=False, timeout=15)
        rows = (dict(zip(columns, line.split("\t"), strict=False)) for line in done.stdout.splitlines())
        return [
            f"{row['name']}: leader {row.get('leader')}, members {row.get('members')}, online "
            f"{row.get('online')}, {row.get('messages')} messages, {row.get('consumers')} consumers"
            for row in rows
            if row.get("type") == "quorum"
        ]

    def queue_types(self) -> dict[str, str]:
        """Queue name → type (``quorum``, ``classic``) in the default vhost."""
        done = self.ctl("list_queues", "-q", "name", "type", check=False)
        rows = (line.split("\t") for line in done.stdout.splitlines())
        return {row[0]: row[1] for row in rows if len(row) == 2 and row != ["name", "type"]}


# Every node started and not yet stopped: stopped by PID at exit if a test forgot (or crashed).
_STARTED: set[RabbitNode] = set()


@atexit.register
def _stop_leftovers() -> None:
    for node in list(_STARTED):
        with contextlib.suppress(Exception):
            node.kill()


RabbitNode.__hash__ = object.__hash__  # type: ignore[assignment,method-assign]  # identity: one set entry per node


class RabbitHome:
    """A temp dir holding the nodes' data and an Erlang cookie of their own (not ~/.erlang.cookie)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="wxlogin-chaos-rabbit-", dir=root))
        self.home = self.root / "home"
        self.home.mkdir()
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        self._dist_ports: set[int] = set()

    def node(self) -> RabbitNode:
        """A new (not yet started) node with fresh ports and directories."""
        name = f"chaos-{uuid.uuid4().hex[:8]}"
        base = self.root / name
        base.mkdir()
        return RabbitNode(name, free_port(), free_dist_port(self._dist_ports), base, self.home)

    def remove(self) -> None:
        """Delete the data of every node (stop them first)."""
        shutil.rmtree(self.root, ignore_errors=True)


def join_cluster(node: RabbitNode, seed: RabbitNode) -> None:
    """Make ``node`` (running) a member of ``seed``'s cluster: stop_app, join_cluster, start_app."""
    node.stop_app()
    node.ctl("join_cluster", seed.nodename)
    node.start_app()


def cluster_members(node: RabbitNode) -> list[str]:
    """The running nodes of ``node``'s cluster, as ``rabbitmqctl cluster_status`` lists them."""
    done = node.ctl("cluster_status", "--formatter", "json")
    return sorted(json.loads(done.stdout).get("running_nodes", []))
