"""`python -m bench.adopt [--users N] [--batch-size B]`: how fast `migrate adopt` converts the Go service's database.

Builds a Go-service database of N users (default 100,000) with ``tests.integration.adopt.go_service`` (its
schema, its ciphertext format and hashes; one bcrypt hash shared by every row, since adopt copies hashes and
never computes one), then runs the real CLI, `cmd/server/main.py migrate adopt`, once, and reports:

* rows/s of the move itself (what the CLI prints: decrypt, re-encrypt, blind-index, insert, delete), and
* the whole command's wall time for N users: checking every value, converting the schema, starting the key
  ring, moving, and dropping the Go tables.

Needs a PostgreSQL server (``TEST_DATABASE_URL``, ``DATABASE_URL`` or 127.0.0.1:5432) and Redis as for
``python -m bench``. Figures, not goals: nothing here passes or fails on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import asdict, dataclass

from bench.env import BenchError, new_backend
from tests.integration.adopt.go_service import GoAccount, go_bcrypt, write_go_database

_RATE = re.compile(r"adopted (\d+) users in ([0-9.]+) s \((\d+) rows/s\)")


@dataclass(frozen=True)
class AdoptFigures:
    users: int
    batch_size: int
    write_seconds: float  # building the Go database (not part of adopt)
    adopt_wall_seconds: float  # the whole `migrate adopt` command
    move_seconds: float  # the move phase as the command reports it
    rows_per_second: float  # users moved per second in the move phase
    wall_rows_per_second: float  # users per second of the whole command


def accounts(n: int) -> list[GoAccount]:
    return [
        GoAccount(
            f"user{i:07d}",
            "",
            f"User.{i}@Example.com",
            f"+86139{i:08d}",
            f"Name Number {i}",
        )
        for i in range(n)
    ]


def run(users: int, batch_size: int) -> AdoptFigures:
    backend = new_backend({})
    try:
        if not backend.database_url:
            raise BenchError("bench.adopt needs a PostgreSQL server to build the Go service's database on")
        population = accounts(users)
        shared = go_bcrypt("bench-password-1")
        started = time.perf_counter()
        asyncio.run(
            write_go_database(
                backend.database_url, population, password_hashes={a.username: shared for a in population}
            )
        )
        written = time.perf_counter() - started
        started = time.perf_counter()
        out = backend.cli("migrate", "adopt", "--batch-size", str(batch_size), timeout=3600)
        wall = time.perf_counter() - started
        match = _RATE.search(out)
        if match is None or int(match[1]) != users or "done:" not in out:
            raise BenchError(f"migrate adopt did not report every user moved: {out.strip()[-500:]}")
        move = float(match[2])
        return AdoptFigures(users, batch_size, written, wall, move, users / move if move else 0.0, users / wall)
    finally:
        for problem in backend.close():
            print(problem, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adopt", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        figures = run(args.users, args.batch_size)
    except BenchError as exc:
        print(f"bench.adopt: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(figures)))
    else:
        print(f"migrate adopt, {figures.users:,} Go-service users, batches of {figures.batch_size}:")
        print(f"  move phase: {figures.move_seconds:.1f} s, {figures.rows_per_second:,.0f} rows/s")
        print(
            f"  whole command: {figures.adopt_wall_seconds:.1f} s ({figures.wall_rows_per_second:,.0f} users/s),"
            f" building the Go database took {figures.write_seconds:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
