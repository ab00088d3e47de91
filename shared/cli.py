"""The ``stockroom`` command.

The API and worker tiers are started by import string (``api.app:create_app``,
``worker.main:run``) so that ``shared`` never imports them."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from shared.auth import service as keys_service
from shared.auth.keys import parse_scopes
from shared.db.connection import Connection, connect
from shared.db.unit_of_work import Actor, UnitOfWork
from shared.settings import Settings, SettingsError, exit_on_settings_error, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        exit_on_settings_error(exc)
        raise  # unreachable


def _database_url(settings: Settings) -> str:
    try:
        return settings.require_database_url()
    except SettingsError as exc:
        exit_on_settings_error(exc)
        raise


def _with_connection(fn: Callable[[Connection], Awaitable[Any]]) -> Any:
    url = _database_url(_settings())

    async def main() -> Any:
        conn = await connect(url)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def _cli_unit_of_work(conn: Connection) -> UnitOfWork:
    """Changes made from the command line are audited as the operator's ("cli"); the worker's
    relay hands their events over within a second or two."""
    settings = _settings()
    return UnitOfWork(
        conn,
        Actor(key_id=None, key_name="cli", request_id=None),
        job_max_tries=settings.job_max_tries,
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    from shared.db.migrate import upgrade

    upgrade(_database_url(_settings()))
    print("stockroom: database is at the latest migration")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings()
    settings.require_database_url()
    settings.require_redis_url()
    from shared.logs import configure_logging

    configure_logging(settings)
    run: Callable[[Settings, str, int, int], int] = importlib.import_module("api.server").run
    return run(settings, args.host, args.port, args.workers)


def cmd_worker(args: argparse.Namespace) -> int:
    run: Callable[[Settings], int] = importlib.import_module("worker.main").run
    return run(_settings())


def cmd_dev(args: argparse.Namespace) -> int:
    from shared.devserver import run_dev

    return run_dev(workers=args.workers, port=args.port, data_dir=Path(args.data_dir))


def cmd_keys_create(args: argparse.Namespace) -> int:
    try:
        scopes = parse_scopes(args.scopes)
    except ValueError as exc:
        print(f"stockroom: --scopes: {exc}", file=sys.stderr)
        return 2
    name = args.name.strip()
    if not name:
        print("stockroom: --name: must not be empty", file=sys.stderr)
        return 2

    async def create(conn: Connection) -> keys_service.CreatedKey:
        async with conn.transaction():
            return await keys_service.create_key_audited(_cli_unit_of_work(conn), name, scopes)

    created = _with_connection(create)
    if args.json:
        print(
            json.dumps(
                {
                    "id": str(created.id),
                    "name": created.name,
                    "scopes": created.scopes,
                    "key": created.key,
                }
            )
        )
    else:
        print(f"id:     {created.id}\nname:   {created.name}\nscopes: {','.join(created.scopes)}")
        print(f"key:    {created.key}\n(the key is shown once; store it now)")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    keys: list[keys_service.KeyInfo] = _with_connection(keys_service.list_keys)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": str(k.id),
                        "name": k.name,
                        "prefix": k.prefix,
                        "scopes": k.scopes,
                        "created_at": k.created_at.isoformat(),
                        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                    }
                    for k in keys
                ]
            )
        )
        return 0
    for k in keys:
        state = f"revoked {k.revoked_at.isoformat()}" if k.revoked_at else "active"
        print(f"{k.id}  sr_{k.prefix}_…  {k.name}  {','.join(k.scopes)}  {state}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    try:
        key_id = uuid.UUID(args.id)
    except ValueError:
        print(f"stockroom: {args.id!r} is not a key id", file=sys.stderr)
        return 2

    async def revoke(conn: Connection) -> bool:
        async with conn.transaction():
            return await keys_service.revoke_key_audited(_cli_unit_of_work(conn), key_id)

    if not _with_connection(revoke):
        print(f"stockroom: no active key {key_id}", file=sys.stderr)
        return 1
    print(f"revoked {key_id}")
    return 0


def cmd_keys_ensure_dev(args: argparse.Namespace) -> int:
    key_file = Path(args.key_file)
    saved = key_file.read_text().strip() if key_file.exists() else None

    async def ensure(conn: Connection) -> str:
        return await keys_service.ensure_dev_admin_key(conn, saved)

    token: str = _with_connection(ensure)
    if token != saved:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_text(token + "\n")
    print(token)
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from shared.seed import seed

    url = _database_url(_settings())
    summary = asyncio.run(
        seed(url, products=args.products, locations=args.locations, movements=args.movements)
    )
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stockroom", description="Stockroom inventory service")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the whole stack on one machine")
    dev.add_argument("--workers", type=int, default=1)
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=".stockroom-data")
    dev.set_defaults(func=cmd_dev)

    api = sub.add_parser("api", help="the API server (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(func=cmd_api)

    sub.add_parser("worker", help="one worker process").set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply migrations (idempotent)").set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key; prints the secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help="comma-separated, e.g. catalog:read,admin")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_keys_create)
    lst = keys.add_parser("list", help="list keys (never secrets)")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_keys_revoke)
    ensure = keys.add_parser("ensure-dev", help="create or reuse the development admin key")
    ensure.add_argument("--key-file", required=True)
    ensure.set_defaults(func=cmd_keys_ensure_dev)

    seed = sub.add_parser("seed", help="demo data, loaded with COPY")
    seed.add_argument("--products", type=int, required=True)
    seed.add_argument("--locations", type=int, default=3)
    seed.add_argument("--movements", type=int, default=0)
    seed.set_defaults(func=cmd_seed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        exit_on_settings_error(exc)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
