"""The upgrade to named keys on a database written before them (schema version 5): both kinds of existing ciphertext
(users' PII and a caller's value) keep decrypting through the migration and through the maintenance that moves users'
PII onto the reserved key; afterwards a `default` credential can neither open a users row nor match its hashes.

The data is written exactly as the service wrote it before named keys: data keys wrapped by the root key in the flat
`kms_data_keys` table, format 1 envelopes (no key name in the associated data) and the one blind-index key per field
that `default` keeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from api.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from api.gen.kms.v1 import kms_pb2, kms_pb2_grpc
from internal.biz.password import Argon2Params, Argon2PasswordHasher
from internal.conf.config import load_config
from internal.data.migrate import migrate_up
from internal.pkg.kms.datakey import KeyWrapper
from internal.pkg.kms.envelope import MAGIC, Algorithm, associated_data
from internal.pkg.kms.rootkey import derive_root_key
from tests.e2e.harness import ROOT, auth, cli, credential, reason, start_server

ITERATIONS = 10_000  # what the e2e harness configures
PASSWORD = "correct-horse-9-battery"
EMAIL = "legacy.user@example.com"
PHONE = "+8613800138000"
CARD = b"4111 1111 1111 1111"
CARD_CONTEXT = {"order": "7"}


def legacy_envelope(material: bytes, version: int, field: str, plaintext: bytes, context: dict[str, str]) -> bytes:
    """A format 1 envelope, as sealed before named keys."""
    prefix = struct.pack(">BBIB", MAGIC, 1, version, 1)
    nonce = os.urandom(12)
    return prefix + nonce + AESGCM(material).encrypt(nonce, plaintext, associated_data(prefix, None, field, context))


async def write_pre_named_keys_data(url: str) -> dict[str, object]:
    """Schema 5 with two data keys, one user and one caller ciphertext, as the service left them then."""
    await migrate_up(url, steps=5)
    conf = load_config(str(ROOT / "configs")).kms
    root = derive_root_key(conf.seed, conf.salt, ITERATIONS, 32)
    wrapper = KeyWrapper(root)
    materials = {1: os.urandom(32), 2: os.urandom(32)}
    conn = await asyncpg.connect(url)
    try:
        for version, material in materials.items():
            key_id = str(uuid.uuid4())
            await conn.execute(
                "INSERT INTO kms_data_keys (id, version, algorithm, encrypted_key, key_hash, status, expires_at) "
                "VALUES ($1::uuid, $2, 'AES-256-GCM', $3, $4, $5, now() + interval '30 days')",
                key_id,
                version,
                wrapper.wrap(key_id, version, Algorithm.AES_256_GCM, material),
                wrapper.key_hash(material),
                "active" if version == 2 else "inactive",
            )
        user_id = int(await conn.fetchval("SELECT nextval('users_id_seq')"))
        context = {"table": "users", "user_id": str(user_id)}
        index = {f: root.blind_index_key("default", f) for f in ("email", "phone")}
        password_hash = await Argon2PasswordHasher(Argon2Params(19 * 1024, 2, 1)).hash(PASSWORD)
        await conn.execute(
            "INSERT INTO users (id, username, password, email_encrypted, email_hash, phone_encrypted, phone_hash, "
            "pii_key_version) VALUES ($1, 'legacy_user', $2, $3, $4, $5, $6, 1)",
            user_id,
            password_hash,
            legacy_envelope(materials[1], 1, "email", EMAIL.encode(), context),
            hmac.new(index["email"], EMAIL.encode(), hashlib.sha256).hexdigest(),
            legacy_envelope(materials[2], 2, "phone", PHONE.encode(), context),
            hmac.new(index["phone"], PHONE.encode(), hashlib.sha256).hexdigest(),
        )
    finally:
        await conn.close()
    return {"user_id": user_id, "card": legacy_envelope(materials[1], 1, "orders.card", CARD, CARD_CONTEXT)}


async def users_row(url: str, user_id: int) -> asyncpg.Record:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
        assert row is not None
        return row
    finally:
        await conn.close()


@pytest.fixture
def upgraded(tmp_path: Path, server_env: dict[str, str], empty_database: str) -> Iterator[tuple[object, ...]]:
    legacy = asyncio.run(write_pre_named_keys_data(empty_database))
    server = start_server(
        tmp_path, {**server_env, "DATABASE_URL": empty_database, "APP__AUTH__CAPTCHA_ENABLED": "false"}
    )
    try:
        server.wait_serving()
        yield server, empty_database, legacy
    finally:
        server.terminate()


def test_upgrade_keeps_every_ciphertext_and_maintenance_moves_users_pii(upgraded: tuple[object, ...]) -> None:
    server, url, legacy = upgraded
    env = server.env  # type: ignore[attr-defined]
    user_id = int(legacy["user_id"])  # type: ignore[index]
    before = asyncio.run(users_row(url, user_id))  # type: ignore[arg-type]
    kms_channel = grpc.insecure_channel(server.target)  # type: ignore[attr-defined]
    kms = kms_pb2_grpc.KMSStub(kms_channel)
    md = auth(credential(env, "kms.encrypt,kms.decrypt,kms.admin"))  # made after the upgrade, without --keys
    stub = auth_pb2_grpc.AuthStub(grpc.insecure_channel(server.target))  # type: ignore[attr-defined]

    def decrypt_card() -> bytes:
        request = kms_pb2.DecryptRequest(ciphertext=legacy["card"], field="orders.card", context=CARD_CONTEXT)  # type: ignore[index]
        return bytes(kms.Decrypt(request, metadata=md, timeout=10).plaintext)

    def login_and_profile() -> auth_pb2.GetProfileReply:
        login = stub.Login(auth_pb2.LoginRequest(username=EMAIL, password=PASSWORD), timeout=10)
        return stub.GetProfile(auth_pb2.GetProfileRequest(), metadata=auth(login.access_token), timeout=10)

    # The caller's value and the user, as they were.
    assert decrypt_card() == CARD
    assert login_and_profile().email_masked.startswith("l")
    keys = kms.ListDataKeys(kms_pb2.ListDataKeysRequest(), metadata=md, timeout=10).keys
    assert sorted(k.version for k in keys) == [1, 2] and all(k.key_name == "default" for k in keys)
    # The old address still blocks a new registration, before maintenance re-indexes it.
    with pytest.raises(grpc.RpcError) as taken:
        stub.Register(auth_pb2.RegisterRequest(username="squatter", password="Squat-pass-123", email=EMAIL), timeout=10)
    assert reason(taken.value) == "USER_EXISTS"
    status = cli(env, "kms", "status")
    assert "users rows still to move onto the users' key: 1" in status.stdout, status.stdout

    moved = cli(env, "kms", "maintenance")
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert "users rows still to move onto the users' key: 0" in cli(env, "kms", "status").stdout

    after = asyncio.run(users_row(url, user_id))  # type: ignore[arg-type]
    for column in ("email_encrypted", "phone_encrypted"):
        assert bytes(after[column])[1] == 2 and after[column] != before[column], column
    assert after["email_hash"] != before["email_hash"] and after["phone_hash"] != before["phone_hash"]
    assert after["pii_key_version"] >= 1
    # Everything still opens: the user logs in by email and by phone, the caller's value decrypts.
    assert login_and_profile().phone_masked
    assert stub.Login(auth_pb2.LoginRequest(username=PHONE, password=PASSWORD), timeout=10).access_token
    assert decrypt_card() == CARD
    # A `default` credential can no longer open the row or match its hashes; callers' own hashes are unchanged.
    context = {"table": "users", "user_id": str(user_id)}
    row_request = kms_pb2.DecryptRequest(ciphertext=bytes(after["email_encrypted"]), field="email", context=context)
    with pytest.raises(grpc.RpcError) as refused:
        kms.Decrypt(row_request, metadata=md, timeout=10)
    assert reason(refused.value) == "CIPHERTEXT_INVALID"
    hashed = kms.HashField(kms_pb2.HashFieldRequest(field="email", value=EMAIL), metadata=md, timeout=10).hash
    assert hashed == before["email_hash"].strip() and hashed != after["email_hash"].strip()
    # Maintenance destroyed nothing of `default`.
    statuses = {k.status for k in kms.ListDataKeys(kms_pb2.ListDataKeysRequest(), metadata=md, timeout=10).keys}
    assert "revoked" not in statuses and "pending_destruction" not in statuses
