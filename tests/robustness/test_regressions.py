"""etcd's named robustness regressions, replayed against real conch processes on loopback.

Each test is named after the etcd issue whose triggering sequence it drives, and runs against
real etcd 3.4 too as a control (skipped without the binaries unless CONCH_REQUIRE_ETCD=1).
etcd 3.4.23 itself shows #18089 (and so the #19179 sequence) and #20221 every time, and
#15271 and #17529 in some runs (timing); those etcd cases are xfail(strict=False).

#14370  Durability API guarantee broken in single node cluster (etcd 3.5.0-3.5.4). A lone
        member applied and acknowledged a committed entry in parallel with saving it to the
        WAL; a crash right after the reply (robustness failpoint raftBeforeSave=panic, under
        concurrent puts) lost acknowledged writes: the restarted member no longer had them
        and reused their revisions. Fixed in etcdserver (#14400), then by a raft-side change
        (#14413). Guarantee: an acknowledged write survives kill -9.

#15271  Watch response travelling back in time when a reconnecting member downloads a snapshot
        from the leader (3.5). A member blackholed until the leader had to send it a snapshot
        (failpoint blackholeUntilSnapshot, snapshot-count 100) restored its store and its
        watchers then delivered revisions lower than ones already sent (3924 -> 2171): the
        restore put every synced watcher back to unsynced at the revision it was created
        with (a synced watcher's minRev did not advance as events went out), so the resync
        replayed history. Guarantees: watch Ordered/Unique/Reliable, and Resumable (a watch
        resumed at last seen + 1 on any member, even one that is behind, gets exactly the
        following events).

#17529  Watch events starvation / loss multiplexed on a single watch stream (3.4, 3.5).
        Hundreds of prefix watches with prev_kv on one gRPC stream fell behind (unsynced,
        responses delayed for minutes); when compaction overtook one, sending its compaction
        cancel failed on the full shared channel, yet it stayed in the batch being synced
        and its minRev was set to current + 1: it silently skipped every event in between
        (2725 -> 184694), no cancel. Reproduced with failpoint beforeSendWatchResponse=sleep,
        heavy puts and compaction; fixed by #17555 (skip it, resend the cancel next sync).
        Guarantee: Reliable - every event, or a gap-free prefix then a cancel carrying
        compact_revision; and watches on other streams keep getting events meanwhile.

#18089  Watch dropping an event when compacting on delete (3.4, 3.5). Compaction at revision
        R also removed a tombstone whose revision is R, so `put k v2, put k v3, put k v4,
        del k (R=5), put k v6; compact 5; watch k --rev 5` returned only the PUT at 6. etcd
        3.5 allows a watch to start at exactly the compact revision and must deliver R's
        events (fix #18274: keep the tombstone at compactAtRev). Guarantee: Reliable.

#19179  Missing delete event on watch opened on the same revision as a compaction (3.4, 3.5).
        With Kubernetes create/delete traffic every key has two revisions; a multi-batch
        compaction at a tombstone's revision R crashed (compactBeforeSetFinishedCompact) after
        removing the key's create revision, so on restart the tombstone was the key's only
        row, was left out of the rebuilt index, and the resumed compaction deleted it: watch
        from R lost the DELETE. Fix #19188. conch compacts in one LMDB transaction and keeps
        its index in the database, so the test kills right after the compaction and checks
        the tombstone at R survives restart (and WAL replay of the compaction).

#20221  Watch on a future revision might receive old events or notifications (3.4-3.6). A
        watch with start_revision > current on a member that then installs a leader snapshot
        was moved to the unsynced group by the restore and the resync overwrote its minRev
        with current + 1, so it got events below its start revision. Fix #20281. Guarantees:
        no event below the start revision, nothing before the store reaches it, then every
        event from it; Bookmarkable - after a progress notification at revision P no event
        at or below P arrives (P may be below the start revision: it is the member's current
        revision, and all events up to it - none - have been delivered).
"""

from __future__ import annotations

import contextlib
import queue
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from conch.proto.etcdserverpb import rpc_pb2
from conch.proto.mvccpb import kv_pb2
from devkit.harness import (
    ConchProcess,
    EtcdProcess,
    ServerProcess,
    etcd_available,
    require_etcd,
)
from devkit.polling import poll
from tests.grpc_stubs import Stubs, connect

