"""Failpoints (etcd's gofail, conch/failpoints.py).

Unit tests of the term grammar and of the HTTP control run in-process. Then every point in
`failpoints.KNOWN` is armed with ``panic`` at run time (CONCH_FAILPOINTS_HTTP) on a live
member, the traffic that reaches it is driven, and the test checks that the member exited
with status 3 naming the point, restarts cleanly, and lost no acknowledged write.
Real processes on loopback share one single member and one 3-member cluster per module.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from conch import failpoints
from conch.proto.etcdserverpb import rpc_pb2
from devkit.harness import REPO_ROOT, ConchProcess, ServerProcess, free_port
from devkit.polling import poll
from tests.cluster.harness import Cluster
from tests.cluster.harness import agreed_leader as _leader
from tests.cluster.harness import member_status as _status
from tests.grpc_stubs import connect

# --------------------------------------------------------------------------- which traffic

# Single member (snapshot every 40 entries, so its own snapshots release the WAL).
SINGLE: dict[str, str] = {
    "raftBeforeSave": "put",
    "raftAfterSave": "put",
    "beforeCommit": "put",
    "afterCommit": "put",
    "raftAfterWALRelease": "put",
    "compactBeforeCommitScheduledCompact": "compact",
    "compactBeforeSetFinishedCompact": "compact",
    "compactAfterSetFinishedCompact": "compact",
    "compactBeforeCommitBatch": "compact",
    "compactAfterCommitScheduledCompact": "compact",
    "compactAfterCommitBatch": "compact",
    "defragBeforeCopy": "defrag",
    "defragBeforeRename": "defrag",
}
# Three members: messages to peers.
SEND: dict[str, str] = {"raftBeforeLeaderSend": "leader", "raftBeforeFollowerSend": "follower"}
# Three members: a follower that must catch up from the leader's snapshot.
SNAPSHOT = [
    "raftBeforeSaveSnap",
    "raftAfterSaveSnap",
    "raftBeforeApplySnap",
    "raftAfterApplySnap",
    "afterSnapshotInstall",
]


@pytest.fixture(scope="module", autouse=True)
def _grpc_stays_initialised() -> Iterator[None]:
    """Keep one gRPC channel open for the whole module. When the last channel closes, gRPC
    shuts its core down on a thread, and a fork (every member start) racing with that
    shutdown can block forever in gRPC's fork handler; this module starts members often."""
    ch = grpc.insecure_channel("127.0.0.1:1")
    yield
    ch.close()


def test_every_known_point_has_a_process_test() -> None:
    assert set(SINGLE) | set(SEND) | set(SNAPSHOT) == set(failpoints.KNOWN)
    assert all(desc.strip() for desc in failpoints.KNOWN.values())


# --------------------------------------------------------------------------- unit: terms


@pytest.fixture
def clean_points() -> Iterator[None]:
    failpoints.reset()
    yield
    failpoints.reset()


@pytest.mark.parametrize(
    ("text", "action", "prob", "count", "sleep_s"),
    [
        ("panic", "panic", None, None, 0.0),
        ("sleep(100)", "sleep", None, None, 0.1),
        ("sleep(1s)", "sleep", None, None, 1.0),
        ("sleep(500ms)", "sleep", None, None, 0.5),
        ("sleep(1.5s)", "sleep", None, None, 1.5),
        ("sleep(1m30s)", "sleep", None, None, 90.0),
        ("1*panic", "panic", None, 1, 0.0),
        ("50%sleep(10)", "sleep", 50.0, None, 0.01),
        ("12.5%3*sleep(2ms)", "sleep", 12.5, 3, 0.002),
        ("off", "off", None, None, 0.0),
        (" panic ", "panic", None, None, 0.0),
    ],
)
def test_parse_term(
    text: str, action: str, prob: float | None, count: int | None, sleep_s: float
) -> None:
    t = failpoints.parse_term(text)
    assert (t.action, t.probability, t.count) == (action, prob, count)
    assert t.sleep_s == pytest.approx(sleep_s)
    assert t.text == text.strip()


