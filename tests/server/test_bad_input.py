"""Bad input gets etcd's status code and exact message, checked against etcd itself.

Every case runs against both servers (the `any_server` fixture): the expected code and
message are etcd's, so the same assertion holds for etcd and must hold for conch."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from conch.proto.etcdserverpb import rpc_pb2
from devkit.harness import ServerProcess
from tests.grpc_stubs import Stubs, connect, rpc_error

C = grpc.StatusCode


def _op_put(key: bytes, value: bytes = b"v") -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))


@pytest.fixture
def stubs(any_server: ServerProcess) -> Iterator[Stubs]:
    with connect(any_server.endpoint) as s:
        yield s


def test_empty_key(stubs: Stubs) -> None:
    assert rpc_error(stubs.kv.Put, rpc_pb2.PutRequest(key=b"", value=b"v")) == (
        C.INVALID_ARGUMENT, "etcdserver: key is not provided")
    assert rpc_error(stubs.kv.Range, rpc_pb2.RangeRequest(key=b"")) == (
        C.INVALID_ARGUMENT, "etcdserver: key is not provided")
    assert rpc_error(stubs.kv.DeleteRange, rpc_pb2.DeleteRangeRequest(key=b"")) == (
        C.INVALID_ARGUMENT, "etcdserver: key is not provided")


def test_too_many_txn_ops_is_per_list(stubs: Stubs) -> None:
    # 128 puts in success and 128 in failure is allowed (the limit is per list) ...
    ok = rpc_pb2.TxnRequest(
        success=[_op_put(b"s%d" % i) for i in range(128)],
        failure=[_op_put(b"f%d" % i) for i in range(128)],
    )
    assert stubs.kv.Txn(ok, timeout=10).succeeded
    # ... 129 in one list is not.
    bad = rpc_pb2.TxnRequest(success=[_op_put(b"k%d" % i) for i in range(129)])
    assert rpc_error(stubs.kv.Txn, bad) == (
        C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")


def test_duplicate_key_in_txn(stubs: Stubs) -> None:
    req = rpc_pb2.TxnRequest(success=[_op_put(b"a"), _op_put(b"a")])
    assert rpc_error(stubs.kv.Txn, req) == (
        C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")


def test_unknown_lease(stubs: Stubs) -> None:
    assert rpc_error(stubs.kv.Put, rpc_pb2.PutRequest(key=b"k", value=b"v", lease=12345)) == (
        C.NOT_FOUND, "etcdserver: requested lease not found")
    assert rpc_error(stubs.lease.LeaseRevoke, rpc_pb2.LeaseRevokeRequest(ID=12345)) == (
        C.NOT_FOUND, "etcdserver: requested lease not found")
    # A txn whose chosen branch puts with an unknown lease fails as a whole.
    req = rpc_pb2.TxnRequest(success=[
        _op_put(b"t1"),
        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t2", value=b"v", lease=777)),
    ])
    assert rpc_error(stubs.kv.Txn, req) == (C.NOT_FOUND, "etcdserver: requested lease not found")
    assert stubs.kv.Range(rpc_pb2.RangeRequest(key=b"t1"), timeout=10).count == 0


def test_future_and_compacted_revision(stubs: Stubs) -> None:
    for i in range(5):
        stubs.kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"%d" % i), timeout=10)
    cur = stubs.kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=10).header.revision
    assert rpc_error(stubs.kv.Range, rpc_pb2.RangeRequest(key=b"k", revision=cur + 1)) == (
        C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
    stubs.kv.Compact(rpc_pb2.CompactionRequest(revision=cur - 1, physical=True), timeout=10)
    assert rpc_error(stubs.kv.Range, rpc_pb2.RangeRequest(key=b"k", revision=cur - 2)) == (
        C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    # Reading exactly at the compact revision is allowed.
    got = stubs.kv.Range(rpc_pb2.RangeRequest(key=b"k", revision=cur - 1), timeout=10)
    assert got.kvs[0].value == b"3"
    assert rpc_error(stubs.kv.Compact, rpc_pb2.CompactionRequest(revision=cur - 1)) == (
        C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    assert rpc_error(stubs.kv.Compact, rpc_pb2.CompactionRequest(revision=cur + 10)) == (
        C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")


def test_invalid_sort_option(conch_server: ServerProcess) -> None:
    # etcd 3.5 rejects unknown sort enums (v3rpc/key.go checkRangeRequest); the reference
    # etcd 3.4 here predates that check and ignores them, so this case is conch-only.
    stubs = connect(conch_server.endpoint)
    bad_order = rpc_pb2.RangeRequest(key=b"k", sort_order=7)  # type: ignore[arg-type]  # invalid on purpose
    bad_target = rpc_pb2.RangeRequest(key=b"k", sort_target=9)  # type: ignore[arg-type]  # invalid on purpose
    assert rpc_error(stubs.kv.Range, bad_order) == (
        C.INVALID_ARGUMENT, "etcdserver: invalid sort option")
    assert rpc_error(stubs.kv.Range, bad_target) == (
        C.INVALID_ARGUMENT, "etcdserver: invalid sort option")


def test_ignore_value_and_lease_rules(stubs: Stubs) -> None:
    assert rpc_error(stubs.kv.Put, rpc_pb2.PutRequest(key=b"nokey", ignore_value=True)) == (
        C.INVALID_ARGUMENT, "etcdserver: key not found")
    assert rpc_error(
        stubs.kv.Put, rpc_pb2.PutRequest(key=b"k", value=b"v", ignore_value=True)
    ) == (C.INVALID_ARGUMENT, "etcdserver: value is provided")
    assert rpc_error(
        stubs.kv.Put, rpc_pb2.PutRequest(key=b"k", lease=5, ignore_lease=True)
    ) == (C.INVALID_ARGUMENT, "etcdserver: lease is provided")


def test_lease_ttl_too_large_and_exists(stubs: Stubs) -> None:
    assert rpc_error(stubs.lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=9_000_000_001)) == (
        C.OUT_OF_RANGE, "etcdserver: too large lease TTL")
    stubs.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60, ID=4242), timeout=10)
    assert rpc_error(stubs.lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=60, ID=4242)) == (
        C.FAILED_PRECONDITION, "etcdserver: lease already exists")
    # In-band answers, not errors, for unknown leases.
    ttl = stubs.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=999), timeout=10)
    assert (ttl.ID, ttl.TTL) == (999, -1)


@pytest.mark.parametrize("server_kind", ["etcd", "conch"])
def test_request_too_large(server_kind: str, server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory(server_kind, extra_args=["--max-request-bytes", "1024"])
    with connect(srv.endpoint) as s:
        s.kv.Put(rpc_pb2.PutRequest(key=b"small", value=b"x" * 100), timeout=10)
        assert rpc_error(s.kv.Put, rpc_pb2.PutRequest(key=b"big", value=b"x" * 2000)) == (
            C.INVALID_ARGUMENT, "etcdserver: request is too large")
        # Past max-request-bytes + 512 KiB of gRPC overhead, gRPC itself refuses the message.
        code, _ = rpc_error(s.kv.Put, rpc_pb2.PutRequest(key=b"huge", value=b"x" * 600_000))
        assert code == C.RESOURCE_EXHAUSTED
