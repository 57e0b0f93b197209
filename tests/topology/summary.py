"""The topology run's figures: printed at the end of the pytest run, kept in .data/topology-summary.txt."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Summary:
    """Filled by the topology tests; rendered by tests/topology/conftest.py."""

    components: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, section: str, line: str) -> None:
        with self._lock:
            lines = getattr(self, section)
            if line not in lines:
                lines.append(line)

    @property
    def empty(self) -> bool:
        return not (self.components or self.faults or self.kept)

    def render(self, runtime_s: float, outcome: str) -> str:
        rule = "=" * 78
        lines = [
            rule,
            "authkms production topology summary",
            rule,
            f"runtime {runtime_s:.1f} s; topology tests: {outcome}",
        ]
        for title, items in (
            ("COMPONENTS (Debian packages, started by the tests)", self.components),
            ("FAULTS INJECTED -> TIME TO RECOVER", self.faults),
            ("NOTHING LOST", self.kept),
            ("MEASURED", self.notes),
            ("FAILURES", self.failures),
        ):
            if items or title != "FAILURES":
                lines += ["", title, *([f"  {item}" for item in items] or ["  (not run)"])]
        lines.append(rule)
        return "\n".join(lines) + "\n"


SUMMARY = Summary()
