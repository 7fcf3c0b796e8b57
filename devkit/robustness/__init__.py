"""Robustness checking for conch: history recording and checkers (see issue 6).

- :mod:`.history`: operations, watches, the recorder, JSON lines.
- :mod:`.linearizability`: Porcupine-style linearizability of the KV history.
- :mod:`.watch`: etcd's watch guarantees against the final history.
- :mod:`.set_check`: acknowledged writes present at the end; no value nobody wrote.
- :mod:`.lease_check`: no key of a lease readable after its expiry/revoke was reported.
- :func:`check_all` runs them all and returns a :class:`~.report.Summary`.

Running it:

- :mod:`.proxy`: a fault-injecting TCP proxy in front of each member's peer port (blackhole,
  delay, drop per link; knows conch's and etcd's peer handshakes).
- :mod:`.cluster`: N real conch or etcd members from one :class:`~.cluster.ClusterSpec`, with
  kill/restart, SIGSTOP/SIGCONT, partitions and failpoints.
- :mod:`.traffic`: concurrent clients and watchers recording into a :class:`~.history.Recorder`.
- :mod:`.faults`: the fault catalogue; :mod:`.run`: one run end to end; ``python -m
  devkit.robustness`` the command line (see the README).
"""

from __future__ import annotations

from . import lease_check, linearizability, set_check, watch
from .history import History
from .report import Summary


def check_all(
    history: History,
    *,
    seconds: float = 10.0,
    compact_revision: int = 0,
    faults: list[str] | None = None,
    seed: int | None = None,
) -> Summary:
    """Run every checker on ``history`` and summarise."""
    results = [
        linearizability.check(history, seconds=seconds),
        set_check.check(history),
        lease_check.check(history),
        watch.check(history, compact_revision=compact_revision),
    ]
    return Summary(
        ops_by_outcome=history.counts(),
        watches=len(history.watches),
        watch_events=sum(len(r.events) for w in history.watches for r in w.responses),
        results=results,
        faults=list(faults or []),
        seed=seed,
    )


__all__ = ["History", "Summary", "check_all"]
