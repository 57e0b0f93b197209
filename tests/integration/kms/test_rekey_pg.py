"""Root-key rotation on PostgreSQL: a replica with the new and previous seed opens everything; `rekey` re-wraps
every version (and the service secret) under the new root key in compare-and-set steps, so an interrupted run and two
concurrent runs leave nothing unreadable; afterwards the new seed alone opens everything and the old one alone is
refused; ciphertexts and blind indexes never change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from internal.biz import pii
from internal.biz.kms import DEFAULT_KEY, USERS_KEY
from internal.biz.kms_keyring import RootKeyMismatch
from internal.data.kms import PgKeyRepo
from internal.data.users_pii import PgUsersPiiStore
from tests.unit.kms.stack import KmsStack, build_kms

OLD = ("old-root-seed-0123456789abcdef", "old-root-salt")
NEW = ("new-root-seed-fedcba9876543210", "new-root-salt")
CONTEXT = {"order": "9"}


@pytest.fixture
async def pool(own_database: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(own_database, min_size=1, max_size=8)
    try:
        yield created
    finally:
        await created.close()


def stack(pool: asyncpg.Pool, root: tuple[str, str], previous: tuple[str, str] = ("", "")) -> KmsStack:
    return build_kms(
        PgKeyRepo(pool),
        seed=root[0],
        salt=root[1],
        previous_seed=previous[0],
        previous_salt=previous[1],
        users_pii=PgUsersPiiStore(pool),
    )


async def written_under_old_root(pool: asyncpg.Pool) -> tuple[list[tuple[str, bytes]], dict[str, str], bytes]:
    """Values under three keys (several versions each), their blind indexes and the captcha secret."""
    kms = await stack(pool, OLD).open()
    try:
        await kms.admin.create_key("rk.orders")
        sealed: list[tuple[str, bytes]] = []
        for name in (DEFAULT_KEY, "rk.orders", USERS_KEY):
            for _ in range(3):
                sealed.append((name, (await kms.cipher.encrypt(name, "card", name.encode(), CONTEXT)).ciphertext))
                await kms.admin.rotate(name, "more versions")
        hashes = {name: kms.cipher.blind_index(name, pii.EMAIL, "a@b.example") for name in (DEFAULT_KEY, "rk.orders")}
        return sealed, hashes, kms.ring.derive_secret(b"captcha-code-key/v1")
    finally:
        await kms.close()


async def assert_everything_opens(kms: KmsStack, sealed: list[tuple[str, bytes]], hashes: dict[str, str]) -> None:
    for name, ciphertext in sealed:
        assert (await kms.cipher.decrypt(name, "card", ciphertext, CONTEXT)).plaintext == name.encode()
    for name, value in hashes.items():
        assert kms.cipher.blind_index(name, pii.EMAIL, "a@b.example") == value


async def test_rekey_moves_every_version_and_keeps_every_ciphertext_and_hash(pool: asyncpg.Pool) -> None:
    sealed, hashes, captcha_secret = await written_under_old_root(pool)
    versions = int(await pool.fetchval("SELECT count(*) FROM kms_data_keys"))

    # Only the new seed before rekey: refused, naming how many versions it cannot open.
    with pytest.raises(RootKeyMismatch) as refused:
        await stack(pool, NEW).open()
    assert f"{versions} of {versions} stored data keys fail to unwrap" in str(refused.value)
    assert "kms.previous_seed" in str(refused.value)

    kms = await stack(pool, NEW, OLD).open()
    try:
        await assert_everything_opens(kms, sealed, hashes)
        assert kms.ring.derive_secret(b"captcha-code-key/v1") == captcha_secret
        status = await kms.admin.status(DEFAULT_KEY)
        assert status.versions_under_previous_root == versions
        # New versions are wrapped under the new root key already.
        await kms.admin.rotate("rk.orders", "during the transition")
        sealed.append(("rk.orders", (await kms.cipher.encrypt("rk.orders", "card", b"rk.orders", CONTEXT)).ciphertext))

        # A run that dies after three versions leaves every version readable, and the next run resumes.
        def crash(done: int, todo: int) -> None:
            if done == 3:
                raise RuntimeError("killed")

        with pytest.raises(RuntimeError):
            await kms.admin.rekey(0, crash)
        assert (await kms.admin.status(DEFAULT_KEY)).versions_under_previous_root == versions - 3
        await assert_everything_opens(kms, sealed, hashes)
        partial = await kms.admin.rekey(2)
        assert (partial.rewrapped, partial.remaining) == (2, versions - 5)

        # Two runs at once (another replica's, too): each version is re-wrapped exactly once.
        other = await stack(pool, NEW, OLD).open()
        try:
            reports = await asyncio.gather(kms.admin.rekey(), other.admin.rekey())
        finally:
            await other.close()
        assert sum(r.rewrapped for r in reports) == versions - 5 and all(r.remaining == 0 for r in reports)
        assert (await kms.admin.status(DEFAULT_KEY)).versions_under_previous_root == 0
        audited = [e for e in kms.audit.events if e["event"] == "kms.rekey"]  # type: ignore[attr-defined]
        assert audited and all("seed" not in str(e) and "salt" not in str(e) for e in audited)
    finally:
        await kms.close()

    fingerprints = {r["root_fingerprint"] for r in await pool.fetch("SELECT root_fingerprint FROM kms_data_keys")}
    assert len(fingerprints) == 1

    # The new seed alone now opens everything, with the same blind indexes and derived secrets.
    kms = await stack(pool, NEW).open()
    try:
        await assert_everything_opens(kms, sealed, hashes)
        assert kms.ring.derive_secret(b"captcha-code-key/v1") == captcha_secret
        assert (await kms.admin.rekey()).rewrapped == 0
    finally:
        await kms.close()
    # The old seed alone is refused.
    with pytest.raises(RootKeyMismatch) as old_only:
        await stack(pool, OLD).open()
    assert "fail to unwrap" in str(old_only.value)


async def test_a_second_rotation_moves_the_service_secret_again(pool: asyncpg.Pool) -> None:
    sealed, hashes, captcha_secret = await written_under_old_root(pool)
    third = ("third-root-seed-0123456789abcd", "third-root-salt")
    for root, previous in ((NEW, OLD), (third, NEW)):
        kms = await stack(pool, root, previous).open()
        try:
            assert (await kms.admin.rekey()).remaining == 0
        finally:
            await kms.close()
    kms = await stack(pool, third).open()
    try:
        await assert_everything_opens(kms, sealed, hashes)
        assert kms.ring.derive_secret(b"captcha-code-key/v1") == captcha_secret
    finally:
        await kms.close()
