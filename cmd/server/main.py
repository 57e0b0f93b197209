"""authkms entry point: `python cmd/server/main.py [-conf configs] [--workers N] <command>`.

Commands: serve (default), migrate up|down|version,
kms create|rotate|status|maintenance|schedule-destroy|cancel-destroy|rekey, credentials create|revoke|list,
users lock|unlock. Every command exits non-zero with a one-line reason.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from internal.conf.config import Bootstrap, ConfigError, load_config
from internal.pkg.log import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authkms", description="Authentication and field-level encryption service")
    parser.add_argument("-conf", "--conf", default="configs", help="config file or folder (default: configs)")
    parser.add_argument("--workers", type=int, default=None, help="serve with N processes sharing the port")
    commands = parser.add_subparsers(dest="command", metavar="command")
    commands.add_parser("serve", help="run the gRPC service (default)")

    migrate = commands.add_parser("migrate", help="database schema migrations").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    up = migrate.add_parser("up", help="apply pending migrations")
    up.add_argument("n", nargs="?", type=int, help="apply at most N migrations")
    down = migrate.add_parser("down", help="revert migrations")
    down.add_argument("n", nargs="?", type=int, default=1, help="revert N migrations (default 1)")
    migrate.add_parser("version", help="print the current schema version")

    kms = commands.add_parser("kms", help="key management").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    create_key = kms.add_parser("create", help="create a named key with its first version")
    create_key.add_argument("name")
    create_key.add_argument("--description", default="")
    rotate = kms.add_parser("rotate", help="make a new active version of a key")
    rotate.add_argument("--key", default="default", help="named key (default: default; authkms.users for PII)")
    rotate.add_argument("--reason", default="cli", help="recorded in the audit trail")
    status = kms.add_parser("status", help="show a key's active version and version counts")
    status.add_argument("--key", default="default", help="named key (default: default)")
    maintenance = kms.add_parser(
        "maintenance", help="rotate due keys, re-encrypt users' PII, destroy versions whose destruction is due"
    )
    maintenance.add_argument("--key", action="append", help="only these keys (repeatable; default: every key)")
    maintenance.add_argument("--batch-size", type=int, default=0, help="records per batch (default: config)")
    maintenance.add_argument("--dry-run", action="store_true", help="report only")
    rekey = kms.add_parser("rekey", help="re-wrap every data key under the current root key (root-key rotation)")
    rekey.add_argument("--batch-size", type=int, default=0, help="versions per call (default: all)")
    for verb, text in (
        ("schedule-destroy", "schedule the destruction of a retired version"),
        ("cancel-destroy", "cancel a scheduled destruction"),
    ):
        destroy = kms.add_parser(verb, help=text)
        destroy.add_argument("--key", default="default", help="named key (default: default)")
        destroy.add_argument("--version", type=int, required=True)
        if verb == "schedule-destroy":
            destroy.add_argument("--wait-days", type=int, default=0, help="waiting period (default: the key's, 30)")

    creds = commands.add_parser("credentials", help="service credentials for kms.v1 callers").add_subparsers(
        dest="action", required=True, metavar="action"
    )
    create = creds.add_parser("create", help="create a credential and print its token once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: kms.encrypt,kms.decrypt,kms.datakey,kms.admin,auth.admin,auth.introspect",
    )
    create.add_argument(
        "--keys", default="default", help="comma-separated key names or prefix.* patterns (default: default)"
    )
    revoke = creds.add_parser("revoke", help="revoke a credential (effective within seconds everywhere)")
    revoke.add_argument("--name", required=True)
    creds.add_parser("list", help="list credentials (never tokens)")

    users = commands.add_parser("users", help="user accounts").add_subparsers(dest="action", required=True)
    unlock = users.add_parser("unlock", help="clear a user's login lock and failure count")
    unlock.add_argument("username")
    lock = users.add_parser("lock", help="hard-lock a user's logins (auth.lock_duration unless --minutes)")
    lock.add_argument("username")
    lock.add_argument("--minutes", type=float, default=None, help="lock duration in minutes")
    return parser


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


async def _with_container(config: Bootstrap, action: Callable[[Any], Awaitable[int]]) -> int:
    from internal.app import dependencies, resolve
    from internal.container import Container

    async with dependencies(config) as config:
        container = Container(config=config)
        await resolve(container.init_resources())
        try:
            return await action(container)
        finally:
            await resolve(container.shutdown_resources())


async def _kms(container: Any, args: argparse.Namespace) -> int:
    admin = await container.biz.key_admin()
    if args.action == "create":
        named = await admin.create_key(args.name, description=args.description)
        print(f"created key {named.name} (active version {named.active_version}, {named.policy.algorithm})")
    elif args.action == "rotate":
        key = await admin.rotate(args.key, args.reason)
        print(f"key {key.key_name}: active version is now {key.version} ({key.algorithm})")
    elif args.action == "status":
        status = await admin.status(args.key)
        print(f"key {status.key_name}: algorithm {status.algorithm}, active version {status.active_version}")
        print(f"active since {_when(status.active_created_at)}, expires {_when(status.active_expires_at)}")
        print(f"encryptions under active version: {status.active_encryption_count}")
        print("versions by status: " + ", ".join(f"{k}={v}" for k, v in sorted(status.counts.items())))
        print(f"users rows still to move onto the users' key: {await admin.users_pending()}")
        print(
            f"root key {status.root_key_fingerprint}; "
            f"versions under the previous root key: {status.versions_under_previous_root}"
        )
    elif args.action == "rekey":
        return await _rekey(admin, args)
    elif args.action == "schedule-destroy":
        key = await admin.schedule_destruction(args.key, args.version, args.wait_days * 86400)
        print(f"key {key.key_name} version {key.version}: destruction scheduled for {_when(key.destroy_after)}")
    elif args.action == "cancel-destroy":
        key = await admin.cancel_destruction(args.key, args.version)
        print(f"key {key.key_name} version {key.version}: destruction cancelled, status {key.status}")
    else:
        return await _maintenance(admin, args)
    return 0


async def _rekey(admin: Any, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    total = rewrapped = 0
    seconds = 0.0
    with tqdm(unit="version", desc="re-wrapping", file=sys.stderr) as bar:

        def progress(done: int, todo: int) -> None:
            bar.total = todo
            bar.n = done
            bar.refresh()

        while True:
            report = await admin.rekey(args.batch_size, progress)
            rewrapped += report.rewrapped
            seconds += report.seconds
            total += report.rewrapped
            if report.remaining == 0 or report.rewrapped == 0:
                break
    rate = rewrapped / seconds if seconds > 0 else 0.0
    print(
        f"re-wrapped {rewrapped} versions in {seconds:.2f} s ({rate:.0f} versions/s); "
        f"remaining under the previous root key: {report.remaining}"
    )
    return 0 if report.remaining == 0 else 1


async def _maintenance(admin: Any, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    names = args.key or [k.name for k in (await admin.list_keys(500, "", lambda _: True)).items]
    with tqdm(unit="record", desc="re-encrypting", file=sys.stderr) as bar:

        def progress(step: Any) -> None:
            bar.update(step.reencrypted + step.failed + step.skipped)

        while True:
            report = await admin.maintenance(names, args.batch_size, args.dry_run, progress)
            bar.total = bar.n + report.remaining
            if report.done or args.dry_run or report.records_reencrypted == 0:
                break
    print(
        f"expired marked {report.expired_marked}, re-encrypted {report.records_reencrypted}, "
        f"failed {report.records_failed}, versions destroyed {report.keys_destroyed}, "
        f"destructions scheduled {report.destruction_scheduled}, remaining {report.remaining}"
    )
    return 0 if report.records_failed == 0 else 1


async def _credentials(container: Any, args: argparse.Namespace) -> int:
    usecase = await container.biz.credentials()
    if args.action == "create":
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        patterns = [k.strip() for k in args.keys.split(",") if k.strip()]
        issued = await usecase.create(args.name, scopes, patterns)
        cred = issued.credential
        print(f"created {cred.name} with scopes {','.join(sorted(cred.scopes))} on keys {','.join(cred.key_patterns)}")
        print("token (shown once, store it now):", file=sys.stderr)
        print(issued.token)
    elif args.action == "revoke":
        await usecase.revoke(args.name)
        print(f"revoked {args.name}")
    else:
        for cred in await usecase.list():
            state = f"revoked {_when(cred.revoked_at)}" if cred.revoked_at else "active"
            scope_list, keys = ",".join(sorted(cred.scopes)), ",".join(cred.key_patterns)
            print(f"{cred.name}\t{scope_list}\tkeys {keys}\t{state}\tcreated {_when(cred.created_at)}")
    return 0


async def _users(container: Any, args: argparse.Namespace) -> int:
    auth = await container.biz.auth()
    if args.action == "lock":
        if args.minutes is not None and args.minutes <= 0:
            raise SystemExit("--minutes must be positive")
        seconds = args.minutes * 60 if args.minutes is not None else None
        unlock_at = await auth.lock(args.username, seconds)
        print(f"locked {args.username} until {datetime.fromtimestamp(unlock_at, UTC).isoformat(timespec='seconds')}")
        return 0
    await auth.unlock(args.username)
    print(f"unlocked {args.username}")
    return 0


async def _migrate(config: Bootstrap, args: argparse.Namespace) -> int:
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


def _run(config: Bootstrap, args: argparse.Namespace) -> int:
    from internal.app import serve
    from internal.server.supervisor import supervise, workers_to_supervise

    if args.command == "migrate":
        return asyncio.run(_migrate(config, args))
    handlers = {"kms": _kms, "credentials": _credentials, "users": _users}
    if args.command in handlers:
        handler = handlers[args.command]
        return asyncio.run(_with_container(config, lambda container: handler(container, args)))
    workers = workers_to_supervise(config, args.workers)
    if workers:
        return asyncio.run(supervise(config, args.conf, workers))
    asyncio.run(serve(config))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.conf)
    except ConfigError as exc:
        print(f"authkms: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.monitoring.log_level, config.monitoring.log_format, config.security.mode == "production")
    from internal.biz.errors import DomainError

    try:
        return _run(config, args)
    except DomainError as exc:
        print(f"authkms: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:  # one clear line instead of a traceback
        print(f"authkms: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
