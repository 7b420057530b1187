"""Fixtures shared by every test folder: a MongoDB wire server, an isolated RabbitMQ vhost, keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from shared.logging import configure_logging
from shared.mongo import EmbeddedMongo

RABBIT_HOST = os.environ.get("WXLOGIN_TEST_RABBIT_HOST", "127.0.0.1")


def pytest_configure(config: pytest.Config) -> None:
    configure_logging(service="tests", fmt="json", level=os.environ.get("WXLOGIN_TEST_LOG_LEVEL", "WARNING"))


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[EmbeddedMongo]:
    """One nx-27017 process for the whole run; each test uses its own database."""
    with EmbeddedMongo() as server:
        yield server


@pytest.fixture(scope="session")
def amqp_base_url() -> Iterator[str]:
    """A fresh RabbitMQ vhost for this run (deleted at the end); ``/`` when rabbitmqctl is missing."""
    ctl = shutil.which("rabbitmqctl")
    vhost = f"wxlogin-test-{uuid.uuid4().hex[:8]}"
    created = False
    if ctl:
        done = subprocess.run([ctl, "add_vhost", vhost], capture_output=True, timeout=60)
        if done.returncode == 0:
            subprocess.run(
                [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                capture_output=True,
                timeout=60,
                check=True,
            )
            created = True
    url = f"amqp://guest:guest@{RABBIT_HOST}:5672/{vhost if created else ''}"
    yield url
    if created and ctl:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)


@pytest.fixture
def unique() -> str:
    """A short unique name for this test (bus prefixes, database names)."""
    return uuid.uuid4().hex[:10]
