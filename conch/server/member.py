"""One conch member: raft node + WAL + transport + applier, driven by one event loop.

A write travels: servicer -> `propose()` (on the loop) -> pending proposals -> the raft loop
proposes everything pending as one batch -> `Ready`: entries and hard state go to the WAL on
the disk thread (one write + one fsync for the whole Ready: group commit), then messages go to
the peers, then committed entries are applied (one LMDB transaction per batch, consistent index
in the same transaction) and the waiting futures resolve. A single member is a one-voter raft
cluster and takes the same path.

The loop never waits on a disk: WAL writes and fsyncs run on a dedicated thread, which drops
the GIL while the disk works; while it does, new proposals accumulate for the next batch.

Linearizable reads ask raft for a read index (one round for every read waiting at that moment,
etcd's batching), wait until the applied index reaches it, then read the local store.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

from conch import ETCD_COMPAT_VERSION, failpoints
from conch.backend import Backend
from conch.errors import (
    ErrLeaderChanged,
    ErrNoLeader,
    ErrNoSpace,
    ErrNotSupportedForLearner,
    ErrProposalDropped,
    ErrRequestTooLarge,
    ErrStopped,
    ErrTimeout,
    ErrTimeoutDueToLeaderFail,
    ErrTimeoutLeaderTransfer,
    ErrTimeoutWaitAppliedIndex,
    EtcdError,
    err,
)
from conch.lease import Lessor
from conch.mvcc import KVStore
from conch.mvcc.watch import WatchHub
from conch.proto.etcdserverpb import etcdserver_pb2, raft_internal_pb2, rpc_pb2
from conch.proto.membershippb import membership_pb2
from conch.proto.raftpb import raft_pb2
from conch.raft import Config as RaftConfig
from conch.raft import MemoryStorage, ProposalDropped, RawNode, Ready
from conch.raft.codec import (
    conf_state_to_pb,
    entry_from_pb,
    entry_to_pb,
    hard_state_from_pb,
    hard_state_to_pb,
)
from conch.raft.types import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    StateType,
    conf_change_from_entry,
)
from conch.server import snap as snapfile
from conch.server.apply import Applied, Applier
from conch.server.compactor import Compactor
from conch.server.config import Config, compute_member_id
from conch.server.idgen import IdGenerator
from conch.server.membership import MemberInfo, Membership
from conch.wal import (
    WAL,
    CorruptWALError,
    UnexpectedEOFError,
    WalSnapshot,
    repair,
    valid_snapshot_entries,
)
from conch.wal import exists as wal_exists
from conch.wal import purge as purge_wal

log = logging.getLogger("conch.member")

InternalRaftRequest = raft_internal_pb2.InternalRaftRequest

# Lease expiry is checked this often; etcd's lessor checks every 500ms.
_LEASE_CHECK_INTERVAL_S = 0.5
# At most this many lease revocations are proposed per second (etcd: 1000/s).
_LEASE_REVOKE_RATE = 1000
# An unanswered read index request is sent again after this long (etcd: 500ms).
_READ_INDEX_RETRY_S = 0.5
_CTX = struct.Struct(">Q")


class StartupError(Exception):
    """The member refuses to start; the message says why."""


@dataclass
class JoinInfo:
    """What an existing cluster told a member joining it (--initial-cluster-state existing)."""

    cluster_id: int
    member_id: int
    members: list[MemberInfo]


class Member:
    def __init__(self, cfg: Config, join: JoinInfo | None = None) -> None:
        self.cfg = cfg
        self._join = join
        self.member_id = join.member_id if join else cfg.member_id()
        self.cluster_id = join.cluster_id if join else cfg.cluster_id()
        self.ids = IdGenerator(self.member_id, int(time.time() * 1000))
        self.backend: Backend
        self.store: KVStore
        self.lessor: Lessor
        self.applier: Applier
        self.membership: Membership
        self.hub: WatchHub
        self.node: RawNode
        self.transport: Any = None
        self._storage: MemoryStorage
        self._wal: WAL
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wal")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._proposals: list[tuple[int, bytes]] = []
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        # (deadline, request id, leader changes seen when it was proposed)
        self._deadlines: collections.deque[tuple[float, int, int]] = collections.deque()
        self._req_timeout = 5.0 + 2 * cfg.election_timeout_ms / 1000.0
        # Linearizable reads: waiting for a read index round, in flight, waiting to apply.
        self._reads_pending: list[asyncio.Future[None]] = []
        self._read_ctx = 0
        self._read_inflight: tuple[bytes, float, list[asyncio.Future[None]]] | None = None
        self._read_apply_waiters: list[tuple[int, list[asyncio.Future[None]]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._cc_waiters: dict[int, asyncio.Future[None]] = {}
        # Set when this member applied its own removal: the process should exit.
        self.removed = asyncio.Event()
        self.is_learner = False
        self._lone_voter = False  # the only voter: linearizable reads need no raft round
        self._stopping = False
        self.applied_index = 0
        self._snap_index = 0  # index of the newest raft snapshot (log compacted up to here)
        # The last log index raft handed us to apply. The backend's consistent index can be
        # ahead of it right after a snapshot install (the leader's copy was newer).
        self._raft_applied = 0
        self._incoming_snapshots: dict[int, str] = {}
        self._snapshot_task: asyncio.Task[None] | None = None
        self._apply_gate = asyncio.Lock()
        self.revision = 0
        self._size_in_use = 0
        self.lead = 0
        self.raft_state = StateType.Follower
        self.leader_changes = 0
        # Held by maintenance work that reads the backend off the loop (hash, snapshot) and
        # by defragment, which closes and reopens the environment.
        self.maintenance_lock = asyncio.Lock()
        self.metrics = _Counters()
        self.start_time = time.time()

    # --- start-up --------------------------------------------------------------------
    def open(self) -> None:
        """Open storage: backend, WAL (created with the bootstrap membership if new), raft."""
        os.makedirs(self.cfg.member_dir, exist_ok=True)
        wal_dir = self.cfg.wal_path
        snap = None
        if wal_exists(wal_dir):
            try:
                valid = [(w.index, w.term) for w in valid_snapshot_entries(wal_dir)]
            except CorruptWALError as exc:
                raise StartupError(
                    f"WAL in {wal_dir} is corrupt before its tail, refusing to start: {exc}"
                ) from exc
            snap = snapfile.load_newest(self._snap_dir, valid)
        self._recover_backend_from_snapshot(snap)
        self._remove_stale_snapshot_dbs()
        self.backend = Backend(self.cfg.backend_path)
        self.store = KVStore(self.backend)
        self.lessor = Lessor(self.backend, self.store, min_ttl=self.cfg.min_lease_ttl)
        self.membership = Membership(self.backend)
        self.applier = Applier(self.backend, self.store, self.lessor, self.membership)
        self._storage = MemoryStorage()
        if not wal_exists(wal_dir):
            if self._join is not None:
                # Joining: an empty log; the leader sends everything (entries or a snapshot).
                meta = etcdserver_pb2.Metadata(NodeID=self.member_id, ClusterID=self.cluster_id)
                self._wal = WAL.create(wal_dir, meta.SerializeToString())
            elif self.cfg.initial_cluster_state != "new":
                raise StartupError("--initial-cluster-state existing needs the cluster to join")
            else:
                self._wal = self._bootstrap(wal_dir)
        else:
            walsnap = WalSnapshot()
            if snap is not None:
                walsnap = WalSnapshot(snap.metadata.index, snap.metadata.term)
            self._wal, raw_meta, hard_pb, entries_pb = self._open_wal(wal_dir, walsnap)
            got = etcdserver_pb2.Metadata.FromString(raw_meta)
            # As in etcd, after the first start the data dir says who this member is; the
            # --initial-cluster* flags no longer matter (peers refuse a wrong cluster ID).
            if got.ClusterID != self.cluster_id or got.NodeID != self.member_id:
                log.info(
                    "data dir %s belongs to member %x of cluster %x (the --initial-cluster "
                    "flags would give %x of %x); using the data dir's",
                    self.cfg.data_dir, got.NodeID, got.ClusterID, self.member_id,
                    self.cluster_id,
                )
                self.member_id, self.cluster_id = got.NodeID, got.ClusterID
                self.ids = IdGenerator(self.member_id, int(time.time() * 1000))
            if snap is not None:
                self._storage.apply_snapshot(snap)
                self._snap_index = self._raft_applied = snap.metadata.index
            entries = [entry_from_pb(e) for e in entries_pb]
            self._storage.append(entries)
            self._storage.set_hard_state(hard_state_from_pb(hard_pb))
        ci = self.backend.consistent_index()
        if snap is not None and ci < snap.metadata.index:
            raise StartupError(
                f"backend consistent index {ci} is behind the newest snapshot "
                f"{snap.metadata.index} and the snapshot's database is missing; refusing to start"
            )
        last = self._storage.last_index()
        if ci > last:
            raise StartupError(
                f"backend consistent index {ci} is ahead of the WAL's last index {last}: "
                "the WAL lost entries the store had applied; refusing to start"
            )
        # Raft re-emits every committed entry after the last snapshot: the applier skips
        # store changes at or below the consistent index, while membership changes are
        # applied to raft again, which is how it learns the configuration back on top of the
        # snapshot's (etcd does the same).
        election_ticks = self.cfg.election_timeout_ms // self.cfg.heartbeat_interval_ms
        self.node = RawNode(
            RaftConfig(
                id=self.member_id,
                storage=self._storage,
                election_tick=max(2, election_ticks),
                heartbeat_tick=1,
                pre_vote=True,
                check_quorum=True,
                max_size_per_msg=1 << 20,
                max_inflight_msgs=512,
                applied=self._snap_index,
            )
        )
        self.applied_index = ci
        self.revision = self.store.current_revision()
        self._size_in_use = self.backend.size_in_use()
        self.hub = WatchHub(
            self.store,
            max_request_bytes=self.cfg.max_request_bytes,
            progress_interval=self.cfg.watch_progress_notify_interval_s,
        )

    def _bootstrap(self, wal_dir: str) -> WAL:
        """A new cluster: the WAL starts with one ConfChangeAddNode per initial member at
        term 1, committed, as etcd's raft bootstrap does; every member writes the same."""
        meta = etcdserver_pb2.Metadata(NodeID=self.member_id, ClusterID=self.cluster_id)
        wal = WAL.create(wal_dir, meta.SerializeToString())
        members = sorted(
            (compute_member_id(urls, self.cfg.initial_cluster_token), urls)
            for urls in self.cfg.initial_cluster_map().values()
        )
        entries = []
        for i, (mid, urls) in enumerate(members, start=1):
            cc = ConfChange(
                ConfChangeType.ConfChangeAddNode,
                mid,
                MemberInfo(mid, list(urls)).to_json(),
                id=0,
            )
            entries.append(Entry(1, i, EntryType.EntryConfChange, cc.marshal()))
        hard = raft_pb2.HardState(term=1, vote=0, commit=len(entries))
        wal.save(hard, [entry_to_pb(e) for e in entries], True)
        self._storage.append(entries)
        self._storage.set_hard_state(hard_state_from_pb(hard))
        return wal

    @property
    def _snap_dir(self) -> str:
        return os.path.join(self.cfg.member_dir, "snap")

    def _remove_stale_snapshot_dbs(self) -> None:
        """Databases received for snapshots that were never installed only take space."""
        try:
            names = os.listdir(self._snap_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(".snap.db") or (name.startswith("send-") and name.endswith(".db")):
                os.unlink(os.path.join(self._snap_dir, name))

    def _recover_backend_from_snapshot(self, snap: Snapshot | None) -> None:
        """A crash while installing a snapshot from the leader leaves the received database
        beside an older backend: install it now (etcd's RecoverSnapshotBackend)."""
        if snap is None:
            return
        received = os.path.join(self._snap_dir, f"{snap.metadata.index:016x}.snap.db")
        if not os.path.exists(received):
            return
        if os.path.exists(self.cfg.backend_path):
            b = Backend(self.cfg.backend_path)
            ci = b.consistent_index()
            b.close()
            if ci >= snap.metadata.index:
                os.unlink(received)
                return
        log.warning("installing the snapshot database %s left by an interrupted install",
                    received)
        os.replace(received, self.cfg.backend_path)
        lock = self.cfg.backend_path + "-lock"
        if os.path.exists(lock):
            os.unlink(lock)

    def _open_wal(
        self, wal_dir: str, snap: WalSnapshot
    ) -> tuple[WAL, bytes, raft_pb2.HardState, list[raft_pb2.Entry]]:
        for attempt in (1, 2):
            w = WAL.open(wal_dir, snap)
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

    async def start(self, transport: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport = transport
        self.hub.start()
        # Apply what is committed in the WAL before serving, so reads see it at once.
        self._drain_ready()
        voters = self.membership.voters()
        self._lone_voter = voters == [self.member_id]
        if voters == [self.member_id]:
            self.node.campaign()  # a lone voter need not wait an election timeout
        else:
            # etcd's initial election tick advance: fewer ticks until the first election.
            for _ in range(max(0, self.node.raft.election_timeout - 2)):
                self.node.tick()
        if transport is not None:
            known = self.membership.sorted()
            if not known and self._join is not None:
                known = self._join.members
            for m in known:
                if m.id != self.member_id:
                    transport.add_peer(m.id, m.peer_urls)
        self._tasks = [
            asyncio.create_task(self._raft_loop(), name="raft"),
            asyncio.create_task(self._ticker(), name="ticker"),
            asyncio.create_task(self._lease_expiry_loop(), name="lease-expiry"),
            asyncio.create_task(self._publish_attributes(), name="publish"),
        ]
        compactor = Compactor(
            self.cfg.auto_compaction_mode,
            self.cfg.auto_compaction_retention,
            is_leader=lambda: self.is_leader,
            revisions=lambda: (self.revision, self.store.compact_revision()),
            compact=self._auto_compact,
        )
        if compactor.enabled:
            self._tasks.append(asyncio.create_task(compactor.run(), name="compactor"))
        for task in self._tasks:
            task.add_done_callback(_fatal_if_failed)

    async def hand_over_leadership(self) -> None:
        """Before a graceful stop, a leader with started peers moves leadership to the most
        caught-up voter (etcd's TransferLeadership on Stop), so clients see no election gap."""
        if not self.is_leader or self.removed.is_set():
            return
        started = self.started_voters() - {self.member_id}
        if not started:
            return
        progress = self.node.status().progress
        target = max(started, key=lambda v: progress.get(v, (0,))[0])
        try:
            await asyncio.wait_for(
                self.transfer_leadership(target), 2 * self.cfg.election_timeout_ms / 1000.0
            )
            log.info("handed leadership to %x before stopping", target)
        except (EtcdError, TimeoutError) as exc:
            log.warning("could not hand leadership to %x before stopping: %s", target, exc)

    async def stop(self) -> None:
        if self._stopping:
            return
        await self.hand_over_leadership()
        self._stopping = True
        self._wake.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self.transport is not None:
            await self.transport.stop()
        self.hub.stop()
        waiting: list[asyncio.Future[Any]] = list(self._waiters.values())
        waiting += self._reads_pending + list(self._cc_waiters.values())
        if self._read_inflight is not None:
            waiting += self._read_inflight[2]
        for _, futs in self._read_apply_waiters:
            waiting += futs
        for fut in waiting:
            if not fut.done():
                fut.set_exception(err(ErrStopped))
        self._waiters.clear()
        self._disk.shutdown(wait=True)
        self._wal.close()
        self.backend.close()

    # --- raft loop ---------------------------------------------------------------------
    def step(self, m: Message) -> None:
        """A message from a peer (called by the transport on the loop)."""
        self.node.step(m)
        self._wake.set()

    def on_removed(self) -> None:
        """A peer refused us as a removed member: we may never have seen our own removal
        commit (the leader stops replicating to a removed member), so stop now."""
        if not self.removed.is_set():
            log.warning("the cluster says this member was removed; stopping")
            self.removed.set()

    def members_info(self) -> bytes:
        """The member list as etcd's JSON array, for members joining (transport query)."""
        return b"[" + b",".join(m.to_json() for m in self.membership.sorted()) + b"]"

    def report_unreachable(self, peer_id: int) -> None:
        self.node.report_unreachable(peer_id)

    async def _ticker(self) -> None:
        interval = self.cfg.heartbeat_interval_ms / 1000.0
        while not self._stopping:
            await asyncio.sleep(interval)
            self.node.tick()
            self._expire_waiters()
            self._retry_read_index()
            self._wake.set()

    async def _raft_loop(self) -> None:
        node = self.node
        while not self._stopping:
            self._submit_proposals()
            self._submit_reads()
            if not node.has_ready():
                self._wake.clear()
                await self._wake.wait()
                continue
            # The gate keeps defragment (which must see no apply between its copy and its
            # swap) and the handling of one Ready from interleaving.
            async with self._apply_gate:
                await self._handle_ready(node.ready())
                node.advance()
            if (
                self._raft_applied - self._snap_index >= self.cfg.snapshot_count
                and self._snapshot_task is None
            ):
                self._snapshot_task = asyncio.create_task(self._snapshot())
                self._snapshot_task.add_done_callback(_fatal_if_failed)

    async def _handle_ready(self, rd: Ready) -> None:
        loop = asyncio.get_running_loop()
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.lead, rd.soft_state.raft_state)
        snap = rd.snapshot if rd.snapshot is not None and not rd.snapshot.is_empty() else None
        if snap is not None:
            # A snapshot from the leader: record it durably before the entries after it.
            await failpoints.hit_async("raftBeforeSaveSnap")
            await loop.run_in_executor(self._disk, self._save_snapshot, snap)
            await failpoints.hit_async("raftAfterSaveSnap")
            self._storage.apply_snapshot(snap)
        if rd.entries or rd.hard_state is not None:
            hs = hard_state_to_pb(rd.hard_state) if rd.hard_state is not None else None
            ents = [entry_to_pb(e) for e in rd.entries]
            if rd.entries or rd.must_sync:
                t0 = time.perf_counter()
                try:
                    await loop.run_in_executor(self._disk, self._wal_save, hs, ents, rd.must_sync)
                except Exception:  # a WAL we cannot write is fatal, as in etcd
                    log.exception("WAL write failed; stopping the member")
                    os._exit(1)
                if rd.must_sync:
                    self.metrics.observe_fsync(time.perf_counter() - t0)
            else:
                # Only the commit index moved: nothing to wait for (raft recomputes commit
                # after a crash). The single disk thread keeps the writes in order.
                self._disk.submit(self._wal_save, hs, [], False).add_done_callback(
                    _fatal_if_write_failed
                )
            if rd.entries:
                self._storage.append(rd.entries)
            if rd.hard_state is not None:
                self._storage.set_hard_state(rd.hard_state)
        if rd.messages and self.transport is not None:
            if self.raft_state == StateType.Leader:
                await failpoints.hit_async("raftBeforeLeaderSend")
            else:
                await failpoints.hit_async("raftBeforeFollowerSend")
            self._send(rd.messages)
        if snap is not None:
            await self._install_snapshot(snap)
        if rd.committed_entries:
            self._apply_entries(rd.committed_entries)
        if rd.read_states:
            self._on_read_states(rd)

    def _wal_save(
        self, hs: raft_pb2.HardState | None, ents: list[raft_pb2.Entry], sync: bool
    ) -> None:
        """On the disk thread: one WAL write (and fsync) of a Ready."""
        failpoints.hit("raftBeforeSave")
        self._wal.save(hs, ents, sync)
        failpoints.hit("raftAfterSave")

    # --- snapshots -----------------------------------------------------------------------
    def _save_snapshot(self, snap: Snapshot) -> None:
        """On the disk thread: the .snap file, then the WAL's record of it (etcd's order)."""
        snapfile.save(self._snap_dir, snap)
        cs = conf_state_to_pb(snap.metadata.conf_state)
        self._wal.save_snapshot(WalSnapshot(snap.metadata.index, snap.metadata.term, cs))

    async def _snapshot(self) -> None:
        """Compact the raft log every --snapshot-count applied entries, keeping a tail of
        --experimental-snapshot-catchup-entries for followers that are a little behind.
        Runs beside the raft loop: the backend fsync must not stop heartbeats."""
        try:
            loop = asyncio.get_running_loop()
            index = self._raft_applied
            # Everything up to `index` must be durable in the backend before the WAL may
            # lose it; the lock keeps defragment from swapping the file meanwhile.
            async with self.maintenance_lock:
                await asyncio.to_thread(self.backend.sync)
            if index <= self._snap_index:  # a snapshot from the leader overtook us
                return
            cs = self.node.status().conf_state
            snap = self._storage.create_snapshot(index, cs, b"")
            await loop.run_in_executor(self._disk, self._save_snapshot, snap)
            self._snap_index = index
            compact_to = index - self.cfg.snapshot_catchup_entries
            if compact_to > self._storage.first_index():
                self._storage.compact(compact_to)
            await loop.run_in_executor(self._disk, self._purge_files, compact_to)
            log.info("raft snapshot at index %d; log compacted to %d", index, max(compact_to, 0))
        finally:
            self._snapshot_task = None

    def _purge_files(self, compacted_to: int) -> None:
        if compacted_to > 0:
            self._wal.release_lock_to(compacted_to)
            purge_wal(self.cfg.wal_path, self.cfg.max_wals)
        snapfile.purge(self._snap_dir, self.cfg.max_snapshots)
        failpoints.hit("raftAfterWALRelease")

    def _send(self, messages: list[Message]) -> None:
        """Messages to peers; a MsgSnap travels with a copy of the backend, on its own."""
        plain = [m for m in messages if m.type != MessageType.MsgSnap]
        if plain:
            self.transport.send(plain)
        for m in messages:
            if m.type == MessageType.MsgSnap:
                task = asyncio.create_task(self._send_snapshot(m))
                self._side_tasks.add(task)
                task.add_done_callback(self._side_tasks.discard)

    async def _send_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        index = m.snapshot.metadata.index
        path = os.path.join(self._snap_dir, f"send-{m.to:x}-{index:016x}.db")
        ok = False
        try:
            if os.path.exists(path):
                os.unlink(path)
            async with self.maintenance_lock:
                # A consistent copy whose applied index is at or past the snapshot's.
                await asyncio.to_thread(self.backend.env.copy, path, True)
            # The message must describe the database that travels with it (etcd's merged
            # snapshot message): the copy's applied index, its term, the configuration now.
            # Otherwise a follower that installs it and crashes before logging the entries
            # up to that index finds its backend ahead of its WAL and cannot restart.
            copied = await asyncio.to_thread(Backend.read_consistent_index, path)
            if copied < index:
                raise RuntimeError(f"database copy at {copied} is behind snapshot {index}")
            m.snapshot = Snapshot(
                b"",
                SnapshotMetadata(
                    self.node.status().conf_state, copied, self._storage.term(copied)
                ),
            )
            ok = await self.transport.send_snapshot(m.to, m, path)
        except Exception:
            log.exception("sending snapshot %d to %x failed", index, m.to)
        finally:
            if os.path.exists(path):
                os.unlink(path)
        self.node.report_snapshot(m.to, not ok)
        self._wake.set()

    async def on_snapshot(self, header: Any, path: str) -> None:
        """The transport received a database with a MsgSnap: keep the file for when raft
        hands the snapshot back in a Ready, then step the message."""
        m: Message = header.message
        assert m.snapshot is not None
        index = m.snapshot.metadata.index
        old = self._incoming_snapshots.pop(index, None)
        if old is not None and old != path and os.path.exists(old):
            os.unlink(old)
        self._incoming_snapshots[index] = path
        self.step(m)
        pending = self.node.raft.raft_log.unstable.snapshot
        if pending is None or pending.metadata.index != index:
            # Raft ignored it (stale, a retransmission, a deposed leader): no Ready will
            # install it, so do not keep a whole database copy around.
            self._incoming_snapshots.pop(index, None)
            if os.path.exists(path):
                os.unlink(path)

    async def _install_snapshot(self, snap: Snapshot) -> None:
        """Replace the backend with the database that came with the snapshot and rebuild
        everything held in memory from it."""
        index = snap.metadata.index
        path = self._incoming_snapshots.pop(index, None)
        if path is None or not os.path.exists(path):
            log.error("snapshot %d arrived without its database; cannot install it", index)
            os._exit(1)
        await failpoints.hit_async("raftBeforeApplySnap")
        async with self.maintenance_lock:
            self.backend.swap_in(path)
        await failpoints.hit_async("raftAfterApplySnap")
        self.lessor.recover(time.monotonic())
        self.membership = Membership(self.backend)
        self.applier.reload(self.membership)
        me = self.membership.members.get(self.member_id)
        self.is_learner = me is not None and me.is_learner
        self._lone_voter = self.membership.voters() == [self.member_id]
        self._snap_index = self._raft_applied = index
        self._set_applied(max(index, self.backend.consistent_index()))
        self.revision = self.store.current_revision()
        self._size_in_use = self.backend.size_in_use()
        if self.transport is not None:
            for m in self.membership.sorted():
                if m.id != self.member_id:
                    self.transport.add_peer(m.id, m.peer_urls)
        self.hub.restored()
        for stale in list(self._incoming_snapshots):
            if stale <= index:
                p = self._incoming_snapshots.pop(stale)
                if os.path.exists(p):
                    os.unlink(p)
        log.info("installed snapshot %d from the leader (applied index %d, revision %d)",
                 index, self.applied_index, self.revision)
        await failpoints.hit_async("afterSnapshotInstall")

    def _drain_ready(self) -> None:
        """Apply what the WAL already holds as committed (start-up, before any I/O)."""
        node = self.node
        while node.has_ready():
            rd = node.ready()
            if rd.hard_state is not None:
                self._storage.set_hard_state(rd.hard_state)
            if rd.committed_entries:
                self._apply_entries(rd.committed_entries)
            node.advance()
            if not rd.committed_entries:
                break

    def _on_soft_state(self, lead: int, state: StateType) -> None:
        if lead != self.lead:
            if lead:
                self.leader_changes += 1
            log.info("raft: leader is now %x (was %x), term %d", lead, self.lead, self.term)
            if self.lead:
                self._fail_reads()  # a read index round with the old leader cannot finish
        was_leader = self.raft_state == StateType.Leader
        self.lead = lead
        self.raft_state = state
        if state == StateType.Leader and not was_leader:
            # etcd promotes the lessor with an extension of one election timeout, so that
            # leases do not expire while clients find the new leader.
            self.lessor.promote(time.monotonic(), extend=self.cfg.election_timeout_ms / 1000.0)
        elif was_leader and state != StateType.Leader:
            self.lessor.demote()

    def _submit_proposals(self) -> None:
        if not self._proposals:
            return
        batch, self._proposals = self._proposals, []
        try:
            self.node.propose_batch([data for _, data in batch])
        except ProposalDropped:
            # etcd: no leader -> "etcdserver: no leader"; otherwise raft's own error
            # ("raft proposal dropped", e.g. during a leadership transfer) as Unknown.
            failure = err(ErrNoLeader) if not self.lead else err(ErrProposalDropped)
            for rid, _ in batch:
                fut = self._waiters.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(EtcdError(failure.code, failure.message))
        self.metrics.proposals_pending = len(self._waiters)

    def _apply_entries(self, entries: list[Entry]) -> None:
        self._raft_applied = entries[-1].index
        normal: list[tuple[int, bytes]] = []
        for e in entries:
            if e.type == EntryType.EntryNormal:
                normal.append((e.index, e.data))
                continue
            if normal:
                self._apply_normal(normal)
                normal = []
            cc = conf_change_from_entry(e)
            problem = None
            if isinstance(cc, ConfChange):
                problem = self.applier.apply_conf_change(e.index, cc)
                if problem is None:
                    self._on_conf_change_applied(cc)
                    self.node.apply_conf_change(cc)
                else:  # rejected at apply time: raft applies a change of nobody (etcd)
                    self.node.apply_conf_change(ConfChange(cc.type, 0))
            else:
                self.node.apply_conf_change(cc)
            self._set_applied(e.index)
            if isinstance(cc, ConfChange):
                waiter = self._cc_waiters.pop(cc.id, None)
                if waiter is not None and not waiter.done():
                    if problem is None:
                        waiter.set_result(None)
                    else:
                        waiter.set_exception(problem)
        if normal:
            self._apply_normal(normal)

    def _apply_normal(self, batch: list[tuple[int, bytes]]) -> None:
        t0 = time.perf_counter()
        try:
            applied = self.applier.apply_batch(batch)
        except Exception:  # the store can no longer follow the log: stop, as etcd panics
            log.exception("applying entries failed; stopping the member")
            os._exit(1)
        self.metrics.observe_commit(time.perf_counter() - t0)
        self._on_applied(applied, batch[-1][0])

    def _on_applied(self, applied: Applied, last_index: int) -> None:
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
        self._set_applied(last_index)

    def _set_applied(self, index: int) -> None:
        if index <= self.applied_index:
            return
        self.applied_index = index
        if self._read_apply_waiters:
            still = []
            for target, futs in self._read_apply_waiters:
                if target <= index:
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(None)
                else:
                    still.append((target, futs))
            self._read_apply_waiters = still

    def _on_conf_change_applied(self, cc: ConfChange) -> None:
        me = self.membership.members.get(self.member_id)
        self.is_learner = me is not None and me.is_learner
        self._lone_voter = self.membership.voters() == [self.member_id]
        if cc.type == ConfChangeType.ConfChangeRemoveNode and cc.node_id == self.member_id:
            log.warning("this member was removed from the cluster; stopping")
            # Like etcd's stopWithDelay: keep going a moment so the commit of the removal
            # reaches the others and the caller gets its answer.
            assert self._loop is not None
            self._loop.call_later(1.0, self.removed.set)
        t = self.transport
        if t is None or cc.node_id == self.member_id:
            return
        if cc.type in (ConfChangeType.ConfChangeAddNode, ConfChangeType.ConfChangeAddLearnerNode):
            m = self.membership.members.get(cc.node_id)
            if m is not None:
                t.add_peer(m.id, m.peer_urls)
        elif cc.type == ConfChangeType.ConfChangeRemoveNode:
            t.remove_peer(cc.node_id)
        elif cc.type == ConfChangeType.ConfChangeUpdateNode:
            m = self.membership.members.get(cc.node_id)
            if m is not None:
                t.update_peer(m.id, m.peer_urls)

    # --- proposals ---------------------------------------------------------------------
    def propose(self, req: InternalRaftRequest) -> asyncio.Future[Any]:
        """Log `req` through raft and apply it; the future resolves to its response (or to
        the EtcdError it produced)."""
        if self._stopping:
            raise err(ErrStopped)
        rid = self.ids.next()
        req.header.ID = rid
        data = req.SerializeToString()
        if len(data) > self.cfg.max_request_bytes:
            raise err(ErrRequestTooLarge)
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiters[rid] = fut
        self._deadlines.append((time.monotonic() + self._req_timeout, rid, self.leader_changes))
        self._proposals.append((rid, data))
        self._wake.set()
        return fut

    async def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a membership change and wait until this member has applied it."""
        if self._stopping:
            raise err(ErrStopped)
        cc.id = self.ids.next()
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._cc_waiters[cc.id] = fut
        try:
            self.node.propose_conf_change(cc)
        except ProposalDropped:
            self._cc_waiters.pop(cc.id, None)
            raise err(ErrNoLeader) from None
        self._wake.set()
        try:
            await asyncio.wait_for(fut, self._req_timeout)
        except TimeoutError:
            raise err(ErrTimeout) from None
        finally:
            self._cc_waiters.pop(cc.id, None)

    def started_voters(self) -> set[int]:
        """Voters this member can currently reach (itself included): etcd's "started"
        members for --strict-reconfig-check."""
        t = self.transport
        return {
            v for v in self.membership.voters()
            if v == self.member_id or (t is not None and t.active_since(v) is not None)
        }

    async def transfer_leadership(self, target: int) -> None:
        """MoveLeader: hand leadership to `target` and wait until it leads."""
        self.node.transfer_leader(target)
        self._wake.set()
        deadline = time.monotonic() + self._req_timeout
        while self.lead != target:
            if time.monotonic() > deadline:
                raise err(ErrTimeoutLeaderTransfer)
            await asyncio.sleep(self.cfg.heartbeat_interval_ms / 1000.0)

    def learner_ready(self, learner_id: int) -> bool:
        """etcd's rule: a learner may be promoted once its match index is at least 90% of
        the leader's."""
        status = self.node.status()
        pr = status.progress.get(learner_id)
        me = status.progress.get(self.member_id)
        if pr is None or me is None:
            return False
        return pr[0] >= me[0] * 0.9

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

    def _expire_waiters(self) -> None:
        now = time.monotonic()
        dq = self._deadlines
        while dq and dq[0][0] <= now:
            _, rid, changes = dq.popleft()
            fut = self._waiters.pop(rid, None)
            if fut is not None and not fut.done():
                leader_failed = self.leader_changes != changes or not self.lead
                fut.set_exception(err(ErrTimeoutDueToLeaderFail if leader_failed else ErrTimeout))

    def check_not_learner(self) -> None:
        """A learner serves only Status and serializable Range (etcd's
        isRPCSupportedForLearner)."""
        if self.is_learner:
            raise err(ErrNotSupportedForLearner)

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

    async def _publish_attributes(self) -> None:
        """Publish this member's name and client URLs through the log (etcd's publish), so
        that every member lists them; retried until it applies."""
        me = self.membership.members.get(self.member_id)
        want = (self.cfg.name, list(self.cfg.advertise_client_urls))
        while not self._stopping:
            if me is not None and (me.name, me.client_urls) == want:
                return
            req = InternalRaftRequest(
                cluster_member_attr_set=membership_pb2.ClusterMemberAttrSetRequest(
                    member_ID=self.member_id,
                    member_attributes=membership_pb2.Attributes(
                        name=want[0], client_urls=want[1]
                    ),
                )
            )
            try:
                await self.propose_wait(req)
                return
            except EtcdError:
                await asyncio.sleep(self.cfg.heartbeat_interval_ms / 1000.0)
            me = self.membership.members.get(self.member_id)

    async def _auto_compact(self, rev: int) -> None:
        await self.propose_wait(
            InternalRaftRequest(compaction=rpc_pb2.CompactionRequest(revision=rev))
        )

    # --- reads -------------------------------------------------------------------------
    async def read_barrier(self) -> None:
        """Linearizable read point: a raft read index round, then wait for it to apply.

        A leader that is the only voter needs no round: nobody else can have committed
        anything, so its commit index is the read index."""
        if self.raft_state == StateType.Leader and self._lone_voter:
            await self.wait_applied(self.committed_index)
            return
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._reads_pending.append(fut)
        self._wake.set()
        try:
            await asyncio.wait_for(fut, self._req_timeout)
        except TimeoutError:
            raise err(ErrTimeout) from None  # etcd's linearizableReadNotify

    async def wait_applied(self, index: int) -> None:
        """Wait until the applied index reaches `index` (e.g. a new leader catching up on
        what the previous one committed before it answers for leases)."""
        if self.applied_index >= index:
            return
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._read_apply_waiters.append((index, [fut]))
        try:
            await asyncio.wait_for(fut, self._req_timeout)
        except TimeoutError:
            raise err(ErrTimeoutWaitAppliedIndex) from None

    def _submit_reads(self) -> None:
        if not self._reads_pending or self._read_inflight is not None:
            return
        futs, self._reads_pending = self._reads_pending, []
        self._read_ctx += 1
        ctx = _CTX.pack(self._read_ctx)
        self._read_inflight = (ctx, time.monotonic(), futs)
        self.node.read_index(ctx)

    def _retry_read_index(self) -> None:
        inflight = self._read_inflight
        if inflight is not None and time.monotonic() - inflight[1] > _READ_INDEX_RETRY_S:
            ctx, _, futs = inflight
            futs = [f for f in futs if not f.done()]
            if not futs:
                self._read_inflight = None
                return
            self._read_inflight = (ctx, time.monotonic(), futs)
            self.node.read_index(ctx)

    def _on_read_states(self, rd: Ready) -> None:
        inflight = self._read_inflight
        for rs in rd.read_states:
            if inflight is None or rs.request_ctx != inflight[0]:
                continue
            futs = inflight[2]
            self._read_inflight = inflight = None
            if rs.index <= self.applied_index:
                for fut in futs:
                    if not fut.done():
                        fut.set_result(None)
            else:
                self._read_apply_waiters.append((rs.index, futs))
        self._wake.set()

    def _fail_reads(self) -> None:
        """The leader changed: reads waiting for a read index fail fast (etcd's
        leaderChangedNotifier) and the client retries them."""
        pending = list(self._reads_pending)
        if self._read_inflight is not None:
            pending.extend(self._read_inflight[2])
        self._reads_pending = []
        self._read_inflight = None
        for fut in pending:
            if not fut.done():
                fut.set_exception(err(ErrLeaderChanged))

    # --- leases ------------------------------------------------------------------------
    async def _lease_expiry_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(_LEASE_CHECK_INTERVAL_S)
            if self.raft_state != StateType.Leader:
                continue
            limit = int(_LEASE_REVOKE_RATE * _LEASE_CHECK_INTERVAL_S)
            for lease_id in self.lessor.expired(time.monotonic(), limit):
                try:
                    fut = self.propose(
                        InternalRaftRequest(lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=lease_id))
                    )
                except EtcdError:
                    break
                # A lost revoke is retried by the lessor later; just consume the outcome.
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    # --- state for the API -------------------------------------------------------------
    @property
    def term(self) -> int:
        return int(self.node.raft.term)

    @property
    def committed_index(self) -> int:
        return int(self.node.raft.raft_log.committed)

    @property
    def is_leader(self) -> bool:
        return self.raft_state == StateType.Leader

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
        """Rewrite the backend compacted. Like etcd, nothing is applied while it runs."""
        async with self.maintenance_lock, self._apply_gate:
            # Nothing is applied between the copy and the swap (the raft loop waits at the
            # gate), so the copy is the final state; reads go on during the copy.
            await failpoints.hit_async("defragBeforeCopy")
            tmp = await asyncio.to_thread(self.backend.copy_compacted)
            self.backend.swap_in(tmp, failpoint="defragBeforeRename")
            self._size_in_use = self.backend.size_in_use()


def _fatal_if_write_failed(fut: concurrent.futures.Future[None]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.critical("WAL write failed; stopping the member", exc_info=exc)
        os._exit(1)


def _fatal_if_failed(task: asyncio.Task[None]) -> None:
    """A member whose raft loop (or ticker) died must not keep serving as if it were fine."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.critical("task %s failed; stopping the member", task.get_name(), exc_info=exc)
        os._exit(1)


class _Counters:
    """The few numbers /metrics reports that only the member knows."""

    BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024)

    def __init__(self) -> None:
        self.proposals_applied = 0
        self.proposals_pending = 0
        self.put_total = 0
        self.range_total = 0
        self.delete_total = 0
        self.txn_total = 0
        self.fsync = [0] * (len(self.BUCKETS) + 1)
        self.fsync_sum = 0.0
        self.commit = [0] * (len(self.BUCKETS) + 1)
        self.commit_sum = 0.0

    def _observe(self, hist: list[int], value: float) -> None:
        for i, bound in enumerate(self.BUCKETS):
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
