"""Subprocess for the multi-process rotation test (not collected by pytest).

Usage (from the repository root): python -m tests.integration.kms.rotate_worker DATABASE_URL KEY_NAME.
Opens a key ring on the database, prints "ready" and the key's active version, then for every "go" line on
stdin re-reads the key, waits for the shared start time given on the line, rotates it, and prints the version
it ended up with.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta

import asyncpg

from internal.data.kms import PgKeyRepo
from tests.unit.kms.stack import build_kms, kms_config

SEED = "integration-test-seed-0123456789"
SALT = "integration-salt"


async def main(url: str, key_name: str) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    config = kms_config(cache_recheck_interval=timedelta(seconds=60))
    kms = await build_kms(PgKeyRepo(pool), seed=SEED, salt=SALT, config=config).open()
    print("ready", (await kms.admin.active_version(key_name)).version, flush=True)
    loop = asyncio.get_running_loop()
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        _, start_at = line.split()
        await kms.ring.forget(key_name)
        await asyncio.sleep(max(0.0, float(start_at) - time.time()))
        info = await kms.admin.rotate(key_name, "concurrent test")
        print("rotated", info.version, flush=True)
    await kms.close()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
