"""Txn: validation table, compares, nested execution, atomicity.

The validation table (txn_cases.py) and the execution shapes below were checked against a
real etcd over gRPC."""

from __future__ import annotations

import pytest

from conch.errors import (
    ErrCompacted,
    ErrEmptyKey,
    ErrFutureRev,
    ErrInvalidSortOption,
    ErrKeyNotFound,
    ErrLeaseNotFound,
    ErrLeaseProvided,
    ErrValueProvided,
    EtcdError,
)
from conch.mvcc import (
    check_delete_range,
    check_put,
    check_range,
    check_txn,
    is_txn_readonly,
)
from conch.proto.etcdserverpb import rpc_pb2 as pb
from conch.proto.mvccpb.kv_pb2 import Event
from tests.mvcc.mvcc_helpers import Harness, kv
from tests.mvcc.txn_cases import CASES, dele, nested, put, rng, txn

C = pb.Compare
PUT, DELETE = Event.PUT, Event.DELETE


@pytest.mark.parametrize("name,req,want", CASES, ids=[c[0] for c in CASES])
def test_check_txn_table(name: str, req: pb.TxnRequest, want: str | None) -> None:
    if want is None:
        check_txn(req)
    else:
        with pytest.raises(EtcdError) as ei:
            check_txn(req)
        assert ei.value.message == want


def test_check_txn_custom_limit() -> None:
    check_txn(txn([rng(b"a")] * 3), max_txn_ops=3)
    with pytest.raises(EtcdError):
        check_txn(txn([rng(b"a")] * 4), max_txn_ops=3)


def test_check_single_requests() -> None:
    def e(f: object, req: object) -> str | None:
        try:
            f(req)  # type: ignore[operator]
        except EtcdError as ex:
            return ex.message
        return None

    assert e(check_range, pb.RangeRequest()) == ErrEmptyKey.message
    bad_order = pb.RangeRequest(key=b"a", sort_order=3)  # type: ignore[arg-type]  # invalid on purpose
    bad_target = pb.RangeRequest(key=b"a", sort_target=5)  # type: ignore[arg-type]  # invalid on purpose
    assert e(check_range, bad_order) == ErrInvalidSortOption.message
    assert e(check_range, bad_target) == ErrInvalidSortOption.message
    ok_sort = pb.RangeRequest(key=b"a", sort_order=pb.RangeRequest.DESCEND,
                              sort_target=pb.RangeRequest.VALUE)
    assert e(check_range, ok_sort) is None
    assert e(check_put, pb.PutRequest()) == ErrEmptyKey.message
    assert e(check_put, pb.PutRequest(key=b"a", value=b"v", ignore_value=True)) == (
        ErrValueProvided.message
    )
    assert e(check_put, pb.PutRequest(key=b"a", lease=1, ignore_lease=True)) == (
        ErrLeaseProvided.message
    )
    assert e(check_put, pb.PutRequest(key=b"a", ignore_lease=True, ignore_value=True)) is None
    assert e(check_delete_range, pb.DeleteRangeRequest()) == ErrEmptyKey.message
    assert e(check_delete_range, pb.DeleteRangeRequest(key=b"a")) is None


def test_is_txn_readonly() -> None:
    assert is_txn_readonly(txn([rng(b"a")], [rng(b"b")]))
    assert is_txn_readonly(txn())
    assert not is_txn_readonly(txn([rng(b"a")], [put(b"b")]))
    assert not is_txn_readonly(txn([nested([rng(b"a")])]))


# --- compares -----------------------------------------------------------------------------
@pytest.fixture
def kvs(h: Harness) -> Harness:
    h.put(b"a", b"10", lease=1)  # 2
    h.put(b"b", b"20")  # 3
    h.put(b"a", b"11", lease=1)  # 4: a version 2, create 2, mod 4
    return h


def succeeded(h: Harness, *cmps: pb.Compare) -> bool:
    resp, evs = h.txn(txn([rng(b"a")], compare=list(cmps)))
    assert evs == []
    return resp.succeeded


EQ, GT, LT, NE = C.EQUAL, C.GREATER, C.LESS, C.NOT_EQUAL


@pytest.mark.parametrize(
    "target,field,have",
    [
        (C.VERSION, "version", 2),
        (C.CREATE, "create_revision", 2),
        (C.MOD, "mod_revision", 4),
        (C.LEASE, "lease", 1),
    ],
)
def test_compare_int_targets(kvs: Harness, target: int, field: str, have: int) -> None:
    def c(result: int, v: int) -> pb.Compare:
        return C(key=b"a", target=target, result=result, **{field: v})  # type: ignore[arg-type]

    for v in (have - 1, have, have + 1):
        assert succeeded(kvs, c(EQ, v)) == (have == v)
        assert succeeded(kvs, c(NE, v)) == (have != v)
        assert succeeded(kvs, c(GT, v)) == (have > v)
        assert succeeded(kvs, c(LT, v)) == (have < v)


