"""A database as the Go service left it: its two migrations (recreated from its schema) and rows written the way
its code writes them. Shared by the adopt tests and ``bench.adopt``; it never imports the code under test.

What its code does, restated:
* golang-migrate's ``schema_migrations(version bigint, dirty boolean)`` at version 2;
* root key PBKDF2-HMAC-SHA256(seed, salt, iterations, 32 bytes);
* ``kms_data_keys.encrypted_key`` = nonce(12) | AES-256-GCM(root key, 32-byte data key), no associated data;
* ``users.<field>_encrypted`` = the text ``<version>:AES-256-GCM:<hex(nonce | AES-GCM(data key, value))>``;
* ``users.<field>_hash`` = hex SHA-256 of the value as typed; ``password`` = bcrypt, cost 10, ``$2a$``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import bcrypt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

SEED = "default-seed-value"
SALT = "default-salt-value"
ITERATIONS = 100_000

# Its migrations/000001_init_schema.up.sql and 000002_create_kms_data_keys.up.sql, same tables and columns.
GO_MIGRATION_1 = """
CREATE TABLE IF NOT EXISTS users (
    id SERIAL PRIMARY KEY,
    username VARCHAR(255) NOT NULL UNIQUE,
    password VARCHAR(255) NOT NULL,
    email_encrypted BYTEA,
    email_hash VARCHAR(64),
    phone_encrypted BYTEA,
    phone_hash VARCHAR(64),
    name_encrypted BYTEA,
    name_hash VARCHAR(64),
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_users_email_hash ON users(email_hash);
CREATE INDEX IF NOT EXISTS idx_users_phone_hash ON users(phone_hash);
CREATE INDEX IF NOT EXISTS idx_users_name_hash ON users(name_hash);
"""
GO_MIGRATION_2 = """
CREATE TABLE IF NOT EXISTS kms_data_keys (
    id VARCHAR(36) PRIMARY KEY,
    version INTEGER NOT NULL,
    algorithm VARCHAR(50) NOT NULL DEFAULT 'AES-256-GCM',
    encrypted_key BYTEA NOT NULL,
    key_hash VARCHAR(64) NOT NULL,
    status VARCHAR(20) NOT NULL DEFAULT 'active',
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    expires_at TIMESTAMP WITH TIME ZONE,
    metadata JSONB,
    CONSTRAINT kms_data_keys_status_check CHECK (status IN ('active', 'inactive', 'expired', 'revoked')),
    CONSTRAINT kms_data_keys_algorithm_check
        CHECK (algorithm IN ('AES-256-GCM', 'AES-256-CBC', 'ChaCha20-Poly1305', 'SM4-GCM'))
);
CREATE INDEX IF NOT EXISTS idx_kms_data_keys_version ON kms_data_keys(version);
CREATE INDEX IF NOT EXISTS idx_kms_data_keys_status ON kms_data_keys(status);
CREATE UNIQUE INDEX IF NOT EXISTS idx_kms_data_keys_version_status ON kms_data_keys(version, status)
    WHERE status = 'active';
CREATE OR REPLACE FUNCTION update_kms_data_keys_updated_at() RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = CURRENT_TIMESTAMP;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER trigger_update_kms_data_keys_updated_at BEFORE UPDATE ON kms_data_keys
    FOR EACH ROW EXECUTE FUNCTION update_kms_data_keys_updated_at();
CREATE OR REPLACE VIEW kms_key_stats AS
    SELECT status, algorithm, COUNT(*) AS key_count FROM kms_data_keys GROUP BY status, algorithm;
"""


@dataclass(frozen=True)
class GoAccount:
    username: str
    password: str = field(repr=False)
    email: str | None = None
    phone: str | None = None
    name: str | None = None
    id: int = 0


@dataclass(frozen=True)
class GoKey:
    version: int
    material: bytes = field(repr=False)
    name: str  # how its values spell the version: "3", "v3", or the "v<nanoseconds>" kept in metadata
    status: str = "inactive"


def go_root_key(seed: str = SEED, salt: str = SALT, iterations: int = ITERATIONS) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt.encode(), iterations=iterations)
    return kdf.derive(seed.encode())


def go_seal(key: GoKey, value: str) -> bytes:
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(key.material).encrypt(nonce, value.encode(), None)
    return f"{key.name}:AES-256-GCM:{sealed.hex()}".encode()


def go_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def go_bcrypt(password: str) -> str:
    """What Go's bcrypt.GenerateFromPassword(…, DefaultCost) returns: cost 10, the $2a$ prefix."""
    return "$2a$" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()[4:]


def go_keys() -> list[GoKey]:
    nanos = "v1733011200123456789"
    return [
        GoKey(1, os.urandom(32), "1"),
        GoKey(2, os.urandom(32), nanos),
        GoKey(3, os.urandom(32), "v3", "active"),
    ]


async def migrate_like_go(conn: asyncpg.Connection, version: int = 2) -> None:
    """Its two migrations through golang-migrate: each step, then the single row (version, dirty)."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
    )
    for step, sql in ((1, GO_MIGRATION_1), (2, GO_MIGRATION_2))[:version]:
        await conn.execute(sql)
        await conn.execute("TRUNCATE schema_migrations")
        await conn.execute("INSERT INTO schema_migrations (version, dirty) VALUES ($1, false)", step)


async def write_go_database(
    url: str,
    accounts: Sequence[GoAccount],
    *,
    keys: Sequence[GoKey] | None = None,
    root_key: bytes | None = None,
    password_hashes: dict[str, str] | None = None,
) -> list[GoAccount]:
    """A Go-service database with ``accounts`` (values spread over its data keys); returns them with their ids.
    ``password_hashes`` (username → bcrypt) lets a caller reuse hashes instead of paying cost 10 per row."""
    keys = list(keys or go_keys())
    root = root_key or go_root_key()
    conn = await asyncpg.connect(url)
    try:
        await migrate_like_go(conn)
        for key in keys:
            nonce = os.urandom(12)
            metadata = (
                json.dumps({"version": key.name})
                if key.name.startswith("v") and key.name != f"v{key.version}"
                else None
            )
            await conn.execute(
                "INSERT INTO kms_data_keys (id, version, algorithm, encrypted_key, key_hash, status, expires_at,"
                " metadata) VALUES ($1, $2, 'AES-256-GCM', $3, $4, $5, now() + interval '1 day', $6::jsonb)",
                str(uuid.uuid4()),
                key.version,
                nonce + AESGCM(root).encrypt(nonce, key.material, None),
                hashlib.sha256(key.material).hexdigest(),
                key.status,
                metadata,
            )
        rows = []
        for i, account in enumerate(accounts):
            key = keys[i % len(keys)]
            password = (password_hashes or {}).get(account.username) or go_bcrypt(account.password)

            def sealed(value: str | None, k: GoKey = key) -> bytes | None:
                return go_seal(k, value) if value is not None else None

            rows.append(
                (
                    account.username,
                    password,
                    sealed(account.email),
                    go_hash(account.email) if account.email is not None else None,
                    sealed(account.phone),
                    go_hash(account.phone) if account.phone is not None else None,
                    sealed(account.name),
                    go_hash(account.name) if account.name is not None else None,
                    datetime(2025, 1, 1 + i % 28, 12, 0, 0),
                )
            )
        await conn.copy_records_to_table(
            "users",
            records=rows,
            columns=[
                "username",
                "password",
                "email_encrypted",
                "email_hash",
                "phone_encrypted",
                "phone_hash",
                "name_encrypted",
                "name_hash",
                "created_at",
            ],
        )
        ids = {r["username"]: r["id"] for r in await conn.fetch("SELECT id, username FROM users")}
    finally:
        await conn.close()
    return [GoAccount(a.username, a.password, a.email, a.phone, a.name, ids[a.username]) for a in accounts]
