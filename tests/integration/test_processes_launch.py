"""``python -m services launch`` as a user runs it: everything up, printed, and gone after Ctrl-C, its
queues and exchanges on the broker included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from services.launch import SERVICES
from tests.integration.broker import rabbitmqctl


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def broker_names(amqp_url: str, prefix: str) -> list[str]:
    """Queues and exchanges whose names start with ``prefix`` in the URL's vhost."""
    ctl = rabbitmqctl()
    assert ctl is not None
    vhost = unquote(urlsplit(amqp_url).path[1:]) or "/"
    names: list[str] = []
    for what in ("list_queues", "list_exchanges"):
        listed = subprocess.run(
            [ctl, what, "-p", vhost, "--quiet", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        names += [name for name in listed.split() if name.startswith(prefix)]
    return names


def test_launch_starts_every_process_and_stops_them_all_on_sigint_leaving_no_queues(
    amqp_base_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXLOGIN_")}
    env.update({"WXLOGIN_AMQP_URL": amqp_base_url, "PYTHONUNBUFFERED": "1"})  # no bus prefix given
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services", "launch", "--gateway", "2", "--workdir", str(tmp_path / "run")],
        cwd=tmp_path,  # no stray .env
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    pids: dict[str, int] = {}
    try:
        assert launcher.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        for line in launcher.stdout:
            lines.append(line)
            if "(Ctrl-C to stop)" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "(Ctrl-C to stop)" in output, output
        for name, pid in re.findall(r"^\s+(\S+-\d+|wechat-sim|nx-27017)\s+(\d+)\s", output, re.M):
            pids[name] = int(pid)
        assert {"gateway-1", "gateway-2", *(f"{s}-1" for s in SERVICES), "wechat-sim", "nx-27017"} <= set(
            pids
        )
        assert all(alive(pid) for pid in pids.values())
        # Its own names, with a separator: launch-<id>.qrcode.rpc, never launch-<id>qrcode.rpc.
        found = re.search(r"\(names (launch-[0-9a-f]{8}\.)\*\)", output)
        assert found, output
        prefix = found.group(1)
        checkable = rabbitmqctl() is not None
        if checkable:
            assert f"{prefix}qrcode.rpc" in broker_names(amqp_base_url, prefix)

        os.kill(launcher.pid, signal.SIGINT)  # what Ctrl-C sends (to the launcher only: own sessions)
        assert launcher.wait(timeout=60) == 0
        assert not [name for name, pid in pids.items() if alive(pid)], "left behind"
        if checkable:
            assert broker_names(amqp_base_url, prefix) == [], "queues or exchanges left on the broker"
        logs = tmp_path / "run" / "logs"
        assert "service_stopped" in (logs / "gateway-1.log").read_text()
        assert "service_stopped" in (logs / "token-1.log").read_text()
    finally:
        for pid in [launcher.pid, *pids.values()]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.wait(timeout=10)