def test_compare_value(kvs: Harness) -> None:
    def c(result: pb.Compare.CompareResult, v: bytes, key: bytes = b"a") -> pb.Compare:
        return C(key=key, target=C.VALUE, result=result, value=v)

    assert succeeded(kvs, c(EQ, b"11"))
    assert not succeeded(kvs, c(EQ, b"10"))
    assert succeeded(kvs, c(GT, b"10")) and succeeded(kvs, c(GT, b"1"))
    assert succeeded(kvs, c(LT, b"2")) and succeeded(kvs, c(NE, b""))
    # missing key: VALUE compares are always false, even NOT_EQUAL
    assert not succeeded(kvs, c(NE, b"x", b"zz")) and not succeeded(kvs, c(EQ, b"", b"zz"))


def test_compare_missing_key_is_zero_kv(kvs: Harness) -> None:
    assert succeeded(kvs, C(key=b"zz", target=C.CREATE, result=EQ, create_revision=0))
    assert succeeded(kvs, C(key=b"zz", target=C.VERSION, result=EQ, version=0))
    assert succeeded(kvs, C(key=b"zz", target=C.MOD, result=LT, mod_revision=1))
    assert succeeded(kvs, C(key=b"zz", target=C.LEASE, result=EQ, lease=0))
    assert not succeeded(kvs, C(key=b"zz", target=C.VERSION, result=GT, version=0))


def test_compare_oneof_mismatch_compares_to_zero(kvs: Harness) -> None:
    # target VERSION but the union holds create_revision: compared against 0
    assert succeeded(kvs, C(key=b"a", target=C.VERSION, result=GT, create_revision=50))
    assert not succeeded(kvs, C(key=b"a", target=C.VERSION, result=EQ, version=0))


def test_compare_range_end_all_keys(kvs: Harness) -> None:
    assert succeeded(kvs, C(key=b"a", range_end=b"c", target=C.MOD, result=GT, mod_revision=2))
    assert not succeeded(kvs, C(key=b"a", range_end=b"c", target=C.MOD, result=GT, mod_revision=3))
    assert succeeded(kvs, C(key=b"a", range_end=b"\x00", target=C.VERSION, result=GT, version=0))
    assert succeeded(kvs, C(key=b"x", range_end=b"y", target=C.CREATE, result=EQ))  # empty
    assert not succeeded(kvs, C(key=b"x", range_end=b"y", target=C.VALUE, result=NE, value=b"q"))


def test_compares_are_anded(kvs: Harness) -> None:
    yes = C(key=b"a", target=C.VERSION, result=EQ, version=2)
    no = C(key=b"b", target=C.VERSION, result=EQ, version=2)
    assert succeeded(kvs, yes, yes) and not succeeded(kvs, yes, no) and not succeeded(kvs, no, yes)


# --- execution ------------------------------------------------------------------------------
def test_txn_branches_and_revision(kvs: Harness) -> None:
    h = kvs
    cmp = C(key=b"b", target=C.VALUE, result=EQ, value=b"20")
    resp, evs = h.txn(txn([put(b"c", value=b"1"), dele(b"a")], [put(b"d")], compare=[cmp]))
    assert resp.succeeded and resp.header.revision == 5 and h.rev() == 5
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in evs] == [
        (PUT, b"c", 5),
        (DELETE, b"a", 5),
    ]
    assert [r.WhichOneof("response") for r in resp.responses] == [
        "response_put",
        "response_delete_range",
    ]
    assert resp.responses[1].response_delete_range.deleted == 1
    assert h.leases.keys[1] == set()
    resp, evs = h.txn(txn([put(b"c", value=b"1")], [put(b"d", value=b"2")], compare=[cmp, cmp]))
    assert resp.succeeded
    cmp2 = C(key=b"b", target=C.VALUE, result=EQ, value=b"nope")
    resp, evs = h.txn(txn([put(b"c")], [put(b"d", value=b"2")], compare=[cmp2]))
    assert not resp.succeeded and resp.header.revision == 7 and [e.kv.key for e in evs] == [b"d"]


def test_readonly_txn_does_not_bump(kvs: Harness) -> None:
    h = kvs
    resp, evs = h.txn(txn([rng(b"a"), rng(b"b")]))
    assert evs == [] and resp.header.revision == 4 and h.rev() == 4
    assert resp.responses[0].response_range.kvs[0] == kv(b"a", b"11", 2, 4, 2, lease=1)
    # own read transaction (txn=None) for read-only requests
    resp2, evs2 = h.store.txn(None, txn([rng(b"a"), rng(b"b")]))
    assert resp2 == resp and evs2 == []
    with pytest.raises(ValueError):
        h.store.txn(None, txn([put(b"x")]))
    # a "write" txn (nested) that writes nothing does not bump either
    resp, evs = h.txn(txn([nested([rng(b"a")])]))
    assert evs == [] and resp.header.revision == 4 and h.rev() == 4


