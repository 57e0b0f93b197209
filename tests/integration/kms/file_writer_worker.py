"""Subprocess for the file-backend tests (not collected by pytest).

``python file_writer_worker.py PATH rotate`` rotates the keys ``default`` and ``orders`` in turn and counts
encryptions, in a loop forever (killed with SIGKILL by the test); ``... PATH count N`` adds 1 to the encryption
count of ``default`` version 1 N times; ``... PATH crash`` rotates ``default`` once and SIGKILLs itself after
the new content is written and fsync'ed to the temporary file, just before the rename.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

from internal.biz.kms import KeySpec, NewDataKey
from internal.data import kms_file
from internal.data.kms_file import FileKeyRepo
from internal.pkg.kms.datakey import KeyWrapper, new_material
from internal.pkg.kms.envelope import Algorithm
from internal.pkg.kms.rootkey import derive_root_key

SEED = "integration-test-seed-0123456789"
SALT = "integration-salt"
KEYS = ("default", "orders")


def factory(wrapper: KeyWrapper) -> object:
    def make(version: int) -> NewDataKey:
        material = new_material()
        key_id = str(uuid.uuid4())
        return NewDataKey(
            id=key_id,
            version=version,
            algorithm="AES-256-GCM",
            wrapped_key=wrapper.wrap(key_id, version, Algorithm.AES_256_GCM, material),
            key_hash=wrapper.key_hash(material),
            lifetime=None,
        )

    return make


async def main(path: str, mode: str, n: int) -> None:
    repo = FileKeyRepo(path)
    make = factory(KeyWrapper(derive_root_key(SEED, SALT, 10_000)))
    if mode == "count":
        print("ready", flush=True)
        for _ in range(n):
            await repo.add_encryption_counts({("default", 1): 1})
        return
    if mode == "crash":

        def die(*_: object) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        kms_file.os.replace = die  # type: ignore[assignment]
        active = await repo.get_active("default")
        await repo.rotate("default", active.version if active else None, make)  # type: ignore[arg-type]
        return
    for name in KEYS:
        await repo.create_key(KeySpec(name))
    print("ready", flush=True)
    while True:
        for name in KEYS:
            active = await repo.get_active(name)
            await repo.rotate(name, active.version if active else None, make)  # type: ignore[arg-type]
            await repo.add_encryption_counts({(name, active.version if active else 1): 3})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
