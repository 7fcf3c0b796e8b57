"""The one place the simulator imports the robustness history model and checkers from
(they are moving to `devkit.robustness`: switch the imports here)."""

from __future__ import annotations

from devkit.robustness import lease_check, linearizability, set_check
from devkit.robustness.history import (
    KV,
    OK,
    UNKNOWN,
    Compare,
    Delete,
    History,
    LeaseExpired,
    LeaseGrant,
    LeaseRevoke,
    Operation,
    Put,
    Range,
    Recorder,
    Response,
    Txn,
)
from devkit.robustness.report import CheckResult

__all__ = [
    "KV", "OK", "UNKNOWN", "CheckResult", "Compare", "Delete", "History", "LeaseExpired",
    "LeaseGrant", "LeaseRevoke", "Operation", "Put", "Range", "Recorder", "Response", "Txn",
    "check_all",
]


def check_all(history: History, seconds: float = 5.0) -> list[CheckResult]:
    return [
        linearizability.check(history, seconds=seconds),
        set_check.check(history),
        lease_check.check(history),
    ]
