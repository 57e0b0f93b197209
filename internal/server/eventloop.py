"""The one place that chooses the server's event loop (``server.event_loop``): asyncio's own, or uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], event_loop: str = "asyncio") -> T:
    """``asyncio.run(main)`` on the chosen loop; uvloop without its extra installed is a clear error."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            main.close()
            raise RuntimeError("server.event_loop is uvloop: install it with pip install 'authkms[uvloop]'") from None
        return uvloop.run(main)
    return asyncio.run(main)
