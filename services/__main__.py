"""``python -m services run <token|qrcode|session|gateway|webhook|all>``, ``launch``, ``ready``, ``clients``.

One service per process is what a container runs, in production mode unless ``WXLOGIN_DEMO`` is on:
the demo's values (development AppID, http:// WeChat, ``*`` origins, the demo site name) stop it.
``all`` is the embedded default (``make demo``):
the in-memory bus, an nx-27017 MongoDB wire server as a child process, the WeChat simulator and all
five services in this one process. ``launch`` runs every replica as its own process on this machine
(:mod:`services.launch`); ``ready <service>`` exits 0 when that service's ``/readyz`` answers 200 (the
container healthcheck).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from services.startup import (
    Address,
    StartupError,
    check_free,
    credentials_problem,
    demo_clients_file,
    demo_credentials,
    production_problems,
    start_site,
)
from shared import eventloop
from shared.bus import MemoryBroker
from shared.config import Settings
from shared.httpserver import AppRunner
from shared.logging import configure_logging, get_logger
from shared.mongo import EmbeddedMongo
from shared.runtime import EXTRA_REGISTRIES, READY_CHECKS, REGISTRY, AccessLogger
from shared.sealing import generate_key

SERVICES = ("token", "qrcode", "session", "gateway", "webhook")

log = get_logger("services")
# After the shutdown deadline: time for background tasks to stop and connections to close.
STOP_GRACE_SECONDS = 4.0


def app_factory(name: str) -> Callable[..., web.Application]:
    """``create_app`` of a service, imported only when that service runs."""
    if name not in SERVICES:
        raise SystemExit(f"unknown service {name!r}; choose one of {', '.join(SERVICES)} or all")
    factory: Callable[..., web.Application] = importlib.import_module(f"services.{name}.app").create_app
    return factory


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _force_on_second_signal() -> None:
    """While shutting down gracefully, a second SIGTERM/SIGINT ends the process at once.

    Nothing is lost by that: RabbitMQ requeues whatever this process had not acknowledged.
    """

    def force() -> None:
        log.warning("shutdown_forced")
        os._exit(130)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, force)


def listen_address(name: str, settings: Settings) -> tuple[str, int]:
    """Where service ``name`` listens: the gateway's API port, or the others' ops port."""
    if name == "gateway":
        return settings.gateway_host, settings.gateway_port
    return settings.ops_host, settings.ops_port


def listen_at(name: str, settings: Settings) -> Address:
    """:func:`listen_address` with the variables that set it (for a one-line error)."""
    kind = "GATEWAY" if name == "gateway" else "OPS"
    return Address(*listen_address(name, settings), f"WXLOGIN_{kind}_HOST", f"WXLOGIN_{kind}_PORT")


async def run_one(name: str, settings: Settings) -> None:
    """One service in this process, talking to RabbitMQ and MongoDB (what a container runs).

    SIGTERM starts the graceful stop of :mod:`shared.runtime`, bounded by
    ``WXLOGIN_SHUTDOWN_TIMEOUT_SECONDS``; the process exits 0 when it is done.
    """
    if settings.embedded_bus:
        raise SystemExit("a single service needs a broker: set WXLOGIN_AMQP_URL=amqp://…")
    if not settings.bus_key.get_secret_value():
        raise SystemExit("set WXLOGIN_BUS_KEY (the same base64 32-byte key for every service)")
    if name not in ("gateway", "webhook") and (problem := credentials_problem(settings)):
        raise StartupError(problem)
    if problems := production_problems(name, settings):
        raise StartupError("\n".join(problems))
    address = listen_at(name, settings)
    check_free(address)
    app = app_factory(name)(settings)
    # The graceful stop waits for requests itself, up to the shutdown deadline; aiohttp's own
    # timeout only cuts off what is still running after that.
    runner = AppRunner(app, access_log_class=AccessLogger, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await start_site(runner, address)
    log.info(
        "service_started", port=address.port, pid=os.getpid(), loop=eventloop.loop_name(settings.event_loop)
    )
    try:
        await _wait_for_signal()
    finally:
        log.info("service_stopping")
        _force_on_second_signal()
        await _cleanup_within(runner, settings.shutdown_timeout_seconds + STOP_GRACE_SECONDS)
        log.info("service_stopped")


async def _cleanup_within(runner: web.AppRunner, seconds: float) -> None:
    """``runner.cleanup()``, but the process ends after ``seconds`` whatever still waits.

    Every step of the graceful stop is bounded on its own; this is the last guard, so one SIGTERM
    always stops the process (a hung stop once kept a service with a wedged MongoDB client alive).
    """
    cleanup = asyncio.ensure_future(runner.cleanup())
    done, _ = await asyncio.wait({cleanup}, timeout=seconds)
    if not done:
        log.error("shutdown_overran", after_s=seconds)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    cleanup.result()


def embedded_settings(settings: Settings) -> Settings:
    """Fill what the one-process mode can make up: keys, and demo mode unless told otherwise."""
    update: dict[str, Any] = {}
    if not settings.bus_key.get_secret_value():
        update["bus_key"] = SecretStr(generate_key())
    if not settings.data_key.get_secret_value():
        log.warning("data_key_generated", note="set WXLOGIN_DATA_KEY to keep sessions across restarts")
        update["data_key"] = SecretStr(generate_key())
    if "WXLOGIN_DEMO" not in os.environ:
        update["demo"] = True
    if not settings.site_name.strip():  # a copied .env.example leaves it empty
        update["site_name"] = Settings.model_fields["site_name"].default
    if update.get("demo", settings.demo) and "sim_any_code" not in settings.model_fields_set:
        update["sim_any_code"] = "sticky"  # WeChat DevTools' real wx.login codes work against the demo
    if "wechat_api_base" not in settings.model_fields_set:  # follow WXLOGIN_SIM_HOST/PORT
        update["wechat_api_base"] = f"http://{settings.sim_host}:{settings.sim_port}"
    # The demo page, wherever it is served, keeps working when a site is added to the allowed origins.
    port = settings.gateway_port
    own = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    if "allowed_origins" not in settings.model_fields_set:
        update["allowed_origins"] = own
    elif update.get("demo", settings.demo) and "*" not in settings.allowed_origins:
        added = [origin for origin in own if origin not in settings.allowed_origins]
        update["allowed_origins"] = [*settings.allowed_origins, *added]
    # The demo page's "Log in with OIDC" is a registered client (deploy/clients.demo.yaml).
    if update.get("demo", settings.demo) and not settings.clients_file:
        update["clients_file"] = demo_clients_file(port)
    return settings.model_copy(update=update) if update else settings


def local_sim(settings: Settings) -> bool:
    """True when the WeChat base URL points at the simulator this process should run."""
    return settings.wechat_api_base.rstrip("/") == f"http://{settings.sim_host}:{settings.sim_port}"


async def run_all(settings: Settings) -> None:
    """Everything in one process on the embedded default."""
    # Checked before anything starts or logs: what would stop the start is the only line printed.
    serves_sim = "wechat_api_base" not in settings.model_fields_set or local_sim(settings)
    if not serves_sim and (problem := credentials_problem(settings)):
        raise StartupError(problem)
    gateway_at = listen_at("gateway", settings)
    sim_at = Address(
        settings.sim_host, settings.sim_port, "WXLOGIN_SIM_HOST", "WXLOGIN_SIM_PORT", "the simulator"
    )
    check_free(gateway_at)
    if serves_sim:
        check_free(sim_at)
    settings = embedded_settings(settings)
    if serves_sim:
        settings = demo_credentials(settings)
    mongo: EmbeddedMongo | None = None
    runners: list[web.AppRunner] = []
    try:
        if not settings.mongo_url:
            mongo = EmbeddedMongo().start()
            settings = settings.model_copy(update={"mongo_url": mongo.url})
        if local_sim(settings):
            from sim.wechat import create_app as create_sim
            from sim.wechat.state import DEFAULT_PAGES

            sim = web.AppRunner(
                create_sim(
                    appid=settings.appid,
                    secret=settings.secret.get_secret_value(),
                    published_pages={*DEFAULT_PAGES, settings.miniprogram_page},
                    any_code=settings.sim_any_code,
                ),
                access_log=None,
                handle_signals=False,
            )
            await sim.setup()
            await start_site(sim, sim_at)
            runners.append(sim)
        broker = MemoryBroker() if settings.embedded_bus else None
        apps = {name: app_factory(name)(settings, broker=broker) for name in SERVICES}
        gateway = apps["gateway"]
        for name in ("token", "qrcode", "session", "webhook"):
            gateway[EXTRA_REGISTRIES].append(apps[name][REGISTRY])
        for name in SERVICES:
            runner: web.AppRunner = AppRunner(
                apps[name], access_log_class=AccessLogger, handle_signals=False, shutdown_timeout=5
            )
            await runner.setup()
            runners.append(runner)
            if name == "gateway":
                gateway_runner = runner
            else:
                for check, fn in apps[name][READY_CHECKS].items():
                    gateway[READY_CHECKS][f"{name}.{check}"] = fn
        await start_site(gateway_runner, gateway_at)
        base = f"http://{settings.gateway_host}:{settings.gateway_port}"
        print(
            f"\n  wxlogin demo:        {base}/\n  WeChat simulator:    {settings.wechat_api_base}\n"
            f"  (Ctrl-C to stop)\n",
            flush=True,
        )
        await _wait_for_signal()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        if mongo is not None:
            mongo.stop()


def ready(name: str, settings: Settings, *, timeout: float = 3.0) -> bool:
    """True when service ``name`` in this environment answers ``/readyz`` with 200."""
    host, port = listen_address(name, settings)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m services``."""
    from services.launch import add_arguments

    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one service, or all of them in one process")
    run.add_argument("service", choices=[*SERVICES, "all"])
    launch = sub.add_parser("launch", help="run each service replica as its own process on this machine")
    add_arguments(launch)
    probe = sub.add_parser("ready", help="exit 0 when the service's /readyz answers 200 (healthcheck)")
    probe.add_argument("service", choices=SERVICES)
    clients = sub.add_parser("clients", help="the registered clients (WXLOGIN_CLIENTS_FILE): list, check")
    clients.add_argument("action", choices=["list", "check", "new-secret"])
    return parser


