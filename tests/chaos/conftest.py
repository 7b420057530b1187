"""Chaos tests need RabbitMQ's own server scripts: they start private nodes, never the machine's."""

from __future__ import annotations

import pytest

from tests.chaos import rabbit


@pytest.fixture(scope="session", autouse=True)
def _rabbitmq_server_installed() -> None:
    if not rabbit.installed():
        pytest.skip("rabbitmq-server is not installed: the chaos tests start private RabbitMQ nodes")
