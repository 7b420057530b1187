"""``python -m services.session``: the session service alone (``python -m services run session``).

``python -m services.session keys list|rotate|retire [--alg EdDSA|RS256] [--force] [--now]`` manages
the signing keys in the configured MongoDB (``WXLOGIN_MONGO_URL``, ``WXLOGIN_MONGO_DB``,
``WXLOGIN_DATA_KEY``): the Ed25519 key that signs access tokens (EdDSA) and the RSA key that signs
ID tokens (RS256), both unless ``--alg`` names one. ``rotate`` publishes a new key at once and signs
with it after ``WXLOGIN_SIGNING_KEY_LEAD_SECONDS``; ``retire`` removes the previous key from the JWKS.
Running session replicas adopt the change within ``WXLOGIN_SIGNING_KEYS_RELOAD_SECONDS`` and tell the
gateways, which re-fetch the JWKS; no restart.

``python -m services.session refresh-tokens migrate`` re-keys, once at the upgrade, the refresh tokens
an earlier version stored under a bare SHA-256 (they are not accepted as they are).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from services.__main__ import main as services_main
from services.session.app import data_sealer, successor_keys
from services.session.keys import ALGORITHMS, RotationRefused, retire_previous_key, rotate_keys
from services.session.refresh import migrate_legacy_tokens
from services.session.store import INDEXES, RefreshTokenStore, SigningKeyStore
from shared.config import Settings
from shared.logging import configure_logging
from shared.mongo import ensure_indexes, make_client, wait_ready


async def keys_command(
    settings: Settings,
    action: str,
    *,
    force: bool = False,
    now_: bool = False,
    algorithms: tuple[str, ...] = ALGORITHMS,
) -> dict[str, Any]:
    """Run one ``keys`` action, for each of ``algorithms``, against the configured database; returns
    what to print."""
    if not settings.mongo_url:
        raise SystemExit("set WXLOGIN_MONGO_URL to the database the session service uses")
    client = make_client(settings.mongo_url)
    try:
        await wait_ready(client, max_seconds=10)
        db = client[settings.mongo_db]
        await ensure_indexes(db, INDEXES)
        store = SigningKeyStore(db)
        await store.upgrade()
        now, min_age = time.time(), float(settings.access_token_ttl_seconds)
        result: dict[str, Any] = {"action": action}
        if action == "rotate":
            lead = 0.0 if now_ else settings.signing_key_lead_seconds
            result["rotated"] = []
            for alg in algorithms:
                rotated = await rotate_keys(
                    store, data_sealer(settings), now=now, min_age=min_age, lead=lead, force=force, alg=alg
                )
                result["rotated"].append(
                    {
                        "alg": alg,
                        "current": rotated.current,
                        "signs_from": round(rotated.active_from),
                        "previous": rotated.previous,
                        "retired": rotated.retired,
                    }
                )
        elif action == "retire":
            result["retired"] = {
                alg: await retire_previous_key(store, now=now, min_age=min_age, force=force, alg=alg)
                for alg in algorithms
            }
        result["keys"] = [
            {
                "kid": record.kid,
                "alg": record.alg,
                "status": record.status,
                "created_at": round(record.created_at),
                "active_from": round(record.active_from),
                "demoted_at": round(record.demoted_at) if record.demoted_at else None,
                "retired_at": round(record.retired_at) if record.retired_at else None,
            }
            for record in await store.all()
        ]
        return result
    finally:
        await client.close()


def keys_main(argv: list[str]) -> None:
    """``keys list|rotate|retire [--alg EdDSA|RS256] [--force] [--now]``."""
    parser = argparse.ArgumentParser(prog="python -m services.session keys", description=__doc__)
    parser.add_argument("action", choices=["list", "rotate", "retire"])
    parser.add_argument(
        "--alg",
        choices=list(ALGORITHMS),
        help="only the keys of this kind (EdDSA signs access tokens, RS256 ID tokens); default: both",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="retire a key that stopped signing less than one access-token lifetime ago",
    )
    parser.add_argument(
        "--now",
        action="store_true",
        help="rotate: sign with the new key at once instead of after WXLOGIN_SIGNING_KEY_LEAD_SECONDS "
        "(after a key leak; caches that lack the new key reject its tokens until they re-fetch)",
    )
    args = parser.parse_args(argv)
    settings = Settings.for_command_line()
    configure_logging(service="session-keys", fmt=settings.log_format, level="WARNING")
    algorithms = (args.alg,) if args.alg else ALGORITHMS
    try:
        result = asyncio.run(
            keys_command(settings, args.action, force=args.force, now_=args.now, algorithms=algorithms)
        )
    except RotationRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, indent=2))


async def migrate_command(settings: Settings) -> dict[str, Any]:
    """Re-key refresh tokens stored by an earlier version (bare SHA-256) in the configured database."""
    if not settings.mongo_url:
        raise SystemExit("set WXLOGIN_MONGO_URL to the database the session service uses")
    client = make_client(settings.mongo_url)
    try:
        await wait_ready(client, max_seconds=10)
        store = RefreshTokenStore(client[settings.mongo_db])
        migrated = await migrate_legacy_tokens(store, successor_keys(settings)[0])
        return {"action": "refresh-tokens migrate", "migrated": migrated}
    finally:
        await client.close()


def migrate_main(argv: list[str]) -> None:
    """``refresh-tokens migrate``: once, when upgrading from a version that stored bare SHA-256 ids."""
    parser = argparse.ArgumentParser(prog="python -m services.session refresh-tokens", description=__doc__)
    parser.add_argument("action", choices=["migrate"])
    parser.parse_args(argv)
    settings = Settings.for_command_line()
    configure_logging(service="session-migrate", fmt=settings.log_format, level="WARNING")
    print(json.dumps(asyncio.run(migrate_command(settings)), indent=2))


def main(argv: list[str] | None = None) -> None:
    """Run the service, or the ``keys`` or ``refresh-tokens`` command."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["keys"]:
        keys_main(args[1:])
    elif args[:1] == ["refresh-tokens"]:
        migrate_main(args[1:])
    else:
        services_main(["run", "session"])


if __name__ == "__main__":
    main()
