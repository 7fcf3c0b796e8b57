"""The seed's three-member deployment: real conch processes configured only by env files.

Leader failures are injected with SIGKILL and SIGSTOP; every wait polls with a deadline."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from conch.proto.etcdserverpb import rpc_pb2
from devkit.harness import etcdctl
from devkit.polling import poll
from tests.cluster.harness import Cluster, EnvFileMember
from tests.cluster.harness import agreed_leader as _leader
from tests.cluster.harness import member_status as _status
from tests.grpc_stubs import Stubs, connect

T = TypeVar("T")

ELECTION_S = 1.0  # etcd's default --election-timeout


def test_three_members_from_env_files(cluster: Cluster) -> None:
    eps = ",".join(cluster.endpoints)
    def names() -> list[str] | None:
        listed = json.loads(etcdctl(cluster.members[0], "member", "list", "-w", "json").stdout)
        got = sorted(m.get("name", "") for m in listed["members"])
        return got if all(got) else None
    assert poll(names, 10, "published member names") == [
        "instance01", "instance02", "instance03"]
    out = etcdctl(eps, "endpoint", "status", "--cluster", "-w", "json")
    assert out.returncode == 0, out.stderr
    statuses = json.loads(out.stdout)
    assert len(statuses) == 3
    leaders = {s["Status"]["leader"] for s in statuses}
    assert len(leaders) == 1
    assert sum(s["Status"]["header"]["member_id"] in leaders for s in statuses) == 1
    assert etcdctl(cluster.members[0], "put", "seed", "article").returncode == 0
    for m in cluster.members[1:]:
        got = etcdctl(m, "get", "seed", "--print-value-only")  # linearizable by default
        assert got.stdout.strip() == "article"


class _Load:
    """Writer threads putting unique keys through any member; a put counts only once acked."""

    def __init__(self, endpoints: list[str], writers: int = 6) -> None:
        self.acked: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(endpoints, w), daemon=True)
                         for w in range(writers)]
        for t in self._threads:
            t.start()

    def _run(self, endpoints: list[str], w: int) -> None:
        n = 0
        target = w % len(endpoints)
        while not self._stop.is_set() and n < 50_000:
            key, value = b"load/%d/%06d" % (w, n), b"v%d" % n
            try:
                with connect(endpoints[target]) as s:
                    while not self._stop.is_set() and n < 50_000:
                        s.kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=3)
                        with self._lock:
                            self.acked[key] = value
                        n += 1
                        key, value = b"load/%d/%06d" % (w, n), b"v%d" % n
            except grpc.RpcError:
                target = (target + 1) % len(endpoints)  # that member is down: use another

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def stop(self) -> dict[bytes, bytes]:
        self._stop.set()
        for t in self._threads:
            t.join(30)
            assert not t.is_alive()
        return self.acked


def _converged(cluster: Cluster) -> int | None:
    """All members at the same applied index with equal HashKV at the same revision."""
    statuses = [st for m in cluster.members if (st := _status(m.endpoint)) is not None]
    if len(statuses) != len(cluster.members):
        return None
    if len({s.raftAppliedIndex for s in statuses}) != 1:
        return None
    rev: int = statuses[0].header.revision
    hashes: set[int] = set()
    for m in cluster.members:
        with connect(m.endpoint) as s:
            hashes.add(s.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=5).hash)
    return rev if len(hashes) == 1 else None


def test_leader_sigkill_under_write_load(cluster: Cluster) -> None:
    leader = poll(lambda: _leader(cluster), 10, "a leader")
    load = _Load(cluster.endpoints)
    poll(lambda: load.count() >= 200, 30, "writes before the kill")
    leader.kill(signal.SIGKILL)
    survivors = [m for m in cluster.members if m is not leader]
    new = poll(lambda: _leader(cluster, survivors), 5 * ELECTION_S + 5, "a new leader")
    assert new is not leader
    before = load.count()
    poll(lambda: load.count() >= before + 200, 30, "writes continuing after the kill")
    leader.start()
    acked = load.stop()
    poll(lambda: _converged(cluster), 30, "members converging")
    for m in cluster.members:  # no acknowledged write lost, on any member
        with connect(m.endpoint) as s:
            got = s.kv.Range(rpc_pb2.RangeRequest(key=b"load/", range_end=b"load0",
                                                  serializable=True), timeout=30)
        have = {kv.key: kv.value for kv in got.kvs}
        missing = [k for k in acked if have.get(k) != acked[k]]
        assert not missing, f"{m.name} lost {len(missing)} acknowledged puts"


def test_paused_leader_serves_no_stale_read(cluster: Cluster) -> None:
    leader = poll(lambda: _leader(cluster), 10, "a leader")
    with connect(leader.endpoint) as s:
        s.kv.Put(rpc_pb2.PutRequest(key=b"x", value=b"old"), timeout=5)
    leader.kill(signal.SIGSTOP)
    try:
        others = [m for m in cluster.members if m is not leader]
        new = poll(lambda: _leader(cluster, others), 5 * ELECTION_S + 5, "a new leader")
        with connect(new.endpoint) as s:
            s.kv.Put(rpc_pb2.PutRequest(key=b"x", value=b"new"), timeout=5)
    finally:
        leader.kill(signal.SIGCONT)
    # The old leader wakes up believing it leads; a linearizable read through it must see
    # the new value or fail, never return the old one.
    with connect(leader.endpoint) as s:
        def read() -> bytes | None:
            try:
                resp: rpc_pb2.RangeResponse = s.kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=3)
                return resp.kvs[0].value
            except grpc.RpcError:
                return None
        value = poll(read, 20, "a linearizable read through the resumed member")
    assert value == b"new"


def test_leases_through_followers(cluster: Cluster) -> None:
    import time

    leader = poll(lambda: _leader(cluster), 10, "a leader")
    f1, f2 = [m for m in cluster.members if m is not leader]
    with connect(f1.endpoint) as s1, connect(f2.endpoint) as s2:
        grant = s1.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=3), timeout=5)
        s1.kv.Put(rpc_pb2.PutRequest(key=b"leased", value=b"v", lease=grant.ID), timeout=5)
        # Keepalives sent to a follower reach the leader's lessor: the key outlives its TTL.
        deadline = time.monotonic() + 6
        responses: list[int] = []

        def keepalives() -> Iterator[rpc_pb2.LeaseKeepAliveRequest]:
            while time.monotonic() < deadline:
                yield rpc_pb2.LeaseKeepAliveRequest(ID=grant.ID)
                time.sleep(0.5)  # the client's keepalive cadence, not synchronisation

        for resp in s2.lease.LeaseKeepAlive(keepalives(), timeout=20):
            responses.append(resp.TTL)
        assert responses and all(ttl == 3 for ttl in responses), responses
        assert s1.kv.Range(rpc_pb2.RangeRequest(key=b"leased"), timeout=5).count == 1
        ttl = s2.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=grant.ID), timeout=5)
        assert 0 < ttl.TTL <= 3 and ttl.grantedTTL == 3
        # Without keepalives the leader expires it; every member sees the key go.
        for s in (s1, s2):
            def gone(s: Stubs = s) -> bool:
                got: rpc_pb2.RangeResponse = s.kv.Range(rpc_pb2.RangeRequest(key=b"leased"),
                                                        timeout=5)
                return got.count == 0

            poll(gone, 10, "lease expiry")
        ttl = s2.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=grant.ID), timeout=5)
        assert ttl.TTL == -1


def test_member_remove_update_and_move_leader(cluster: Cluster) -> None:
    leader = poll(lambda: _leader(cluster), 10, "a leader")
    followers = [m for m in cluster.members if m is not leader]
    with connect(leader.endpoint) as s:
        # names appear once each member published its attributes
        def published() -> dict[str, int] | None:
            ms = s.cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=5).members
            return {m.name: m.ID for m in ms} if all(m.name for m in ms) else None
        ids = poll(published, 10, "every member's name")
        # MoveLeader to a follower, then it must be sent to the new leader.
        target = followers[0]
        s.maintenance.MoveLeader(rpc_pb2.MoveLeaderRequest(targetID=ids[target.name]),
                                 timeout=15)
    assert poll(lambda: _leader(cluster), 10, "the new leader") is target
    with connect(leader.endpoint) as s:
        code: tuple[grpc.StatusCode, str] | None = None
        try:
            s.maintenance.MoveLeader(rpc_pb2.MoveLeaderRequest(targetID=ids[leader.name]),
                                     timeout=5)
        except grpc.RpcError as e:
            code = (e.code(), e.details())
        assert code == (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
    # Remove a follower: the cluster keeps serving with two members and the removed
    # process exits by itself.
    victim = followers[1]
    with connect(target.endpoint) as s:
        resp = s.cluster.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=ids[victim.name]),
                                      timeout=15)
        assert sorted(m.name for m in resp.members) == sorted(
            m.name for m in cluster.members if m is not victim)
        s.kv.Put(rpc_pb2.PutRequest(key=b"after-remove", value=b"ok"), timeout=5)
        # Removing another voter now would leave 1 of 1 needed... allowed (quorum of 1 is 1),
        # but an unknown ID is not found.
        try:
            s.cluster.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=12345), timeout=5)
            raise AssertionError("removing an unknown member succeeded")
        except grpc.RpcError as e:
            assert (e.code(), e.details()) == (grpc.StatusCode.NOT_FOUND,
                                               "etcdserver: member not found")
    poll(lambda: not victim.is_running(), 15, "the removed member to exit")
    with connect(leader.endpoint) as s:
        got = s.kv.Range(rpc_pb2.RangeRequest(key=b"after-remove"), timeout=5)
        assert got.kvs[0].value == b"ok"
        # MemberUpdate changes the peer URLs the others use (here: to the same port, spelled
        # as localhost); MemberList shows it on every member.
        new_url = f"http://localhost:{leader.peer_port}"
        s.cluster.MemberUpdate(rpc_pb2.MemberUpdateRequest(ID=ids[leader.name],
                                                           peerURLs=[new_url]), timeout=15)
    with connect(target.endpoint) as s:
        listed = {m.name: list(m.peerURLs)
                  for m in s.cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=5).members}
    assert listed[leader.name] == [new_url]


def test_stopped_follower_catches_up_by_snapshot(tmp_path: Path) -> None:
    # Compact the raft log every 50 entries, keeping 10: a follower that misses a few
    # hundred writes can only catch up from a snapshot of the leader's backend.
    c = Cluster(tmp_path, 3, extra_env={"ETCD_SNAPSHOT_COUNT": "50",
                                        "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES": "10"})
    try:
        c.start()
        leader = poll(lambda: _leader(c), 10, "a leader")
        lagging = next(m for m in c.members if m is not leader)
        with connect(lagging.endpoint) as s:
            s.kv.Put(rpc_pb2.PutRequest(key=b"before", value=b"stop"), timeout=5)
        lagging.kill(signal.SIGKILL)
        with connect(leader.endpoint) as s:
            for i in range(300):
                s.kv.Put(rpc_pb2.PutRequest(key=b"snap/%04d" % i, value=b"v%d" % i), timeout=5)
            s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"before"), timeout=5)
            lease = s.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600), timeout=5)
        lagging.start()
        rev = poll(lambda: _converged(c), 60, "the restarted follower to catch up")
        assert "installed snapshot" in lagging.log_tail(400)
        with connect(lagging.endpoint) as s:
            got = s.kv.Range(rpc_pb2.RangeRequest(key=b"snap/", range_end=b"snap0",
                                                  serializable=True), timeout=5)
            assert got.count == 300 and got.header.revision == rev
            assert s.kv.Range(rpc_pb2.RangeRequest(key=b"before", serializable=True),
                              timeout=5).count == 0
            leases = s.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=5).leases
            assert lease.ID in [le.ID for le in leases]
            # It keeps following after the snapshot.
        with connect(leader.endpoint) as s:
            s.kv.Put(rpc_pb2.PutRequest(key=b"after", value=b"snapshot"), timeout=5)
        with connect(lagging.endpoint) as s:
            assert s.kv.Range(rpc_pb2.RangeRequest(key=b"after"), timeout=5).kvs[0].value == (
                b"snapshot")
        # And a full restart of everyone recovers from the snapshots and the WAL tails.
        for m in c.members:
            m.kill(signal.SIGKILL)
        for m in c.members:
            m.spawn()
        for m in c.members:
            m.wait_ready()
        assert poll(lambda: _converged(c), 30, "convergence after a full restart") >= rev
    finally:
        c.close()


def test_learner_joins_catches_up_is_promoted_and_old_member_removed(
    cluster: Cluster, tmp_path: Path
) -> None:
    from devkit.harness import free_port
    from tests.cluster.harness import read_env_file, write_env_file

    leader = poll(lambda: _leader(cluster), 10, "a leader")
    load = _Load(cluster.endpoints, writers=2)
    poll(lambda: load.count() >= 100, 30, "writes before the join")
    # 1. `member add --learner` with the new member's peer URL.
    client_port, peer_port = free_port(), free_port()
    peer_url = f"http://127.0.0.1:{peer_port}"
    with connect(leader.endpoint) as s:
        added = s.cluster.MemberAdd(rpc_pb2.MemberAddRequest(peerURLs=[peer_url],
                                                             isLearner=True), timeout=15)
        assert added.member.isLearner and not added.member.name
        new_id = added.member.ID
        # A second learner is refused (--experimental-max-learners 1).
        try:
            s.cluster.MemberAdd(rpc_pb2.MemberAddRequest(
                peerURLs=[f"http://127.0.0.1:{free_port()}"], isLearner=True), timeout=5)
            raise AssertionError("a second learner was accepted")
        except grpc.RpcError as e:
            assert e.details() == "etcdserver: too many learner members in cluster"
    # 2. Start it with --initial-cluster-state existing (env file, like the others).
    base = read_env_file(cluster.members[0].env_file)
    d = tmp_path / "instance04"
    d.mkdir()
    conf = d / "etcd.conf"
    write_env_file(conf, {
        **base,
        "ETCD_NAME": "instance04",
        "ETCD_DATA_DIR": str(d / "data"),
        "ETCD_LISTEN_CLIENT_URLS": f"http://127.0.0.1:{client_port}",
        "ETCD_ADVERTISE_CLIENT_URLS": f"http://127.0.0.1:{client_port}",
        "ETCD_LISTEN_PEER_URLS": peer_url,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer_url,
        "ETCD_INITIAL_CLUSTER": base["ETCD_INITIAL_CLUSTER"] + f",instance04={peer_url}",
        "ETCD_INITIAL_CLUSTER_STATE": "existing",
    })
    newcomer = EnvFileMember("instance04", d, env_file=conf, client_port=client_port,
                             peer_port=peer_port)
    try:
        newcomer.spawn()

        def caught_up() -> bool:
            st = _status(newcomer.endpoint)
            lead = _status(leader.endpoint)
            return st is not None and lead is not None and st.isLearner and (
                st.raftAppliedIndex >= lead.raftAppliedIndex - 5)
        poll(caught_up, 30, "the learner to catch up")
        # 3. Promote it, then remove an old follower: the cluster keeps serving throughout.
        with connect(leader.endpoint) as s:
            promoted = poll(lambda: _try(lambda: s.cluster.MemberPromote(
                rpc_pb2.MemberPromoteRequest(ID=new_id), timeout=10)), 20, "promotion")
            assert not [m for m in promoted.members if m.ID == new_id][0].isLearner
            old = next(m for m in cluster.members if m is not leader)
            old_status = _status(old.endpoint)
            assert old_status is not None
            old_id = old_status.header.member_id
            s.cluster.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=old_id), timeout=15)
        poll(lambda: not old.is_running(), 15, "the removed member to stop")
        before = load.count()
        poll(lambda: load.count() >= before + 100, 30, "writes after the membership changes")
        acked = load.stop()
        with connect(newcomer.endpoint) as s:
            got = s.kv.Range(rpc_pb2.RangeRequest(key=b"load/", range_end=b"load0"), timeout=10)
            have = {kv.key: kv.value for kv in got.kvs}
            assert all(have.get(k) == v for k, v in acked.items())
            members = s.cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=5).members
            assert len(members) == 3 and new_id in [m.ID for m in members]
    finally:
        load.stop()
        newcomer.close()


def _try(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except grpc.RpcError:
        return None


def _rewrite_env(member: EnvFileMember, **changes: str) -> None:
    from tests.cluster.harness import read_env_file, write_env_file

    env = read_env_file(member.env_file)
    env.update(changes)
    write_env_file(member.env_file, env)


def test_wrong_token_and_foreign_data_are_refused_by_peers(
    cluster: Cluster, tmp_path: Path
) -> None:
    import shutil

    poll(lambda: _leader(cluster), 10, "a leader")
    odd = cluster.members[2]
    others = cluster.members[:2]
    # 1. A fresh data dir with the wrong --initial-cluster-token: another cluster ID.
    odd.stop()
    shutil.rmtree(odd.base_dir / "data")
    _rewrite_env(odd, ETCD_INITIAL_CLUSTER_TOKEN="not-the-right-token")
    odd.spawn()
    poll(lambda: "cluster ID mismatch" in odd.log_tail(50), 20, "the refusal, seen by the odd one")
    poll(lambda: any("rejected connection from member" in m.log_tail(80)
                     and "cluster ID mismatch" in m.log_tail(80) for m in others),
         20, "the refusal, logged by a peer")
    with connect(others[0].endpoint) as s:  # the two good members still serve
        s.kv.Put(rpc_pb2.PutRequest(key=b"still", value=b"serving"), timeout=10)
    odd.stop()
    # 2. Another cluster's data directory under the right configuration.
    from devkit.harness import ConchProcess

    foreign = ConchProcess("foreign", tmp_path / "foreign")
    foreign.start()
    foreign.stop()
    shutil.rmtree(odd.base_dir / "data")
    shutil.copytree(foreign.data_dir, odd.base_dir / "data")
    foreign.close()
    _rewrite_env(odd, ETCD_INITIAL_CLUSTER_TOKEN="conch-test")
    odd.spawn()
    poll(lambda: "cluster ID mismatch" in odd.log_tail(50), 20, "the foreign data refused")
    with connect(others[1].endpoint) as s:
        assert s.kv.Range(rpc_pb2.RangeRequest(key=b"still"), timeout=10).kvs[0].value == (
            b"serving")


def test_crash_right_after_snapshot_install_restarts(tmp_path: Path) -> None:
    # Writes continue while the follower fetches the snapshot, so the leader's database copy
    # is newer than its last raft snapshot; the follower crashes the moment it installed it.
    c = Cluster(tmp_path, 3, extra_env={"ETCD_SNAPSHOT_COUNT": "50",
                                        "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES": "10"})
    try:
        c.start()
        leader = poll(lambda: _leader(c), 10, "a leader")
        victim = next(m for m in c.members if m is not leader)
        victim.kill(signal.SIGKILL)
        with connect(leader.endpoint) as s:
            for i in range(237):
                s.kv.Put(rpc_pb2.PutRequest(key=b"k%04d" % i, value=b"v"), timeout=5)
        load = _Load([leader.endpoint], writers=2)
        _rewrite_env(victim, CONCH_FAILPOINTS="afterSnapshotInstall=panic")
        victim.spawn()
        assert victim.proc is not None
        assert victim.proc.wait(60) == 3, victim.log_tail(30)
        assert "installed snapshot" in victim.log_tail(60)
        _rewrite_env(victim, CONCH_FAILPOINTS="")
        victim.start()
        acked = load.stop()
        poll(lambda: _converged(c), 60, "the crashed follower to recover and converge")
        with connect(victim.endpoint) as s:
            got = s.kv.Range(rpc_pb2.RangeRequest(key=b"load/", range_end=b"load0",
                                                  serializable=True), timeout=10)
            have = {kv.key: kv.value for kv in got.kvs}
            assert all(have.get(k) == v for k, v in acked.items())
    finally:
        c.close()
