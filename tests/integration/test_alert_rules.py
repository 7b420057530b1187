"""The alert rules (deploy/prometheus/alerts.yml) and the metrics table of docs/deploy.md name only
metrics and labels the running services export, so an alert can fire (issue 13: the documented RPC
alert named outcomes that were never counted).

The four services run over real RabbitMQ against the simulator; a little traffic (a WeChat error, a
rejected token, a refused request) makes every labelled family show samples on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shared.bus import call_outcome
from shared.errors import BusUnavailable, RemoteError, RpcTimeout, RpcUnavailable, StoreUnavailable
from shared.mongo import EmbeddedMongo
from tests.integration.identity_stack import IdentityStack, identity_stack
from tests.support import Browser

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
BUILTIN = {"up"}  # made by Prometheus itself, not by a service
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series
SELECTOR = re.compile(r"\b(wxlogin_[a-z0-9_]+|up)\b(\{[^}]*\})?")
MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """``(metric, {label: (operator, value)})`` for every series selector in a PromQL expression."""
    found = []
    for name, braces in SELECTOR.findall(expr):
        matchers = {label: (op, value) for label, op, value in MATCHER.findall(braces or "")}
        # The docs also write bare label names: {route,code,status}.
        for part in (braces or "").strip("{}").split(","):
            bare = re.fullmatch(r"\s*([a-z_]+)\s*", part)
            if bare:
                matchers[bare.group(1)] = ("", "")
        found.append((name, matchers))
    return found


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def documented_selectors() -> list[str]:
    """The metric selectors in the table of docs/deploy.md §7 (backticked, ``\\|`` for alternatives)."""
    section = DEPLOY_DOC.read_text().split("## 7.", 1)[1].split("\n## ", 1)[0]
    return [s.replace("\\|", "|") for s in re.findall(r"`(wxlogin_[^`]+)`", section)]


@pytest.fixture
async def stack(mongo_server: EmbeddedMongo, amqp_base_url: str, unique: str) -> AsyncIterator[IdentityStack]:
    async with identity_stack("amqp", mongo_server, amqp_base_url, unique, code_pool_size=0) as running:
        yield running


async def exported(stack: IdentityStack) -> dict[str, set[str]]:
    """Sample name → label names, over every service's ``/metrics``."""
    labels: dict[str, set[str]] = defaultdict(set)
    for url in stack.system.urls.values():
        async with stack.http.get(f"{url}/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels[sample.name].update(sample.labels, TARGET_LABELS)
                if family.type == "histogram":  # the docs may name a histogram by its family name
                    labels[family.name].update(set(sample.labels) - {"le"}, TARGET_LABELS)
    return labels


async def make_traffic(stack: IdentityStack) -> None:
    """Enough to give every labelled family in the rules a sample."""
    # A rejected token whose force refresh fails: wxlogin_token_renewals, wxlogin_token_wechat_errors,
    # and a 503 token_unavailable at the gateway (wxlogin_gateway_errors).
    await stack.control.fault("cgi-bin/stable_token", errcode=-1, count=1)
    await stack.control.fault("wxa/getwxacodeunlimit", errcode=40001, count=1)
    async with stack.http.post(f"{stack.gateway}/api/login/qrcode") as resp:
        assert resp.status == 503
    browser = Browser(stack.http, stack.gateway)
    await browser.issue()
    try:  # a refused subscription: wxlogin_gateway_subscribe_refused
        refused = await browser.subscribe(ticket="x" * 43)
        assert refused.get("code") == "ticket_invalid" or refused["type"] == "closed", refused
    finally:
        await browser.close()


async def test_every_metric_and_label_in_the_alert_rules_and_the_deploy_doc_is_exported(
    stack: IdentityStack,
) -> None:
    await make_traffic(stack)
    wanted: list[tuple[str, str]] = [(alert, expr) for alert, expr in rule_expressions().items()]
    wanted += [(f"docs/deploy.md `{s}`", s) for s in documented_selectors()]
    assert len(wanted) > 20

    async def problems() -> list[str]:
        labels = await exported(stack)
        found = []
        for where, expr in wanted:
            used = selectors(expr)
            assert used, f"{where}: no metric in {expr!r}"
            names = {metric for metric, _ in used if metric not in BUILTIN}
            for metric, matchers in used:
                if metric in BUILTIN:
                    continue
                if metric not in labels:
                    found.append(f"{where}: {metric} is not exported")
                    continue
                found += [
                    f"{where}: {metric} has no label {label}"
                    for label in matchers
                    if label not in labels[metric]
                ]
            grouping = {g.strip() for part in GROUPING.findall(expr) for g in part.split(",") if g.strip()}
            for label in grouping:
                if names and not any(label in labels.get(metric, set()) for metric in names):
                    found.append(f"{where}: no metric in it has the label {label} it groups by")
        return found

    # Counted a moment after the answers (the refresh's error, the pool's renders): look a few times.
    left = await problems()
    for _ in range(25):
        if not left:
            break
        await asyncio.sleep(0.2)
        left = await problems()
    assert not left, "\n".join(left)


def test_the_outcomes_the_rules_name_are_the_ones_the_bus_counts() -> None:
    """``wxlogin_bus_rpc_calls{outcome}`` and ``wxlogin_bus_deliveries{outcome}`` values in the rules."""
    produced = {
        call_outcome(None),
        call_outcome(RpcTimeout("qrcode.issue", 3)),
        call_outcome(RpcUnavailable("qrcode.issue")),
        call_outcome(BusUnavailable("qrcode.issue")),
        call_outcome(RemoteError("scene_not_found")),
        "ack",
        "reject",
        "requeue",
        "retry",
    }
    assert call_outcome(RpcTimeout("qrcode.issue", 3)) == "timeout"
    assert call_outcome(BusUnavailable("qrcode.issue")) == "unavailable"
    assert call_outcome(RemoteError(StoreUnavailable.code)) == "unavailable"
    assert call_outcome(RemoteError("scene_not_found")) == "error"
    named: set[str] = set()
    for expr in [*rule_expressions().values(), *documented_selectors()]:
        for metric, matchers in selectors(expr):
            if metric.startswith("wxlogin_bus_") and "outcome" in matchers:
                op, value = matchers["outcome"]
                named.update(value.split("|") if op == "=~" else [value])
    named.update(
        v.strip('"') for s in documented_selectors() for v in re.findall(r'"(\w+)"', s) if "outcome" in s
    )
    assert named and named <= produced, named - produced
