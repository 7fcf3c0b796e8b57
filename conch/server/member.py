"""One conch member: WAL writer thread -> apply thread -> event loop.

A write travels: servicer -> `propose()` (on the loop) -> pending list -> WAL writer thread
(assigns raft indexes, one write + one fsync for everything pending: group commit) -> apply
thread (one LMDB write transaction per batch, consistent index in the same transaction) ->
`_on_applied` on the loop (resolves the waiting futures, feeds the watch hub).

The loop never waits on a disk: fsync and LMDB commits happen on the two threads, which drop
the GIL while the disk works. The single member is its own leader; the raft core plugs in
between `propose()` and the WAL writer when the cluster lands, and the apply side stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from typing import Any

from conch import ETCD_COMPAT_VERSION
from conch.backend import Backend
from conch.errors import (
    ErrNoSpace,
    ErrRequestTooLarge,
    ErrStopped,
    ErrTimeoutWaitAppliedIndex,
    EtcdError,
    err,
)
from conch.lease import Lessor
from conch.mvcc import KVStore
from conch.mvcc.watch import WatchHub
from conch.proto.etcdserverpb import etcdserver_pb2, raft_internal_pb2, rpc_pb2
from conch.proto.raftpb import raft_pb2
from conch.server.apply import Applied, Applier
from conch.server.config import Config
from conch.server.idgen import IdGenerator
from conch.wal import WAL, CorruptWALError, UnexpectedEOFError, repair
from conch.wal import exists as wal_exists

log = logging.getLogger("conch.member")

InternalRaftRequest = raft_internal_pb2.InternalRaftRequest

# How long a linearizable read may wait for the apply side before failing like etcd does.
_READ_TIMEOUT_S = 5.0
# Lease expiry is checked this often; etcd's lessor checks every 500ms.
_LEASE_CHECK_INTERVAL_S = 0.5
# At most this many lease revocations are proposed per second (etcd: 1000/s).
_LEASE_REVOKE_RATE = 1000
# Replay at start applies the WAL tail in chunks of this many entries.
_REPLAY_CHUNK = 1024


class StartupError(Exception):
    """The member refuses to start; the message says why."""


class Member:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.member_id = cfg.member_id()
        self.cluster_id = cfg.cluster_id()
        self.term = 0
        self.committed_index = 0  # written by the WAL thread, read anywhere (atomic int)
        self.applied_index = 0  # owned by the loop
        self.ids = IdGenerator(self.member_id, int(time.time() * 1000))
        self.backend: Backend
        self.store: KVStore
        self.lessor: Lessor
        self.applier: Applier
        self.hub: WatchHub
        self._wal: WAL
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[InternalRaftRequest] = []
        self._cv = threading.Condition()
        self._apply_q: queue.SimpleQueue[list[tuple[int, InternalRaftRequest]] | None] = (
            queue.SimpleQueue()
        )
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._read_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._lease_task: asyncio.Task[None] | None = None
        self._apply_lock = threading.Lock()
        # Held by maintenance work that reads the backend off the loop (hash, snapshot) and
        # by defragment, which closes and reopens the environment.
        self.maintenance_lock = asyncio.Lock()
        self.metrics = _Counters()
        self.start_time = time.time()

    # --- start-up --------------------------------------------------------------------
    def open(self) -> None:
        """Open storage and replay the WAL tail into the store (synchronous, before serving)."""
        os.makedirs(self.cfg.member_dir, exist_ok=True)
        self.backend = Backend(self.cfg.backend_path)
        self.store = KVStore(self.backend)
        self.lessor = Lessor(self.backend, self.store, min_ttl=self.cfg.min_lease_ttl)
        self.applier = Applier(self.backend, self.store, self.lessor)
        wal_dir = self.cfg.wal_path
        meta = etcdserver_pb2.Metadata(NodeID=self.member_id, ClusterID=self.cluster_id)
        if not wal_exists(wal_dir):
            self._wal = WAL.create(wal_dir, meta.SerializeToString())
            hard = raft_pb2.HardState()
            entries: list[raft_pb2.Entry] = []
        else:
            self._wal, raw_meta, hard, entries = self._open_wal(wal_dir)
            got = etcdserver_pb2.Metadata.FromString(raw_meta)
            if got.ClusterID != self.cluster_id or got.NodeID != self.member_id:
                raise StartupError(
                    f"data dir {self.cfg.data_dir} belongs to member {got.NodeID:x} of cluster "
                    f"{got.ClusterID:x}, not member {self.member_id:x} of cluster "
                    f"{self.cluster_id:x} (check --name, --initial-cluster and "
                    "--initial-cluster-token)"
                )
        ci = self.backend.consistent_index()
        last_index = entries[-1].Index if entries else hard.commit
        if ci > last_index:
            raise StartupError(
                f"backend consistent index {ci} is ahead of the WAL's last index {last_index}: "
                "the WAL lost entries the store had applied; refusing to start"
            )
        tail = [e for e in entries if e.Index > ci]
        for i in range(0, len(tail), _REPLAY_CHUNK):
            chunk = [(e.Index, e.Data) for e in tail[i : i + _REPLAY_CHUNK]]
            self.applier.apply_batch(chunk)
        if tail:
            log.info("replayed %d WAL entries (%d..%d)", len(tail), tail[0].Index, last_index)
        # A restart is a new election for the single member: the term never goes backwards.
        self.term = max(hard.term, 1) + 1
        self.committed_index = last_index
        self.applied_index = last_index
        self._last_index = last_index
        self._wal.save(
            raft_pb2.HardState(term=self.term, vote=self.member_id, commit=last_index), [], True
        )
        # The store's revision as of the last applied batch, kept on the loop for headers.
        self.revision = self.store.current_revision()
        self._size_in_use = self.backend.size_in_use()
        self.hub = WatchHub(
            self.store,
            max_request_bytes=self.cfg.max_request_bytes,
            progress_interval=self.cfg.watch_progress_notify_interval_s,
        )

    def _open_wal(
        self, wal_dir: str
    ) -> tuple[WAL, bytes, raft_pb2.HardState, list[raft_pb2.Entry]]:
        for attempt in (1, 2):
            w = WAL.open(wal_dir)
            try:
                meta, hard, entries = w.read_all()
                return w, meta, hard, entries
            except UnexpectedEOFError as exc:
                w.close()
                if attempt == 2 or not repair(wal_dir):
                    raise StartupError(f"cannot repair WAL in {wal_dir}: {exc}") from exc
                log.warning("repaired torn WAL tail in %s: %s", wal_dir, exc)
            except CorruptWALError as exc:
                w.close()
                raise StartupError(
                    f"WAL in {wal_dir} is corrupt before its tail, refusing to start: {exc}"
                ) from exc
        raise AssertionError("unreachable")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.hub.start()
        for target, name in ((self._wal_loop, "wal-writer"), (self._apply_loop, "applier")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.lessor.promote(time.monotonic())
        self._lease_task = asyncio.create_task(self._lease_expiry_loop())

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._lease_task:
            self._lease_task.cancel()
        with self._cv:
            self._cv.notify_all()
        for t in self._threads:
            await asyncio.to_thread(t.join, 10)
        self.hub.stop()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(err(ErrStopped))
        self._waiters.clear()
        self._wal.close()
        self.backend.close()

    # --- proposals ---------------------------------------------------------------------
    def propose(self, req: InternalRaftRequest) -> asyncio.Future[Any]:
        """Log `req` and apply it; the future resolves to its response (or EtcdError)."""
        if self._stopping:
            raise err(ErrStopped)
        if req.ByteSize() > self.cfg.max_request_bytes:
            raise err(ErrRequestTooLarge)
        rid = self.ids.next()
        req.header.ID = rid
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiters[rid] = fut
        with self._cv:
            self._pending.append(req)
            if len(self._pending) == 1:
                self._cv.notify()
        return fut

    async def propose_wait(self, req: InternalRaftRequest) -> Any:
        res = await self.propose(req)
        if isinstance(res, EtcdError):
            raise res
        return res

    async def propose_request(self, field: str, request: Any) -> Any:
        """Propose a client request as `InternalRaftRequest.<field>`; its response with the
        header filled in (or the EtcdError it produced, raised)."""
        irr = InternalRaftRequest()
        getattr(irr, field).CopyFrom(request)
        resp = await self.propose_wait(irr)
        self.fill_header(resp.header)
        return resp

    async def check_space(self) -> None:
        """Writes fail with NOSPACE while the alarm is active (etcd's quota check). Crossing
        the quota raises the alarm first and waits for it to apply, as etcd does."""
        if any(alarm == rpc_pb2.NOSPACE for _, alarm in self.applier.alarms):
            raise err(ErrNoSpace)
        if self._size_in_use > self.cfg.quota_bytes:
            await self.propose(
                InternalRaftRequest(
                    alarm=rpc_pb2.AlarmRequest(
                        action=rpc_pb2.AlarmRequest.ACTIVATE,
                        memberID=self.member_id,
                        alarm=rpc_pb2.NOSPACE,
                    )
                )
            )
            raise err(ErrNoSpace)

    def _wal_loop(self) -> None:
        sync = not self.cfg.unsafe_no_fsync
        Entry = raft_pb2.Entry
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                batch, self._pending = self._pending, []
            if not batch:
                break
            index = self._last_index
            term = self.term
            entries = []
            for req in batch:
                index += 1
                entries.append(Entry(Term=term, Index=index, Data=req.SerializeToString()))
            t0 = time.perf_counter()
            try:
                self._wal.save(
                    raft_pb2.HardState(term=term, vote=self.member_id, commit=index), entries, sync
                )
            except Exception:  # a WAL we cannot write is fatal, as in etcd
                log.exception("WAL write failed; stopping the member")
                os._exit(1)
            self.metrics.observe_fsync(time.perf_counter() - t0)
            self._last_index = index
            self.committed_index = index
            self._apply_q.put([(e.Index, r) for e, r in zip(entries, batch, strict=True)])
        self._apply_q.put(None)

    def _apply_loop(self) -> None:
        q = self._apply_q
        while True:
            item = q.get()
            if item is None:
                return
            batch = item
            done = False
            while True:  # merge whatever queued up meanwhile into one LMDB transaction
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                batch.extend(more)
            t0 = time.perf_counter()
            try:
                with self._apply_lock:
                    applied = self.applier.apply_batch(batch)
            except Exception:  # the store can no longer follow the log: stop, as etcd panics
                log.exception("applying entries failed; stopping the member")
                os._exit(1)
            self.metrics.observe_commit(time.perf_counter() - t0)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._on_applied, applied)
            if done:
                return

    def _on_applied(self, applied: Applied) -> None:
        waiters = self._waiters
        for rid, res in applied.results:
            fut = waiters.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(res)
        self.metrics.proposals_applied += len(applied.results)
        for rev, events in applied.events:
            self.hub.notify(rev, events)
        if applied.events:
            self.revision = applied.events[-1][0]
        self._size_in_use = applied.size_in_use
        if applied.last_index > self.applied_index:
            self.applied_index = applied.last_index
        if self._read_waiters:
            ready = [w for w in self._read_waiters if w[0] <= self.applied_index]
            if ready:
                self._read_waiters = [w for w in self._read_waiters if w[0] > self.applied_index]
                for _, fut in ready:
                    if not fut.done():
                        fut.set_result(None)

    # --- reads -------------------------------------------------------------------------
    async def read_barrier(self) -> None:
        """Linearizable read point: wait until everything committed so far is applied."""
        target = self.committed_index
        if self.applied_index >= target:
            return
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._read_waiters.append((target, fut))
        try:
            await asyncio.wait_for(fut, _READ_TIMEOUT_S)
        except TimeoutError:
            raise err(ErrTimeoutWaitAppliedIndex) from None

    # --- leases ------------------------------------------------------------------------
    async def _lease_expiry_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(_LEASE_CHECK_INTERVAL_S)
            limit = int(_LEASE_REVOKE_RATE * _LEASE_CHECK_INTERVAL_S)
            for lease_id in self.lessor.expired(time.monotonic(), limit):
                try:
                    self.propose(
                        InternalRaftRequest(lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=lease_id))
                    )
                except EtcdError:
                    return

    # --- headers and status ------------------------------------------------------------
    def header(self, revision: int = 0) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=revision or self.revision,
            raft_term=self.term,
        )

    def fill_header(self, h: rpc_pb2.ResponseHeader) -> None:
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = self.term
        if not h.revision:
            h.revision = self.revision

    def version(self) -> str:
        return ETCD_COMPAT_VERSION

    async def defragment(self) -> None:
        """Rewrite the backend compacted. Like etcd, writes wait while it runs."""
        async with self.maintenance_lock:
            await asyncio.to_thread(self._apply_lock.acquire)
            try:
                tmp = await asyncio.to_thread(self.backend.copy_compacted)
                # On the loop: no read transaction can be open while the file is swapped.
                self.backend.swap_in(tmp)
                self._size_in_use = self.backend.size_in_use()
            finally:
                self._apply_lock.release()


class _Counters:
    """The few numbers /metrics reports that only the member knows."""

    _BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024)

    def __init__(self) -> None:
        self.proposals_applied = 0
        self.put_total = 0
        self.range_total = 0
        self.delete_total = 0
        self.txn_total = 0
        self.fsync = [0] * (len(self._BUCKETS) + 1)
        self.fsync_sum = 0.0
        self.commit = [0] * (len(self._BUCKETS) + 1)
        self.commit_sum = 0.0

    def _observe(self, hist: list[int], value: float) -> None:
        for i, bound in enumerate(self._BUCKETS):
            if value <= bound:
                hist[i] += 1
                return
        hist[-1] += 1

    def observe_fsync(self, seconds: float) -> None:
        self._observe(self.fsync, seconds)
        self.fsync_sum += seconds

    def observe_commit(self, seconds: float) -> None:
        self._observe(self.commit, seconds)
        self.commit_sum += seconds
