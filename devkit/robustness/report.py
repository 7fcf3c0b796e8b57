"""Checker results and the per-run summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CheckStatus = Literal["ok", "violation", "unknown"]


@dataclass
class CheckResult:
    """The verdict of one checker. ``unknown`` means the checker ran out of budget or lacked the
    data to decide; it is never a pass."""

    name: str
    status: CheckStatus
    summary: str = ""
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_text(self) -> str:
        head = f"{self.name}: {self.status.upper()}"
        if self.summary:
            head += f" - {self.summary}"
        return "\n".join([head, *("    " + d for d in self.details)])


def merge(name: str, parts: list[CheckResult]) -> CheckResult:
    """One result from several: any violation wins, then unknown, else ok."""
    bad = [p for p in parts if p.status == "violation"]
    unk = [p for p in parts if p.status == "unknown"]
    if bad:
        status: CheckStatus = "violation"
        summary = "; ".join(f"{p.name}: {p.summary}" for p in bad)
    elif unk:
        status = "unknown"
        summary = "; ".join(f"{p.name}: {p.summary}" for p in unk)
    else:
        status = "ok"
        summary = "; ".join(p.summary for p in parts if p.summary)
    details: list[str] = []
    for p in bad + unk:
        details.extend(f"[{p.name}] {d}" for d in p.details)
    return CheckResult(name, status, summary, details)


@dataclass
class Summary:
    """Per-run report: operation counts by outcome, faults, and every checker's verdict."""

    ops_by_outcome: dict[str, int]
    watches: int = 0
    watch_events: int = 0
    results: list[CheckResult] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def status(self) -> CheckStatus:
        if any(r.status == "violation" for r in self.results):
            return "violation"
        if any(r.status == "unknown" for r in self.results):
            return "unknown"
        return "ok"

    def to_text(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.ops_by_outcome.items()))
        lines = [f"robustness report: {self.status.upper()}"]
        if self.seed is not None:
            lines.append(f"seed: {self.seed}")
        lines.append(f"operations: {counts}")
        lines.append(f"watches: {self.watches} ({self.watch_events} events)")
        if self.faults:
            lines.append("faults: " + ", ".join(self.faults))
        for r in self.results:
            lines.append(r.to_text())
        return "\n".join(lines)