def clients_command(action: str, settings: Settings) -> int:
    """``python -m services clients list|check|new-secret``: exit 0, or 1 with one line per problem."""
    from shared.clients import ClientRegistry, ClientsFileError, describe, new_secret, webhook_secret_problems

    if action == "new-secret":
        secret, hashed = new_secret()
        print(f"client_secret:      {secret}\nclient_secret_hash: {hashed}")
        print("Give the secret to the site; put only the hash in the clients file.", file=sys.stderr)
        return 0
    try:
        registry = ClientRegistry.from_settings(settings)
    except ClientsFileError as exc:
        for problem in exc.problems:
            print(f"{exc.path}: {problem}", file=sys.stderr)
        return 1
    if action == "list":
        for client in registry.all():
            print(describe(client))
        return 0
    problems = webhook_secret_problems(registry.all())
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        source = settings.clients_file or "no WXLOGIN_CLIENTS_FILE: the default client only"
        print(f"{len(registry.all())} clients ok ({source})")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m services``."""
    args = build_parser().parse_args(argv)
    settings = Settings.for_command_line()
    if args.command == "ready":
        sys.exit(0 if ready(args.service, settings) else 1)
    if args.command == "clients":
        sys.exit(clients_command(args.action, settings))
    if args.command == "launch":
        from services.launch import LaunchError, run_launch

        configure_logging(service="launch", fmt=settings.log_format, level=settings.log_level)
        try:
            asyncio.run(run_launch(args))
        except LaunchError as exc:
            print(f"launch failed: {exc}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            pass
        sys.exit(0)
    configure_logging(service=args.service, fmt=settings.log_format, level=settings.log_level)
    try:
        if args.service == "all":
            eventloop.run(run_all(settings), settings.event_loop)
        else:
            eventloop.run(run_one(args.service, settings), settings.event_loop)
    except StartupError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
