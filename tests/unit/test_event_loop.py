"""server.event_loop: the server's loop is asyncio's own by default, uvloop when configured."""

from __future__ import annotations

import asyncio

import pytest

from internal.conf.config import ConfigError, load_config
from internal.server.eventloop import run


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_by_default_uvloop_when_chosen() -> None:
    assert run(_loop_module()).startswith("asyncio")
    assert run(_loop_module(), "uvloop").startswith("uvloop")


def test_the_setting_accepts_only_known_loops() -> None:
    assert load_config(environ={}).server.event_loop == "asyncio"
    assert load_config(environ={"APP__SERVER__EVENT_LOOP": "uvloop"}).server.event_loop == "uvloop"
    with pytest.raises(ConfigError):
        load_config(environ={"APP__SERVER__EVENT_LOOP": "trio"})