@pytest.mark.parametrize(
    "text",
    ["", "crash", "panic(1)", "sleep", "sleep()", "sleep(0.5)", "sleep(1x)", "sleep(-1)",
     "0*panic", "150%panic", "*panic", "%panic", "panic;off", "return(1)", "1*2*panic",
     "sleep(1s"],
)
def test_bad_terms_raise(text: str) -> None:
    with pytest.raises(ValueError):
        failpoints.parse_term(text)


def test_configure_accepts_semicolons_and_commas_and_refuses_unknown_names(
    clean_points: None,
) -> None:
    failpoints.configure("beforeCommit=off; afterCommit=sleep(0),raftBeforeSave=1*off")
    assert failpoints.armed() == {
        "beforeCommit": "off", "afterCommit": "sleep(0)", "raftBeforeSave": "1*off"}
    with pytest.raises(KeyError):
        failpoints.configure("beforeComit=panic")
    with pytest.raises(ValueError):
        failpoints.configure("beforeCommit")
    with pytest.raises(ValueError):
        failpoints.configure("beforeCommit=explode")


def test_count_and_probability(clean_points: None) -> None:
    failpoints.hit("beforeCommit")  # unarmed: nothing
    failpoints.enable("beforeCommit", "3*sleep(0)")
    for _ in range(10):
        failpoints.hit("beforeCommit")
    assert failpoints.acted("beforeCommit") == 3
    assert failpoints.get("beforeCommit") is None  # N* disarms after N
    failpoints.enable("afterCommit", "0%sleep(0)")
    for _ in range(200):
        failpoints.hit("afterCommit")
    assert failpoints.acted("afterCommit") == 0
    failpoints._rng.seed(7)
    failpoints.enable("afterCommit", "50%sleep(0)")
    for _ in range(1000):
        failpoints.hit("afterCommit")
    assert 350 < failpoints.acted("afterCommit") < 650
    failpoints.enable("afterCommit", "100%2*sleep(0)")
    for _ in range(5):
        failpoints.hit("afterCommit")
    assert failpoints.acted("afterCommit") == 2
    failpoints.enable("raftBeforeSave", "off")
    failpoints.hit("raftBeforeSave")
    assert failpoints.acted("raftBeforeSave") == 0 and failpoints.get("raftBeforeSave") == "off"


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, timeout=60, cwd=str(REPO_ROOT))


def test_panic_exits_3_naming_the_point_and_env_typos_fail() -> None:
    code = ("from conch import failpoints as f\n"
            "f.hit('afterCommit'); print('survived afterCommit')\n"
            "f.hit('beforeCommit'); print('survived beforeCommit')\n")
    cp = _python(code, {"CONCH_FAILPOINTS": "beforeCommit=panic"})
    assert cp.returncode == 3, cp.stderr
    assert "survived afterCommit" in cp.stdout and "survived beforeCommit" not in cp.stdout
    assert cp.stderr.strip().splitlines()[-1] == "failpoint beforeCommit: panic"
    cp = _python("import conch.failpoints", {"CONCH_FAILPOINTS": "beforeComit=panic"})
    assert cp.returncode != 0 and "beforeComit" in cp.stderr


def test_sleep_in_process_delays(clean_points: None) -> None:
    failpoints.enable("beforeCommit", "1*sleep(200ms)")
    t0 = time.monotonic()
    failpoints.hit("beforeCommit")
    assert time.monotonic() - t0 >= 0.19
    t0 = time.monotonic()
    failpoints.hit("beforeCommit")
    assert time.monotonic() - t0 < 0.1


