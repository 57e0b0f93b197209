"""The server's periodic background jobs (``internal.app.every``): they repeat, survive failures, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from internal.app import every


async def test_a_job_repeats_survives_failures_and_stops_with_the_block(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    async def job() -> int:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom with a secret-looking detail")
        return len(calls)

    caplog.set_level(logging.INFO)
    async with every(timedelta(milliseconds=5), job, "test job"):
        async with asyncio.timeout(5):
            while len(calls) < 4:  # noqa: ASYNC110 - the job runs in its own task
                await asyncio.sleep(0.005)
    finished = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == finished, "the job keeps running after the block"
    assert "test job failed" in caplog.text and "test job done" in caplog.text
    assert "secret-looking" not in caplog.text, "only the error type is logged"


async def test_a_zero_interval_never_runs_the_job() -> None:
    calls: list[int] = []

    async def job() -> int:
        calls.append(1)
        return 0

    async with every(timedelta(0), job, "disabled job"):
        await asyncio.sleep(0.05)
    assert calls == []
