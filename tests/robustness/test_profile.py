"""The short robustness profile: real three-member clusters, traffic, one fault, every checker.

conch runs every process and network fault and every failpoint group; etcd 3.4 runs the same
process and network faults as the control (its Debian build has no failpoints). Seeds are
fixed, so a failure replays with the command printed in the report. A failed run keeps its
directory (member logs and data dirs, history.jsonl, report.txt) under
``$CONCH_ROBUSTNESS_OUT`` (default: pytest's tmp dir).

The long profile is ``python -m devkit.robustness --target conch --minutes 10`` (README).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devkit.harness import etcd_available, require_etcd
from devkit.robustness.run import run_scenario

#: (scenario, seed). Each run is ~12 s of traffic plus start, recovery and checking.
STANDARD = [
    ("leader-kill", 11),
    ("follower-kill", 12),
    ("all-kill", 13),
    ("leader-pause", 14),
    ("leader-partition", 15),
    ("follower-partition", 16),
]
FAILPOINT_GROUPS = [
    ("failpoints-raft", 21),
    ("failpoints-backend", 22),
    ("failpoints-snapshot", 23),
    ("failpoints-compact", 24),
]
DURATION = 12.0


def _out(tmp_path: Path) -> Path:
    return Path(os.environ.get("CONCH_ROBUSTNESS_OUT") or tmp_path)


def _run(target: str, scenario: str, seed: int, tmp_path: Path) -> None:
    result = run_scenario(target, scenario, seed, DURATION, _out(tmp_path))
    print(result.to_text())
    assert result.ok, result.to_text()
    # The run must have exercised the cluster, or a pass means nothing.
    assert result.faults_applied >= 1
    assert result.summary.ops_by_outcome.get("ok", 0) > 100, result.summary.ops_by_outcome
    assert result.summary.watch_events > 0


@pytest.mark.parametrize(("scenario", "seed"), STANDARD + FAILPOINT_GROUPS,
                         ids=[s for s, _ in STANDARD + FAILPOINT_GROUPS])
def test_conch(scenario: str, seed: int, tmp_path: Path) -> None:
    _run("conch", scenario, seed, tmp_path)


@pytest.mark.parametrize(("scenario", "seed"), STANDARD, ids=[s for s, _ in STANDARD])
def test_etcd_control(scenario: str, seed: int, tmp_path: Path) -> None:
    if not etcd_available():
        if require_etcd():
            pytest.fail("etcd is required (CONCH_REQUIRE_ETCD=1) but not installed")
        pytest.skip("etcd not installed")
    _run("etcd", scenario, seed, tmp_path)