def test_hit_async_sleeps_without_blocking_the_loop(clean_points: None) -> None:
    import asyncio

    async def main() -> tuple[float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        failpoints.enable("raftBeforeLeaderSend", "sleep(300ms)")
        t0 = time.monotonic()
        await failpoints.hit_async("raftBeforeLeaderSend")
        took = time.monotonic() - t0
        task.cancel()
        return took, ticks

    took, ticks = asyncio.run(main())
    assert took >= 0.29 and ticks >= 5  # the loop ran other work meanwhile


# --------------------------------------------------------------------------- unit: HTTP


def _http(method: str, url: str, body: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=None if body is None else body.encode(),
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_control(clean_points: None) -> None:
    port = free_port()
    srv = failpoints.serve_http(f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    try:
        assert _http("GET", f"{base}/beforeCommit")[0] == 404  # known, not armed
        assert _http("PUT", f"{base}/beforeCommit", "2*sleep(0)")[0] == 204
        assert _http("GET", f"{base}/beforeCommit") == (200, "2*sleep(0)")
        assert failpoints.get("beforeCommit") == "2*sleep(0)"
        failpoints.hit("beforeCommit")
        assert _http("GET", f"{base}/beforeCommit/count") == (200, "1\n")
        code, listing = _http("GET", f"{base}/")
        assert code == 200
        lines = listing.splitlines()
        assert "beforeCommit=2*sleep(0)" in lines and "afterCommit=" in lines
        assert len(lines) == len(failpoints.KNOWN)
        assert _http("DELETE", f"{base}/beforeCommit")[0] == 204
        assert _http("GET", f"{base}/beforeCommit")[0] == 404
        assert failpoints.get("beforeCommit") is None
        # Typos and bad terms are refused, not silently ignored.
        assert _http("PUT", f"{base}/beforeComit", "panic")[0] == 404
        assert _http("GET", f"{base}/beforeComit")[0] == 404
        assert _http("DELETE", f"{base}/beforeComit")[0] == 404
        code, text = _http("PUT", f"{base}/beforeCommit", "explode")
        assert code == 400 and "explode" in text
        assert failpoints.armed() == {}
        # Several at once, gofail style.
        assert _http("PUT", f"{base}/", "beforeCommit=off\nafterCommit=off")[0] == 204
        assert failpoints.armed() == {"beforeCommit": "off", "afterCommit": "off"}
    finally:
        srv.shutdown()
        srv.server_close()


def test_http_control_listens_on_loopback_only() -> None:
    for addr in ("0.0.0.0:2381", "10.1.2.3:2381", "example.com:2381", "2381", "127.0.0.1:x"):
        with pytest.raises(ValueError):
            failpoints.serve_http(addr)


# --------------------------------------------------------------------------- process helpers


def _arm(port: int, name: str, term: str = "panic", fires_at_once: bool = False) -> None:
    """PUT the term. A point that fires at once (heartbeats reach it) may kill the member
    before it answers: then the caller's check of the exit status is the proof."""
    try:
        code, text = _http("PUT", f"http://127.0.0.1:{port}/{name}", term)
    except (urllib.error.URLError, ConnectionError):
        if fires_at_once:
            return
        raise
    assert code == 204, (code, text)
    if not fires_at_once:
        assert _http("GET", f"http://127.0.0.1:{port}/{name}") == (200, term)


def _wait_panicked(srv: ServerProcess, point: str, timeout: float = 30.0) -> None:
    assert srv.proc is not None
    proc = srv.proc
    poll(lambda: proc.poll() is not None, timeout, f"{srv.name} to panic at {point}")
    assert proc.returncode == failpoints.PANIC_EXIT_CODE, (proc.returncode, srv.log_tail(40))
    assert any(line.endswith(f"failpoint {point}: panic")
               for line in srv.log_tail(200).splitlines()), srv.log_tail(40)


def _puts(endpoint: str, acked: dict[bytes, bytes], prefix: bytes, n: int) -> int:
    """Put n unique keys; record the acknowledged ones. Stops at the first error."""
    done = 0
    with connect(endpoint) as s:
        for i in range(n):
            key, value = b"acked/%s/%05d" % (prefix, i), b"v-%s-%d" % (prefix, i)
            try:
                s.kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=5)
            except grpc.RpcError:
                break
            acked[key] = value
            done += 1
    return done


def _check_acked(endpoint: str, acked: dict[bytes, bytes], serializable: bool = False) -> None:
    with connect(endpoint) as s:
        got = s.kv.Range(rpc_pb2.RangeRequest(key=b"acked/", range_end=b"acked0",
                                              serializable=serializable), timeout=30)
    have = {kv.key: kv.value for kv in got.kvs}
    lost = [k for k, v in acked.items() if have.get(k) != v]
    assert not lost, f"{endpoint} lost {len(lost)} acknowledged puts, e.g. {lost[:3]}"


class _Writer:
    """A thread putting unique keys through any live endpoint while a fault happens."""

    def __init__(self, endpoints: list[str], acked: dict[bytes, bytes], tag: str) -> None:
        self._endpoints = endpoints
        self._acked = acked
        self._tag = tag.encode()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n, target = 0, 0
        while not self._stop.is_set() and n < 20_000:
            key, value = b"acked/w-%s/%06d" % (self._tag, n), b"w%d" % n
            n += 1
            try:
                with connect(self._endpoints[target]) as s:
                    s.kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=3)
            except grpc.RpcError:
                target = (target + 1) % len(self._endpoints)
                self._stop.wait(0.05)  # back off before trying the next member
                continue
            with self._lock:
                self._acked[key] = value

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "writer thread hung"


# --------------------------------------------------------------------------- single member


class _Single:
    def __init__(self, srv: ConchProcess, fp_port: int) -> None:
        self.srv = srv
        self.fp_port = fp_port
        self.acked: dict[bytes, bytes] = {}


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Single]:
    fp_port = free_port()
    srv = ConchProcess(
        "fp-single", tmp_path_factory.mktemp("fp-single"),
        extra_args=["--snapshot-count", "40", "--experimental-snapshot-catchup-entries", "10"],
        env={"CONCH_FAILPOINTS_HTTP": f"127.0.0.1:{fp_port}"},
    )
    try:
        srv.start()
        yield _Single(srv, fp_port)
    finally:
        srv.close()


