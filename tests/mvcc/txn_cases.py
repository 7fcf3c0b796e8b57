"""Txn validation cases shared by the unit tests (and replayable against a real etcd).

Each case: (name, TxnRequest, expected error message or None)."""

from __future__ import annotations

from conch.errors import (
    ErrDuplicateKey,
    ErrEmptyKey,
    ErrInvalidSortOption,
    ErrKeyNotFound,
    ErrLeaseProvided,
    ErrTooManyOps,
    ErrValueProvided,
)
from conch.proto.etcdserverpb import rpc_pb2 as pb


def put(k: bytes, **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=k, **kw))  # type: ignore[arg-type]


def rng(k: bytes, **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=k, **kw))  # type: ignore[arg-type]


def dele(k: bytes, end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k, range_end=end))


def txn(
    success: list[pb.RequestOp] | None = None,
    failure: list[pb.RequestOp] | None = None,
    compare: list[pb.Compare] | None = None,
) -> pb.TxnRequest:
    return pb.TxnRequest(compare=compare or [], success=success or [], failure=failure or [])


def nested(
    success: list[pb.RequestOp] | None = None, failure: list[pb.RequestOp] | None = None
) -> pb.RequestOp:
    return pb.RequestOp(request_txn=txn(success, failure))


def cmp(k: bytes) -> pb.Compare:
    return pb.Compare(key=k, target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)


DUP = ErrDuplicateKey.message
CASES: list[tuple[str, pb.TxnRequest, str | None]] = [
    ("ok-distinct", txn([put(b"a"), put(b"b"), dele(b"c")]), None),
    ("put-twice", txn([put(b"a"), put(b"a")]), DUP),
    ("put-twice-failure", txn(failure=[put(b"a"), put(b"a")]), DUP),
    ("same-key-both-branches", txn([put(b"a")], [put(b"a")]), None),
    ("put-in-delete-point", txn([dele(b"a"), put(b"a")]), DUP),
    ("put-before-delete", txn([put(b"a"), dele(b"a")]), DUP),
    ("put-in-delete-range", txn([put(b"b"), dele(b"a", b"c")]), DUP),
    ("put-at-range-end", txn([put(b"c"), dele(b"a", b"c")]), None),
    ("delete-from-key-never-conflicts", txn([put(b"b"), dele(b"a", b"\x00")]), None),
    ("delete-all-never-conflicts", txn([put(b"b"), dele(b"\x00", b"\x00")]), None),
    ("two-deletes-overlap-ok", txn([dele(b"a", b"c"), dele(b"b")]), None),
    ("range-and-put-ok", txn([rng(b"a"), put(b"a")]), None),
    ("nested-put-vs-outer-put", txn([put(b"a"), nested([put(b"a")])]), DUP),
    ("nested-then-else-same-key-ok", txn([nested([put(b"a")], [put(b"a")])]), None),
    ("two-nested-same-key", txn([nested([put(b"a")]), nested([put(b"a")])]), DUP),
    ("two-nested-else-vs-then", txn([nested([put(b"a")]), nested(failure=[put(b"a")])]), DUP),
    ("nested-put-in-outer-delete", txn([dele(b"a", b"c"), nested([put(b"b")])]), DUP),
    ("outer-put-in-nested-delete", txn([put(b"b"), nested([dele(b"a", b"c")])]), DUP),
    ("nested-delete-then-later-nested-put", txn([nested([dele(b"a")]), nested([put(b"a")])]), DUP),
    ("nested-put-then-later-nested-delete", txn([nested([put(b"a")]), nested([dele(b"a")])]), None),
    ("deep-nesting", txn([nested([nested([put(b"x")])]), put(b"x")]), DUP),
    ("nested-own-dup", txn([nested([put(b"a"), put(b"a")])]), DUP),
    ("empty-key-put", txn([put(b"")]), ErrEmptyKey.message),
    ("empty-key-compare", txn(compare=[cmp(b"")]), ErrEmptyKey.message),
    ("empty-key-nested", txn([nested([rng(b"")])]), ErrEmptyKey.message),
    ("empty-key-delete", txn(failure=[dele(b"")]), ErrEmptyKey.message),
    ("bad-sort", txn([rng(b"a", sort_order=7)]), ErrInvalidSortOption.message),
    ("bad-sort-target", txn([rng(b"a", sort_target=9)]), ErrInvalidSortOption.message),
    (
        "ignore-value-with-value",
        txn([put(b"a", value=b"v", ignore_value=True)]),
        ErrValueProvided.message,
    ),
    (
        "ignore-lease-with-lease",
        txn([put(b"a", lease=5, ignore_lease=True)]),
        ErrLeaseProvided.message,
    ),
    ("empty-op", txn([pb.RequestOp()]), ErrKeyNotFound.message),
    ("128-each-list", txn([rng(b"r")] * 128, [rng(b"r")] * 128, [cmp(b"c")] * 128), None),
    ("129-success", txn([rng(b"r")] * 129), ErrTooManyOps.message),
    ("129-compares", txn(compare=[cmp(b"c")] * 129), ErrTooManyOps.message),
    ("129-failure", txn(failure=[rng(b"r")] * 129), ErrTooManyOps.message),
    # nested txns get the remaining budget: 128 - max(outer lists)
    ("nested-budget-ok", txn([nested([rng(b"r")] * 64)] + [rng(b"r")] * 63), None),
    (
        "nested-budget-exceeded",
        txn([nested([rng(b"r")] * 65)] + [rng(b"r")] * 63),
        ErrTooManyOps.message,
    ),
]
