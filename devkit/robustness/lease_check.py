"""Lease check: once a client has been told a lease is gone, none of its keys is readable.

A lease is *reported gone* at the earliest return time of an ok ``LeaseRevoke`` or an ok
``LeaseExpired`` observation of it. After that moment:

- no linearizable read invoked later may return a key whose value was attached to the lease. The
  lease of a returned kv is its recorded ``lease`` field, else the lease of the put that wrote it
  (looked up by (key, mod_revision) among acknowledged puts, else by (key, value) when every
  put of that value used the same lease);
- no put with that lease invoked later may succeed (etcd answers "lease not found").

Serializable reads are exempt (a lagging member may serve them stale by design).
"""

from __future__ import annotations

from .history import OK, History, LeaseExpired, LeaseRevoke, Put, Range, Txn
from .report import CheckResult
from .set_check import WriteIndex, observed_kvs, writes


def check(history: History) -> CheckResult:
    gone: dict[int, tuple[int, int]] = {}  # lease -> (time, op id)
    for op in history.operations:
        req = op.request
        if op.status == OK and op.ret is not None and isinstance(req, (LeaseRevoke, LeaseExpired)):
            if req.lease not in gone or op.ret < gone[req.lease][0]:
                gone[req.lease] = (op.ret, op.id)
    if not gone:
        return CheckResult("lease", "ok", "no lease reported gone")
    idx = WriteIndex(history)
    by_value: dict[tuple[str, str], set[int]] = {}
    for (key, value), ws in idx.values.items():
        by_value[(key, value)] = {w.lease for w in ws}
    problems: list[str] = []
    for op in history.operations:
        if op.status != OK:
            continue
        req = op.request
        if isinstance(req, Range) and req.serializable:
            continue
        if isinstance(req, (Range, Txn)):
            for kv in observed_kvs(op):
                lease = kv.lease
                if lease is None:
                    w = idx.acked_at.get((kv.key, kv.mod_revision))
                    if w is not None and w.kind == "put":
                        lease = w.lease
                    else:
                        leases = by_value.get((kv.key, kv.value), set())
                        lease = next(iter(leases)) if len(leases) == 1 else None
                if lease and lease in gone and op.invoke > gone[lease][0]:
                    problems.append(
                        f"{kv.key}={kv.value!r}@{kv.mod_revision} of lease {lease} read by "
                        f"#{op.id} (invoked {op.invoke}) after the lease was reported gone by "
                        f"#{gone[lease][1]} at {gone[lease][0]}"
                    )
        for w in writes(op):
            if (
                w.kind == "put"
                and w.acked
                and w.lease
                and w.lease in gone
                and op.invoke > gone[w.lease][0]
                and isinstance(req, (Put, Txn))
            ):
                problems.append(
                    f"put {w.key}={w.value!r} with lease {w.lease} succeeded (#{op.id}) after "
                    f"the lease was reported gone by #{gone[w.lease][1]}"
                )
    if problems:
        return CheckResult("lease", "violation", problems[0], problems[:50])
    return CheckResult("lease", "ok", f"{len(gone)} leases reported gone")