@pytest.mark.parametrize("point", list(SINGLE))
def test_panic_single_member(single: _Single, point: str) -> None:
    srv, acked = single.srv, single.acked
    if not srv.is_running():  # an earlier case failed before restarting it
        srv.spawn()
        srv.wait_ready()
    assert _puts(srv.endpoint, acked, b"%s-before" % point.encode(), 5) == 5
    trigger = SINGLE[point]
    compact_rev = 0
    if trigger == "compact":
        with connect(srv.endpoint) as s:
            for i in range(5):
                s.kv.Put(rpc_pb2.PutRequest(key=b"hist", value=b"%d" % i), timeout=5)
            compact_rev = s.kv.Range(rpc_pb2.RangeRequest(key=b"hist"), timeout=5).header.revision
    _arm(single.fp_port, point)
    if trigger == "put":
        # Writes until the member dies (raftAfterWALRelease needs a snapshot: 40 entries).
        _puts(srv.endpoint, acked, b"%s-during" % point.encode(), 400)
    elif trigger == "compact":
        with connect(srv.endpoint) as s, pytest.raises(grpc.RpcError):
            s.kv.Compact(rpc_pb2.CompactionRequest(revision=compact_rev), timeout=10)
    else:
        with connect(srv.endpoint) as s, pytest.raises(grpc.RpcError):
            s.maintenance.Defragment(rpc_pb2.DefragmentRequest(), timeout=10)
    _wait_panicked(srv, point)
    srv.spawn()  # the runtime arming died with the process
    srv.wait_ready()
    _check_acked(srv.endpoint, acked)
    assert _puts(srv.endpoint, acked, b"%s-after" % point.encode(), 5) == 5
    if trigger == "compact":
        # The Compact entry was durable in the WAL before it was applied: replay redid it.
        with connect(srv.endpoint) as s:
            with pytest.raises(grpc.RpcError) as exc:
                s.kv.Range(rpc_pb2.RangeRequest(key=b"hist", revision=compact_rev - 1),
                           timeout=5)
            assert exc.value.code() == grpc.StatusCode.OUT_OF_RANGE
            got = s.kv.Range(rpc_pb2.RangeRequest(key=b"hist", revision=compact_rev), timeout=5)
            assert got.kvs[0].value == b"4"
            hk = s.maintenance.HashKV(rpc_pb2.HashKVRequest(), timeout=5)
            assert hk.compact_revision == compact_rev


