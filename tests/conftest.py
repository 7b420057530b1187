"""Fixtures shared by every test folder: a MongoDB wire server, an isolated RabbitMQ vhost, keys."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from bench.cluster import amqp_vhost
from shared.logging import configure_logging
from shared.mongo import EmbeddedMongo

RABBIT_HOST = os.environ.get("WXLOGIN_TEST_RABBIT_HOST", "127.0.0.1")


def pytest_configure(config: pytest.Config) -> None:
    # Uncached loggers: structlog.testing.capture_logs swaps the configuration under them.
    level = os.environ.get("WXLOGIN_TEST_LOG_LEVEL", "WARNING")
    configure_logging(service="tests", fmt="json", level=level, cache_loggers=False)


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[EmbeddedMongo]:
    """One nx-27017 process for the whole run; each test uses its own database."""
    with EmbeddedMongo() as server:
        yield server


@pytest.fixture(scope="session")
def amqp_base_url() -> Iterator[str]:
    """A fresh RabbitMQ vhost for this run (deleted at the end); ``/`` when rabbitmqctl is missing."""
    with amqp_vhost("wxlogin-test", host=RABBIT_HOST) as url:
        yield url


@pytest.fixture
def unique() -> str:
    """A short unique name for this test (bus prefixes, database names)."""
    return uuid.uuid4().hex[:10]
