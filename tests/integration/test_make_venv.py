"""The Makefile's virtualenv: a clear line for a too-old Python, a stale .venv rebuilt, the demo's lighter
install, and stamps that keep a re-run from installing again. Runs `make` in a copy of the Makefile with
fake interpreters (bash scripts that answer like Python and log what pip is asked), so it is fast."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Answers the few questions scripts/venv.sh and the Makefile ask a Python; `-m venv DIR` copies itself
# as DIR/bin/python, and every pip call is appended to pip.log next to the venv's bin/.
FAKE_PYTHON = """#!/usr/bin/env bash
VERSION={version}
case "$*" in
  *"version_info >= (3, 11)"*) [ "${{VERSION%.*}}" != "3.10" ] ;;
  *python_version*) echo "$VERSION" ;;
  *sys.base_prefix*) echo "$VERSION fake|{prefix}" ;;
  "-m venv "*) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
  *"-m pip"*) echo "${{*:3}}" >> "$(dirname "$0")/../pip.log" ;;
  *) exit 0 ;;
esac
"""


def fake_python(directory: Path, name: str, version: str, prefix: str = "/opt/fake") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(FAKE_PYTHON.format(version=version, prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The Makefile, its scripts and pyproject.toml, alone in a directory."""
    copy = tmp_path / "project"
    (copy / "scripts").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "scripts/venv.sh"):
        shutil.copy(ROOT / name, copy / name)
    return copy


def make(project: Path, *args: str, path_dirs: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    # Only the fake bin and the basics on PATH: no real python3.11+ to suggest or to run by mistake.
    tools = project.parent / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("bash", "make", "find", "touch", "rm", "mkdir", "cp", "cat", "sha1sum", "cut", "dirname"):
        found = shutil.which(tool)
        if found and not (tools / tool).exists():
            (tools / tool).symlink_to(found)
    env = {"PATH": os.pathsep.join([*map(str, path_dirs), str(tools)]), "HOME": str(project.parent)}
    argv = ["make", "--no-print-directory", *args]
    return subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=60)


def pip_calls(project: Path) -> list[str]:
    log = project / ".venv" / "pip.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_python_older_than_3_11_stops_make_with_one_clear_line(project: Path, tmp_path: Path) -> None:
    fakes = tmp_path / "bin"
    fake_python(fakes, "python3", "3.10.12")
    done = make(project, "demo", path_dirs=(fakes,))
    assert done.returncode != 0
    first = done.stderr.splitlines()[0]
    assert first.startswith("wxlogin needs Python 3.11 or newer, but python3 is Python 3.10.12."), done.stderr
    assert "PYTHON=python3.11" in first
    assert "Traceback" not in done.stderr + done.stdout
    assert not (project / ".venv").exists()


def test_an_installed_newer_python_is_suggested_by_name(project: Path, tmp_path: Path) -> None:
    fakes = tmp_path / "bin"
    fake_python(fakes, "python3", "3.10.12")
    fake_python(fakes, "python3.12", "3.12.3")
    done = make(project, "install-demo", path_dirs=(fakes,))
    assert "Run make again with PYTHON=python3.12" in done.stderr.splitlines()[0]


def test_a_venv_made_by_python_3_10_is_rebuilt_by_the_python_asked_for(project: Path, tmp_path: Path) -> None:
    old = fake_python(tmp_path / "old", "python3", "3.10.12")
    subprocess.run([str(old), "-m", "venv", str(project / ".venv")], check=True)  # the broken first try
    new_bin = tmp_path / "new"
    fake_python(new_bin, "python3.11", "3.11.9")
    done = make(project, "install-demo", "PYTHON=python3.11", path_dirs=(new_bin,))
    assert done.returncode == 0, done.stderr
    assert "rebuilding .venv: it was made by Python 3.10.12" in done.stdout
    assert "3.11.9" in (project / ".venv" / "bin" / "python").read_text()


def test_a_working_venv_of_another_interpreter_is_kept_unless_python_is_asked_for(
    project: Path, tmp_path: Path
) -> None:
    first = fake_python(tmp_path / "a", "python3", "3.11.9", prefix="/opt/a")
    other_bin = tmp_path / "b"
    fake_python(other_bin, "python3", "3.12.3", prefix="/opt/b")
    assert make(project, "install-demo", f"PYTHON={first}").returncode == 0
    kept = make(project, "install-demo", path_dirs=(other_bin,))
    assert kept.returncode == 0 and "rebuilding" not in kept.stdout
    rebuilt = make(project, "install-demo", "PYTHON=python3", path_dirs=(other_bin,))
    assert "rebuilding .venv: it was made by another interpreter than python3" in rebuilt.stdout
    assert "3.12.3" in (project / ".venv" / "bin" / "python").read_text()


def test_demo_installs_the_embedded_extra_and_tests_the_dev_extra_once_each(
    project: Path, tmp_path: Path
) -> None:
    fakes = tmp_path / "bin"
    fake_python(fakes, "python3", "3.11.9")
    assert make(project, "install-demo", path_dirs=(fakes,)).returncode == 0
    assert make(project, "install-demo", path_dirs=(fakes,)).returncode == 0  # a re-run installs nothing
    assert [call for call in pip_calls(project) if "-e" in call] == ["install -q -e .[embedded]"]

    assert make(project, "install", path_dirs=(fakes,)).returncode == 0
    assert make(project, "install", path_dirs=(fakes,)).returncode == 0
    assert make(project, "install-demo", path_dirs=(fakes,)).returncode == 0  # after the tests: nothing
    assert [call for call in pip_calls(project) if "-e" in call] == [
        "install -q -e .[embedded]",
        "install -q -e .[dev]",
    ]


def test_a_changed_pyproject_installs_again_and_drops_the_old_stamps(project: Path, tmp_path: Path) -> None:
    fakes = tmp_path / "bin"
    fake_python(fakes, "python3", "3.11.9")
    assert make(project, "install", path_dirs=(fakes,)).returncode == 0
    with (project / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    assert make(project, "install-demo", path_dirs=(fakes,)).returncode == 0
    assert [call for call in pip_calls(project) if "-e" in call] == [
        "install -q -e .[dev]",
        "install -q -e .[embedded]",
    ]
    stamps = sorted(p.name for p in (project / ".venv").glob(".installed-*"))
    assert len(stamps) == 1 and stamps[0].startswith(".installed-embedded-")