def test_sleep_failpoint_delays_a_live_member(single: _Single) -> None:
    srv = single.srv
    if not srv.is_running():
        srv.spawn()
        srv.wait_ready()
    _arm(single.fp_port, "raftBeforeSave", "1*sleep(700ms)")
    with connect(srv.endpoint) as s:
        t0 = time.monotonic()
        s.kv.Put(rpc_pb2.PutRequest(key=b"acked/slow", value=b"1"), timeout=10)
        slow = time.monotonic() - t0
        single.acked[b"acked/slow"] = b"1"
        assert slow >= 0.6
        t0 = time.monotonic()
        s.kv.Put(rpc_pb2.PutRequest(key=b"acked/fast", value=b"1"), timeout=10)
        single.acked[b"acked/fast"] = b"1"
        assert time.monotonic() - t0 < 0.5  # 1*: only the next hit slept
    assert srv.is_running()
    assert _http("GET", f"http://127.0.0.1:{single.fp_port}/raftBeforeSave")[0] == 404
    assert _http("GET", f"http://127.0.0.1:{single.fp_port}/raftBeforeSave/count") == (
        200, "1\n")  # it acted once, then disarmed itself
    _check_acked(srv.endpoint, single.acked)
    # A sleep at a point in a coroutine stalls that work only: reads go on meanwhile.
    _arm(single.fp_port, "defragBeforeCopy", "1*sleep(1s)")
    done: list[float] = []

    def defrag() -> None:
        t0 = time.monotonic()
        with connect(srv.endpoint) as s:
            s.maintenance.Defragment(rpc_pb2.DefragmentRequest(), timeout=20)
        done.append(time.monotonic() - t0)

    th = threading.Thread(target=defrag, daemon=True)
    th.start()
    poll(lambda: _http("GET", f"http://127.0.0.1:{single.fp_port}/defragBeforeCopy/count")
         == (200, "1\n"), 10, "the defragment to reach its failpoint")
    with connect(srv.endpoint) as s:
        t0 = time.monotonic()
        s.kv.Range(rpc_pb2.RangeRequest(key=b"acked/slow", serializable=True), timeout=5)
        assert time.monotonic() - t0 < 0.5
    th.join(30)
    assert done and done[0] >= 0.9 and srv.is_running()


# --------------------------------------------------------------------------- three members


def _converged(cluster: Cluster) -> int | None:
    """All members at the same applied index with equal HashKV at the same revision."""
    statuses = [st for m in cluster.members if (st := _status(m.endpoint)) is not None]
    if len(statuses) != len(cluster.members) or len({s.raftAppliedIndex for s in statuses}) != 1:
        return None
    rev: int = statuses[0].header.revision
    hashes: set[int] = set()
    for m in cluster.members:
        try:
            with connect(m.endpoint) as s:
                hashes.add(s.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=rev),
                                                timeout=5).hash)
        except grpc.RpcError:
            return None
    return rev if len(hashes) == 1 else None


