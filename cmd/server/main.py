"""authkms entry point: `python cmd/server/main.py [-conf configs] [--workers N] <command>`.

This script is the front door: it owns the flags, the configuration and start-up. ``serve`` starts what a
machine needs once (the embedded PostgreSQL/Redis of the development default, the migrations), then
serves in this process or supervises ``--workers`` copies of itself; the other commands build the same
composition root (``internal.container.build``) and call one use case. Commands and their arguments are
the ``COMMANDS`` table. Every command exits non-zero with a one-line reason.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from internal.conf.config import Bootstrap, ConfigError, load_config
from internal.pkg.log import setup_logging
from internal.server.eventloop import run as run_event_loop

if TYPE_CHECKING:
    from internal.biz.auth import AuthUsecase
    from internal.biz.credentials import CredentialUsecase
    from internal.biz.kms_admin import KeyAdmin
    from internal.container import Wired

log = logging.getLogger("authkms.cli")


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its arguments and what it runs (an exit code)."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Bootstrap, argparse.Namespace], Coroutine[Any, Any, int]]


def _actions(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    return parser.add_subparsers(dest="action", required=True, metavar="action")


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # --workers is a top-level flag (serve is also the default command)


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    migrate = _actions(parser)
    up = migrate.add_parser("up", help="apply pending migrations")
    up.add_argument("n", nargs="?", type=int, help="apply at most N migrations")
    down = migrate.add_parser("down", help="revert migrations")
    down.add_argument("n", nargs="?", type=int, default=1, help="revert N migrations (default 1)")
    migrate.add_parser("version", help="print the current schema version")
    _adopt_arguments(
        migrate.add_parser("adopt", help="convert a database migrated by the Go service in place (resumable)")
    )


def _kms_arguments(parser: argparse.ArgumentParser) -> None:
    kms = _actions(parser)
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


def _credentials_arguments(parser: argparse.ArgumentParser) -> None:
    creds = _actions(parser)
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


def _users_arguments(parser: argparse.ArgumentParser) -> None:
    users = _actions(parser)
    unlock = users.add_parser("unlock", help="clear a user's login lock and failure count")
    unlock.add_argument("username")
    lock = users.add_parser("lock", help="hard-lock a user's logins (auth.lock_duration unless --minutes)")
    lock.add_argument("username")
    lock.add_argument("--minutes", type=float, default=None, help="lock duration in minutes")


def _dev_arguments(parser: argparse.ArgumentParser) -> None:
    dev = _actions(parser)
    outbox = dev.add_parser("outbox", help="print the newest code sent to an email address or phone (auth.dev_outbox)")
    outbox.add_argument("target", help="the email address or E.164 phone the code was sent to")
    outbox.add_argument("--all", action="store_true", help="every kept code, newest first")


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


@asynccontextmanager
async def _dependencies(config: Bootstrap, *, share: bool) -> AsyncIterator[Bootstrap]:
    """``config`` with its database/Redis URLs; empty ones are the development default, served by the
    embedded servers (``internal.devenv``), which CLI commands share with a running service."""
    if config.data.database.url and config.data.redis.url:
        yield config
        return
    from internal.devenv.servers import embedded_servers

    async with embedded_servers(config, share=share) as resolved:
        yield resolved


@asynccontextmanager
async def _wired(config: Bootstrap) -> AsyncIterator[Wired]:
    from internal.container import build

    async with _dependencies(config, share=True) as resolved, build(resolved) as wired:
        yield wired


async def _kms(config: Bootstrap, args: argparse.Namespace) -> int:
    async with _wired(config) as wired:
        return await _kms_action(wired.key_admin, args)


async def _kms_action(admin: KeyAdmin, args: argparse.Namespace) -> int:
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


async def _rekey(admin: KeyAdmin, args: argparse.Namespace) -> int:
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


async def _maintenance(admin: KeyAdmin, args: argparse.Namespace) -> int:
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


async def _credentials(config: Bootstrap, args: argparse.Namespace) -> int:
    async with _wired(config) as wired:
        return await _credentials_action(wired.credentials, args)


async def _credentials_action(usecase: CredentialUsecase, args: argparse.Namespace) -> int:
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


async def _users(config: Bootstrap, args: argparse.Namespace) -> int:
    if args.action == "lock" and args.minutes is not None and args.minutes <= 0:
        raise SystemExit("authkms: --minutes must be positive")
    async with _wired(config) as wired:
        return await _users_action(wired.auth, args)


async def _users_action(auth: AuthUsecase, args: argparse.Namespace) -> int:
    if args.action == "lock":
        seconds = args.minutes * 60 if args.minutes is not None else None
        unlock_at = await auth.lock(args.username, seconds)
        print(f"locked {args.username} until {datetime.fromtimestamp(unlock_at, UTC).isoformat(timespec='seconds')}")
        return 0
    await auth.unlock(args.username)
    print(f"unlocked {args.username}")
    return 0


def _adopt_arguments(adopt: argparse.ArgumentParser) -> None:
    from internal.pkg.kms.legacy_go import GO_DEFAULT_ITERATIONS, GO_DEFAULT_SALT, GO_DEFAULT_SEED

    source = "the Go service's KMS setting (default: the value it hardcodes)"
    adopt.add_argument("--source-seed", default=GO_DEFAULT_SEED, help=f"seed: {source}")
    adopt.add_argument("--source-seed-file", default="", help="read the source seed from this file instead")
    adopt.add_argument("--source-salt", default=GO_DEFAULT_SALT, help=f"salt: {source}")
    adopt.add_argument(
        "--source-iterations", type=int, default=GO_DEFAULT_ITERATIONS, help=f"PBKDF2 iterations: {source}"
    )
    adopt.add_argument("--batch-size", type=int, default=500, help="users per transaction (default 500)")
    adopt.add_argument("--limit", type=int, default=0, help="move at most N users in this run (default: all)")


async def _migrate_adopt(config: Bootstrap, args: argparse.Namespace) -> int:
    """`migrate adopt` (docs/operations.md "Moving from the Go service")."""
    from tqdm import tqdm

    from internal.biz.adopt import GoAdoption, Stage, open_go_keys
    from internal.conf.config import read_secret
    from internal.container import build
    from internal.data.adopt import PgGoSource
    from internal.pkg.kms.legacy_go import GoSettings

    if args.batch_size < 1 or args.limit < 0:
        raise SystemExit("authkms: --batch-size must be positive and --limit not negative")
    seed = read_secret(args.source_seed, args.source_seed_file)
    settings = GoSettings(seed, args.source_salt, args.source_iterations)

    def bar_for(desc: str) -> tuple[Any, Callable[[int, int], None]]:
        bar = tqdm(unit="user", desc=desc, file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        return bar, progress

    async with _dependencies(config, share=True) as config:
        source = await PgGoSource.open(config.data.database.url)
        try:
            stage = await source.stage()
            if stage == Stage.DONE:
                print("nothing to adopt: the schema is ours and no Go service rows are left")
                return 0
            adoption = GoAdoption(source, await open_go_keys(source, settings), batch_size=args.batch_size)
            if stage == Stage.GO:
                bar, progress = bar_for("checking")
                with bar:
                    await adoption.check(progress)
                print(f"schema converted: schema_migrations version {await adoption.convert()}")
            async with build(config) as wired:
                bar, progress = bar_for("adopting")
                with bar:
                    report = await adoption.move_all(wired.users_cipher, wired.audit, progress, args.limit)
                # Record the users' key's encryption counts now (rotation thresholds), not at shutdown.
                await wired.key_ring.tick()
        finally:
            await source.close()
    print(
        f"adopted {report.moved} users in {report.seconds:.2f} s ({report.rate:.0f} rows/s); "
        f"identifiers left without a blind index {report.unindexed}; remaining {report.remaining}; "
        f"Go data keys retired {report.keys_retired}"
    )
    print("done: the Go service's tables are gone" if report.finished else "run `migrate adopt` again to continue")
    return 0


async def _migrate(config: Bootstrap, args: argparse.Namespace) -> int:
    from internal.data import migrate

    if args.action == "adopt":
        return await _migrate_adopt(config, args)
    async with _dependencies(config, share=True) as config:
        url = config.data.database.url
        if args.action == "up":
            print("applied:", await migrate.migrate_up(url, steps=args.n) or "nothing")
        elif args.action == "down":
            print("reverted:", await migrate.migrate_down(url, steps=args.n) or "nothing")
        else:
            version, dirty = await migrate.schema_version(url)
            print(f"version {version if version is not None else 'none'}{' (dirty)' if dirty else ''}")
    return 0


async def _dev(config: Bootstrap, args: argparse.Namespace) -> int:
    """Development helpers; refused in production mode, whatever the rest of the configuration says."""
    from internal.biz.identifiers import normalize_email, normalize_phone
    from internal.data.senders import DevOutboxSender

    if config.security.mode == "production":
        print("authkms: dev commands are refused in production mode", file=sys.stderr)
        return 2
    if not config.auth.dev_outbox:
        print("authkms: auth.dev_outbox is off: codes go out by email/SMS and are not kept", file=sys.stderr)
        return 2
    # The outbox keys its lists by the normalized target, as the captcha use case sends them.
    target = normalize_email(args.target) if "@" in args.target else normalize_phone(args.target)
    async with _wired(config) as wired:
        outbox = wired.senders.email if "@" in target else wired.senders.sms
        if not isinstance(outbox, DevOutboxSender):  # a real sender is configured for this channel
            print("authkms: this channel has a real sender (SMTP or SMS webhook); no code is kept", file=sys.stderr)
            return 2
        codes = await outbox.codes(target)
    if not codes:
        print(f"authkms: no code kept for {args.target} (none sent, or expired)", file=sys.stderr)
        return 1
    print("\n".join(codes) if args.all else codes[0])
    return 0


async def _serve(config: Bootstrap, args: argparse.Namespace) -> int:
    """Once per machine: the embedded servers (when no URL is configured) and the migrations; then serve
    here, or supervise ``--workers`` copies of this script that inherit the resolved URLs."""
    from internal.app import serve, stop_event
    from internal.data.migrate import migrate_up, verify_schema
    from internal.server.supervisor import supervise, workers_to_supervise

    workers = workers_to_supervise(config, args.workers)
    stop = stop_event()
    async with _dependencies(config, share=False) as config:
        if config.data.database.auto_migrate:
            applied = await migrate_up(config.data.database.url)
            if applied:
                log.info("migrations applied", extra={"versions": applied})
        else:  # refuse the Go service's or any other foreign schema before touching it
            await verify_schema(config.data.database.url)
        if stop.is_set():  # SIGTERM/SIGINT during start-up
            return 0
        if workers:
            worker_argv = [sys.executable, str(Path(__file__).resolve()), "-conf", args.conf, "serve"]
            return await supervise(config, worker_argv, workers)
        await serve(config, stop)
    return 0


COMMANDS: dict[str, Command] = {
    "serve": Command("run the gRPC and HTTP service (default)", _serve_arguments, _serve),
    "migrate": Command("database schema migrations", _migrate_arguments, _migrate),
    "kms": Command("key management", _kms_arguments, _kms),
    "credentials": Command("service credentials for kms.v1 callers", _credentials_arguments, _credentials),
    "users": Command("user accounts", _users_arguments, _users),
    "dev": Command("development helpers (refused in production mode)", _dev_arguments, _dev),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authkms", description="Authentication and field-level encryption service")
    parser.add_argument("-conf", "--conf", default="configs", help="config file or folder (default: configs)")
    parser.add_argument("--workers", type=int, default=None, help="serve with N processes sharing the port")
    subparsers = parser.add_subparsers(dest="command", metavar="command")
    for name, command in COMMANDS.items():
        command.arguments(subparsers.add_parser(name, help=command.help))
    return parser


def _failure(exc: BaseException) -> str:
    """One line for a failed command, never a traceback or an exception's class name."""
    import socket

    import asyncpg
    import redis.exceptions

    from internal.biz.errors import DomainError

    detail = str(exc).strip()
    if isinstance(exc, DomainError):
        return f"{exc.reason}: {exc.message}"
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedColumnError):
        return "the database schema is missing or out of date: run `migrate up` (serve migrates at start)"
    unreachable = (
        ConnectionError,
        TimeoutError,
        socket.gaierror,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    )
    if isinstance(exc, unreachable):
        return "cannot reach PostgreSQL or Redis" + (f" ({detail})" if detail else "") + "; is it running?"
    if isinstance(exc, asyncpg.PostgresError):
        return f"PostgreSQL refused the command: {detail}"
    return detail or "unexpected error; run with APP__MONITORING__LOG_LEVEL=DEBUG for the details"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.conf)
    except ConfigError as exc:
        print(f"authkms: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.monitoring.log_level, config.monitoring.log_format, config.security.mode == "production")
    if args.workers is not None and args.workers < 1:
        print("authkms: --workers must be at least 1", file=sys.stderr)
        return 2
    command = COMMANDS[args.command or "serve"]
    try:
        return run_event_loop(command.run(config, args), config.server.event_loop)
    except Exception as exc:
        log.debug("command failed", exc_info=exc)
        print(f"authkms: {_failure(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
