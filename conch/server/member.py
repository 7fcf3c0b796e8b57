"""One conch member's lifecycle: build the rooms from recovered state, start their tasks,
stop them in order. Nothing here serves a request: that is the façade's (`EtcdServer`).

A write travels: API -> `EtcdServer.propose` -> `RaftNode` (batched into one proposal per
loop turn) -> `Ready`: the leader sends the entries to its peers while its `LogStore` writes
and fsyncs them -> once a quorum holds them durably they commit -> `ApplyStage` applies them
(one LMDB transaction per run) and resolves the proposers' futures from the `WaitRegistry`.
A single member is a one-voter raft cluster and takes the same path.

The member talks to the world only through its `Ports` (clock, blocking work, backend, WAL
store, fatal stop) and a `PeerTransport`, so the simulator in `devkit/sim` can run several
members in one process under a seed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from conch.errors import ErrStopped, EtcdError, err
from conch.lease import Lessor
from conch.mvcc import KVStore
from conch.mvcc.watch import WatchHub
from conch.proto.etcdserverpb import raft_internal_pb2, rpc_pb2
from conch.proto.membershippb import membership_pb2
from conch.raft.types import Message
from conch.server.applier import Applier
from conch.server.applying import ApplyStage
from conch.server.bootstrap import JoinInfo, StartupError, recover, snap_dir
from conch.server.cluster_ops import ClusterOps
from conch.server.compactor import Compactor
from conch.server.config import Config
from conch.server.idgen import IdGenerator
from conch.server.lease_expiry import LeaseExpiry
from conch.server.maintenance import Maintenance
from conch.server.membership import Membership
from conch.server.metrics import Metrics
from conch.server.ports import PeerTransport, Ports, system_ports
from conch.server.raftnode import RaftNode
from conch.server.read_index import LinearizableReads
from conch.server.server import EtcdServer
from conch.server.snapshotter import Snapshotter
from conch.server.wait import WaitRegistry

__all__ = ["JoinInfo", "Member", "StartupError"]

log = logging.getLogger("conch.member")

InternalRaftRequest = raft_internal_pb2.InternalRaftRequest


class Member:
    def __init__(self, cfg: Config, join: JoinInfo | None = None, ports: Ports | None = None):
        self.cfg = cfg
        self._join = join
        self.ports = ports or system_ports()
        self.member_id = join.member_id if join else cfg.member_id()
        self.cluster_id = join.cluster_id if join else cfg.cluster_id()
        self.server: EtcdServer
        self.transport: PeerTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._opened = False

    # --- building --------------------------------------------------------------------------
    def open(self) -> None:
        """Recover storage and build every room (no I/O beyond the data dir, no tasks)."""
        cfg, ports = self.cfg, self.ports
        clock = ports.clock
        rec = recover(cfg, self._join, open_backend=ports.open_backend)
        self.member_id, self.cluster_id = rec.member_id, rec.cluster_id
        backend = rec.backend
        timeout_s = 5.0 + 2 * cfg.election_timeout_ms / 1000.0
        metrics = Metrics()
        store = KVStore(backend)
        lessor = Lessor(backend, store, min_ttl=cfg.min_lease_ttl)
        applier = Applier(backend, store, lessor, Membership(backend), now=clock.monotonic)
        hub = WatchHub(
            store,
            max_request_bytes=cfg.max_request_bytes,
            progress_interval=cfg.watch_progress_notify_interval_s,
        )
        waits = WaitRegistry(timeout_s)
        cc_waits = WaitRegistry(timeout_s)
        self._log_store = ports.log_store(
            rec.wal, cfg.wal_path, snap_dir(cfg), metrics.observe_fsync, ports.fatal
        )
        raft = RaftNode(
            member_id=self.member_id,
            storage=rec.raft_storage,
            log_store=self._log_store,
            clock=clock,
            waits=waits,
            election_ticks=cfg.election_timeout_ms // cfg.heartbeat_interval_ms,
            heartbeat_s=cfg.heartbeat_interval_ms / 1000.0,
            applied=rec.snap_index,
            rng_seed=ports.raft_seed,
            fatal=ports.fatal,
        )
        apply_stage = ApplyStage(
            member_id=self.member_id,
            applier=applier,
            store=store,
            lessor=lessor,
            hub=hub,
            waits=waits,
            cc_waits=cc_waits,
            metrics=metrics,
            applied_index=rec.consistent_index,
            raft_applied=rec.snap_index,
            fatal=ports.fatal,
        )
        reads = LinearizableReads(raft, timeout_s)
        maintenance_lock = asyncio.Lock()
        snapshotter = Snapshotter(
            cfg=cfg,
            snap_dir=snap_dir(cfg),
            raft=raft,
            apply_stage=apply_stage,
            backend=backend,
            blocking=ports.blocking,
            maintenance_lock=maintenance_lock,
            snap_index=rec.snap_index,
            fatal=ports.fatal,
        )
        # Raft re-emits every committed entry after the last snapshot: the applier skips
        # store changes at or below the consistent index, while membership changes are
        # applied to raft again, which is how it learns the configuration back on top of the
        # snapshot's (etcd does the same).
        raft.apply_stage, raft.snapshotter, raft.reads = apply_stage, snapshotter, reads
        apply_stage.node, apply_stage.reads = raft.node, reads
        reads.apply_stage = apply_stage
        raft.on_leader_change.append(reads.on_leader_change)
        raft.on_role_change.append(self._on_role_change)
        server = EtcdServer(
            cfg=cfg,
            member_id=self.member_id,
            cluster_id=self.cluster_id,
            ids=IdGenerator(self.member_id, clock.wall_ms()),
            clock=clock,
            raft=raft,
            apply_stage=apply_stage,
            reads=reads,
            waits=waits,
            cc_waits=cc_waits,
            store=store,
            lessor=lessor,
            hub=hub,
            metrics=metrics,
        )
        server.cluster = ClusterOps(server)
        server.maintenance = Maintenance(server, backend, ports.blocking, maintenance_lock)
        self.server = server
        self.raft = raft
        self.apply_stage = apply_stage
        self.snapshotter = snapshotter
        self.reads = reads
        self._backend = backend
        self.removed = apply_stage.removed
        self._opened = True

    def _on_role_change(self, leader: bool) -> None:
        lessor = self.server.lessor
        if leader:
            # etcd promotes the lessor with an extension of one election timeout, so that
            # leases do not expire while clients find the new leader.
            lessor.promote(
                self.ports.clock.monotonic(), extend=self.cfg.election_timeout_ms / 1000.0
            )
        else:
            lessor.demote()

    @property
    def membership(self) -> Membership:
        return self.apply_stage.membership

    # --- running ---------------------------------------------------------------------------
    async def start(self, transport: PeerTransport | None = None) -> None:
        raft, server = self.raft, self.server
        self.transport = transport
        raft.transport = self.apply_stage.transport = server.cluster.transport = transport
        server.hub.start()
        # Apply what is committed in the WAL before serving, so reads see it at once.
        raft.drain_committed()
        if self.membership.voters() == [self.member_id]:
            raft.campaign()  # a lone voter need not wait an election timeout
        else:
            # etcd's initial election tick advance: fewer ticks until the first election.
            raft.advance_ticks(max(0, raft.node.election_tick - 2))
        if transport is not None:
            known = self.membership.sorted()
            if not known and self._join is not None:
                known = self._join.members
            for m in known:
                if m.id != self.member_id:
                    transport.add_peer(m.id, m.peer_urls)
        self._lease_expiry = LeaseExpiry(
            server.lessor, self.ports.clock, lambda: raft.is_leader, self._propose_revoke
        )
        self._tasks = [
            asyncio.create_task(raft.run(), name="raft"),
            asyncio.create_task(raft.run_ticker(), name="ticker"),
            asyncio.create_task(self._lease_expiry.run(), name="lease-expiry"),
            asyncio.create_task(self._publish_attributes(), name="publish"),
        ]
        compactor = Compactor(
            self.cfg.auto_compaction_mode,
            self.cfg.auto_compaction_retention,
            is_leader=lambda: raft.is_leader,
            revisions=lambda: (server.revision, server.store.compact_revision()),
            compact=self._auto_compact,
            clock=self.ports.clock,
        )
        if compactor.enabled:
            self._tasks.append(asyncio.create_task(compactor.run(), name="compactor"))
        for task in self._tasks:
            task.add_done_callback(self._fatal_if_failed)

    def _fatal_if_failed(self, task: asyncio.Task[None]) -> None:
        """A member whose raft loop (or ticker) died must not keep serving as if it were
        fine."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.ports.fatal(f"task {task.get_name()} failed", exc)

    def _propose_revoke(self, lease_id: int) -> asyncio.Future[Any]:
        return self.server.propose(
            InternalRaftRequest(lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=lease_id))
        )

    async def _auto_compact(self, rev: int) -> None:
        await self.server.propose(
            InternalRaftRequest(compaction=rpc_pb2.CompactionRequest(revision=rev))
        )

    async def _publish_attributes(self) -> None:
        """Publish this member's name and client URLs through the log (etcd's publish), so
        that every member lists them; retried until it applies."""
        want = (self.cfg.name, list(self.cfg.advertise_client_urls))
        while not self._stopping:
            me = self.membership.members.get(self.member_id)
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
                await self.server.propose(req)
                return
            except EtcdError:
                await self.ports.clock.sleep(self.cfg.heartbeat_interval_ms / 1000.0)

    async def hand_over_leadership(self) -> None:
        """Before a graceful stop, a leader with started peers moves leadership to the most
        caught-up voter (etcd's TransferLeadership on Stop), so clients see no election gap."""
        raft = self.raft
        if not raft.is_leader or self.removed.is_set():
            return
        started = self.server.cluster.started_voters() - {self.member_id}
        if not started:
            return
        progress = raft.node.status().progress
        target = max(started, key=lambda v: progress.get(v, (0,))[0])
        try:
            await raft.transfer_leadership(target, 2 * self.cfg.election_timeout_ms / 1000.0)
            log.info("handed leadership to %x before stopping", target)
        except EtcdError as exc:
            log.warning("could not hand leadership to %x before stopping: %s", target, exc)

    async def stop(self) -> None:
        if self._stopping or not self._opened:
            return
        await self.hand_over_leadership()
        self._stopping = True
        self.server.stopping = True
        self._lease_expiry.stopping = True
        self.raft.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        await self.snapshotter.stop()
        if self.transport is not None:
            await self.transport.stop()
        self.server.hub.stop()
        stopped = err(ErrStopped)
        self.server.waits.fail_all(stopped)
        self.server.cc_waits.fail_all(stopped)
        self.reads.stop()
        self._log_store.close()
        self._backend.close()

    # --- the transport's callbacks -----------------------------------------------------------
    def step(self, m: Message) -> None:
        """A message from a peer (called by the transport on the loop)."""
        self.raft.step(m)

    async def on_snapshot(self, header: Any, path: str) -> None:
        await self.snapshotter.received(header, path)

    def report_unreachable(self, peer_id: int) -> None:
        self.raft.report_unreachable(peer_id)

    def on_removed(self) -> None:
        """A peer refused us as a removed member: we may never have seen our own removal
        commit (the leader stops replicating to a removed member), so stop now."""
        if not self.removed.is_set():
            log.warning("the cluster says this member was removed; stopping")
            self.removed.set()

    def members_info(self) -> bytes:
        """The member list as etcd's JSON array, for members joining (transport query)."""
        return b"[" + b",".join(m.to_json() for m in self.membership.sorted()) + b"]"