MAX_INFLIGHT = 512  # conch's raft Config.max_inflight_msgs


def _compacted_to(m: ServerProcess) -> int:
    """The index the member's raft log was last compacted to (from its log)."""
    found = re.findall(r"log compacted to (\d+)", m.log_tail(50))
    return int(found[-1]) if found else 0


class _Three:
    def __init__(self, cluster: Cluster, fp_ports: dict[str, int]) -> None:
        self.cluster = cluster
        self.fp_ports = fp_ports
        self.acked: dict[bytes, bytes] = {}

    def revive(self) -> None:
        for m in self.cluster.members:
            if m.proc is not None and m.proc.poll() is None:
                m.kill(signal.SIGCONT, wait=False)
            if not m.is_running():
                m.spawn()
        for m in self.cluster.members:
            m.wait_ready()

    def recover(self, victim: ServerProcess) -> None:
        victim.spawn()
        victim.wait_ready()
        poll(lambda: _converged(self.cluster), 60, "the members to converge")
        for m in self.cluster.members:
            _check_acked(m.endpoint, self.acked, serializable=True)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Three]:
    base = Path(tmp_path_factory.mktemp("fp-three"))
    # A raft snapshot every 50 entries keeping 10: a follower that misses ~150 writes can
    # only catch up from a snapshot of the leader's backend.
    c = Cluster(base, 3, token="fp-three",
                extra_env={"ETCD_SNAPSHOT_COUNT": "50",
                           "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES": "10"})
    ports: dict[str, int] = {}
    for m in c.members:
        ports[m.name] = free_port()
        m.env["CONCH_FAILPOINTS_HTTP"] = f"127.0.0.1:{ports[m.name]}"
    try:
        c.start()
        yield _Three(c, ports)
    finally:
        c.close()


@pytest.mark.parametrize("point", list(SEND))
def test_panic_before_send(three: _Three, point: str) -> None:
    three.revive()
    leader = poll(lambda: _leader(three.cluster), 20, "a leader")
    assert _puts(leader.endpoint, three.acked, point.encode(), 10) == 10
    victim = leader if SEND[point] == "leader" else next(
        m for m in three.cluster.members if m is not leader)
    writer = _Writer(three.cluster.endpoints, three.acked, point)
    try:
        _arm(three.fp_ports[victim.name], point, fires_at_once=True)  # heartbeats reach it
        _wait_panicked(victim, point)
    finally:
        writer.stop()
    three.recover(victim)


@pytest.mark.parametrize("point", SNAPSHOT)
def test_panic_catching_up_by_snapshot(three: _Three, point: str) -> None:
    three.revive()
    leader = poll(lambda: _leader(three.cluster), 20, "a leader")
    victim = next(m for m in three.cluster.members if m is not leader)
    _arm(three.fp_ports[victim.name], point)  # a live member; no snapshot reaches it yet
    st = _status(victim.endpoint)
    assert st is not None
    victim.kill(signal.SIGSTOP)
    try:
        # The leader compacts its log past everything the stopped follower has or will
        # find in its socket: raft goes on sending to a follower it believes replicating
        # until MAX_INFLIGHT appends are unanswered, so the log must move past those too.
        # (The raft snapshots run beside the loop: read the leader's log, write more.)
        target = st.raftIndex + MAX_INFLIGHT + 1
        for chunk in range(20):
            assert _puts(leader.endpoint, three.acked, b"%s-%d" % (point.encode(), chunk),
                         100) == 100
            if _compacted_to(leader) > target:
                break
        assert _compacted_to(leader) > target, leader.log_tail(20)
    finally:
        victim.kill(signal.SIGCONT, wait=False)
    # Writes go on while the snapshot is sent, so the database copy is newer than it.
    writer = _Writer([leader.endpoint], three.acked, point)
    try:
        _wait_panicked(victim, point, timeout=60)
    finally:
        writer.stop()
    three.recover(victim)
