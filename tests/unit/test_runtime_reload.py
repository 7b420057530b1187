"""SIGHUP reaches every reload hook of the process, and the clients context re-reads its file on it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from shared.runtime import CLIENTS, clients_context, new_app, on_reload_signal
from tests.support import make_settings


async def _sighup() -> None:
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(50):
        await asyncio.sleep(0.01)


async def test_sighup_runs_every_hook_until_it_is_removed() -> None:
    calls: list[str] = []
    remove_a = on_reload_signal(lambda: calls.append("a"))
    remove_b = on_reload_signal(lambda: calls.append("b"))
    await _sighup()
    assert sorted(calls) == ["a", "b"]
    remove_a()
    await _sighup()
    assert sorted(calls) == ["a", "b", "b"]
    remove_b()
    # With no hook left the loop's handler is gone: SIGHUP has its default meaning again.
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


async def test_the_clients_context_rereads_the_file_on_sighup(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text("clients:\n  - client_id: site-a\n    site_name: A\n", encoding="utf-8")
    app = new_app(make_settings(clients_file=str(path)))
    context = clients_context(app)
    await context.__anext__()
    try:
        registry = app[CLIENTS]
        assert registry.require("site-a").site_name == "A"
        stamp = path.stat()
        # Same size and time: only a forced re-read (the signal) can see the change.
        path.write_text("clients:\n  - client_id: site-a\n    site_name: B\n", encoding="utf-8")
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        registry.reload()
        assert registry.require("site-a").site_name == "A"
        await _sighup()
        assert registry.require("site-a").site_name == "B"
    finally:
        await context.aclose()
