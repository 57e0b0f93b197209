"""The results table (metric, value, goal, PASS/FAIL) and the JSON document."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Goal:
    text: str  # as printed, e.g. "≥ 0.8"
    check: Callable[[float], bool]


def at_least(bound: float) -> Goal:
    return Goal(f"≥ {bound:g}", lambda v: operator.ge(v, bound))


def at_most(bound: float, text: str = "") -> Goal:
    return Goal(text or f"≤ {bound:g}", lambda v: operator.le(v, bound))


@dataclass(frozen=True)
class Row:
    key: str  # JSON name
    label: str
    value: float
    unit: str = ""
    goal: Goal | None = None
    digits: int = 2

    @property
    def passed(self) -> bool | None:
        return None if self.goal is None else self.goal.check(self.value)

    def shown(self) -> str:
        if self.unit in ("/s", "fields/s", "users/s", "enc/s") and self.value >= 100:
            text = f"{self.value:,.0f}"
        else:
            text = f"{self.value:.{self.digits}f}"
        return f"{text} {self.unit}".rstrip()


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # phase, CPU cores busy: server process tree, client processes, everything else on the machine
    cpu: list[tuple[str, float, float, float]] = field(default_factory=list)

    def cpu_table(self) -> str:
        width = max([len("phase"), *(len(c[0]) for c in self.cpu)])
        out = [f"{'phase':<{width}}  server  clients  other   (CPU cores busy during the measured window)"]
        out += [f"{phase:<{width}}  {server:6.2f}  {clients:7.2f}  {other:5.2f}"
                for phase, server, clients, other in self.cpu]
        return "\n".join(out)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def table(self) -> str:
        header = ("metric", "value", "goal", "result")
        lines = [(r.label, r.shown(), r.goal.text if r.goal else "—",
                  {True: "PASS", False: "FAIL", None: ""}[r.passed]) for r in self.rows]
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

        def fmt(cells: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        out = [fmt(header), fmt(tuple("-" * w for w in widths))]
        out += [fmt(line) for line in lines]
        return "\n".join(out)

    def as_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {
            "meta": meta,
            "metrics": {r.key: r.value for r in self.rows},
            "goals": {
                r.key: {"goal": r.goal.text, "passed": r.passed} for r in self.rows if r.goal is not None
            },
            "units": {r.key: r.unit for r in self.rows},
            "details": self.details,
            "cpu_cores": [{"phase": p, "server": sv, "clients": cl, "other": ot} for p, sv, cl, ot in self.cpu],
            "notes": self.notes,
        }

    def write(self, path: Path, meta: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(meta), indent=2, ensure_ascii=False) + "\n")