def test_txn_ops_see_earlier_writes_and_header_revisions(h: Harness) -> None:
    h.put(b"a", b"1")  # 2
    cmp = C(key=b"a", target=C.VALUE, result=EQ, value=b"1")
    req = txn(
        [
            dele(b"zz"),
            rng(b"a"),
            put(b"c", value=b"2"),
            dele(b"yy"),
            rng(b"a", range_end=b"z", revision=2),
            nested([rng(b"c"), put(b"d")], [put(b"e")]),
        ],
        compare=[cmp],
    )
    resp, evs = h.txn(req)
    r = resp.responses
    assert resp.header.revision == 3
    assert r[0].response_delete_range.header.revision == 2  # before any write: old revision
    assert r[1].response_range.header.revision == 2
    assert r[2].response_put.header.revision == 3
    assert r[3].response_delete_range.header.revision == 3  # no-op delete after a write
    assert r[4].response_range.header.revision == 3 and r[4].response_range.count == 1
    sub = r[5].response_txn
    assert sub.HasField("header") and sub.header == pb.ResponseHeader()  # present but empty
    assert sub.succeeded
    assert sub.responses[0].response_range.kvs[0] == kv(b"c", b"2", 3, 3, 1)  # sees put(c)
    assert sub.responses[1].response_put.header.revision == 3
    assert [(e.kv.key, e.kv.mod_revision) for e in evs] == [(b"c", 3), (b"d", 3)]
    assert [x for _, g in h.store.read_events(3, 3) for x in g] == evs


def test_nested_compares_evaluated_before_ops(h: Harness) -> None:
    inner = pb.TxnRequest(
        compare=[C(key=b"n", target=C.CREATE, result=C.EQUAL, create_revision=0)],
        success=[put(b"m", value=b"pre")],
        failure=[put(b"m", value=b"post")],
    )
    resp, _ = h.txn(txn([put(b"n", value=b"x"), pb.RequestOp(request_txn=inner)]))
    assert resp.responses[1].response_txn.succeeded
    assert h.get(b"m").kvs[0].value == b"pre"


def test_txn_prev_kv_and_ignore_inside(h: Harness) -> None:
    h.put(b"a", b"1", lease=2)
    resp, _ = h.txn(txn([put(b"a", ignore_value=True, prev_kv=True), put(b"b", prev_kv=True)]))
    assert resp.responses[0].response_put.prev_kv == kv(b"a", b"1", 2, 2, 1, lease=2)
    assert not resp.responses[1].response_put.HasField("prev_kv")
    assert h.get(b"a").kvs[0] == kv(b"a", b"1", 2, 3, 2, lease=0)


@pytest.mark.parametrize(
    "ops,error",
    [
        ([put(b"x", value=b"1"), put(b"y", lease=77)], ErrLeaseNotFound),
        ([put(b"x", value=b"1"), nested([put(b"y", ignore_value=True)])], ErrKeyNotFound),
        ([put(b"x", value=b"1"), rng(b"a", revision=99)], ErrFutureRev),
        ([put(b"x", value=b"1"), rng(b"a", revision=-2)], ErrCompacted),
    ],
)
def test_failing_txn_leaves_nothing(h: Harness, ops: list[pb.RequestOp], error: EtcdError) -> None:
    h.put(b"a", b"1")
    before = (h.rev(), h.store.hash_kv(0))
    with pytest.raises(EtcdError) as ei:
        h.txn(txn(ops))
    assert ei.value == error
    assert (h.rev(), h.store.hash_kv(0)) == before
    assert h.get(b"x").count == 0 and h.leases.log == []


def test_txn_range_revision_checks_only_chosen_branch(h: Harness) -> None:
    h.put(b"a")
    cmp = C(key=b"a", target=C.VERSION, result=EQ, version=1)
    resp, _ = h.txn(txn([rng(b"a")], [rng(b"a", revision=99)], compare=[cmp]))
    assert resp.succeeded


def test_txn_with_compacted_range(h: Harness) -> None:
    for i in range(5):
        h.put(b"a", str(i).encode())
    h.compact(4)
    with pytest.raises(EtcdError) as ei:
        h.txn(txn([rng(b"a", revision=3)]))
    assert ei.value == ErrCompacted
    resp, _ = h.txn(txn([rng(b"a", revision=4)]))
    assert resp.responses[0].response_range.kvs[0].value == b"2"


def test_delete_from_key_then_put_same_key_in_one_txn(h: Harness) -> None:
    """Allowed by checkIntervals (range_end "\\0" is an empty interval there)."""
    h.put(b"a", b"0")
    h.put(b"b", b"0")
    req = txn([dele(b"a", b"\x00"), put(b"a", value=b"again")])
    check_txn(req)
    resp, evs = h.txn(req)
    assert resp.responses[0].response_delete_range.deleted == 2
    assert [(e.type, e.kv.key) for e in evs] == [(DELETE, b"a"), (DELETE, b"b"), (PUT, b"a")]
    assert h.get(b"a").kvs[0] == kv(b"a", b"again", 4, 4, 1)
    assert h.get(b"a", revision=3).kvs[0].value == b"0"
