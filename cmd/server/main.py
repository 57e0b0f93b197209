"""authkms entry point: `python cmd/server/main.py [-conf configs] <command>` (default command: serve)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from internal.conf.config import ConfigError, load_config
from internal.pkg.log import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authkms", description="Authentication and field-level encryption service")
    parser.add_argument("-conf", "--conf", default="configs", help="config file or folder (default: configs)")
    commands = parser.add_subparsers(dest="command", metavar="command")
    commands.add_parser("serve", help="run the gRPC service (default)")
    migrate = commands.add_parser("migrate", help="database schema migrations")
    migrate_cmds = migrate.add_subparsers(dest="action", required=True, metavar="action")
    up = migrate_cmds.add_parser("up", help="apply pending migrations")
    up.add_argument("n", nargs="?", type=int, help="apply at most N migrations")
    down = migrate_cmds.add_parser("down", help="revert migrations")
    down.add_argument("n", nargs="?", type=int, default=1, help="revert N migrations (default 1)")
    migrate_cmds.add_parser("version", help="print the current schema version")
    return parser


async def _migrate(config, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from internal.app import dependencies
    from internal.data import migrate

    async with dependencies(config) as config:
        url = config.data.database.url
        if args.action == "up":
            print("applied:", await migrate.migrate_up(url, steps=args.n) or "nothing")
        elif args.action == "down":
            print("reverted:", await migrate.migrate_down(url, steps=args.n) or "nothing")
        else:
            version, dirty = await migrate.schema_version(url)
            print(f"version {version if version is not None else 'none'}{' (dirty)' if dirty else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.conf)
    except ConfigError as exc:
        print(f"authkms: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.monitoring.log_level, config.monitoring.log_format, config.security.mode == "production")
    from internal.app import serve

    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(config, args))
        asyncio.run(serve(config))
    except Exception as exc:  # one clear line instead of a traceback at start-up
        print(f"authkms: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
