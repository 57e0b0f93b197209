"""No key bytes, seed, salt or plaintext reaches a log record in a full KMS scenario (SECURITY.md 16)."""

from __future__ import annotations

import base64
import logging
import traceback
from datetime import timedelta

import asyncpg
import pytest

from internal.biz.errors import DomainError
from internal.pkg.kms.crypto import DecryptItem, EncryptItem
from internal.pkg.kms.datakey import KeyWrapper
from internal.pkg.kms.manager import RootKeyMismatch
from internal.pkg.kms.rootkey import derive_root_key
from tests.integration.kms.conftest import SALT, SEED, MakeManager
from tests.integration.kms.test_maintenance_pg import insert_user, values_for

PLAINTEXTS = [b"alice@example.com", b"+8613800000001", b"Alice Liddell", b"JBSWY3DPEHPK3PXP"]


def forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), repr(secret), base64.b64encode(secret).decode()]


def rendered(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.args), repr(vars(record))]
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)


async def test_full_scenario_logs_no_secrets(
    make_manager: MakeManager, db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a = await make_manager(pubsub=True, destroy_grace=timedelta(0))
    b = await make_manager(pubsub=True)
    sealed = [await a.crypto.encrypt("email", p, {"user_id": "7"}) for p in PLAINTEXTS]
    users = [await insert_user(db, a, i) for i in range(4)]
    await a.rotate("logging scenario")
    for s, p in zip(sealed, PLAINTEXTS, strict=True):
        assert await b.crypto.decrypt("email", s.ciphertext, {"user_id": "7"}) == p
    batch = await b.crypto.encrypt_batch([EncryptItem("email", p) for p in PLAINTEXTS] + [EncryptItem("", b"x")])
    opened = await b.crypto.decrypt_batch(
        [DecryptItem("email", s.ciphertext, {"user_id": "8"}) for s in sealed]
        + [DecryptItem("email", b"\xa7\x01" + b"\x00" * 40)]
    )
    assert all(isinstance(r, DomainError) for r in opened)
    for p in PLAINTEXTS:
        a.crypto.blind_index("email", p.decode())
    # Capture every data key's material before maintenance destroys the old ones.
    wrapper = KeyWrapper(derive_root_key(SEED, SALT, 10_000))
    keys = [
        wrapper.unwrap(str(r["id"]), r["version"], r["algorithm"], r["encrypted_key"], r["key_hash"])
        for r in await db.fetch("SELECT * FROM kms_data_keys")
    ]
    await db.execute("UPDATE kms_data_keys SET expires_at = now() - interval '1 second' WHERE status <> 'active'")
    report = await a.maintenance()
    assert report.records_reencrypted == len(users) and report.keys_destroyed == 1
    with pytest.raises(RootKeyMismatch):
        await make_manager(seed=SEED + "-wrong")
    for manager in (a, b):
        await manager.close()
    assert batch.results and any("kms" in r.name for r in caplog.records)

    root = derive_root_key(SEED, SALT, 10_000)
    secrets = [*keys, bytes(root._key), root.wrap_key(), root.verification_key(), root.blind_index_key("email")]
    secrets += PLAINTEXTS + [v for i in range(4) for v in values_for(i).values() if v is not None]
    needles = [form for secret in secrets for form in forms(secret)]
    needles += [SEED, SALT] + [p.decode() for p in PLAINTEXTS]
    text = "\n".join(rendered(r) for r in caplog.records)
    leaked = [n for n in needles if n in text]
    assert leaked == [], f"secrets in logs: {leaked[:3]}"
