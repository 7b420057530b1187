"""``python -m bench`` (``make bench``): run every benchmark module of this package with defaults."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

HELPERS = {"harness", "report"}


def main() -> None:
    """Run ``main([])`` of each benchmark module, in name order."""
    names = sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in HELPERS
    )
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        runner = getattr(module, "main", None)
        if callable(runner):
            print(f"\n== bench.{name} ==", flush=True)
            runner([])
    sys.exit(0)


if __name__ == "__main__":
    main()
