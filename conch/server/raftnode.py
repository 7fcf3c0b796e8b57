"""The raft node driver: the Ready loop between `conch.raft` and the member's ports.

One task runs the loop. Each turn it proposes everything queued since the last turn as one
batch (group commit), then handles one Ready in the order the raft contract sets:

1. a snapshot from the leader is recorded (.snap file and WAL record) before anything after it;
2. a **leader sends its messages first**, so followers write new entries while it writes its
   own copy (raft thesis §10.2.1) and learn a new commit index before the leader spends time
   applying; raft counts the leader's copy toward a commit only after `advance()`, once the
   write below is durable;
3. entries and hard state go to the `LogStore` (one write and, when raft asks, one fsync for
   the whole Ready); a commit-index-only change is recorded lazily;
4. a follower sends only now: its acknowledgements promise durable state;
5. a received snapshot is installed, committed entries are applied (then the loop yields
   once, so the proposers the apply released answer at once), read states answered;
6. `advance()`.

The loop owns nothing it does not drive: applying is the `ApplyStage`'s, snapshots are the
`Snapshotter`'s, linearizable reads the `LinearizableReads`'. Time comes from the `Clock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from conch import failpoints
from conch.errors import ErrNoLeader, ErrProposalDropped, ErrStopped, ErrTimeoutLeaderTransfer, err
from conch.raft import Config as RaftConfig
from conch.raft import MemoryStorage, ProposalDropped, RawNode, Ready
from conch.raft.codec import entry_to_pb, hard_state_to_pb
from conch.raft.types import AnyConfChange, Message, MessageType, StateType
from conch.server.ports import Clock, LogStore, PeerTransport
from conch.server.wait import WaitRegistry

if TYPE_CHECKING:
    from conch.server.applying import ApplyStage
    from conch.server.read_index import LinearizableReads
    from conch.server.snapshotter import Snapshotter

log = logging.getLogger("conch.member")


class RaftNode:
    def __init__(
        self,
        *,
        member_id: int,
        storage: MemoryStorage,
        log_store: LogStore,
        clock: Clock,
        waits: WaitRegistry,
        election_ticks: int,
        heartbeat_s: float,
        applied: int,
        rng_seed: int | None = None,
        fatal: Callable[[str, BaseException | None], None],
    ) -> None:
        import random

        self.member_id = member_id
        self.storage = storage
        self.log_store = log_store
        self.clock = clock
        self.waits = waits
        self.heartbeat_s = heartbeat_s
        self._fatal = fatal
        self.node = RawNode(
            RaftConfig(
                id=member_id,
                storage=storage,
                election_tick=max(2, election_ticks),
                heartbeat_tick=1,
                pre_vote=True,
                check_quorum=True,
                max_size_per_msg=1 << 20,
                max_inflight_msgs=512,
                applied=applied,
                rng=random.Random(rng_seed) if rng_seed is not None else None,
            )
        )
        self.transport: PeerTransport | None = None
        # set by the member once every room exists
        self.apply_stage: ApplyStage
        self.snapshotter: Snapshotter
        self.reads: LinearizableReads
        self.on_leader_change: list[Callable[[int, int], None]] = []  # (old, new lead)
        self.on_role_change: list[Callable[[bool], None]] = []  # became leader / stopped leading
        self.lead = 0
        self.raft_state = StateType.Follower
        self.leader_changes = 0
        self._wake = asyncio.Event()
        self._proposals: list[tuple[int, bytes]] = []
        self.stopping = False
        # Held by the loop while it handles a Ready; defragment holds it across its copy and
        # swap so that nothing is applied in between.
        self.apply_gate = asyncio.Lock()

    # --- views -----------------------------------------------------------------------------
    @property
    def term(self) -> int:
        return self.node.term

    @property
    def committed_index(self) -> int:
        return self.node.committed

    @property
    def is_leader(self) -> bool:
        return self.raft_state == StateType.Leader

    def wake(self) -> None:
        self._wake.set()

    # --- inputs ----------------------------------------------------------------------------
    def propose(self, rid: int, data: bytes) -> None:
        """Queue an entry; it enters raft with everything else queued this turn."""
        self._proposals.append((rid, data))
        self._wake.set()

    def propose_conf_change(self, cc: AnyConfChange) -> None:
        try:
            self.node.propose_conf_change(cc)
        except ProposalDropped:
            raise err(ErrNoLeader) from None
        self._wake.set()

    def step(self, m: Message) -> None:
        """A message from a peer (the transport calls this on the loop)."""
        self.node.step(m)
        self._wake.set()

    def report_unreachable(self, peer_id: int) -> None:
        self.node.report_unreachable(peer_id)

    def report_snapshot(self, peer_id: int, failed: bool) -> None:
        self.node.report_snapshot(peer_id, failed)
        self._wake.set()

    def campaign(self) -> None:
        self.node.campaign()
        self._wake.set()

    def advance_ticks(self, n: int) -> None:
        for _ in range(n):
            self.node.tick()

    async def transfer_leadership(self, target: int, timeout_s: float) -> None:
        """MoveLeader: hand leadership to `target` and wait until it leads."""
        self.node.transfer_leader(target)
        self._wake.set()
        deadline = self.clock.monotonic() + timeout_s
        while self.lead != target:
            if self.clock.monotonic() > deadline:
                raise err(ErrTimeoutLeaderTransfer)
            await self.clock.sleep(self.heartbeat_s)

    # --- loops -----------------------------------------------------------------------------
    async def run_ticker(self) -> None:
        while not self.stopping:
            await self.clock.sleep(self.heartbeat_s)
            self.node.tick()
            self.waits.expire(self.clock.monotonic(), self.leader_changes, bool(self.lead))
            self.reads.retry()
            self._wake.set()

    async def run(self) -> None:
        node = self.node
        while not self.stopping:
            self._submit_proposals()
            self.reads.pump()
            if not node.has_ready():
                self._wake.clear()
                await self._wake.wait()
                continue
            async with self.apply_gate:
                await self._handle_ready(node.ready())
                node.advance()
            self.snapshotter.maybe_start()

    def drain_committed(self) -> None:
        """Apply what the WAL already holds as committed (start-up, before any I/O)."""
        node = self.node
        while node.has_ready():
            rd = node.ready()
            if rd.hard_state is not None:
                self.storage.set_hard_state(rd.hard_state)
            if rd.committed_entries:
                self.apply_stage.apply(rd.committed_entries)
            node.advance()
            if not rd.committed_entries:
                break

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()
        failed = err(ErrStopped)
        for rid, _ in self._proposals:
            self.waits.fail(rid, failed)
        self._proposals = []

    # --- one Ready -------------------------------------------------------------------------
    def _submit_proposals(self) -> None:
        if not self._proposals:
            return
        batch, self._proposals = self._proposals, []
        try:
            self.node.propose_batch([data for _, data in batch])
        except ProposalDropped:
            # etcd: no leader -> "etcdserver: no leader"; otherwise raft's own error
            # ("raft proposal dropped", e.g. during a leadership transfer).
            proto = ErrNoLeader if not self.lead else ErrProposalDropped
            for rid, _ in batch:
                self.waits.fail(rid, err(proto))

    async def _handle_ready(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.lead, rd.soft_state.raft_state)
        snap = rd.snapshot if rd.snapshot is not None and not rd.snapshot.is_empty() else None
        if snap is not None:
            await failpoints.hit_async("raftBeforeSaveSnap")
            await self._persist(self.log_store.save_snapshot(snap))
            await failpoints.hit_async("raftAfterSaveSnap")
            self.storage.apply_snapshot(snap)
        leader = self.raft_state == StateType.Leader
        unsent = rd.messages
        if unsent and leader and snap is None:
            await failpoints.hit_async("raftBeforeLeaderSend")
            self._send(unsent)
            unsent = []
        if rd.entries or rd.hard_state is not None:
            hs = hard_state_to_pb(rd.hard_state) if rd.hard_state is not None else None
            if rd.entries or rd.must_sync:
                await self._persist(
                    self.log_store.save(hs, [entry_to_pb(e) for e in rd.entries], rd.must_sync)
                )
            elif hs is not None:
                self.log_store.save_commit(hs)
            if rd.entries:
                self.storage.append(rd.entries)
            if rd.hard_state is not None:
                self.storage.set_hard_state(rd.hard_state)
        if unsent and not leader:
            await failpoints.hit_async("raftBeforeFollowerSend")
            self._send(unsent)
            unsent = []
        if snap is not None:
            await self.snapshotter.install(snap)
        if rd.committed_entries:
            self.apply_stage.apply(rd.committed_entries)
            # Let the proposers the apply released answer their clients now, before this
            # loop sends, advances and handles the next Ready (measured: their wake-up
            # waited ~0.2 ms for that on the leader).
            await asyncio.sleep(0)
        if rd.read_states:
            self.reads.on_read_states(rd.read_states)
        if unsent:
            await failpoints.hit_async("raftBeforeLeaderSend")
            self._send(unsent)

    async def _persist(self, write: Awaitable[None]) -> None:
        try:
            await write
        except Exception as exc:  # a WAL we cannot write is fatal, as in etcd
            self._fatal("WAL write failed", exc)
            raise

    def _send(self, messages: list[Message]) -> None:
        """Messages to peers; a MsgSnap travels with a copy of the backend, on its own."""
        t = self.transport
        if t is None:
            return
        plain = [m for m in messages if m.type != MessageType.MsgSnap]
        if plain:
            t.send(plain)
        for m in messages:
            if m.type == MessageType.MsgSnap:
                self.snapshotter.send(m)

    def _on_soft_state(self, lead: int, state: StateType) -> None:
        old = self.lead
        if lead != old:
            if lead:
                self.leader_changes += 1
            log.info("raft: leader is now %x (was %x), term %d", lead, old, self.term)
        was_leader = self.raft_state == StateType.Leader
        self.lead = lead
        self.raft_state = state
        if lead != old:
            for fn in self.on_leader_change:
                fn(old, lead)
        now_leader = state == StateType.Leader
        if now_leader != was_leader:
            for cb in self.on_role_change:
                cb(now_leader)
