"""Children that die with their parent: ``PR_SET_PDEATHSIG`` (Linux only).

The kernel sends the signal when the *thread* that forked the child exits, so fork from a thread that
lives as long as the child (the main thread, or a dedicated one).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when ``parent`` dies, and ends at once if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec
