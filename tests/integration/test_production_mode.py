"""``python -m services run <service>`` is production mode unless WXLOGIN_DEMO is on (security review
L7): the demo's values stop it before it connects to anything, one line each, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.sealing import generate_key

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, service: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WXLOGIN_")}
    clean.update(PYTHONPATH=str(ROOT), WXLOGIN_AMQP_URL="amqp://127.0.0.1:1/", WXLOGIN_BUS_KEY=generate_key())
    # What these tests are not about is set as production wants it.
    clean.update(WXLOGIN_SUBJECT_KEY=generate_key(), WXLOGIN_ISSUER_URL="https://login.example.com")
    return subprocess.run(
        [sys.executable, "-m", "services", "run", service],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_gateway_with_demo_values_refuses_to_start_naming_each_variable(tmp_path: Path) -> None:
    done = run(tmp_path, "gateway", WXLOGIN_ALLOWED_ORIGINS="*", WXLOGIN_GATEWAY_PORT="0")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["WXLOGIN_ALLOWED_ORIGINS", "WXLOGIN_SITE_NAME"]


def test_a_session_service_with_the_development_appid_against_wechat_refuses_to_start(tmp_path: Path) -> None:
    done = run(tmp_path, "session", WXLOGIN_WECHAT_API_BASE="http://api.weixin.qq.com", WXLOGIN_OPS_PORT="0")
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert [line.split(" ", 1)[0] for line in lines] == [
        "WXLOGIN_APPID/WXLOGIN_SECRET",
        "WXLOGIN_WECHAT_API_BASE=http://api.weixin.qq.com:",
    ]