TARGETS = ["conch", "etcd"]
PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE
PROGRESS_FLAG = "--experimental-watch-progress-notify-interval=100ms"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def _grpc_stays_initialised() -> Iterator[None]:
    """Hold one (never used) channel for the whole module. When the last channel closes,
    gRPC core shuts itself down on a background "grpc_shutdown" thread; a fork() meanwhile
    (the harness starts servers with a preexec_fn, so subprocess forks) runs gRPC's
    pthread_atfork handler, which waits for that thread, and the test process hangs in
    fork. Seen here between a test that closed all its channels and the next server start."""
    ch = grpc.insecure_channel("127.0.0.1:9")
    yield
    ch.close()


def need(target: str) -> None:
    if target == "etcd" and not etcd_available():
        if require_etcd():
            pytest.fail("etcd/etcdctl not found and CONCH_REQUIRE_ETCD=1", pytrace=False)
        pytest.skip("reference etcd binaries not found")


def put(s: Stubs, key: bytes, value: bytes = b"v") -> int:
    return int(s.kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=10).header.revision)


def delete(s: Stubs, key: bytes) -> int:
    resp = s.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key), timeout=10)
    assert resp.deleted == 1
    return int(resp.header.revision)


def compact(s: Stubs, rev: int) -> None:
    s.kv.Compact(rpc_pb2.CompactionRequest(revision=rev, physical=True), timeout=30)


