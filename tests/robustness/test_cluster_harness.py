"""devkit.robustness.cluster with real processes: conch and the reference etcd, side by side.

Each test starts a 3-member cluster whose peer links pass FaultProxy, injects one kind of
fault and checks that the cluster behaves as a raft cluster must. Every wait polls with a
deadline. etcd cases skip when etcd is missing (fail with CONCH_REQUIRE_ETCD=1).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from conch.proto.etcdserverpb import rpc_pb2
from devkit.harness import etcd_binary, require_etcd
from devkit.robustness.cluster import Cluster, ClusterSpec, Target
from tests.grpc_stubs import connect

T = TypeVar("T")


@pytest.fixture(params=["conch", "etcd"])
def target(request: pytest.FixtureRequest) -> Target:
    t: Target = request.param
    if t == "etcd" and etcd_binary() is None:
        msg = "etcd not found (PATH, $CONCH_ETCD_BIN or $ETCD_BIN)"
        if require_etcd():
            pytest.fail(msg + " and CONCH_REQUIRE_ETCD=1")
        pytest.skip(msg)
    return t


@pytest.fixture
def cluster(target: Target, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(ClusterSpec(target), tmp_path / target) as c:
        yield c
        print("\nfaults:\n  " + "\n  ".join(c.faults()))


def put(endpoint: str, key: str, value: str, timeout: float = 2.0) -> None:
    with connect(endpoint) as s:
        s.kv.Put(rpc_pb2.PutRequest(key=key.encode(), value=value.encode()), timeout=timeout)


def get(endpoint: str, key: str, *, serializable: bool = False,
        timeout: float = 2.0) -> str | None:
    with connect(endpoint) as s:
        r = s.kv.Range(rpc_pb2.RangeRequest(key=key.encode(), serializable=serializable),
                       timeout=timeout)
    return r.kvs[0].value.decode() if r.kvs else None


def eventually(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Call ``fn`` until it returns a truthy value without raising a gRPC error."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except grpc.RpcError as e:
            last = f"{e.code()}: {e.details()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last})")
        time.sleep(0.05)


def put_eventually(c: Cluster, i: int, key: str, value: str, timeout: float = 15) -> None:
    def attempt() -> bool:
        put(c.members[i].endpoint, key, value)
        return True

    eventually(attempt, timeout, f"put {key} through {c.members[i].name}")


def sees(c: Cluster, i: int, key: str, value: str, timeout: float = 15) -> None:
    eventually(lambda: get(c.members[i].endpoint, key, serializable=True) == value, timeout,
               f"{c.members[i].name} serves {key}={value}")


# --------------------------------------------------------------------------------------------


def test_put_get_and_close_leaves_no_process(cluster: Cluster) -> None:
    assert len({m.id for m in cluster.members}) == 3 and all(m.id for m in cluster.members)
    put(cluster.members[0].endpoint, "k", "v1")
    assert get(cluster.members[1].endpoint, "k") == "v1"  # linearizable, another member
    lead = cluster.leader()
    assert cluster.members[lead].id == cluster.status(0).leader  # type: ignore[union-attr]
    stats = cluster.proxy_stats()
    assert sum(s["bytes_forwarded"] for per in stats.values() for s in per.values()) > 0
    pids = [m.pid for m in cluster.members]
    cluster.close()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for m in cluster.members:
        assert not m.is_running()
    assert (cluster.members[0].log_path).stat().st_size > 0


def test_isolated_leader_is_replaced_and_catches_up(cluster: Cluster) -> None:
    old = cluster.leader()
    others = [i for i in range(3) if i != old]
    cluster.isolate(old)
    t0 = time.monotonic()
    new = cluster.leader(timeout=20, among=others)
    elected_after = time.monotonic() - t0
    print(f"\n{cluster.spec.target}: new leader {cluster.members[new].name} "
          f"{elected_after:.2f}s after isolating {cluster.members[old].name}")
    assert new != old
    put_eventually(cluster, others[0], "after-isolation", "yes")
    # the isolated member cannot confirm it is up to date: no linearizable read
    with pytest.raises(grpc.RpcError):
        get(cluster.members[old].endpoint, "after-isolation", timeout=1.0)
    assert get(cluster.members[old].endpoint, "after-isolation", serializable=True) is None
    cluster.heal()
    sees(cluster, old, "after-isolation", "yes")
    cluster.wait_healthy(timeout=20)
    stats = cluster.proxy_stats()
    assert sum(s["chunks_stalled"] for per in stats.values() for s in per.values()) > 0
    assert any("isolate" in f for f in cluster.faults())


def test_kill_restart_follower_and_stop_leader(cluster: Cluster) -> None:
    lead = cluster.leader()
    follower = (lead + 1) % 3
    cluster.kill(follower)
    assert not cluster.members[follower].is_running()
    assert cluster.exit_code(follower) == -9
    put_eventually(cluster, lead, "while-down", "1")
    # restarted from a thread that ends at once (as fault threads do): the parent-death
    # signal must not take the member down with that thread
    t = threading.Thread(target=cluster.restart, args=(follower,))
    t.start()
    t.join(40)
    sees(cluster, follower, "while-down", "1")

    cluster.stop(lead)
    others = [i for i in range(3) if i != lead]
    new = cluster.leader(timeout=20, among=others)
    assert new != lead
    put_eventually(cluster, new, "while-stopped", "2")
    cluster.cont(lead)
    cluster.wait_healthy(timeout=20)
    sees(cluster, lead, "while-stopped", "2")
    assert cluster.members[lead].is_running()
    assert cluster.members[follower].is_running(), cluster.members[follower].log_tail()


def test_delay_and_drop_still_let_writes_through(cluster: Cluster) -> None:
    lead = cluster.leader()
    cluster.delay(lead, 40, jitter_ms=10)
    t0 = time.monotonic()
    for n in range(5):
        put_eventually(cluster, lead, f"delayed{n}", str(n))
    assert time.monotonic() - t0 >= 5 * 0.060  # each commit waits a round trip to a peer
    cluster.heal()

    cluster.drop(lead, 0.05)
    for n in range(10):
        put_eventually(cluster, (lead + n) % 3, f"lossy{n}", str(n), timeout=20)

    def resets() -> int:
        return sum(s["connections_reset"] for per in cluster.proxy_stats().values()
                   for s in per.values())

    # heartbeats alone cross every link ten times a second: resets happen quickly
    assert eventually(resets, 15, "a connection reset by the proxy") > 0
    cluster.heal()
    cluster.wait_healthy(timeout=20)
    for i in range(3):
        sees(cluster, i, "lossy9", "9")


def test_http_failpoint_panics_a_member(tmp_path: Path) -> None:
    spec = ClusterSpec("conch", failpoints_http=True)
    with Cluster(spec, tmp_path / "conch") as c:
        lead = c.leader()
        victim = (lead + 1) % 3
        url = c.members[victim].failpoints_url
        assert url is not None
        try:
            urllib.request.urlopen(url + "/", timeout=2).close()
        except urllib.error.URLError as e:
            pytest.skip(f"this conch serves no CONCH_FAILPOINTS_HTTP ({e})")
        c.set_failpoint(lead, "beforeCommit", "off")
        c.clear_failpoint(lead, "beforeCommit")
        c.set_failpoint(victim, "beforeCommit", "panic")  # its next apply batch
        put_eventually(c, lead, "fp", "1")
        eventually(lambda: c.exit_code(victim) is not None, 15, "the victim to panic")
        assert c.exit_code(victim) == 3
        c.clear_failpoint(victim, "beforeCommit")  # down: ignored
        c.restart(victim)  # armed over HTTP only: a restart is clean
        sees(c, victim, "fp", "1")
        assert any("failpoint" in f for f in c.faults())
