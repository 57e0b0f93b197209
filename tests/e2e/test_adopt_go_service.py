"""`migrate adopt` on a database the Go service wrote: its migrations (recreated from its schema) and rows in its
formats (``tests.integration.adopt.go_service``: bcrypt cost 10, ``<version>:AES-256-GCM:<hex>`` values under data
keys wrapped by its PBKDF2 root key, plain SHA-256 hashes).

Before adopting, `migrate up` and the server refuse the database, and adopt with wrong source settings refuses
before changing anything. Adopt then runs three times: a first run moves part of the users, a second is killed
(SIGKILL) with a batch half-written, a third finishes; a fourth has nothing to do. Afterwards every user logs in
with the old password, by username, email and phone, GetProfile shows the masked PII, `pg_dump` holds no plaintext
PII and none of the Go service's SHA-256 hashes, and golang-migrate's `schema_migrations` reads our latest version.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from internal.biz.identifiers import normalize_email, normalize_phone
from internal.biz.masking import mask_email, mask_phone
from internal.biz.user import mask_name
from internal.data.migrate import discover
from tests.e2e.harness import ROOT, start_server
from tests.integration.adopt.go_service import GoAccount, write_go_database

pytestmark = pytest.mark.e2e
TIMEOUT = 30


def go_accounts() -> list[GoAccount]:
    """Users as the Go service registered them, and the odd rows it could hold."""
    names = ["José Martínez", "李小龙", "Anna-Lena Öst", "O'Brien"]
    accounts = [
        GoAccount(
            f"gouser{i}",
            f"Go-pass-{i}-{secrets.token_hex(4)}",
            f"Go.User{i}@Example.COM",  # as typed: the Go service neither trimmed nor lower-cased it
            f"+86139{secrets.randbelow(10**8):08d}",
            names[i % len(names)],
        )
        for i in range(18)
    ]
    accounts.append(GoAccount("nophone", f"Np-{secrets.token_hex(6)}", "no.phone@example.org"))
    accounts.append(GoAccount("nopii", f"Nx-{secrets.token_hex(6)}"))  # a row from before its KMS
    # Its hashes were of the value as typed, so it let this account register gouser0's address in other case;
    # its phone lacks the country code. Both stay encrypted; neither identifies this account.
    accounts.append(
        GoAccount("twin", f"Tw-{secrets.token_hex(6)}", "go.user0@example.com", "13900000000", "Tweedle Dum")
    )
    return accounts


@pytest.fixture
async def go_database(postgres_server_url: str) -> AsyncIterator[str]:
    name = f"test_go_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(postgres_server_url)._replace(path="/" + name))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def cli_env(server_env: dict[str, str], url: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("APP__") and k not in ("DATABASE_URL",)}
    return {
        **inherited,
        **server_env,
        "DATABASE_URL": url,
        "APP__KMS__ITERATIONS": "10000",
        "APP__MONITORING__LOG_LEVEL": "WARNING",
    }


def adopt_argv(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "cmd" / "server" / "main.py"), "-conf", str(ROOT / "configs"), *args]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(adopt_argv(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def pg_dump(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pg_dump", "--no-owner", url], capture_output=True, text=True, timeout=120)


async def one(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def state(url: str) -> tuple[object, ...]:
    """schema_migrations, where the users table is, and the row counts on each side."""
    conn = await asyncpg.connect(url)
    try:
        migration = tuple(await conn.fetchrow("SELECT version, dirty FROM schema_migrations"))
        side = await conn.fetchval("SELECT to_regclass('authkms_adopt.users') IS NOT NULL")
        moved = await conn.fetchval("SELECT count(*) FROM users") if side else None
        waiting = await conn.fetchval("SELECT count(*) FROM authkms_adopt.users") if side else None
        return migration, side, moved, waiting
    finally:
        await conn.close()


async def others_connected(url: str) -> int:
    return int(
        await one(
            url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )  # type: ignore[arg-type]
    )


async def test_adopt_the_go_service_database_in_place(
    go_database: str, server_env: dict[str, str], tmp_path: Path
) -> None:
    url = go_database
    accounts = await write_go_database(url, go_accounts())
    env = cli_env(server_env, url)
    latest = discover()[-1].version

    # Refused as it is: by `migrate up`, by a starting server, and by adopt with wrong source settings.
    up = run_cli(env, "migrate", "up")
    assert up.returncode == 1 and "migrated by the Go service" in up.stderr and "migrate adopt" in up.stderr
    server = start_server(tmp_path, {**server_env, "DATABASE_URL": url})
    assert server.proc.wait(120) != 0 and "migrate adopt" in server.logs()
    refused = run_cli(env, "migrate", "adopt", "--source-seed", "not-the-go-seed-value")
    assert refused.returncode == 1, refused.stderr
    assert "do not open under the source settings" in refused.stderr
    assert await state(url) == ((2, False), False, None, None)
    assert await one(url, "SELECT count(*) FROM users") == len(accounts)

    # First run: part of the users.
    first = run_cli(env, "migrate", "adopt", "--batch-size", "4", "--limit", "8")
    assert first.returncode == 0, first.stderr
    assert "schema converted" in first.stdout and "remaining 13" in first.stdout
    assert await state(url) == ((latest, False), True, 8, 13)

    # Second run, killed in its second batch: that batch's row lock is held by us, so it waits half-written.
    waiting_ids = [r["id"] for r in await asyncpg_fetch(url, "SELECT id FROM authkms_adopt.users ORDER BY id")]
    blocker = await asyncpg.connect(url)
    try:
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT 1 FROM authkms_adopt.users WHERE id = $1 FOR UPDATE", waiting_ids[5])
        proc = await asyncio.create_subprocess_exec(
            *adopt_argv("migrate", "adopt", "--batch-size", "4"),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, "the second run never reached its blocked batch"
            assert proc.returncode is None, "the second run ended before it was killed"
            blocked = await one(url, "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'")
            if blocked and (await state(url))[3] == 9:  # first batch committed, second waiting
                break
            await asyncio.sleep(0.05)
        proc.kill()
        await proc.wait()
        assert await state(url) == ((latest, False), True, 12, 9)  # the half-written batch is not visible
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    deadline = time.monotonic() + 60
    while await others_connected(url):  # the killed run's backends roll back and leave
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert await state(url) == ((latest, False), True, 12, 9)

    # Third run finishes; a fourth has nothing to do.
    third = run_cli(env, "migrate", "adopt", "--batch-size", "4")
    assert third.returncode == 0, third.stderr
    assert (
        "adopted 9 users" in third.stdout and "remaining 0" in third.stdout and "Go data keys retired 3" in third.stdout
    )
    # The twin's address is gouser0's once normalised, and its phone has no country code.
    assert "identifiers left without a blind index 2" in third.stdout
    again = run_cli(env, "migrate", "adopt")
    assert again.returncode == 0 and "nothing to adopt" in again.stdout

    # golang-migrate reads the single row of schema_migrations: our latest version, clean.
    rows = await asyncpg_fetch(url, "SELECT version, dirty FROM schema_migrations")
    assert [tuple(r) for r in rows] == [(latest, False)]
    assert await one(url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'authkms_adopt'") == 0
    assert await one(url, "SELECT count(*) FROM pg_proc WHERE proname = 'update_kms_data_keys_updated_at'") == 0
    stored = {r["id"]: r for r in await asyncpg_fetch(url, "SELECT * FROM users")}
    assert sorted(stored) == sorted(a.id for a in accounts)  # no row lost, ids kept
    for account in accounts:
        assert stored[account.id]["username"] == account.username
        assert stored[account.id]["password"].startswith("$2a$10$")  # the bcrypt hash, as the Go service left it

    # Nothing readable is left: no plaintext PII and none of the Go service's plain SHA-256 hashes.
    dump = pg_dump(url)
    assert dump.returncode == 0, dump.stderr
    assert ":AES-256-GCM:" not in dump.stdout  # no value in the Go service's format either
    text = dump.stdout.lower()
    for account in accounts:
        for value in (account.email, account.phone, account.name):
            if value is None:
                continue
            spellings = {value, value.lower(), value.strip().lower()}
            for spelling in spellings:
                assert spelling.lower() not in text, f"plaintext PII of {account.username} in pg_dump"
                assert hashlib.sha256(spelling.encode()).hexdigest() not in text, "a plain SHA-256 of PII"

    # The service on the adopted database: every user logs in with the old password.
    served = start_server(
        tmp_path,
        {
            **server_env,
            "DATABASE_URL": url,
            "APP__AUTH__CAPTCHA_ENABLED": "false",
            "APP__AUTH__LEGACY_BCRYPT": "true",
            "APP__AUTH__LOGIN_RATE_LIMIT": "1000",
        },
    )
    try:
        served.wait_serving(120)
        channel = grpc.insecure_channel(served.target)
        stub = auth_pb2_grpc.AuthStub(channel)

        def login(identifier: str, password: str) -> auth_pb2.GetProfileReply:
            reply = stub.Login(auth_pb2.LoginRequest(username=identifier, password=password), timeout=TIMEOUT)
            bearer = (("authorization", f"Bearer {reply.access_token}"),)
            return stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=bearer, timeout=TIMEOUT)

        by_name = {a.username: a for a in accounts}
        for account in accounts:
            profile = login(account.username, account.password)
            assert profile.username == account.username
            twin = account.username == "twin"
            email = normalize_email(account.email) if account.email else ""
            assert profile.email_masked == (mask_email(email) if email else "")
            phone = account.phone or ""
            expected_phone = phone if twin else (normalize_phone(phone) if phone else "")
            assert profile.phone_masked == (mask_phone(expected_phone) if expected_phone else "")
            assert profile.name_masked == mask_name(account.name or "")
        for account in accounts[1:4]:
            assert account.email is not None and account.phone is not None
            assert login(account.email, account.password).username == account.username
            assert login(account.phone, account.password).username == account.username
        # The address both rows held identifies the older account only.
        assert login("GO.USER0@example.com", by_name["gouser0"].password).username == "gouser0"
        with pytest.raises(grpc.RpcError) as wrong:
            login("go.user0@example.com", by_name["twin"].password)
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # New registrations take ids after the Go service's, and its addresses stay taken.
        fresh = auth_pb2.RegisterRequest(username="newcomer", password="Fresh-pass-2026x", email="new@example.net")
        stub.Register(fresh, timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError) as taken:
            stub.Register(
                auth_pb2.RegisterRequest(
                    username="squatter", password="Squat-pass-2026x", email="go.user5@example.com"
                ),
                timeout=TIMEOUT,
            )
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
        channel.close()
        # The server gives adopted rows their confusable-safe keys at start-up (docs/security.md); the twin, whose
        # address is gouser0's, keeps none and goes on working.
        deadline = time.monotonic() + 60
        keyless = "SELECT array_agg(username ORDER BY id) FROM users WHERE username_key IS NULL"
        while await one(url, keyless) != ["twin"]:
            assert time.monotonic() < deadline, "adopted rows never got their identifier keys"
            await asyncio.sleep(0.2)
    finally:
        served.terminate()
    left = await one(url, "SELECT count(*) FROM users WHERE password LIKE '$2%'")
    assert left == 0  # every login replaced its bcrypt hash by an Argon2id one
    newcomer = await one(url, "SELECT id FROM users WHERE username = 'newcomer'")
    assert isinstance(newcomer, int) and newcomer > max(a.id for a in accounts)


async def asyncpg_fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()
