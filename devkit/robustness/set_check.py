"""Set check: every acknowledged write is reflected at the end, and no value appears that nobody
wrote.

What is checked
---------------
- **No value nobody wrote**: every key-value any client observed (ok reads, serializable reads
  included; nested txn reads; watch events' kv and prev_kv; the final state) must be a
  (key, value) some put wrote - acknowledged, or with unknown outcome, in any txn branch it may
  have taken. If an acknowledged put of that key produced the observed ``mod_revision``, the
  values must be equal; if every put of that (key, value) is acknowledged, the observed
  ``mod_revision`` must be one of their revisions.
- **No lost write**: against the final state (an explicit ``final`` map, or the last ok
  linearizable range read in the history, over the keys it covers): for each key, let W be the
  acknowledged write of that key with the highest revision not above the final read's revision.
  If W is a put: the key must be present with mod_revision >= W's revision (== means W's value),
  or absent only if some later deletion was possible (a delete or txn-delete of the key with
  unknown outcome or a revision above W; W's lease expiring; or a put of the key with a lease,
  unknown outcome or a revision above W, whose lease then expired). If W is a delete: the
  key is absent, or present with a newer mod_revision.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .history import (
    KV,
    OK,
    UNKNOWN,
    Delete,
    History,
    LeaseRevoke,
    Operation,
    Put,
    Range,
    Response,
    Txn,
    TxnOp,
    in_range,
)
from .report import CheckResult


@dataclass(frozen=True)
class Write:
    op: Operation
    key: str
    kind: str  # put / delete
    value: str
    lease: int
    revision: int | None  # known only when acknowledged
    acked: bool
    end: str | None = None  # range deletes


def writes(op: Operation) -> Iterator[Write]:
    """The writes an operation made (ok) or may have made (unknown outcome)."""
    if op.status not in (OK, UNKNOWN):
        return
    acked = op.status == OK
    resp = op.response if acked else None
    rev = resp.revision if resp is not None else None
    req = op.request
    if isinstance(req, Txn):
        if acked and resp is not None and resp.succeeded is not None:
            branches = [req.success if resp.succeeded else req.failure]
            subs = resp.responses
        else:
            branches, subs, acked = [req.success, req.failure], None, False
            rev = None
        for ops in branches:
            for i, sub in enumerate(ops):
                sresp = subs[i] if subs is not None and len(subs) == len(ops) else None
                yield from _sub_writes(op, sub, sresp, rev, acked)
    elif isinstance(req, (Put, Delete)):
        yield from _sub_writes(op, req, resp, rev, acked)


def _sub_writes(
    op: Operation, sub: TxnOp, resp: Response | None, rev: int | None, acked: bool
) -> Iterator[Write]:
    if isinstance(sub, Put):
        yield Write(op, sub.key, "put", sub.value, sub.lease, rev, acked)
    elif isinstance(sub, Delete):
        if acked and resp is not None and resp.deleted == 0:
            return  # definitely deleted nothing
        effective = acked and resp is not None and resp.deleted is not None and resp.deleted > 0
        yield Write(op, sub.key, "delete", "", 0, rev if effective else None, effective, sub.end)


def observed_kvs(op: Operation) -> Iterator[KV]:
    if op.status != OK or op.response is None:
        return
    yield from _resp_kvs(op.response)


def _resp_kvs(resp: Response) -> Iterator[KV]:
    yield from resp.kvs or ()
    for sub in resp.responses or ():
        yield from _resp_kvs(sub)


class WriteIndex:
    """Who wrote what: used by the set, lease and watch checks."""

    def __init__(self, history: History):
        self.all: list[Write] = [w for op in history.operations for w in writes(op)]
        self.values: dict[tuple[str, str], list[Write]] = {}
        self.acked_at: dict[tuple[str, int], Write] = {}
        for w in self.all:
            if w.kind == "put":
                self.values.setdefault((w.key, w.value), []).append(w)
            if w.acked and w.revision is not None:
                self.acked_at[(w.key, w.revision)] = w

    def explain(self, kv: KV) -> str | None:
        """None if ``kv`` could have been written; else why not."""
        ws = self.values.get((kv.key, kv.value))
        if not ws:
            return f"{kv.key}={kv.value!r}@{kv.mod_revision}: nobody wrote this value"
        at = self.acked_at.get((kv.key, kv.mod_revision))
        if at is not None and (at.kind != "put" or at.value != kv.value):
            return (
                f"{kv.key}={kv.value!r}@{kv.mod_revision}: revision {kv.mod_revision} of "
                f"this key was written by #{at.op.id} as {at.kind} {at.value!r}"
            )
        if all(w.acked and w.revision is not None for w in ws) and kv.mod_revision not in {
            w.revision for w in ws
        }:
            revs = sorted(w.revision for w in ws if w.revision is not None)
            return (
                f"{kv.key}={kv.value!r}@{kv.mod_revision}: this value was written only at "
                f"revision(s) {revs}"
            )
        return None


def _final_read(history: History) -> Operation | None:
    best = None
    for op in history.operations:
        req = op.request
        if (
            op.status == OK
            and isinstance(req, Range)
            and req.end is not None
            and not req.serializable
            and op.response is not None
            and op.response.kvs is not None
            and (best is None or op.invoke > best.invoke)
        ):
            best = op
    return best


def check(
    history: History, final: dict[str, KV] | None = None, final_revision: int | None = None
) -> CheckResult:
    idx = WriteIndex(history)
    problems: list[str] = []
    for op in history.operations:
        for kv in observed_kvs(op):
            why = idx.explain(kv)
            if why:
                problems.append(f"read of a value nobody wrote: {why} (in {op.describe()})")
    for w in history.watches:
        for r in w.responses:
            for ev in r.events:
                kvs = ([ev.kv] if ev.type == "put" else []) + ([ev.prev_kv] if ev.prev_kv else [])
                for kv in kvs:
                    why = idx.explain(kv)
                    if why:
                        problems.append(f"watch {w.id} saw a value nobody wrote: {why}")

    scope: tuple[str, str | None] | None = None
    if final is None:
        fop = _final_read(history)
        if fop is not None and fop.response is not None:
            req = fop.request
            assert isinstance(req, Range)
            final = {kv.key: kv for kv in fop.response.kvs or ()}
            final_revision = fop.response.revision
            scope = (req.key, req.end)
    if final is not None:
        for kv in final.values():
            why = idx.explain(kv)
            if why:
                problems.append(f"final state holds a value nobody wrote: {why}")
        problems.extend(_lost_writes(idx, final, final_revision, scope))
    summary = f"{len(idx.all)} writes"
    if final is None:
        summary += "; no final read, lost-write check skipped"
    if problems:
        return CheckResult("set", "violation", problems[0], problems[:50])
    return CheckResult("set", "ok", summary)


def _lost_writes(
    idx: WriteIndex,
    final: dict[str, KV],
    final_revision: int | None,
    scope: tuple[str, str | None] | None,
) -> list[str]:
    last: dict[str, Write] = {}
    for w in idx.all:
        if not w.acked or w.revision is None or w.end is not None:
            continue
        if final_revision is not None and w.revision > final_revision:
            continue
        if scope is not None and not in_range(w.key, *scope):
            continue
        cur = last.get(w.key)
        if cur is None or w.revision > (cur.revision or 0):
            last[w.key] = w
    out: list[str] = []
    for key, w in sorted(last.items()):
        assert w.revision is not None
        kv = final.get(key)
        if kv is not None:
            if kv.mod_revision < w.revision:
                out.append(
                    f"lost write: #{w.op.id} {w.kind} {key}={w.value!r} acknowledged at "
                    f"revision {w.revision}, final state has {kv.value!r}@{kv.mod_revision}"
                )
            elif kv.mod_revision == w.revision and (w.kind != "put" or kv.value != w.value):
                out.append(
                    f"lost write: #{w.op.id} {w.kind} {key}={w.value!r} acknowledged at "
                    f"revision {w.revision}, final state has {kv.value!r} at that revision"
                )
            continue
        if w.kind == "delete":
            continue
        if not _may_be_deleted_after(idx, w):
            out.append(
                f"lost write: #{w.op.id} put {key}={w.value!r} acknowledged at revision "
                f"{w.revision}, key missing from the final state and nothing could have "
                f"deleted it"
            )
    return out


def _may_be_deleted_after(idx: WriteIndex, w: Write) -> bool:
    assert w.revision is not None
    for d in idx.all:
        if d.kind != "delete" or not in_range(w.key, d.key, d.end):
            continue
        if d.revision is None or d.revision > w.revision:
            if d.op.ret is None or d.op.status != OK or d.op.ret > w.op.invoke:
                return True
    if w.lease:
        return True  # expiry needs no client op; revoke checked by the lease checker
    for p in idx.all:
        # a later put with a lease (unknown outcome, or acknowledged above w) may have replaced
        # w and then gone with its lease
        if p.kind == "put" and p.key == w.key and p.lease and p is not w:
            if p.revision is None or p.revision > w.revision:
                if p.op.status != OK or p.op.ret is None or p.op.ret > w.op.invoke:
                    return True
    return False


def revoke_ops(history: History, lease: int) -> list[Operation]:
    return [
        op
        for op in history.operations
        if isinstance(op.request, LeaseRevoke) and op.request.lease == lease
    ]
