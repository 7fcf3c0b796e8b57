"""Txn: request validation (etcd's v3rpc/key.go) and execution (etcdserver apply Txn).

Validation (`check_*`) is pure and runs in the API layer before a request is proposed.
Execution follows etcd 3.5's applierV3backend.Txn:

1. every compare on the chosen path - including the compares of nested txns - is
   evaluated against the state *before* the txn (compareToPath);
2. for a txn with writes, every put on the chosen path is checked (ignore_* need the key,
   a nonzero lease must exist), then every range on the path (revision not future, not
   compacted) - so a failing txn leaves nothing behind;
3. the ops run in order, reads seeing earlier writes; all writes share one revision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import lmdb

from conch.errors import (
    ErrCompacted,
    ErrDuplicateKey,
    ErrEmptyKey,
    ErrFutureRev,
    ErrInvalidSortOption,
    ErrKeyNotFound,
    ErrLeaseNotFound,
    ErrLeaseProvided,
    ErrTooManyOps,
    ErrValueProvided,
    err,
)
from conch.mvcc.kvstore import KVWrite, _get, range_end_bound
from conch.proto.etcdserverpb.rpc_pb2 import (
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
    TxnResponse,
)
from conch.proto.mvccpb.kv_pb2 import Event, KeyValue

if TYPE_CHECKING:
    from conch.mvcc.kvstore import KVStore

DEFAULT_MAX_TXN_OPS = 128

# Compare enums
CMP_EQUAL, CMP_GREATER, CMP_LESS, CMP_NOT_EQUAL = 0, 1, 2, 3
T_VERSION, T_CREATE, T_MOD, T_VALUE, T_LEASE = 0, 1, 2, 3, 4


# --- validation (v3rpc/key.go) ------------------------------------------------------------
def check_range(req: RangeRequest) -> None:
    if not req.key:
        raise err(ErrEmptyKey)
    if req.sort_order not in (0, 1, 2):
        raise err(ErrInvalidSortOption)
    if req.sort_target not in (0, 1, 2, 3, 4):
        raise err(ErrInvalidSortOption)


def check_put(req: PutRequest) -> None:
    if not req.key:
        raise err(ErrEmptyKey)
    if req.ignore_value and req.value:
        raise err(ErrValueProvided)
    if req.ignore_lease and req.lease != 0:
        raise err(ErrLeaseProvided)


def check_delete_range(req: DeleteRangeRequest) -> None:
    if not req.key:
        raise err(ErrEmptyKey)


def check_txn(req: TxnRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """checkTxnRequest, then checkIntervals on success and on failure."""
    _check_txn_request(req, max_txn_ops)
    _check_intervals(req.success)
    _check_intervals(req.failure)


def _check_txn_request(req: TxnRequest, max_txn_ops: int) -> None:
    opc = max(len(req.compare), len(req.success), len(req.failure))
    if opc > max_txn_ops:
        raise err(ErrTooManyOps)
    for c in req.compare:
        if not c.key:
            raise err(ErrEmptyKey)
    # nested txns get the remaining budget (etcd: checkRequestOp(u, maxTxnOps-opc))
    for u in req.success:
        _check_request_op(u, max_txn_ops - opc)
    for u in req.failure:
        _check_request_op(u, max_txn_ops - opc)


def _check_request_op(u: RequestOp, max_txn_ops: int) -> None:
    which = u.WhichOneof("request")
    if which == "request_range":
        check_range(u.request_range)
    elif which == "request_put":
        check_put(u.request_put)
    elif which == "request_delete_range":
        check_delete_range(u.request_delete_range)
    elif which == "request_txn":
        _check_txn_request(u.request_txn, max_txn_ops)
    else:
        raise err(ErrKeyNotFound)  # empty op: etcd answers ErrGRPCKeyNotFound


class _Dels:
    """etcd's adt.IntervalTree of delete ranges, as used by checkIntervals.

    A delete without range_end is the point [key, key+"\\0"); with range_end it is the
    string-affine interval [key, range_end) - so `range_end="\\0"` makes an empty
    (inverted) interval that never conflicts, exactly as in etcd."""

    __slots__ = ("ivs",)

    def __init__(self) -> None:
        self.ivs: list[tuple[bytes, bytes | None]] = []  # (begin, end); None = point

    def add(self, key: bytes, range_end: bytes) -> None:
        self.ivs.append((key, range_end if range_end else None))

    def union(self, other: _Dels) -> None:
        self.ivs.extend(other.ivs)

    def hits(self, k: bytes) -> bool:
        for b, e in self.ivs:
            if e is None:
                if k == b:
                    return True
            elif b <= k < e:
                return True
        return False


def _check_intervals(reqs: Sequence[RequestOp]) -> tuple[set[bytes], _Dels]:
    dels = _Dels()
    for r in reqs:
        if r.WhichOneof("request") == "request_delete_range":
            d = r.request_delete_range
            dels.add(d.key, d.range_end)
    puts: set[bytes] = set()
    for r in reqs:
        if r.WhichOneof("request") != "request_txn":
            continue
        t = r.request_txn
        puts_then, dels_then = _check_intervals(t.success)
        puts_else, dels_else = _check_intervals(t.failure)
        for k in puts_then:
            if k in puts or dels.hits(k):
                raise err(ErrDuplicateKey)
            puts.add(k)
        for k in puts_else:
            if k in puts and k not in puts_then:
                raise err(ErrDuplicateKey)
            if dels.hits(k):
                raise err(ErrDuplicateKey)
            puts.add(k)
        dels.union(dels_then)
        dels.union(dels_else)
    for r in reqs:
        if r.WhichOneof("request") != "request_put":
            continue
        k = r.request_put.key
        if k in puts or dels.hits(k):
            raise err(ErrDuplicateKey)
        puts.add(k)
    return puts, dels


def is_txn_readonly(req: TxnRequest) -> bool:
    """etcd's isTxnReadonly: every op of both branches is a Range (nested txns count as
    writes)."""
    for u in req.success:
        if u.WhichOneof("request") != "request_range":
            return False
    for u in req.failure:
        if u.WhichOneof("request") != "request_range":
            return False
    return True


# --- execution ------------------------------------------------------------------------------
class _Path:
    """The chosen branch of a txn and, for each nested txn in it, its own path."""

    __slots__ = ("succeeded", "ops", "children")

    def __init__(self, succeeded: bool, ops: list[RequestOp], children: list[_Path]) -> None:
        self.succeeded = succeeded
        self.ops = ops
        self.children = children


def _compare_kv(c: Compare, kv: KeyValue) -> bool:
    target = c.target
    which = c.WhichOneof("target_union")
    result: int
    if target == T_VALUE:
        want = c.value if which == "value" else b""
        have = kv.value
        result = (have > want) - (have < want)
    else:
        # the compared-to value counts only if the oneof holds the target's own field
        have_i = want_i = 0
        if target == T_CREATE:
            have_i = kv.create_revision
            want_i = c.create_revision if which == "create_revision" else 0
        elif target == T_MOD:
            have_i = kv.mod_revision
            want_i = c.mod_revision if which == "mod_revision" else 0
        elif target == T_VERSION:
            have_i = kv.version
            want_i = c.version if which == "version" else 0
        elif target == T_LEASE:
            have_i = kv.lease
            want_i = c.lease if which == "lease" else 0
        result = (have_i > want_i) - (have_i < want_i)
    r = c.result
    if r == CMP_EQUAL:
        return result == 0
    if r == CMP_NOT_EQUAL:
        return result != 0
    if r == CMP_GREATER:
        return result > 0
    if r == CMP_LESS:
        return result < 0
    return True


_ZERO_KV = KeyValue()


def _apply_compare(store: KVStore, txn: lmdb.Transaction, cur: int, c: Compare) -> bool:
    end = range_end_bound(c.range_end)
    vals, _ = store._fetch_latest(txn, c.key, end, 0)
    if not vals:
        if c.target == T_VALUE:
            return False  # no way to represent a missing value
        return _compare_kv(c, _ZERO_KV)
    for v in vals:
        if not _compare_kv(c, KeyValue.FromString(v)):
            return False
    return True


def _compare_to_path(store: KVStore, txn: lmdb.Transaction, cur: int, req: TxnRequest) -> _Path:
    ok = True
    for c in req.compare:
        if not _apply_compare(store, txn, cur, c):
            ok = False
            break
    ops = list(req.success if ok else req.failure)
    children = [
        _compare_to_path(store, txn, cur, op.request_txn)
        for op in ops
        if op.WhichOneof("request") == "request_txn"
    ]
    return _Path(ok, ops, children)


def _check_puts(store: KVStore, txn: lmdb.Transaction, path: _Path) -> None:
    latest = store._latest
    hooks = store.lease_hooks
    ci = 0
    for op in path.ops:
        which = op.WhichOneof("request")
        if which == "request_txn":
            _check_puts(store, txn, path.children[ci])
            ci += 1
        elif which == "request_put":
            p = op.request_put
            if p.ignore_value or p.ignore_lease:
                if len(p.key) > 511 or _get(txn, p.key, db=latest) is None:
                    raise err(ErrKeyNotFound)
            if p.lease and not hooks.exists(p.lease):
                raise err(ErrLeaseNotFound)


def _check_ranges(path: _Path, cur: int, compact: int) -> None:
    ci = 0
    for op in path.ops:
        which = op.WhichOneof("request")
        if which == "request_txn":
            _check_ranges(path.children[ci], cur, compact)
            ci += 1
        elif which == "request_range":
            rev = op.request_range.revision
            if rev == 0:
                continue
            if rev > cur:
                raise err(ErrFutureRev)
            if rev < compact:
                raise err(ErrCompacted)


def _execute(w: KVWrite, path: _Path, resp: TxnResponse) -> None:
    resp.succeeded = path.succeeded
    responses = resp.responses
    ci = 0
    for op in path.ops:
        which = op.WhichOneof("request")
        out = responses.add()
        if which == "request_range":
            w.range_into(op.request_range, out.response_range)
        elif which == "request_put":
            w.put_into(op.request_put, out.response_put)
        elif which == "request_delete_range":
            w.delete_range_into(op.request_delete_range, out.response_delete_range)
        elif which == "request_txn":
            sub = out.response_txn
            sub.header.SetInParent()  # nested txn headers are empty
            _execute(w, path.children[ci], sub)
            ci += 1


def apply_txn(
    store: KVStore, txn: lmdb.Transaction, req: TxnRequest, readonly: bool
) -> tuple[TxnResponse, list[Event]]:
    w = KVWrite(store, txn)
    cur, compact = w.begin_rev, w.compact_rev
    path = _compare_to_path(store, txn, cur, req)
    is_write = not is_txn_readonly(req)
    if is_write:
        if readonly:
            raise ValueError("a Txn with writes needs a write transaction")
        _check_puts(store, txn, path)
    _check_ranges(path, cur, compact)
    resp = TxnResponse()
    _execute(w, path, resp)
    events = w.end()
    resp.header.revision = cur + 1 if events else cur
    return resp, events
