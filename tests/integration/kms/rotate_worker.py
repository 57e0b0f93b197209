"""Subprocess for the multi-process rotation test (not collected by pytest).

Usage: python rotate_worker.py DATABASE_URL. Builds a manager on the database, prints "ready", then for
every "go" line on stdin refreshes its view of the active key, waits for the shared start time given on
the line, rotates, and prints the version it ended up with.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta

import asyncpg

from internal.conf.config import Kms
from internal.pkg.kms.manager import KMSManager
from internal.pkg.kms.storage_pg import PgKeyStorage

SEED = "integration-test-seed-0123456789"
SALT = "integration-salt"


async def main(url: str) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    config = Kms(iterations=10_000, cache_recheck_interval=timedelta(seconds=60))
    manager = KMSManager(config, PgKeyStorage(pool), seed=SEED, salt=SALT)
    await manager.initialize()
    print("ready", (await manager.active_key()).version, flush=True)
    loop = asyncio.get_running_loop()
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        _, start_at = line.split()
        await manager.refresh()
        await asyncio.sleep(max(0.0, float(start_at) - time.time()))
        info = await manager.rotate("concurrent test")
        print("rotated", info.version, flush=True)
    await manager.close()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
