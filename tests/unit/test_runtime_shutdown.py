"""The shutdown state and the ops endpoints of shared.runtime, without I/O."""

from __future__ import annotations

import json

from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry, generate_latest

from shared.bus import BusMetrics
from shared.runtime import READY_CHECKS, SHUTDOWN, _Merged, new_app, readyz
from tests.support import make_settings


async def test_readyz_turns_503_draining_as_soon_as_shutdown_begins() -> None:
    app = new_app(make_settings(), service="qrcode")

    async def fine() -> bool:
        return True

    app[READY_CHECKS]["bus"] = fine
    request = make_mocked_request("GET", "/readyz", app=app)
    assert (await readyz(request)).status == 200

    app[SHUTDOWN].begin()
    response = await readyz(request)
    assert response.status == 503
    assert json.loads(response.body)["status"] == "draining"
    assert response.headers["Retry-After"] == "5"


def test_the_deadline_counts_down_from_the_shutdown_timeout() -> None:
    shutdown = new_app(make_settings(shutdown_timeout_seconds=7), service="token")[SHUTDOWN]
    assert shutdown.remaining() == 7 and not shutdown.stopping.is_set()
    shutdown.begin()
    assert 6.5 < shutdown.remaining() <= 7
    assert shutdown.draining and shutdown.stopping.is_set()


def test_metrics_of_several_services_in_one_process_render_each_family_once() -> None:
    registries = [CollectorRegistry(), CollectorRegistry()]
    for registry, service in zip(registries, ("token", "qrcode"), strict=True):
        BusMetrics(registry, service).delivered("event", "ack")
    text = generate_latest(_Merged(registries)).decode()
    assert text.count("# HELP wxlogin_bus_deliveries_total") == 1
    assert 'wxlogin_bus_deliveries_total{kind="event",outcome="ack",service="token"} 1.0' in text
    assert 'wxlogin_bus_deliveries_total{kind="event",outcome="ack",service="qrcode"} 1.0' in text