def current_revision(s: Stubs) -> int:
    return int(s.kv.Range(rpc_pb2.RangeRequest(key=b"\0"), timeout=10).header.revision)


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def put_many(endpoint: str, keys: Sequence[bytes], value: bytes = b"v",
             threads: int = 8) -> list[tuple[bytes, int]]:
    """Put every key (in `threads` concurrent clients); (key, revision) of each, by revision."""
    out: list[tuple[bytes, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(part: Sequence[bytes]) -> None:
        try:
            with connect(endpoint) as s:
                for k in part:
                    r = put(s, k, value)
                    with lock:
                        out.append((k, r))
        except BaseException as e:  # reported by the caller
            errors.append(e)

    parts = [keys[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=run, args=(p,), daemon=True) for p in parts if p]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors[:3]
    assert len(out) == len(keys)
    return sorted(out, key=lambda kr: kr[1])


def is_progress(r: rpc_pb2.WatchResponse) -> bool:
    return not (r.events or r.created or r.canceled or r.fragment)


class WatchConn:
    """One gRPC Watch stream. Responses are collected by a reader thread; with read=False
    nobody reads the stream (a slow consumer) until start_reading()."""

    def __init__(self, endpoint: str, *, read: bool = True) -> None:
        self._stubs = connect(endpoint)
        self._requests: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()
        self._cond = threading.Condition()
        self.responses: list[rpc_pb2.WatchResponse] = []
        self.error: grpc.RpcError | None = None
        self._closed = False
        self._call = self._stubs.watch.Watch(self._request_iter())
        self._reader: threading.Thread | None = None
        if read:
            self.start_reading()

    def _request_iter(self) -> Iterator[rpc_pb2.WatchRequest]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def start_reading(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for resp in self._call:
                with self._cond:
                    self.responses.append(resp)
        except grpc.RpcError as e:
            if not self._closed:
                self.error = e

    def create(self, key: bytes, range_end: bytes = b"", start: int = 0, *,
               watch_id: int = 0, prev_kv: bool = False, progress_notify: bool = False) -> None:
        self._requests.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start, watch_id=watch_id,
            prev_kv=prev_kv, progress_notify=progress_notify)))

    def request_progress(self) -> None:
        self._requests.put(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    def snapshot(self) -> list[rpc_pb2.WatchResponse]:
        with self._cond:
            return list(self.responses)

    def events(self, watch_id: int | None = None) -> list[kv_pb2.Event]:
        return [ev for r in self.snapshot() if watch_id is None or r.watch_id == watch_id
                for ev in r.events]

    def revs(self, watch_id: int | None = None) -> list[int]:
        return [ev.kv.mod_revision for ev in self.events(watch_id)]

    def wait(self, pred: Callable[[list[rpc_pb2.WatchResponse]], Any], timeout: float,
             what: str) -> Any:
        def check() -> Any:
            assert self.error is None, f"watch stream failed: {self.error!r}"
            return pred(self.snapshot())
        return poll(check, timeout, what)

    def wait_rev(self, rev: int, timeout: float = 20, watch_id: int | None = None) -> None:
        self.wait(lambda rs: any(ev.kv.mod_revision >= rev for r in rs
                                 if watch_id is None or r.watch_id == watch_id
                                 for ev in r.events),
                  timeout, f"watch {watch_id} to reach revision {rev}")

    def close(self) -> None:
        self._closed = True
        self._call.cancel()
        self._requests.put(None)
        if self._reader is not None:
            self._reader.join(10)
        self._stubs.close()


@contextlib.contextmanager
def watching(endpoint: str, *, read: bool = True) -> Iterator[WatchConn]:
    w = WatchConn(endpoint, read=read)
    try:
        yield w
    finally:
        w.close()


def check_bookmarkable(responses: Sequence[rpc_pb2.WatchResponse], what: str) -> None:
    """etcd's validateBookmarkable (+ Ordered): event revisions increase; after a progress
    notification at P no event at or below P arrives; notifications never go backwards."""
    last_event = 0
    last_progress = 0
    for r in responses:
        for ev in r.events:
            assert ev.kv.mod_revision > last_progress, (
                f"{what}: event at {ev.kv.mod_revision} after a progress notification at"
                f" {last_progress}")
            assert ev.kv.mod_revision >= last_event, f"{what}: events went back in time"
            last_event = ev.kv.mod_revision
        if is_progress(r):
            assert r.header.revision >= last_progress, f"{what}: progress went backwards"
            assert r.header.revision >= last_event, (
                f"{what}: progress at {r.header.revision} below delivered event {last_event}")
            last_progress = r.header.revision


# --------------------------------------------------------------------------- clusters


def _member_class(kind: str) -> type[ServerProcess]:
    base: type[ServerProcess] = EtcdProcess if kind == "etcd" else ConchProcess

    class Member(base):  # type: ignore[valid-type,misc]
        initial_cluster = ""

        def command(self) -> list[str]:
            cmd: list[str] = super().command()
            cmd[cmd.index("--initial-cluster") + 1] = self.initial_cluster
            cmd[cmd.index("--initial-cluster-token") + 1] = "conch-regressions"
            return cmd

    return Member


class LoopbackCluster:
    """n members of `kind` on loopback, peer and client URLs on fresh ports."""

    def __init__(self, kind: str, base_dir: Path, n: int, extra_args: Sequence[str]) -> None:
        cls = _member_class(kind)
        kw: dict[str, Any] = {"peer_flags": True} if kind == "conch" else {}
        self.members: list[ServerProcess] = [
            cls(f"{kind}{i}", base_dir, extra_args=list(extra_args), **kw) for i in range(n)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial  # type: ignore[attr-defined]

    def start(self) -> None:
        for m in self.members:
            m.spawn()
        for m in self.members:
            m.wait_ready()

    def close(self) -> None:
        for m in self.members:
            with contextlib.suppress(Exception):
                m.close()

    def roles(self) -> tuple[ServerProcess, list[ServerProcess]]:
        """(leader, followers) as the members report them."""
        ids = {}
        leader_id = 0
        for m in self.members:
            with connect(m.endpoint) as s:
                st = s.maintenance.Status(rpc_pb2.StatusRequest(), timeout=10)
            ids[st.header.member_id] = m
            leader_id = st.leader
        leader = ids[leader_id]
        return leader, [m for m in self.members if m is not leader]


@contextlib.contextmanager
def cluster(kind: str, base_dir: Path, extra_args: Sequence[str]) -> Iterator[LoopbackCluster]:
    c = LoopbackCluster(kind, base_dir, 3, extra_args)
    try:
        c.start()
        yield c
    finally:
        c.close()


# Snapshot-forcing settings: conch can shrink the catch-up window; etcd 3.4 keeps 5000
# entries after a raft log compaction (no --experimental-snapshot-catchup-entries), so
# the leader only sends it a snapshot after more than 5000 + snapshot-count entries.
CLUSTER_ARGS = {
    "conch": ["--snapshot-count=50", "--experimental-snapshot-catchup-entries=20", PROGRESS_FLAG],
    "etcd": ["--snapshot-count=100", PROGRESS_FLAG],
}
# Writes while a follower is SIGSTOPped: its TCP socket keeps absorbing appends until the
# leader has max-inflight (512) messages outstanding to it, so 650 sequential puts (one
# append each) come first; then enough concurrent ones for the leader's raft log compaction
# (snapshot index - catch-up entries) to pass what the follower will have: it must get a
# snapshot. (sequential, concurrent) per target.
PAUSED_WRITES = {"conch": (650, 0), "etcd": (650, 5200)}


def paused_writes(target: str, endpoint: str, prefix: bytes) -> list[tuple[bytes, int]]:
    seq, conc = PAUSED_WRITES[target]
    out = put_many(endpoint, [prefix + b"s%05d" % i for i in range(seq)], threads=1)
    if conc:
        out += put_many(endpoint, [prefix + b"c%05d" % i for i in range(conc)])
    return out


def snapshot_installed(member: ServerProcess, kind: str) -> bool:
    log = member.log_path.read_text(errors="replace")
    return ("installed snapshot" in log) if kind == "conch" else ("applied snapshot" in log)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Callable[[str], ServerProcess]]:
    """One single-member server per target for the tests that only read and write."""
    started: dict[str, ServerProcess] = {}

    def get(target: str) -> ServerProcess:
        need(target)
        if target not in started:
            cls = EtcdProcess if target == "etcd" else ConchProcess
            srv = cls(f"shared-{target}", tmp_path_factory.mktemp(target),
                      extra_args=[PROGRESS_FLAG])
            started[target] = srv
            srv.start()
        return started[target]

    yield get
    for srv in started.values():
        srv.close()


# --------------------------------------------------------------------------- #14370

KILL_ROUNDS = 4
WRITERS = 4


def _puts_until_kill(srv: ServerProcess, prefix: bytes, kill_after: int) -> dict[bytes, int]:
    """WRITERS clients put unique keys; the client whose put is the `kill_after`-th to be
    acknowledged SIGKILLs the server the instant it has the reply (the window #14370 lost:
    acknowledged, not yet durable). Returns key -> acknowledged revision."""
    acked: dict[bytes, int] = {}
    lock = threading.Lock()
    killed = threading.Event()

    def run(w: int) -> None:
        with connect(srv.endpoint) as s:
            for n in range(100_000):
                if killed.is_set():
                    return
                key = prefix + b"/w%d/%06d" % (w, n)
                try:
                    resp = s.kv.Put(rpc_pb2.PutRequest(key=key, value=key), timeout=5)
                except grpc.RpcError:
                    return  # the member died: outcome unknown, not acknowledged
                with lock:
                    acked[key] = resp.header.revision
                    if len(acked) == kill_after and not killed.is_set():
                        srv.kill(signal.SIGKILL, wait=False)
                        killed.set()

    ts = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(WRITERS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert killed.is_set(), "the writers stopped before the kill point"
    srv.kill(signal.SIGKILL)  # reap it
    return acked


@pytest.mark.parametrize("target", TARGETS)
def test_issue_14370_acknowledged_write_survives_kill_on_single_member(
        target: str, tmp_path: Path) -> None:
    need(target)
    rng = random.Random(14370)
    cls = EtcdProcess if target == "etcd" else ConchProcess
    srv = cls(f"crash-{target}", tmp_path)
    srv.start()
    try:
        acked: dict[bytes, int] = {}
        for rnd in range(KILL_ROUNDS):
            kill_after = rng.randint(1, 120)
            got = _puts_until_kill(srv, b"k14370/r%d" % rnd, kill_after)
            acked.update(got)
            srv.spawn()
            srv.wait_ready()
            with connect(srv.endpoint) as s:
                resp = s.kv.Range(rpc_pb2.RangeRequest(
                    key=b"k14370/", range_end=prefix_end(b"k14370/")), timeout=10)
                stored = {kv.key: (kv.value, kv.mod_revision) for kv in resp.kvs}
                lost = {k: r for k, r in acked.items() if stored.get(k) != (k, r)}
                assert not lost, (
                    f"round {rnd}: {len(lost)} acknowledged puts lost or changed after kill -9,"
                    f" e.g. {sorted(lost.items(), key=lambda kr: kr[1])[:3]}")
                top = max(acked.values())
                assert resp.header.revision >= top
                # A lost write shows as a revision handed out twice: the next put must get a
                # revision above every acknowledged one.
                assert put(s, b"k14370-after/%d" % rnd) > top
    finally:
        srv.close()


# --------------------------------------------------------------------------- #18089 / #19179

# (event at the compact revision, start offset from it); etcd 3.4.23 predates fix #18274.
_BOUNDARY = [
    pytest.param(target, ev, off, id=f"{target}-{ev}-start{off:+d}",
                 marks=[pytest.mark.xfail(strict=False, reason="etcd 3.4 has bug #18089")]
                 if (target, ev, off) == ("etcd", "delete", 0) else [])
    for target in TARGETS for ev in ("delete", "put") for off in (-1, 0, 1)
]


@pytest.mark.parametrize(("target", "event", "offset"), _BOUNDARY)
def test_issue_18089_watch_from_compact_revision_gets_its_event(
        target: str, event: str, offset: int,
        shared_server: Callable[[str], ServerProcess]) -> None:
    """put k v2, put k v3, put k v4, (del k | put k v5) at R, put k v6; compact R; watch k
    with prev_kv from R-1 (canceled: compact_revision R), R (R's event, then 6), R+1 (6).
    prev_kv of an event at R is omitted (R-1 is compacted); at R+1 it is R's value, or
    omitted when R deleted the key."""
    srv = shared_server(target)
    key = b"k18089/%s/%d" % (event.encode(), offset + 1)
    with connect(srv.endpoint) as s:
        for v in (b"v2", b"v3", b"v4"):
            put(s, key, v)
        r = delete(s, key) if event == "delete" else put(s, key, b"v5")
        r6 = put(s, key, b"v6")
        compact(s, r)
    start = r + offset
    with watching(srv.endpoint) as w:
        w.create(key, start=start, prev_kv=True)
        if offset < 0:
            cancel = w.wait(lambda rs: [x for x in rs if x.canceled], 20, "the compaction cancel")
            assert cancel[0].compact_revision == r
            assert w.events() == []
            return
        w.wait_rev(r6)
        got = [(ev.type, ev.kv.mod_revision, ev.kv.value,
                (ev.prev_kv.value, ev.prev_kv.mod_revision) if ev.HasField("prev_kv") else None)
               for ev in w.events()]
    at_r = (DELETE, r, b"", None) if event == "delete" else (PUT, r, b"v5", None)
    prev6 = None if event == "delete" else (b"v5", r)
    want = ([at_r] if offset == 0 else []) + [(PUT, r6, b"v6", prev6)]
    assert got == want


@pytest.mark.parametrize("target", [
    "conch",
    pytest.param("etcd", marks=pytest.mark.xfail(strict=False, reason="etcd 3.4 has bug #18089")),
])
def test_issue_19179_tombstone_at_compact_revision_survives_restart(
        target: str, tmp_path: Path) -> None:
    """Kubernetes-style create/delete keys (two revisions each); compact at the revision of
    the last delete R (the tombstone becomes that key's only row), kill -9 at once, restart:
    a watch from R delivers that DELETE, a watch from R-1 is canceled with compact_revision R.
    Twice, so the second compaction also removes the first round's tombstone."""
    need(target)
    cls = EtcdProcess if target == "etcd" else ConchProcess
    srv = cls(f"tomb-{target}", tmp_path)
    srv.start()
    try:
        for rnd in range(2):
            prefix = b"k19179/r%d/" % rnd
            with connect(srv.endpoint) as s:
                keys = [prefix + b"%02d" % i for i in range(20)]
                for k in keys:
                    put(s, k)
                for k in keys:
                    r = delete(s, k)
                compact(s, r)
            srv.kill(signal.SIGKILL)
            srv.spawn()
            srv.wait_ready()
            with watching(srv.endpoint) as w, connect(srv.endpoint) as s:
                w.create(prefix, prefix_end(prefix), start=r, prev_kv=True, watch_id=1)
                w.create(prefix, prefix_end(prefix), start=r - 1, watch_id=2)
                cancel = w.wait(lambda rs: [x for x in rs if x.canceled and x.watch_id == 2],
                                20, "the compaction cancel")
                assert cancel[0].compact_revision == r
                sentinel = put(s, prefix + b"zz")  # the event after R: R's must come first
                w.wait_rev(sentinel, watch_id=1)
                got = [(ev.type, ev.kv.key, ev.kv.mod_revision) for ev in w.events(1)]
                assert got == [(DELETE, keys[-1], r), (PUT, prefix + b"zz", sentinel)]
                assert w.events(2) == []
    finally:
        srv.close()


# --------------------------------------------------------------------------- #20221


@pytest.mark.parametrize("target", TARGETS)
def test_issue_20221_watch_on_future_revision_single_member(
        target: str, shared_server: Callable[[str], ServerProcess]) -> None:
    """Created at once; nothing while the store is below the start revision (checked with a
    progress request after each put); then exactly the events from the start revision."""
    srv = shared_server(target)
    prefix = b"k20221/single/"
    with connect(srv.endpoint) as s, watching(srv.endpoint) as w:
        cur = current_revision(s)
        start = cur + 5
        w.create(prefix, prefix_end(prefix), start=start, prev_kv=True, progress_notify=True)
        w.wait(lambda rs: any(r.created for r in rs), 20, "created")
        def progress_at(rev: int) -> Callable[[list[rpc_pb2.WatchResponse]], bool]:
            return lambda rs: any(is_progress(r) and r.header.revision >= rev for r in rs)

        for i in range(4):
            rev = put(s, prefix + b"%d" % i)
            w.request_progress()
            w.wait(progress_at(rev), 20, f"progress at {rev}")
            assert w.events() == [], f"events before the start revision {start}"
        revs = [put(s, prefix + b"%d" % (i % 4), b"x%d" % i) for i in range(6)]
        assert revs[0] == start
        w.wait_rev(revs[-1])
        assert w.revs() == revs
        check_bookmarkable(w.snapshot(), "future watch")


@pytest.mark.parametrize("target", [
    "conch",
    pytest.param("etcd", marks=pytest.mark.xfail(strict=False, reason="etcd 3.4 has bug #20221")),
])
def test_issue_20221_future_watch_on_member_that_installs_snapshot(
        target: str, tmp_path: Path) -> None:
    """Future watches (progress_notify, prev_kv) on a follower; SIGSTOP it while the
    cluster writes far enough ahead that the leader must send it a snapshot; SIGCONT. One
    watch's start is passed during the pause, the other is still ahead after the restore.
    Each must deliver exactly the events from its start revision, nothing below it."""
    need(target)
    prefix = b"k20221/"
    end = prefix_end(prefix)
    with cluster(target, tmp_path, CLUSTER_ARGS[target]) as c:
        leader, (follower, _) = c.roles()
        n_paused = sum(PAUSED_WRITES[target])
        with connect(leader.endpoint) as s, watching(follower.endpoint) as w:
            cur = current_revision(s)
            start_passed = cur + n_paused // 2
            start_ahead = cur + n_paused + 40
            w.create(prefix, end, start=start_passed, watch_id=1, prev_kv=True,
                     progress_notify=True)
            w.create(prefix, end, start=start_ahead, watch_id=2, prev_kv=True,
                     progress_notify=True)
            w.wait(lambda rs: sum(r.created for r in rs) == 2, 20, "both watches created")
            follower.kill(signal.SIGSTOP)
            try:
                paused = paused_writes(target, leader.endpoint, prefix + b"p")
            finally:
                follower.kill(signal.SIGCONT)
            caught_up = paused[-1][1]
            assert caught_up < start_ahead
            # Let the follower install the snapshot, catch up and resync its watchers (a
            # progress notification of watch 2 at the caught-up revision) while watch 2's
            # start is still ahead: the moment #20221 lowered it to current + 1.
            w.wait(lambda rs: any(r.watch_id == 2 and is_progress(r)
                                  and r.header.revision >= caught_up for r in rs),
                   60, "a progress notification once the follower has caught up")
            after = put_many(leader.endpoint, [prefix + b"a%03d" % i for i in range(80)])
            history = [r for _, r in paused + after]
            w.wait_rev(history[-1], timeout=60, watch_id=1)
            w.wait_rev(history[-1], timeout=60, watch_id=2)
            rs = w.snapshot()
        for wid, start in ((1, start_passed), (2, start_ahead)):
            mine = [r for r in rs if r.watch_id == wid]
            got = [ev.kv.mod_revision for r in mine for ev in r.events]
            assert got and min(got) >= start, f"watch {wid} got events below its start {start}"
            assert got == [h for h in history if h >= start], f"watch {wid}: gap or repeat"
            check_bookmarkable(mine, f"watch {wid}")
        assert snapshot_installed(follower, target), "the follower never needed a snapshot"


# --------------------------------------------------------------------------- #15271


@pytest.mark.parametrize("target", [
    "conch",
    pytest.param("etcd", marks=pytest.mark.xfail(strict=False, reason="etcd 3.4 has bug #15271")),
])
def test_issue_15271_watch_resumed_on_lagging_member_never_goes_back(
        target: str, tmp_path: Path) -> None:
    """A watcher on follower F sees events; F is SIGSTOPped while writes continue (enough for
    the leader to send F a snapshot); the client fails over to the leader from last seen + 1
    and reads up to X; while F is still behind it resumes on F from X + 1 and from the
    original last seen + 1. SIGCONT, more writes. Every watch - including the one that was
    open on F all along - gets exactly the events of its range of revisions: none older
    than its resume point, none repeated, none skipped."""
    need(target)
    prefix = b"k15271/"
    end = prefix_end(prefix)
    with cluster(target, tmp_path, CLUSTER_ARGS[target]) as c:
        leader, (follower, _) = c.roles()
        with connect(leader.endpoint) as s:
            start0 = current_revision(s) + 1
        with contextlib.ExitStack() as stack:
            on_f = stack.enter_context(watching(follower.endpoint))
            on_f.create(prefix, end, start=start0, prev_kv=True)
            first = put_many(leader.endpoint, [prefix + b"f%03d" % i for i in range(40)])
            on_f.wait_rev(first[-1][1])
            last_seen = on_f.revs()[-1]
            # Streams to F for the resumed watches, connected now (a watch on an unrelated
            # key), so that requests sent while F is stopped wait in its socket and are
            # handled as soon as it runs again: well before the leader's snapshot arrives.
            resume_x = stack.enter_context(watching(follower.endpoint))
            resume_seen = stack.enter_context(watching(follower.endpoint))
            for w in (resume_x, resume_seen):
                w.create(b"k15271-other", watch_id=100)
                w.wait(lambda rs: any(r.created for r in rs), 20, "connected to F")

            follower.kill(signal.SIGSTOP)
            try:
                paused = paused_writes(target, leader.endpoint, prefix + b"p")
                x = paused[-1][1]
                failover = stack.enter_context(watching(leader.endpoint))
                failover.create(prefix, end, start=last_seen + 1, prev_kv=True)
                failover.wait_rev(x)
                # Resume on F while it is stopped and behind the leader.
                resume_x.create(prefix, end, start=x + 1, watch_id=1, prev_kv=True)
                resume_seen.create(prefix, end, start=last_seen + 1, watch_id=1, prev_kv=True)
            finally:
                follower.kill(signal.SIGCONT)
            created = resume_x.wait(lambda rs: [r for r in rs if r.created and r.watch_id == 1],
                                    30, "created")
            behind = created[0].header.revision < x
            after = put_many(leader.endpoint, [prefix + b"a%03d" % i for i in range(40)])
            final = after[-1][1]
            for w, wid in ((on_f, None), (failover, None), (resume_x, 1), (resume_seen, 1)):
                w.wait_rev(final, timeout=60, watch_id=wid)
            history = [r for _, r in first + paused + after]
            assert history == list(range(start0, final + 1))
            for name, w, start in (("open on F throughout", on_f, start0),
                                   ("failover to leader", failover, last_seen + 1),
                                   ("resumed on F at X+1", resume_x, x + 1),
                                   ("resumed on F at last seen+1", resume_seen, last_seen + 1)):
                got = w.revs()
                assert w.events(100) == []
                want = list(range(start, final + 1))
                odd = next((i for i, (g, e) in enumerate(zip(got, want, strict=False)) if g != e),
                           min(len(got), len(want)))
                assert got == want, (
                    f"{name}: expected {start}..{final}, got {len(got)} events;"
                    f" first difference at position {odd}: {got[odd:odd + 3]}")
                for ev in w.events():
                    assert ev.kv.value == b"v"
        assert snapshot_installed(follower, target), "the follower never needed a snapshot"
        assert behind, "the resumed watch was created after F had caught up"


# --------------------------------------------------------------------------- #17529

SLOW_WATCHERS = 64
FAST_STREAMS = 4
BATCHES = 6
BATCH_PUTS = 50
VALUE = b"x" * 400
FAST_LAG_BOUND = 10.0  # seconds a fast watcher may trail an acknowledged batch
SLOW_SETTLE = 15.0  # seconds for the slow stream to drain once it is read


@pytest.mark.parametrize("target", [
    "conch",
    pytest.param("etcd", marks=pytest.mark.xfail(strict=False, reason="etcd 3.4 has bug #17529")),
])
def test_issue_17529_slow_shared_stream_neither_starves_nor_loses_events(
        target: str, tmp_path: Path) -> None:
    """SLOW_WATCHERS prefix watches with prev_kv multiplexed on one stream nobody reads,
    FAST_STREAMS streams with one such watch each that are read; batches of puts, and a
    compaction half way while the slow stream is stuck. Fast watchers get every batch within
    FAST_LAG_BOUND seconds. Once the slow stream is read, every slow watcher has either every
    event in order or a gap-free prefix followed by a cancel with compact_revision set."""
    need(target)
    prefix = b"k17529/"
    end = prefix_end(prefix)
    cls = EtcdProcess if target == "etcd" else ConchProcess
    srv = cls(f"starve-{target}", tmp_path)
    srv.start()
    try:
        with connect(srv.endpoint) as s, contextlib.ExitStack() as stack:
            start = current_revision(s) + 1
            slow = stack.enter_context(watching(srv.endpoint, read=False))
            for i in range(SLOW_WATCHERS):
                slow.create(prefix, end, start=start, watch_id=i + 1, prev_kv=True)
            fast = [stack.enter_context(watching(srv.endpoint)) for _ in range(FAST_STREAMS)]
            for f in fast:
                f.create(prefix, end, start=start, prev_kv=True)
            for f in fast:
                f.wait(lambda rs: any(r.created for r in rs), 20, "fast watch created")
            history: list[int] = []
            compacted = 0
            worst_lag = 0.0
            for b in range(BATCHES):
                keys = [prefix + b"%02d" % (i % 16) for i in range(BATCH_PUTS)]
                revs = [put(s, k, VALUE) for k in keys]
                history += revs
                t0 = time.monotonic()
                for f in fast:
                    f.wait_rev(revs[-1], timeout=FAST_LAG_BOUND)
                worst_lag = max(worst_lag, time.monotonic() - t0)
                if b == BATCHES // 2 - 1:
                    compacted = revs[-1]
                    compact(s, compacted)
            assert history == list(range(start, history[-1] + 1))
            for f in fast:
                assert f.revs() == history, "a fast watcher missed or repeated events"
                check_bookmarkable(f.snapshot(), "fast watcher")
            assert slow.snapshot() == [], "the slow stream was read"

            slow.start_reading()
            final = history[-1]

            def stuck(rs: list[rpc_pb2.WatchResponse]) -> dict[int, int]:
                """watch id -> last revision received, for watchers neither done nor
                canceled."""
                last = dict.fromkeys(range(1, SLOW_WATCHERS + 1), 0)
                for r in rs:
                    if r.canceled or any(ev.kv.mod_revision == final for ev in r.events):
                        last.pop(r.watch_id, None)
                    elif r.events and r.watch_id in last:
                        last[r.watch_id] = r.events[-1].kv.mod_revision
                return last

            try:
                slow.wait(lambda rs: not stuck(rs), SLOW_SETTLE,
                          "every slow watcher to finish or be canceled")
            except AssertionError:
                left = stuck(slow.snapshot())
                raise AssertionError(
                    f"{len(left)}/{SLOW_WATCHERS} slow watchers neither complete nor canceled"
                    f" {SLOW_SETTLE}s after their stream was read again (watch id: last revision)"
                    f" {dict(list(left.items())[:8])}, no cancel; compacted at {compacted},"
                    f" last revision {final}") from None
            rs = slow.snapshot()
            canceled = 0
            for wid in range(1, SLOW_WATCHERS + 1):
                mine = [r for r in rs if r.watch_id == wid]
                got = [ev.kv.mod_revision for r in mine for ev in r.events]
                assert got == history[:len(got)], f"slow watcher {wid}: gap or disorder"
                cancels = [r for r in mine if r.canceled]
                if len(got) == len(history):
                    assert not cancels
                    continue
                canceled += 1
                assert cancels, f"slow watcher {wid} starved: {len(got)} events, no cancel"
                assert cancels[0].compact_revision == compacted
                next_rev = got[-1] + 1 if got else start
                assert next_rev < compacted, f"slow watcher {wid} canceled needlessly"
                assert mine[-1] is cancels[0], f"slow watcher {wid}: events after its cancel"
            print(f"{target}: fast watchers' worst lag {worst_lag:.2f}s;"
                  f" {canceled}/{SLOW_WATCHERS} slow watchers canceled by compaction")
    finally:
        srv.close()
