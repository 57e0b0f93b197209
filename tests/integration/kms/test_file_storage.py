"""File backend: the key ring on a JSON file, atomic replacement under crashes, multi-process locking, and
key files from before named keys."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from internal.biz.kms import DEFAULT_KEY, USERS_KEY, KeyStatus, NoKeyEvents
from internal.biz.kms_keyring import RootKeyMismatch
from internal.conf.config import Kms
from internal.container import key_repo, key_ring_resource
from internal.data.kms_file import FileKeyRepo, KeyFileCorrupt, parse
from internal.pkg.kms.datakey import KeyWrapper, new_material
from internal.pkg.kms.envelope import Algorithm, DataKey
from internal.pkg.kms.rootkey import derive_root_key
from tests.integration.kms.conftest import SALT, SEED
from tests.unit.auth.fakes import FakeAudit
from tests.unit.kms.stack import KmsStack, build_kms, kms_config, seal_legacy

WORKER = Path(__file__).with_name("file_writer_worker.py")
ROOT = Path(__file__).resolve().parents[3]


def kms_on(path: Path, seed: str = SEED) -> KmsStack:
    return build_kms(FileKeyRepo(path), seed=seed, salt=SALT, config=kms_config())


async def test_key_ring_on_a_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kms.json"
    first = await kms_on(path).open()
    old = await first.cipher.encrypt(DEFAULT_KEY, "email", b"alice@example.com", {"user_id": "1"})
    await first.admin.rotate(DEFAULT_KEY, "file rotation")
    new = await first.cipher.encrypt(DEFAULT_KEY, "email", b"bob@example.com", {"user_id": "2"})
    await first.admin.create_key("orders", description="on file")
    order = await first.cipher.encrypt("orders", "line", b"2 apples", {})
    await first.close()
    assert (old.key_version, new.key_version, order.key_version) == (1, 2, 1)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    second = await kms_on(path).open()
    try:
        for sealed, plaintext, context in (
            (old, b"alice@example.com", {"user_id": "1"}),
            (new, b"bob@example.com", {"user_id": "2"}),
        ):
            assert (
                await second.cipher.decrypt(DEFAULT_KEY, "email", sealed.ciphertext, context)
            ).plaintext == plaintext
        assert (await second.cipher.decrypt("orders", "line", order.ciphertext, {})).plaintext == b"2 apples"
        status = await second.admin.status(DEFAULT_KEY)
        assert status.storage_type == "file" and status.counts["inactive"] == 1
        assert (await second.admin.get_key("orders")).description == "on file"
        assert [k.name for k in (await second.admin.list_keys(0, "", lambda _: True)).items] == [
            USERS_KEY,
            DEFAULT_KEY,
            "orders",
        ]
        await second.admin.schedule_destruction(DEFAULT_KEY, 1)
        assert parse(path.read_text()).versions[(DEFAULT_KEY, 1)].status is KeyStatus.PENDING_DESTRUCTION
    finally:
        await second.close()
    with pytest.raises(RootKeyMismatch, match=r"wrong kms\.seed"):
        await kms_on(path, seed=SEED + "-wrong").open()
    text = path.read_text()
    assert "alice" not in text and "apples" not in text and SEED not in text


async def test_container_file_storage(tmp_path: Path) -> None:
    config = Kms(iterations=10_000, storage_type="file", storage_path=str(tmp_path / "k.json"))
    resource = key_ring_resource(config, key_repo(config, None), NoKeyEvents(), FakeAudit())  # type: ignore[arg-type]
    ring = await anext(resource)
    try:
        assert ring.repo.kind == "file" and (await ring.load_active(DEFAULT_KEY)).version == 1
    finally:
        await resource.aclose()
    assert set(parse((tmp_path / "k.json").read_text()).keys) == {DEFAULT_KEY, USERS_KEY}


async def test_corrupt_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "kms.json"
    await (await kms_on(path).open()).close()
    path.write_text(path.read_text()[:-40])
    with pytest.raises(KeyFileCorrupt):
        await kms_on(path).open()
    assert len(path.read_text()) > 0


async def test_failed_replace_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kms.json"
    kms = await kms_on(path).open()
    before = path.read_text()

    def crash(*_: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        await kms.admin.rotate(DEFAULT_KEY, "will not land")
    monkeypatch.undo()
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # A half-written temporary file left by a crash is ignored.
    (tmp_path / ".kms.json.999.deadbeef.tmp").write_text(before[: len(before) // 2])
    await kms.admin.rotate(DEFAULT_KEY, "lands")
    assert sorted(v for n, v in parse(path.read_text()).versions if n == DEFAULT_KEY) == [1, 2]
    await kms.close()


def _check_consistent(path: Path, wrapper: KeyWrapper) -> int:
    """Every key's versions are 1..n with one active, and every version unwraps; returns the number of versions."""
    keys = parse(path.read_text())  # raises if the file is not complete and consistent
    for name in keys.keys:
        records = [r for (n, _), r in keys.versions.items() if n == name]
        assert sorted(r.version for r in records) == list(range(1, len(records) + 1))
        assert sum(r.status is KeyStatus.ACTIVE for r in records) == (1 if records else 0)
        for r in records:
            wrapper.unwrap(r.id, r.version, r.algorithm, r.wrapped_key, r.key_hash)
    return len(keys.versions)


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)


