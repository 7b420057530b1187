"""``python -m services.webhook``: the webhook service alone (``python -m services run webhook``).

``python -m services.webhook deliveries …`` works on the configured MongoDB (``WXLOGIN_MONGO_URL``,
``WXLOGIN_MONGO_DB``) and clients file (``WXLOGIN_CLIENTS_FILE``); running replicas pick up what it
changes within ``WXLOGIN_WEBHOOK_POLL_SECONDS``:

* ``deliveries list [--client C] [--endpoint E] [--message M] [--since T] [--until T] [--limit N]``:
  the delivery log, newest first;
* ``deliveries replay M`` sends one message again (same ``webhook-id``);
  ``deliveries replay --client C --endpoint E --since T [--until T]`` every message of a time range;
* ``deliveries enable --client C --endpoint E`` enables an endpoint the service disabled (410, or a
  message out of attempts): what it missed is sent at once, oldest first;
* ``deliveries endpoints [--client C]``: the endpoints and their state.

Times are epoch seconds or ISO 8601 with a time zone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from services.__main__ import main as services_main
from services.webhook.admin import parse_time
from services.webhook.app import stores
from services.webhook.handlers import Directory, WebhookAdmin
from services.webhook.store import INDEXES
from shared.clients import ClientRegistry, ClientsFileError
from shared.config import Settings
from shared.errors import ServiceError
from shared.logging import configure_logging
from shared.mongo import ensure_indexes, make_client, wait_ready


async def deliveries_command(settings: Settings, args: argparse.Namespace) -> Any:
    """Run one ``deliveries`` action; returns what to print."""
    if not settings.mongo_url:
        raise SystemExit("set WXLOGIN_MONGO_URL to the database the webhook service uses")
    registry = ClientRegistry.from_settings(settings)
    client = make_client(settings.mongo_url)
    try:
        await wait_ready(client, max_seconds=10)
        db = client[settings.mongo_db]
        await ensure_indexes(db, INDEXES)
        outbox, deliveries, states = stores(db, settings)
        admin = WebhookAdmin(outbox, deliveries, states, Directory(registry))
        since = parse_time(args.since, "--since") if hasattr(args, "since") else None
        until = parse_time(args.until, "--until") if hasattr(args, "until") else None
        if args.action == "list":
            return await admin.deliveries(
                None,
                client_id=args.client,
                endpoint_id=args.endpoint,
                message_id=args.message,
                since=since,
                until=until,
                limit=args.limit,
            )
        if args.action == "endpoints":
            return await admin.endpoints(args.client)
        if args.action == "enable":
            return await admin.enable(None, args.endpoint, client_id=args.client)
        if args.message:
            return await admin.replay_message(None, args.message)
        if not args.endpoint or since is None:
            raise SystemExit("replay: give a message id, or --endpoint and --since (and --client)")
        return await admin.replay_range(
            None, args.endpoint, client_id=args.client, since=since, until=until or time.time()
        )
    finally:
        await client.close()


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m services.webhook deliveries``."""
    parser = argparse.ArgumentParser(prog="python -m services.webhook deliveries", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="the delivery log, newest first")
    listing.add_argument("--client")
    listing.add_argument("--endpoint")
    listing.add_argument("--message", help="one message's attempts (its webhook-id)")
    listing.add_argument("--since")
    listing.add_argument("--until")
    listing.add_argument("--limit", type=int, default=100)
    replay = sub.add_parser("replay", help="send one message, or a time range of one endpoint, again")
    replay.add_argument("message", nargs="?", help="the message's webhook-id (msg_…)")
    replay.add_argument("--client")
    replay.add_argument("--endpoint")
    replay.add_argument("--since")
    replay.add_argument("--until")
    enable = sub.add_parser("enable", help="enable an endpoint the service disabled")
    enable.add_argument("--client")
    enable.add_argument("--endpoint", required=True)
    endpoints = sub.add_parser("endpoints", help="the declared endpoints and their state")
    endpoints.add_argument("--client")
    return parser


def deliveries_main(argv: list[str]) -> int:
    """``deliveries …``: prints JSON; exit 0, or 1 with the reason on stderr."""
    args = build_parser().parse_args(argv)
    if args.action == "replay":
        args.message = args.message or None
    settings = Settings.for_command_line()
    configure_logging(service="webhook-cli", fmt=settings.log_format, level="WARNING")
    try:
        result = asyncio.run(deliveries_command(settings, args))
    except ClientsFileError as exc:
        print("\n".join(f"{exc.path}: {problem}" for problem in exc.problems), file=sys.stderr)
        return 1
    except ServiceError as exc:
        print(f"{exc.error_code}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> None:
    """Run the service, or the ``deliveries`` command."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["deliveries"]:
        sys.exit(deliveries_main(args[1:]))
    services_main(["run", "webhook"])


if __name__ == "__main__":
    main()
