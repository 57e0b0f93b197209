"""No key bytes, seed, salt or plaintext reaches a log record in a full KMS scenario (docs/security.md 16)."""

from __future__ import annotations

import base64
import logging
import traceback
from datetime import timedelta

import asyncpg
import pytest

from internal.biz import pii
from internal.biz.errors import DomainError
from internal.biz.kms import DEFAULT_KEY, USERS_KEY
from internal.biz.kms_cipher import DecryptItem, EncryptItem
from internal.biz.kms_keyring import RootKeyMismatch
from internal.pkg.kms.datakey import KeyWrapper
from internal.pkg.kms.rootkey import derive_root_key
from tests.integration.helpers import insert_user
from tests.integration.kms.conftest import SALT, SEED, MakeKms
from tests.unit.kms.stack import FakeClock, user_values

PLAINTEXTS = [b"alice@example.com", b"+8613800000001", b"Alice Liddell", b"JBSWY3DPEHPK3PXP"]
KEY_NAMES = (DEFAULT_KEY, "orders", USERS_KEY)


def forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), repr(secret), base64.b64encode(secret).decode()]


def rendered(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.args), repr(vars(record))]
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(parts)


async def test_full_scenario_logs_no_secrets(
    make_kms: MakeKms, db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    a = await make_kms(pubsub=True, clock=clock, rotate_interval=timedelta(0))
    b = await make_kms(pubsub=True, rotate_interval=timedelta(0))
    await a.admin.create_key("orders")
    sealed = [await a.cipher.encrypt(name, "email", p, {"user_id": "7"}) for name in KEY_NAMES for p in PLAINTEXTS]
    users = [await insert_user(db, a, i) for i in range(4)]
    for name in KEY_NAMES:
        await a.admin.rotate(name, "logging scenario")
    for i, s in enumerate(sealed):
        name, plaintext = KEY_NAMES[i // len(PLAINTEXTS)], PLAINTEXTS[i % len(PLAINTEXTS)]
        assert (await b.cipher.decrypt(name, "email", s.ciphertext, {"user_id": "7"})).plaintext == plaintext
    batch = await b.cipher.encrypt_batch(
        "orders", [EncryptItem("email", p) for p in PLAINTEXTS] + [EncryptItem("", b"x")]
    )
    opened = await b.cipher.decrypt_batch(
        "orders",
        [DecryptItem("email", s.ciphertext, {"user_id": "8"}) for s in sealed]
        + [DecryptItem("email", b"\xa7\x02" + b"\x00" * 40)],
    )
    assert all(isinstance(r, DomainError) for r in opened)
    for name in KEY_NAMES:
        for p in PLAINTEXTS[:1]:
            a.cipher.blind_index(name, "email", p.decode())
    # Capture every data key's material before maintenance destroys the old ones.
    wrapper = KeyWrapper(derive_root_key(SEED, SALT, 10_000))
    keys = [
        wrapper.unwrap(str(r["id"]), r["version"], r["algorithm"], r["encrypted_key"], r["key_hash"])
        for r in await db.fetch("SELECT * FROM kms_data_keys")
    ]
    await a.admin.schedule_destruction("orders", 1)
    with pytest.raises(DomainError):
        await b.cipher.decrypt("orders", "email", sealed[len(PLAINTEXTS)].ciphertext, {"user_id": "7"})
    report = await a.admin.maintenance([USERS_KEY, "orders"])
    assert report.records_reencrypted == len(users) and report.destruction_scheduled == 1
    clock.advance(timedelta(days=31))
    assert (await a.admin.maintenance([USERS_KEY, "orders"])).keys_destroyed == 2
    with pytest.raises(RootKeyMismatch):
        await make_kms(seed=SEED + "-wrong")
    for stack in (a, b):
        await stack.close()
    assert batch.results and any("kms" in r.name for r in caplog.records)

    root = derive_root_key(SEED, SALT, 10_000)
    secrets = [*keys, bytes(root._key), root.wrap_key(), root.verification_key()]
    secrets += [root.blind_index_key(name, field) for name in KEY_NAMES for field in pii.USER_PII_FIELDS]
    secrets += PLAINTEXTS + [v for i in range(4) for v in user_values(i).values() if v is not None]
    needles = [form for secret in secrets for form in forms(secret)]
    needles += [SEED, SALT] + [p.decode() for p in PLAINTEXTS]
    text = "\n".join(rendered(r) for r in caplog.records)
    leaked = [n for n in needles if n in text]
    assert leaked == [], f"secrets in logs: {leaked[:3]}"
