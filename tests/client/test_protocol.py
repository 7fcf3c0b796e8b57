"""Sans-IO unit tests of conch.client._protocol (no server)."""

from __future__ import annotations

import grpc
import pytest

from conch import errors as E
from conch.client import Compare, Op
from conch.client import _protocol as P
from conch.client import errors as errs
from conch.proto.etcdserverpb import rpc_pb2 as pb
from conch.proto.mvccpb import kv_pb2


def test_prefix_end() -> None:
    assert P.prefix_end(b"aa") == b"ab"
    assert P.prefix_end(b"a\xff") == b"b"
    assert P.prefix_end(b"\xff\xff") == b"\0"
    assert P.prefix_end("") == b"\0"


def test_key_range() -> None:
    assert P.key_range("k") == (b"k", b"")
    assert P.key_range("k", prefix=True) == (b"k", b"l")
    assert P.key_range("", prefix=True) == (b"\0", b"\0")
    assert P.key_range("k", from_key=True) == (b"k", b"\0")
    assert P.key_range("a", range_end="c") == (b"a", b"c")
    with pytest.raises(ValueError):
        P.key_range("a", prefix=True, range_end="c")


def test_compare_builder() -> None:
    c = (Compare.value("k") == "v").to_proto()
    assert (c.target, c.result, c.value) == (pb.Compare.VALUE, pb.Compare.EQUAL, b"v")
    c = (Compare.version("k", prefix=True) > 1).to_proto()
    assert (c.target, c.result, c.version, c.range_end) == (
        pb.Compare.VERSION, pb.Compare.GREATER, 1, b"l")  # fmt: skip
    c = (Compare.mod("k") < 5).to_proto()
    assert (c.target, c.result, c.mod_revision) == (pb.Compare.MOD, pb.Compare.LESS, 5)
    c = (Compare.create("k") != 0).to_proto()
    assert (c.target, c.result) == (pb.Compare.CREATE, pb.Compare.NOT_EQUAL)
    c = (Compare.lease("k", range_end="z") == 7).to_proto()
    assert (c.target, c.lease, c.range_end) == (pb.Compare.LEASE, 7, b"z")
    with pytest.raises(ValueError):
        Compare.value("k").to_proto()
    with pytest.raises(TypeError):
        _ = Compare.version("k") == "x"
    t = P.txn_request([], [Op.txn([], [Op.put("a", "b")], [])], [])
    assert not P.txn_is_read_only(t)
    assert P.txn_is_read_only(P.txn_request([], [Op.get("a")], [Op.txn([], [Op.get("b")])]))


def test_error_mapping() -> None:
    for proto, cls in [
        (E.ErrCompacted, errs.Compacted), (E.ErrFutureRev, errs.FutureRevision),
        (E.ErrLeaseNotFound, errs.LeaseNotFound), (E.ErrTooManyOps, errs.TooManyOps),
        (E.ErrDuplicateKey, errs.DuplicateKey), (E.ErrNoLeader, errs.NoLeader),
        (E.ErrInvalidAuthToken, errs.InvalidAuthToken), (E.ErrAuthFailed, errs.AuthFailed),
    ]:  # fmt: skip
        e = errs.from_status(proto.code, proto.message)
        assert type(e) is cls and e.code == proto.code and e.message == proto.message
    assert type(errs.from_status(grpc.StatusCode.UNAVAILABLE, "x")) is errs.Unavailable
    assert type(errs.from_status(grpc.StatusCode.ABORTED, "x")) is errs.ClientError