async def test_kill_9_during_writes_leaves_a_complete_file(tmp_path: Path) -> None:
    path = tmp_path / "kms.json"
    wrapper = KeyWrapper(derive_root_key(SEED, SALT, 10_000))
    seen = 0
    for _ in range(4):
        writers = [_spawn(str(path), "rotate"), _spawn(str(path), "rotate")]
        for w in writers:
            assert (await asyncio.to_thread(w.stdout.readline)).strip() == "ready"  # type: ignore[union-attr]
        await asyncio.sleep(random.uniform(0.15, 0.4))
        for w in writers:
            w.send_signal(signal.SIGKILL)
            await asyncio.to_thread(w.wait)
        count = _check_consistent(path, wrapper)
        assert count > seen  # the writers made progress and nothing went backwards
        seen = count
    document = json.loads(path.read_text())
    assert document["format"] == "authkms-kms-keys/2" and {k["name"] for k in document["keys"]} == {"default", "orders"}


async def test_crash_between_temp_write_and_rename(tmp_path: Path) -> None:
    path = tmp_path / "kms.json"
    wrapper = KeyWrapper(derive_root_key(SEED, SALT, 10_000))
    kms = await kms_on(path).open()
    await kms.admin.rotate(DEFAULT_KEY, "second")
    await kms.close()
    before = path.read_text()
    crasher = _spawn(str(path), "crash")
    assert await asyncio.to_thread(crasher.wait, 30) == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".kms.json.*.tmp"))
    assert len(leftovers) == 1  # the lost write
    assert sorted(v for n, v in parse(leftovers[0].read_text()).versions if n == DEFAULT_KEY) == [1, 2, 3]
    assert path.read_text() == before and _check_consistent(path, wrapper) == 3  # default 1-2, users' key 1
    kms = await kms_on(path).open()
    try:
        assert (await kms.admin.rotate(DEFAULT_KEY, "after the crash")).version == 3
    finally:
        await kms.close()


async def test_processes_do_not_lose_updates(tmp_path: Path) -> None:
    path = tmp_path / "kms.json"
    await (await kms_on(path).open()).close()
    start = parse(path.read_text()).versions[(DEFAULT_KEY, 1)].encryption_count
    workers = [_spawn(str(path), "count", "60") for _ in range(3)]
    for w in workers:
        assert await asyncio.to_thread(w.wait, 60) == 0
    assert parse(path.read_text()).versions[(DEFAULT_KEY, 1)].encryption_count == start + 180


async def test_a_key_file_from_before_named_keys_becomes_the_versions_of_default(tmp_path: Path) -> None:
    """Format 1 key files (one flat list of data keys) are read as `default`, and its ciphertexts still open."""
    path = tmp_path / "kms.json"
    wrapper = KeyWrapper(derive_root_key(SEED, SALT, 10_000))
    now = datetime.now(UTC).isoformat()
    items, materials = [], {}
    for version, status in ((1, "inactive"), (2, "active")):
        key_id, material = str(uuid.uuid4()), new_material()
        materials[version] = material
        items.append(
            {
                "id": key_id,
                "version": version,
                "algorithm": "AES-256-GCM",
                "encrypted_key": base64.b64encode(
                    wrapper.wrap(key_id, version, Algorithm.AES_256_GCM, material)
                ).decode(),
                "key_hash": wrapper.key_hash(material),
                "status": status,
                "encryption_count": 10,
                "created_at": now,
                "updated_at": now,
                "expires_at": None,
                "destroyed_at": None,
                "metadata": {},
            }
        )
    path.write_text(json.dumps({"format": "authkms-kms-keys/1", "keys": items}))
    old = seal_legacy(DataKey(DEFAULT_KEY, 1, Algorithm.AES_256_GCM, materials[1]), "email", b"a@b.com", {"u": "1"})
    kms = await kms_on(path).open()
    try:
        assert (await kms.admin.active_version(DEFAULT_KEY)).version == 2
        assert (await kms.cipher.decrypt(DEFAULT_KEY, "email", old, {"u": "1"})).plaintext == b"a@b.com"
        assert await kms.users.decrypt("email", old, {"u": "1"}) == b"a@b.com"
        assert (await kms.admin.active_version(USERS_KEY)).version == 1
    finally:
        await kms.close()
    upgraded = json.loads(path.read_text())  # the users' key was created: the file is written in format 2
    assert upgraded["format"] == "authkms-kms-keys/2"
    assert sorted((v["key_name"], v["version"]) for v in upgraded["versions"]) == [
        (USERS_KEY, 1),
        (DEFAULT_KEY, 1),
        (DEFAULT_KEY, 2),
    ]
