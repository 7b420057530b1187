"""Bench-only counting of what one process sends: MongoDB commands and AMQP publishes (``bench.hops``).

Python imports ``sitecustomize`` at start-up from the first ``sys.path`` entry that has one, so a
benchmark puts this directory first on the ``PYTHONPATH`` of the processes it launches; nothing in the
services changes. It does nothing unless ``WXLOGIN_BENCH_COUNT_DIR`` is set. Then it registers a global
pymongo ``CommandListener`` (every client made afterwards reports each command it starts), wraps
aiormq's ``Channel.basic_publish`` (which aio-pika's ``Exchange.publish`` calls too, so a bus that
publishes either way is counted once), and every ``WXLOGIN_BENCH_COUNT_INTERVAL`` seconds (0.5) writes

    {"pid": ..., "service": ..., "written_at": ..., "counts": {tag: {"mongo <command> <collection>": n,
     "publish <exchange or default> <message type>": n}}}

to ``$WXLOGIN_BENCH_COUNT_DIR/<service>-<pid>.json`` (atomically, so a reader never sees half a file).

``tag`` says which request caused the work, so the counts split per login step without timing: the
benchmark sends ``X-Request-ID: bench.<tag>.<n>``; the gateway makes that the correlation id of the
flow, which travels with every RPC request and event and is bound while a service handles them. Work
under another correlation id (or none: a background loop such as the pool refill) counts as
``background``. An RPC reply carries its request's message id rather than the flow's id, so incoming
messages are remembered (message id → correlation id) to tag the reply with its request's flow.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

BACKGROUND = "background"
_MARK = "bench."
_REMEMBERED = 20_000  # incoming message ids kept for tagging replies; more than in flight at once

_lock = threading.Lock()
_counts: dict[str, Counter[str]] = {}
_flows: OrderedDict[str, str] = OrderedDict()  # incoming message id -> its correlation id
_flow: Callable[[], str] | None = None


def tag_of(correlation_id: str | None) -> str:
    """``<tag>`` of a ``bench.<tag>.<n>`` correlation id, else ``background``."""
    if correlation_id and correlation_id.startswith(_MARK):
        return correlation_id[len(_MARK) :].split(".", 1)[0] or BACKGROUND
    return BACKGROUND


def count(tag: str, key: str) -> None:
    """One more ``key`` under ``tag`` (called on the event loop's thread; read by the writer's)."""
    with _lock:
        _counts.setdefault(tag, Counter())[key] += 1


def _current_flow() -> str | None:
    """The correlation id of the flow the running task handles (a fresh random one outside any)."""
    global _flow
    if _flow is None:
        # Imported late: the bus module is wxlogin's, and only service processes have one.
        try:
            from shared.bus import current_correlation_id
        except ImportError:
            return None
        _flow = current_correlation_id
    return _flow()


def _install_mongo() -> None:
    from pymongo import monitoring

    class Commands(monitoring.CommandListener):
        """Counts every command a client starts, by command and collection."""

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            name = event.command_name
            target = event.command.get(name)
            if name == "getMore":
                target = event.command.get("collection")
            collection = target if isinstance(target, str) else "-"
            count(tag_of(_current_flow()), f"mongo {name} {collection}")

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    monitoring.register(Commands())


def _install_amqp() -> None:
    # aiormq's channel, not aio-pika's Exchange: the one layer every publish and delivery goes
    # through, whether the bus publishes with aio-pika or with aiormq's basic_publish directly.
    from aiormq.channel import Channel

    read_content = Channel._read_content

    async def remember(self: Any, *args: Any, **kwargs: Any) -> Any:
        message = await read_content(self, *args, **kwargs)
        properties = message.header.properties
        if properties.message_id and properties.correlation_id:
            with _lock:
                _flows[properties.message_id] = properties.correlation_id
                if len(_flows) > _REMEMBERED:
                    _flows.popitem(last=False)
        return message

    Channel._read_content = remember  # type: ignore[method-assign]

    basic_publish = Channel.basic_publish

    async def counted(self: Any, body: bytes, *, exchange: str = "", **kwargs: Any) -> Any:
        properties = kwargs.get("properties")
        kind = (properties.message_type if properties is not None else None) or "-"
        flow = properties.correlation_id if properties is not None else None
        if kind == "error" or kind.endswith(".reply"):
            with _lock:
                flow = _flows.get(flow or "")
        count(tag_of(flow), f"publish {exchange or 'default'} {kind}")
        return await basic_publish(self, body, exchange=exchange, **kwargs)

    Channel.basic_publish = counted  # type: ignore[method-assign]


def _service() -> str:
    """``qrcode`` for ``python -m services run qrcode``, else the running module's package name.

    Asked late, from the writer: while ``sitecustomize`` is imported ``sys.argv`` is not final yet.
    """
    argv = sys.argv
    if len(argv) >= 3 and argv[1] == "run":
        return argv[2]
    head = argv[0] if argv else ""
    if os.path.basename(head) == "__main__.py":
        return os.path.basename(os.path.dirname(head)) or "python"
    return os.path.splitext(os.path.basename(head))[0] or "python"


def _write(directory: str) -> None:
    with _lock:
        counts = {tag: dict(c) for tag, c in _counts.items()}
    payload = {"pid": os.getpid(), "service": _service(), "written_at": time.time(), "counts": counts}
    path = os.path.join(directory, f"{payload['service']}-{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f)
    os.replace(path + ".tmp", path)


def _writer(directory: str, interval: float) -> None:
    while True:
        time.sleep(interval)
        with contextlib.suppress(OSError):  # the benchmark removed the directory: it no longer reads
            _write(directory)


def _start(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for install in (_install_mongo, _install_amqp):
        with contextlib.suppress(ImportError):  # a process without that client
            install()
    interval = float(os.environ.get("WXLOGIN_BENCH_COUNT_INTERVAL", "0.5"))
    threading.Thread(target=_writer, args=(directory, interval), name="bench-count", daemon=True).start()
    atexit.register(lambda: _write(directory) if os.path.isdir(directory) else None)


if os.environ.get("WXLOGIN_BENCH_COUNT_DIR"):
    _start(os.environ["WXLOGIN_BENCH_COUNT_DIR"])