def test_retry_rules() -> None:
    unavailable = errs.from_status(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    refused = errs.from_status(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: "
        "Connection refused",
    )
    no_leader = errs.from_status(grpc.StatusCode.UNAVAILABLE, E.ErrNoLeader.message)
    assert P.should_retry(unavailable, idempotent=True)
    assert not P.should_retry(unavailable, idempotent=False)  # maybe applied
    assert P.should_retry(refused, idempotent=False)  # never sent
    assert P.should_retry(no_leader, idempotent=False)
    assert not P.should_retry(errs.from_status(*_c(E.ErrCompacted)), idempotent=True)


def _c(e: E.EtcdError) -> tuple[grpc.StatusCode, str]:
    return e.code, e.message


def test_endpoint_rotation() -> None:
    eps = P.Endpoints(["http://a:1", "b:2"])
    assert eps.order() == ["a:1", "b:2"]
    eps.failed("a:1")
    assert eps.current == "b:2" and eps.order() == ["b:2", "a:1"]
    eps.failed("a:1")  # a stale failure does not move the current endpoint
    assert eps.current == "b:2"


def _resp(**kw: object) -> pb.WatchResponse:
    return pb.WatchResponse(header=pb.ResponseHeader(revision=kw.pop("rev", 0)), **kw)  # type: ignore[arg-type]


def _ev(key: bytes, rev: int) -> kv_pb2.Event:
    return kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv_pb2.KeyValue(key=key, mod_revision=rev))


def test_watch_state_resume_and_progress() -> None:
    st = P.WatchState(P.watch_spec("k", prefix=True))
    assert st.create_request().create_request.start_revision == 0
    assert st.on_response(_resp(created=True, watch_id=3, rev=10)) is None
    assert st.next_revision == 11 and st.watch_id == 3
    # a progress notification: delivered as an empty WatchResult, moves the resume point
    out = st.on_response(_resp(watch_id=3, rev=12))
    assert isinstance(out, P.WatchResult) and out.events == [] and out.is_progress_notify
    assert st.next_revision == 13
    out = st.on_response(_resp(watch_id=3, rev=14, events=[_ev(b"k1", 14), _ev(b"k2", 14)]))
    assert isinstance(out, P.WatchResult) and [e.kv.key for e in out.events] == [b"k1", b"k2"]
    assert st.next_revision == 15
    req = st.create_request().create_request
    assert (req.key, req.range_end, req.start_revision) == (b"k", b"l", 15)


def test_watch_state_compacted_and_fragments() -> None:
    st = P.WatchState(P.watch_spec("k", start_revision=2))
    st.on_response(_resp(created=True, rev=10))
    out = st.on_response(_resp(canceled=True, compact_revision=5, rev=10))
    assert isinstance(out, errs.Compacted) and out.compact_revision == 5 and st.done
    st = P.WatchState(P.watch_spec("k", start_revision=2))
    merged = st.merge_fragment(
        [_resp(fragment=True, events=[_ev(b"a", 3)]), _resp(events=[_ev(b"b", 3)], rev=3)]
    )
    assert not merged.fragment and [e.kv.key for e in merged.events] == [b"a", b"b"]


def test_keepalive_state() -> None:
    st = P.KeepAliveState(7)
    st.request(1.0)
    st.request(2.0)
    assert st.on_response(pb.LeaseKeepAliveResponse(ID=7, TTL=30)) == 30
    assert st.last_ack_sent_at == 1.0 and st.interval() == 10.0 and not st.gone
    st.on_response(pb.LeaseKeepAliveResponse(ID=7, TTL=0))
    assert st.gone and st.last_ack_sent_at == 2.0


def test_tls_options_build_credentials(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert P.tls_credentials(None, None, None) is None
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    creds = P.tls_credentials(str(ca), None, None)
    assert isinstance(creds, grpc.ChannelCredentials)
    assert isinstance(P.tls_credentials(b"ca", b"cert", b"key"), grpc.ChannelCredentials)
    with pytest.raises(ValueError):
        P.tls_credentials(None, b"cert", None)
    from conch.client import Client

    c = Client(["127.0.0.1:1"], ca_cert=b"ca", cert_cert=b"c", cert_key=b"k")
    assert c._credentials is not None
    c.close()
