"""Subprocess for the file-backend tests (not collected by pytest).

``python file_writer_worker.py PATH rotate`` rotates and counts in a loop forever (killed with SIGKILL by
the test); ``... PATH count N`` adds 1 to key 1's encryption count N times; ``... PATH crash`` rotates
once and SIGKILLs itself after the new content is written and fsync'ed to the temporary file, just
before the rename.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from internal.pkg.kms import storage_file
from internal.pkg.kms.datakey import KeyWrapper, new_material
from internal.pkg.kms.envelope import Algorithm
from internal.pkg.kms.rootkey import derive_root_key
from internal.pkg.kms.storage import NewDataKey
from internal.pkg.kms.storage_file import FileKeyStorage

SEED = "integration-test-seed-0123456789"
SALT = "integration-salt"


def factory(wrapper: KeyWrapper) -> object:
    def make(version: int) -> NewDataKey:
        material = new_material()
        key_id = f"00000000-0000-4000-8000-{version:012d}"
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
    storage = FileKeyStorage(path)
    make = factory(KeyWrapper(derive_root_key(SEED, SALT, 10_000)))
    if mode == "count":
        print("ready", flush=True)
        for _ in range(n):
            await storage.add_encryption_counts({1: 1})
        return
    if mode == "crash":

        def die(*_: object) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        storage_file.os.replace = die  # type: ignore[assignment]
    print("ready", flush=True)
    while True:
        active = await storage.get_active()
        await storage.rotate(active.version if active else None, make)  # type: ignore[arg-type]
        await storage.add_encryption_counts({(active.version if active else 1): 3})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
