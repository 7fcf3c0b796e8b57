"""A real conch process: leases expire and survive restarts, watches see applied writes,
the HTTP endpoints answer, and the response headers carry etcd's fields."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import grpc

from conch.proto.etcdserverpb import rpc_pb2
from devkit.harness import ServerProcess, free_port
from devkit.polling import poll
from tests.grpc_stubs import connect


def test_lease_expiry_deletes_attached_keys_in_one_revision(conch_server: ServerProcess) -> None:
    with connect(conch_server.endpoint) as s:
        grant = s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=1), timeout=10)
        assert grant.TTL == 2  # raised to the minimum TTL (ceil(1.5 * election timeout))
        for k in (b"l/a", b"l/b", b"l/c"):
            s.kv.Put(rpc_pb2.PutRequest(key=k, value=b"v", lease=grant.ID), timeout=10)
        rev_before = s.kv.Range(rpc_pb2.RangeRequest(key=b"l/a"), timeout=10).header.revision
        started = time.monotonic()
        poll(
            lambda: s.kv.Range(rpc_pb2.RangeRequest(key=b"l/", range_end=b"l0"), timeout=10).count
            == 0,
            10,
            "lease expiry",
        )
        # Not before the TTL has run out.
        assert time.monotonic() - started >= 1.0
        rev_after = s.kv.Range(rpc_pb2.RangeRequest(key=b"l/a"), timeout=10).header.revision
        assert rev_after == rev_before + 1  # all three keys deleted in one revision
        ttl = s.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=grant.ID), timeout=10)
        assert ttl.TTL == -1
        ka = next(iter(s.lease.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=grant.ID)]),
                                              timeout=10)))
        assert (ka.ID, ka.TTL) == (grant.ID, 0)


def test_leases_and_keys_survive_restart(conch_server: ServerProcess) -> None:
    with connect(conch_server.endpoint) as s:
        grant = s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600, ID=77), timeout=10)
        s.kv.Put(rpc_pb2.PutRequest(key=b"held", value=b"v", lease=77), timeout=10)
        term_before = s.maintenance.Status(rpc_pb2.StatusRequest(), timeout=10).raftTerm
    conch_server.kill(signal.SIGKILL)
    conch_server.start()
    with connect(conch_server.endpoint) as s:
        ttl = s.lease.LeaseTimeToLive(
            rpc_pb2.LeaseTimeToLiveRequest(ID=grant.ID, keys=True), timeout=10
        )
        assert (ttl.grantedTTL, list(ttl.keys)) == (600, [b"held"])
        assert 590 <= ttl.TTL <= 600
        assert [le.ID for le in s.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=10)
                .leases] == [77]
        kv = s.kv.Range(rpc_pb2.RangeRequest(key=b"held"), timeout=10).kvs[0]
        assert kv.lease == 77
        status = s.maintenance.Status(rpc_pb2.StatusRequest(), timeout=10)
        assert status.raftTerm > term_before  # the term never goes backwards


def test_watch_sees_writes_through_the_member(conch_server: ServerProcess) -> None:
    with connect(conch_server.endpoint) as s:
        s.kv.Put(rpc_pb2.PutRequest(key=b"w/0", value=b"old"), timeout=10)
        requests = iter([rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=b"w/", range_end=b"w0", start_revision=2, prev_kv=True))])
        stream = s.watch.Watch(requests, timeout=20)
        created = next(stream)
        assert created.created
        s.kv.Put(rpc_pb2.PutRequest(key=b"w/0", value=b"new"), timeout=10)
        s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"w/0"), timeout=10)
        events = []
        for resp in stream:
            events.extend(resp.events)
            if len(events) >= 3:
                break
        stream.cancel()
        assert [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events] == [
            (0, b"w/0", b"old", 2), (0, b"w/0", b"new", 3), (1, b"w/0", b"", 4)]
        assert events[1].prev_kv.value == b"old" and events[2].prev_kv.value == b"new"


def test_headers_and_status(conch_server: ServerProcess) -> None:
    with connect(conch_server.endpoint) as s:
        put = s.kv.Put(rpc_pb2.PutRequest(key=b"h", value=b"1"), timeout=10)
        status = s.maintenance.Status(rpc_pb2.StatusRequest(), timeout=10)
        members = s.cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=10)
    h = put.header
    assert h.revision == 2 and h.raft_term == status.raftTerm
    assert h.member_id == status.header.member_id == status.leader == members.members[0].ID
    assert h.cluster_id == members.header.cluster_id
    assert members.members[0].clientURLs == [conch_server.client_url]
    assert status.raftAppliedIndex == status.raftIndex >= 1
    assert status.dbSize > 0 and status.dbSizeInUse > 0


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_http_endpoints(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("conch", http_port=free_port())
    base = srv.http_url
    assert base is not None  # started with http_port
    assert _get(base + "/health") == (200, '{"health":"true","reason":""}')
    assert json.loads(_get(base + "/version")[1])["etcdserver"].startswith("3.5")
    code, text = _get(base + "/metrics")
    assert code == 200
    for name in ("etcd_server_has_leader 1", "etcd_debugging_mvcc_current_revision 1",
                 "etcd_disk_wal_fsync_duration_seconds_bucket"):
        assert name in text
    assert _get(base + "/readyz") == (200, "ok\n")
    code, text = _get(base + "/livez?verbose")
    assert code == 200 and "[+]serializable_read ok" in text
    assert _get(base + "/nope")[0] == 404


def test_defragment_keeps_data_and_shrinks_the_file(conch_server: ServerProcess) -> None:
    with connect(conch_server.endpoint) as s:
        for i in range(300):
            s.kv.Put(rpc_pb2.PutRequest(key=b"d%04d" % i, value=b"x" * 2000), timeout=10)
        s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"d0", range_end=b"d1"), timeout=10)
        s.kv.Put(rpc_pb2.PutRequest(key=b"keep", value=b"me"), timeout=10)
        rev = s.kv.Range(rpc_pb2.RangeRequest(key=b"keep"), timeout=10).header.revision
        s.kv.Compact(rpc_pb2.CompactionRequest(revision=rev, physical=True), timeout=10)
        before = s.maintenance.Status(rpc_pb2.StatusRequest(), timeout=10)
        hash_before = s.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=10).hash
        s.maintenance.Defragment(rpc_pb2.DefragmentRequest(), timeout=30)
        after = s.maintenance.Status(rpc_pb2.StatusRequest(), timeout=10)
        assert after.dbSize < before.dbSize
        assert s.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=10).hash == (
            hash_before)
        assert s.kv.Range(rpc_pb2.RangeRequest(key=b"keep"), timeout=10).kvs[0].value == b"me"
        # Writes keep working on the new file, and survive a crash.
        s.kv.Put(rpc_pb2.PutRequest(key=b"post", value=b"defrag"), timeout=10)
    conch_server.kill(signal.SIGKILL)
    conch_server.start()
    with connect(conch_server.endpoint) as s:
        assert s.kv.Range(rpc_pb2.RangeRequest(key=b"post"), timeout=10).kvs[0].value == b"defrag"
        assert s.kv.Range(rpc_pb2.RangeRequest(key=b"keep"), timeout=10).kvs[0].value == b"me"


def test_quota_raises_nospace_alarm(server_factory: Callable[..., ServerProcess]) -> None:
    import grpc

    from tests.grpc_stubs import rpc_error

    srv = server_factory("conch", extra_args=["--quota-backend-bytes", "300000"])
    with connect(srv.endpoint) as s:
        code = None
        for i in range(2000):
            try:
                s.kv.Put(rpc_pb2.PutRequest(key=b"q%05d" % i, value=b"x" * 1024), timeout=10)
            except grpc.RpcError as exc:
                code = (exc.code(), exc.details())
                break
        assert code == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "etcdserver: mvcc: database space exceeded")
        alarms = s.maintenance.Alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET),
                                     timeout=10).alarms
        assert [(a.memberID, a.alarm) for a in alarms] == [
            (s.maintenance.Status(rpc_pb2.StatusRequest(), timeout=10).leader, rpc_pb2.NOSPACE)]
        # Reads and deletes still work; writes and lease grants do not.
        assert s.kv.Range(rpc_pb2.RangeRequest(key=b"q00000"), timeout=10).count == 1
        s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"q", range_end=b"r"), timeout=10)
        assert rpc_error(s.lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=10))[0] == (
            grpc.StatusCode.RESOURCE_EXHAUSTED)
        # Recovery as in etcd: compact, defragment, disarm.
        rev = s.kv.Range(rpc_pb2.RangeRequest(key=b"q"), timeout=10).header.revision
        s.kv.Compact(rpc_pb2.CompactionRequest(revision=rev, physical=True), timeout=10)
        s.maintenance.Defragment(rpc_pb2.DefragmentRequest(), timeout=30)
        s.maintenance.Alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.DEACTIVATE,
                                                 alarm=rpc_pb2.NOSPACE), timeout=10)
        s.kv.Put(rpc_pb2.PutRequest(key=b"after", value=b"ok"), timeout=10)
    srv.stop()
    srv.start()  # the alarm state is persisted: still clear after a restart
    with connect(srv.endpoint) as s:
        s.kv.Put(rpc_pb2.PutRequest(key=b"after2", value=b"ok"), timeout=10)


def test_periodic_auto_compaction(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("conch", extra_args=["--auto-compaction-mode", "periodic",
                                              "--auto-compaction-retention", "1s"])
    with connect(srv.endpoint) as s:
        s.kv.Put(rpc_pb2.PutRequest(key=b"a", value=b"1"), timeout=10)
        s.kv.Put(rpc_pb2.PutRequest(key=b"a", value=b"2"), timeout=10)

        def compacted() -> bool:
            try:
                s.kv.Range(rpc_pb2.RangeRequest(key=b"a", revision=2), timeout=10)
                return False
            except grpc.RpcError as e:
                details: str = e.details()
                return details == "etcdserver: mvcc: required revision has been compacted"
        poll(compacted, 15, "the periodic compactor")
        assert s.kv.Range(rpc_pb2.RangeRequest(key=b"a"), timeout=10).kvs[0].value == b"2"


def test_defragment_under_write_load_loses_nothing(conch_server: ServerProcess) -> None:
    import threading

    with connect(conch_server.endpoint) as s:
        for i in range(400):  # enough data that the copy takes a while
            s.kv.Put(rpc_pb2.PutRequest(key=b"fill%04d" % i, value=b"x" * 20000), timeout=10)
    acked: list[bytes] = []
    stop = threading.Event()

    def writer() -> None:
        with connect(conch_server.endpoint) as w:
            n = 0
            while not stop.is_set() and n < 20000:
                key = b"w%06d" % n
                w.kv.Put(rpc_pb2.PutRequest(key=key, value=b"v"), timeout=30)
                acked.append(key)
                n += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    poll(lambda: len(acked) >= 50, 30, "writes before the defragment")
    with connect(conch_server.endpoint) as s:
        s.maintenance.Defragment(rpc_pb2.DefragmentRequest(), timeout=60)
    n_at_defrag = len(acked)
    poll(lambda: len(acked) >= n_at_defrag + 50, 30, "writes after the defragment")
    stop.set()
    t.join(30)
    for _ in range(2):  # before and after a crash
        with connect(conch_server.endpoint) as s:
            got = s.kv.Range(rpc_pb2.RangeRequest(key=b"w", range_end=b"x", keys_only=True),
                             timeout=10)
        have = {kv.key for kv in got.kvs}
        missing = [k for k in acked if k not in have]
        assert not missing, f"{len(missing)} acknowledged puts lost, e.g. {missing[:3]}"
        conch_server.kill(signal.SIGKILL)
        conch_server.start()
