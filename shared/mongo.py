"""MongoDB access with PyMongo's async API, index creation at start-up, and the embedded wire server.

Storage conventions that keep the code portable between a real mongod and nx-27017 (the SQLite-backed
wire server used by the demo and the tests):

* timestamps that change after insert are stored as epoch seconds (float); nx-27017 turns a datetime
  written by ``$set`` into a string, which then no longer compares as a date. It also rounds a float
  written by ``$set`` to 15 significant digits (an epoch time loses ~10 µs; inserts stay exact), so
  nothing may depend on an exact equality of times below a millisecond;
* BSON dates are written only at insert time, and only for fields that back a TTL index;
* claiming a document is a ``find_one_and_update`` that marks it claimed (deleted later, or by
  ``delete_one``); nx-27017's ``find_one_and_delete`` returns the document without deleting it;
* ``find_one_and_update(upsert=True)`` is avoided: nx-27017 ignores ``$setOnInsert`` there, and
  returns None instead of raising ``DuplicateKeyError`` when the filter misses an existing ``_id``.
  Code inserts and treats ``DuplicateKeyError`` as "someone else did";
* a filter with a top-level ``$or`` beside other fields makes nx-27017 ignore those other fields, so
  a conditional update matches documents it must not; put every condition in one ``$and`` list;
* nx-27017 writes a machine-wide PID file unless told otherwise; :class:`EmbeddedMongo` gives each
  instance its own, so tests and the demo can run side by side;
* on nx-27017 every read (``find``, ``find_one``, counts) of a collection with a TTL index first purges
  it with two ``delete_many`` scans, so reads slow down as the collection grows (measured: 0.6 ms
  without a TTL index, 2.2 ms with one at 3,000 documents); writes and ``find_one_and_update`` do not
  purge. Nothing here works around it: a real mongod's TTL monitor runs once a minute instead. It
  shows in long benchmark runs on nx-27017 (docs/benchmarks.md);
* nx-27017 uses a secondary index for ``find`` but not for ``find_one_and_update``: a conditional
  update by any field but ``_id`` scans the collection until it matches (measured on 5,000 documents,
  the match the newest: 3.6 ms, against 0.8 ms by ``_id`` with the same other conditions; a ``find``
  by the indexed field 0.6 ms). Where the ``_id`` is known, put it in the filter (``CodeUseStore``
  remembers a scan's code for its confirm); a claim by other fields whose matches sit near the front
  (the code pool) costs little;
* nx-27017 takes 1 to 4 s to exit on SIGTERM, and once stopped (or killed) its port refuses connections
  at once, so a client sees ``AutoReconnect`` (connection refused or reset) rather than a timeout; a
  restart on the same port and data directory listens within ~0.1 s with the same data, and the
  client's monitor finds it again by itself;
* it accepts the ``maxTimeMS`` that PyMongo's client-side timeout (``pymongo.timeout``) attaches to
  every command, and may answer a slow one with ``ExecutionTimeout`` (error 50), like a real mongod;
* a partial index honours only a ``$type`` filter (``partialFilterExpression: {status: "current"}``
  made every value of the field unique): write partial unique indexes as ``{field: {"$type": …}}``
  and keep the other condition in the indexed value itself (``signing_keys_one_current_per_alg``);
* ``{"field": {"$ne": x}}`` does not match a document that lacks the field (MongoDB's does): write
  ``{"field": {"$in": [None, …the values allowed]}}`` instead.

Outages, and why nothing here cancels a PyMongo call: on Python 3.11, PyMongo's async topology waits
for a change with ``asyncio.wait_for(condition.wait(), 0.5)``, which runs the wait as a separate task.
A cancel of the calling task that arrives after that inner wait timed out, while its cancelled wait is
still re-taking the topology lock, lets the caller leave its ``async with lock`` early and release a
lock it no longer holds (``RuntimeError: Lock is not acquired``); the orphaned wait then takes the lock
for good. Every later operation, the client's monitor and ``client.close()`` wait on it forever: the
client is wedged until the process restarts, and a graceful stop hangs. The old ``/readyz`` ping did
exactly that (``asyncio.wait_for(db.command("ping"), 1)``, polled every 0.25 s through outages). So:

* bound a PyMongo call with :func:`pymongo.timeout` (client-side operation timeout: server selection,
  pool wait, socket and ``maxTimeMS`` alike), never with ``asyncio.wait_for`` or a cancel;
* readiness reads the cached verdict of one :class:`MongoHealth` monitor per client, which pings with
  ``pymongo.timeout`` and is stopped by an event, not a cancel;
* :func:`close_client` bounds ``client.close()`` (its ``endSessions`` waits on server selection), so
  a stop is bounded even when MongoDB is gone, or a cancel at shutdown wedged the client after all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pymongo
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, PyMongoError

from shared.logging import get_logger
from shared.retry import connect_policy

log = get_logger(__name__)


@dataclass(frozen=True)
class Index:
    """One index of a collection, declared next to the store that needs it."""

    collection: str
    keys: Sequence[tuple[str, int]]
    unique: bool = False
    expire_after_seconds: int | None = None
    partial: dict[str, Any] | None = None
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.options)
        if self.unique:
            out["unique"] = True
        if self.expire_after_seconds is not None:
            out["expireAfterSeconds"] = self.expire_after_seconds
        if self.partial is not None:
            out["partialFilterExpression"] = self.partial
        if self.name:
            out["name"] = self.name
        return out


def make_client(
    url: str, *, timeout_ms: int = 5000, selection_timeout_ms: int | None = None
) -> AsyncMongoClient[dict[str, Any]]:
    """A client with bounded timeouts (never connects here; the first command does).

    ``selection_timeout_ms`` (default ``timeout_ms``) is how long an operation waits for a server
    while none answers: services keep it under their RPC timeout, so a request in flight during an
    outage is answered ``store_unavailable`` rather than timing out at its caller.
    """
    return AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=selection_timeout_ms or timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 2, 10000),
    )


async def wait_ready(client: AsyncMongoClient[dict[str, Any]], *, max_seconds: float = 30.0) -> None:
    """Ping until the server answers (bounded)."""
    async for attempt in connect_policy("mongo_connect", max_seconds=max_seconds, retry_on=PyMongoError):
        with attempt:
            await client.admin.command("ping")


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]], indexes: Sequence[Index]) -> None:
    """Create ``indexes`` (idempotent; run at every start-up)."""
    for index in indexes:
        await db[index.collection].create_index(list(index.keys), **index.kwargs())


async def ping(db: AsyncDatabase[dict[str, Any]], *, timeout: float = 1.0) -> bool:
    """True when the database answers within ``timeout`` (PyMongo's own timeout; nothing is cancelled)."""
    try:
        with pymongo.timeout(timeout):
            await db.command("ping")
    except PyMongoError:
        return False
    return True


def maybe_applied(exc: BaseException) -> bool:
    """True when a failed write may still have been applied: the connection dropped or the call timed
    out after the command may have reached the server (``AutoReconnect``, ``NetworkTimeout``, any
    ``ConnectionFailure``, or a PyMongo timeout). Such a write is settled by reading it back."""
    return isinstance(exc, ConnectionFailure) or (isinstance(exc, PyMongoError) and exc.timeout)


class MongoHealth:
    """One background ping per client; readiness and ``wxlogin_store_up`` read its cached verdict.

    Pings every ``interval`` seconds, each bounded by ``timeout`` through ``pymongo.timeout``. Logs once
    per change (``store_down`` / ``store_up``), not once per ping. :meth:`stop` sets an event and waits
    for the loop to notice it (a ping in flight ends by its own timeout); see the module docstring for
    why it is never cancelled.
    """

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        *,
        interval: float = 1.0,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self.up = True  # it answered at start-up (wait_ready) before the monitor was made
        self.changed_at = clock()
        self.last_error = ""
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        """The latest verdict (a readiness check: answers at once)."""
        return self.up

    async def ping_once(self) -> bool:
        """Ping now and record the verdict."""
        try:
            with pymongo.timeout(self.timeout):
                await self._db.command("ping")
        except PyMongoError as exc:
            self._record(False, f"{type(exc).__name__}: {str(exc)[:200]}")
        else:
            self._record(True, "")
        return self.up

    def _record(self, up: bool, error: str) -> None:
        if up != self.up:
            down_for = round(self._clock() - self.changed_at, 2)
            self.changed_at = self._clock()
            if up:
                log.info("store_up", down_s=down_for)
            else:
                log.warning("store_down", error=error)
        self.up, self.last_error = up, error

    async def run(self) -> None:
        """Ping until :meth:`stop`."""
        while not self._stopping.is_set():
            await self.ping_once()
            # asyncio.timeout around an Event, never around PyMongo.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stopping.wait()

    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` as a task of the running loop."""
        self._task = asyncio.ensure_future(self.run())
        self._task.set_name("mongo-health")
        return self._task

    async def stop(self) -> None:
        """End the loop: at most one ping timeout plus a little; cancelled only if that passes."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=self.timeout + 1.0)
        if not done:  # only if PyMongo ignored its own timeout; the client is closed right after
            log.warning("store_monitor_did_not_stop")
            task.cancel()


async def close_client(client: AsyncMongoClient[dict[str, Any]], *, timeout: float = 2.0) -> bool:
    """``client.close()`` in at most ~``timeout`` seconds; False when it had to be abandoned.

    ``close()`` sends ``endSessions``, which waits on server selection (up to serverSelectionTimeoutMS)
    when MongoDB is gone; ``pymongo.timeout`` bounds that. A client wedged by a cancel (module docstring)
    never finishes closing: it is left behind after ``timeout`` so the process can still stop.
    """

    async def close() -> None:
        with pymongo.timeout(max(0.1, timeout / 2)):
            await client.close()

    task = asyncio.ensure_future(close())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.error("mongo_close_abandoned", timeout_s=timeout)
        return False
    if not task.cancelled() and task.exception() is not None:
        log.warning("mongo_close_failed", error=repr(task.exception())[:200])
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedMongo:
    """nx-27017 (a MongoDB wire server backed by SQLite) as a child process on a free port.

    Used by ``make demo``, ``python -m services run all`` without ``WXLOGIN_MONGO_URL``, and tests.
    It runs in nx's multi-database mode (one SQLite file per database under ``data_dir``): in its
    single-file mode every database name shares the same collections and ``drop_database`` wipes all.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int | None = None, data_dir: str | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._data_dir = data_dir
        self._tmpdir: str | None = None
        self._stderr_path = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def _command(self) -> list[str]:
        exe = shutil.which("nx-27017", path=os.path.dirname(sys.executable)) or shutil.which("nx-27017")
        if exe is None:
            raise RuntimeError("nx-27017 is not installed: pip install 'wxlogin[embedded]'")
        self._tmpdir = tempfile.mkdtemp(prefix="wxlogin-nx-")
        data_dir = self._data_dir or os.path.join(self._tmpdir, "data")
        os.makedirs(data_dir, exist_ok=True)
        # nx-27017 keeps one machine-wide PID file by default and refuses a second instance.
        pid_file = os.path.join(self._tmpdir, "nx.pid")
        return [
            exe,
            "--data-dir",
            data_dir,
            "--host",
            self.host,
            "-p",
            str(self.port),
            "--pid-file",
            pid_file,
        ]

    def start(self, *, timeout: float = 20.0) -> EmbeddedMongo:
        """Start the server and wait until it accepts connections."""
        command = self._command()
        assert self._tmpdir is not None
        # A file, not a pipe: nobody drains a pipe while the server runs, and once its buffer is
        # full nx-27017 blocks on its next warning and stops answering.
        self._stderr_path = os.path.join(self._tmpdir, "nx.stderr")
        with open(self._stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(self._stderr_path, "rb") as stderr:
                    err = stderr.read().decode(errors="replace")[-500:]
                raise RuntimeError(f"nx-27017 exited with {self.process.returncode}: {err}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                log.info("embedded_mongo_started", port=self.port, pid=self.process.pid)
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nx-27017 did not start listening in time")

    def stop(self) -> None:
        """Stop the server by its PID and remove its temporary files."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> EmbeddedMongo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
