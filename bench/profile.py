"""Where a process spends its time: ``py-spy record`` (optional ``bench`` extra) summarised by the
leaf function and by library, from py-spy's raw collapsed stacks."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Path fragments → a library name, first match wins; the rest is "wxlogin" or "other".
LIBRARIES = (
    ("pymongo", "pymongo"),
    ("bson", "pymongo"),
    ("aio_pika", "aio-pika/aiormq"),
    ("aiormq", "aio-pika/aiormq"),
    ("pamqp", "aio-pika/aiormq"),
    ("aiohttp", "aiohttp"),
    ("yarl", "aiohttp"),
    ("multidict", "aiohttp"),
    ("pydantic", "pydantic"),
    ("structlog", "structlog"),
    ("cryptography", "cryptography"),
    ("jwt", "PyJWT"),
    ("prometheus_client", "prometheus"),
    ("json", "json"),
    ("asyncio", "asyncio"),
    ("services/", "wxlogin"),
    ("shared/", "wxlogin"),
)
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy executable (next to this Python, or on PATH), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path) -> Path | None:
    """Sample ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks); None without py-spy."""
    exe = py_spy()
    if exe is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "200",
        "--format", "raw", "--nonblocking", "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0 or not out.exists():
        print(f"py-spy record failed: {err.decode(errors='replace').strip()[:300]}", flush=True)
        return None
    return out


def _library(frame: str) -> str:
    match = FRAME.match(frame)
    path = match.group("file") if match else frame
    for fragment, name in LIBRARIES:
        if fragment in path:
            return name
    return "other"


def _short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "lib/python3.", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('func')} ({path})"


def summarize_raw(path: Path, top: int = 12) -> dict[str, Any]:
    """Samples, the ``top`` leaf functions (self time) and inclusive time per library."""
    leaves: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    idle = total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        if "select (selectors.py" in leaf or "poll (selectors.py" in leaf or "epoll" in leaf:
            idle += count
            continue
        leaves[_short(leaf)] += count
        for lib in {_library(f) for f in frames}:
            libraries[lib] += count
    busy = max(1, total - idle)
    return {
        "samples": total,
        "idle_share": round(idle / max(1, total), 3),
        "top_self": [
            {"function": name, "share_of_busy": round(n / busy, 3)} for name, n in leaves.most_common(top)
        ],
        "by_library_inclusive": {
            lib: round(n / busy, 3) for lib, n in libraries.most_common() if lib not in {"other"}
        },
    }
