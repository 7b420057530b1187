"""``python -m services`` as a user starts it with a mistake: one line on stderr naming the variable or
the port, a non-zero exit, no traceback, and nothing started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(
    tmp_path: Path, *args: str, module: str = "services", **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WXLOGIN_")}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tmp_path,  # only the .env a test writes
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_an_out_of_range_setting_stops_run_all_with_one_line(tmp_path: Path) -> None:
    done = run(tmp_path, "run", "all", WXLOGIN_SCENE_TTL_SECONDS="5")
    assert one_line(done) == "WXLOGIN_SCENE_TTL_SECONDS=5: must be ≥ 10"


def test_a_busy_gateway_port_is_one_line_naming_the_port_and_its_variable(
    tmp_path: Path, busy_port: int
) -> None:
    done = run(tmp_path, "run", "all", WXLOGIN_GATEWAY_PORT=str(busy_port))
    line = one_line(done)
    assert line.startswith(f"port {busy_port} is already in use (WXLOGIN_GATEWAY_PORT)"), line


def test_a_busy_simulator_port_names_its_own_variable(tmp_path: Path, busy_port: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    done = run(tmp_path, "run", "all", WXLOGIN_GATEWAY_PORT=str(free), WXLOGIN_SIM_PORT=str(busy_port))
    assert f"port {busy_port} is already in use (WXLOGIN_SIM_PORT)" in one_line(done)


def test_a_busy_ops_port_stops_a_single_service_with_one_line(tmp_path: Path, busy_port: int) -> None:
    done = run(
        tmp_path,
        "run",
        "session",
        WXLOGIN_AMQP_URL="amqp://guest:guest@127.0.0.1:1/",  # never reached: the port is checked first
        WXLOGIN_BUS_KEY="A" * 43 + "=",
        WXLOGIN_SUBJECT_KEY="B" * 43 + "=",
        WXLOGIN_ISSUER_URL="https://login.example.com",
        WXLOGIN_OPS_PORT=str(busy_port),
    )
    assert one_line(done).startswith(f"port {busy_port} is already in use (WXLOGIN_OPS_PORT)")


def test_a_copied_env_example_against_real_wechat_names_what_to_fill_in(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text(encoding="utf-8"), encoding="utf-8")
    done = run(tmp_path, "run", "all", WXLOGIN_WECHAT_API_BASE="https://api.weixin.qq.com")
    assert one_line(done).startswith("WXLOGIN_APPID and WXLOGIN_SECRET are empty: fill in")


def test_the_simulator_alone_says_a_bad_setting_or_a_busy_port_in_one_line(
    tmp_path: Path, busy_port: int
) -> None:
    bad = run(tmp_path, module="sim.wechat", WXLOGIN_SCENE_TTL_SECONDS="5")
    assert one_line(bad) == "WXLOGIN_SCENE_TTL_SECONDS=5: must be ≥ 10"
    busy = run(tmp_path, "--port", str(busy_port), module="sim.wechat")
    assert one_line(busy).startswith(f"port {busy_port} is already in use (WXLOGIN_SIM_PORT")
