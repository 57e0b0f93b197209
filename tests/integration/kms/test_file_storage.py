"""File backend: the manager on a JSON file, atomic replacement under crashes, multi-process locking."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from internal.conf.config import Kms
from internal.pkg.kms import build_kms
from internal.pkg.kms.datakey import KeyWrapper
from internal.pkg.kms.manager import KMSManager, RootKeyMismatch
from internal.pkg.kms.rootkey import derive_root_key
from internal.pkg.kms.storage import KeyStatus
from internal.pkg.kms.storage_file import FileKeyStorage, KeyFileCorrupt, parse
from tests.integration.kms.conftest import SALT, SEED, kms_config

WORKER = Path(__file__).with_name("file_writer_worker.py")
ROOT = Path(__file__).resolve().parents[3]


def manager_on(path: Path, seed: str = SEED) -> KMSManager:
    return KMSManager(kms_config(), FileKeyStorage(path), seed=seed, salt=SALT)


async def test_manager_on_a_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kms.json"
    first = manager_on(path)
    await first.initialize()
    old = await first.crypto.encrypt("email", b"alice@example.com", {"user_id": "1"})
    await first.rotate("file rotation")
    new = await first.crypto.encrypt("email", b"bob@example.com", {"user_id": "2"})
    await first.close()
    assert (old.key_version, new.key_version) == (1, 2)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    second = manager_on(path)
    await second.initialize()
    try:
        assert await second.crypto.decrypt("email", old.ciphertext, {"user_id": "1"}) == b"alice@example.com"
        assert await second.crypto.decrypt("email", new.ciphertext, {"user_id": "2"}) == b"bob@example.com"
        assert (await second.status()).storage_type == "file"
        assert (await second.status()).counts["inactive"] == 1
    finally:
        await second.close()
    with pytest.raises(RootKeyMismatch, match=r"wrong kms\.seed"):
        await manager_on(path, seed=SEED + "-wrong").initialize()
    text = path.read_text()
    assert "alice" not in text and SEED not in text


async def test_build_kms_file_storage(tmp_path: Path) -> None:
    config = Kms(iterations=10_000, storage_type="file", storage_path=str(tmp_path / "k.json"))
    manager = build_kms(config, None, None, "", [])
    await manager.initialize()
    try:
        assert manager.storage.kind == "file" and (await manager.active_key()).version == 1
    finally:
        await manager.close()


async def test_corrupt_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "kms.json"
    manager = manager_on(path)
    await manager.initialize()
    await manager.close()
    path.write_text(path.read_text()[:-40])
    with pytest.raises(KeyFileCorrupt):
        await manager_on(path).initialize()
    assert len(path.read_text()) > 0


async def test_failed_replace_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kms.json"
    manager = manager_on(path)
    await manager.initialize()
    before = path.read_text()

    def crash(*_: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        await manager.rotate("will not land")
    monkeypatch.undo()
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # A half-written temporary file left by a crash is ignored.
    (tmp_path / ".kms.json.999.deadbeef.tmp").write_text(before[: len(before) // 2])
    await manager.rotate("lands")
    assert [k.version for k in parse(path.read_text()).keys.values()] == [1, 2]
    await manager.close()


def _check_consistent(path: Path, wrapper: KeyWrapper) -> int:
    keys = parse(path.read_text())  # raises if the file is not complete and consistent
    versions = sorted(keys.keys)
    assert versions == list(range(1, len(versions) + 1))
    assert sum(r.status is KeyStatus.ACTIVE for r in keys.keys.values()) == 1
    for r in keys.keys.values():
        wrapper.unwrap(r.id, r.version, r.algorithm, r.wrapped_key, r.key_hash)
    return len(versions)


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
    assert json.loads(path.read_text())["format"] == "authkms-kms-keys/1"


async def test_crash_between_temp_write_and_rename(tmp_path: Path) -> None:
    path = tmp_path / "kms.json"
    wrapper = KeyWrapper(derive_root_key(SEED, SALT, 10_000))
    manager = manager_on(path)
    await manager.initialize()
    await manager.rotate("second")
    await manager.close()
    before = path.read_text()
    crasher = _spawn(str(path), "crash")
    assert await asyncio.to_thread(crasher.wait, 30) == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".kms.json.*.tmp"))
    assert len(leftovers) == 1 and parse(leftovers[0].read_text()).keys.keys() == {1, 2, 3}  # the lost write
    assert path.read_text() == before and _check_consistent(path, wrapper) == 2
    manager = manager_on(path)
    await manager.initialize()
    try:
        assert (await manager.rotate("after the crash")).version == 3
    finally:
        await manager.close()


async def test_processes_do_not_lose_updates(tmp_path: Path) -> None:
    path = tmp_path / "kms.json"
    manager = manager_on(path)
    await manager.initialize()
    await manager.close()
    start = parse(path.read_text()).keys[1].encryption_count
    workers = [_spawn(str(path), "count", "60") for _ in range(3)]
    for w in workers:
        assert await asyncio.to_thread(w.wait, 60) == 0
    assert parse(path.read_text()).keys[1].encryption_count == start + 180
