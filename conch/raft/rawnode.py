"""RawNode: the synchronous API around ``Raft`` and the Ready/advance handshake.

See the package docstring (``conch.raft``) for the contract the application must follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from conch.raft.errors import ProposalDropped
from conch.raft.raft import Config, Raft
from conch.raft.tracker import ProgressState
from conch.raft.types import (
    LOCAL_MESSAGES,
    RESPONSE_MESSAGES,
    AnyConfChange,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SoftState,
    StateType,
    payload_size,
)


@dataclass(slots=True)
class Ready:
    """Everything the application must do, in order: persist, send, apply, then ``advance``.

    - ``soft_state``: new leader / role, or None if unchanged. Informational only.
    - ``hard_state``: new term/vote/commit to persist as ONE record, or None if unchanged.
    - ``snapshot``: a snapshot received from the leader, to persist (before ``entries``) and to
      load into the state machine (before ``committed_entries``); None if there is none.
    - ``entries``: to append to stable storage; an entry at index i replaces stored entries >= i.
    - ``messages``: to send, only once snapshot, entries and hard state above are durable.
    - ``committed_entries``: to apply, in order, after persisting.
    - ``read_states``: answers to ``read_index``; serve each once applied index >= its index.
    - ``must_sync``: whether the writes must be fsynced before sending (term, vote or entries
      changed); a commit-index-only change may be written lazily.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    must_sync: bool = False


@dataclass(slots=True)
class Status:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    lead: int
    raft_state: StateType
    lead_transferee: int
    progress: dict[int, tuple[int, int, ProgressState, bool]]
    conf_state: ConfState


class RawNode:
    """A raft node without I/O. Not thread-safe: drive it from one thread or task."""

    def __init__(self, config: Config) -> None:
        self.raft = Raft(config)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()
        # Bookkeeping of the Ready handed out and not yet advanced.
        self._pending: tuple[int, int, int, int, int] | None = None

    # --- inputs ---

    def tick(self) -> None:
        """Advance the logical clock by one tick (heartbeat and election timers)."""
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (with a pre-vote round if PreVote is enabled)."""
        self.raft.step(Message(MessageType.MsgHup, frm=self.raft.id))

    def propose(self, data: bytes) -> None:
        """Propose one entry. Raises ProposalDropped if it cannot be accepted right now; an
        accepted proposal may still be lost (leader change) and must be retried by the caller
        when it is not seen committed within its deadline."""
        self._propose(Message(MessageType.MsgProp, frm=self.raft.id,
                              entries=[Entry(data=data)]))

    def propose_batch(self, datas: Sequence[bytes]) -> None:
        """Propose several entries in one message (one append, one broadcast)."""
        if not datas:
            return
        ents = [Entry(0, 0, 0, d) for d in datas]
        self._propose(Message(MessageType.MsgProp, frm=self.raft.id, entries=ents))

    def _propose(self, m: Message) -> None:
        r = self.raft
        r.fresh_proposal = m
        try:
            r.step(m)
        finally:
            r.fresh_proposal = None

    def propose_conf_change(self, cc: AnyConfChange) -> None:
        """Propose a membership change. It takes effect only when the application applies the
        committed entry and calls ``apply_conf_change``. A leader with an unapplied change
        replaces a second one by an empty entry (which then commits as a no-op)."""
        etype = (EntryType.EntryConfChange if isinstance(cc, ConfChange)
                 else EntryType.EntryConfChangeV2)
        self._propose(Message(MessageType.MsgProp, frm=self.raft.id,
                              entries=[Entry(type=etype, data=cc.marshal())]))

    def apply_conf_change(self, cc: AnyConfChange) -> ConfState:
        """Make a committed conf change take effect; call it when applying its entry."""
        return self.raft.apply_conf_change(cc)

    def step(self, m: Message) -> None:
        """Deliver a message from a peer. Local-only message types and responses from unknown
        peers are ignored; a forwarded proposal the leader cannot take is dropped silently."""
        if m.type in LOCAL_MESSAGES:
            return
        if m.type in RESPONSE_MESSAGES and m.frm not in self.raft.trk.progress:
            return
        try:
            self.raft.step(m)
        except ProposalDropped:
            pass  # a forwarded proposal has no one to report to; its proposer retries

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; the answer is a ReadState carrying ``ctx`` in a
        later Ready. Dropped silently when there is no leader: retry after a timeout."""
        self.raft.step(Message(MessageType.MsgReadIndex, entries=[Entry(data=ctx)]))

    def transfer_leader(self, transferee: int) -> None:
        """Ask the leader to hand leadership to ``transferee`` (aborted after an election
        timeout if it does not complete)."""
        self.raft.step(Message(MessageType.MsgTransferLeader, frm=transferee))

    def forget_leader(self) -> None:
        self.raft.step(Message(MessageType.MsgForgetLeader))

    def report_unreachable(self, node: int) -> None:
        """The transport failed to send to ``node``: stop pipelining to it and probe instead."""
        self.raft.step(Message(MessageType.MsgUnreachable, frm=node))

    def report_snapshot(self, node: int, failed: bool) -> None:
        """The snapshot sent to ``node`` was delivered (or failed); resume probing it."""
        self.raft.step(Message(MessageType.MsgSnapStatus, frm=node, reject=failed))

    # --- outputs ---

    def has_ready(self) -> bool:
        r = self.raft
        log = r.raft_log
        if r.msgs or log.unstable.entries or log.unstable.snapshot is not None:
            return True
        if log.has_next_committed_ents() or r.read_states:
            return True
        if r.state == StateType.Leader and r.read_only.has_unsent():
            return True
        if r.lead != self._prev_soft.lead or r.state != self._prev_soft.raft_state:
            return True
        hs = self._prev_hard
        return r.term != hs.term or r.vote != hs.vote or log.committed != hs.commit

    def ready(self) -> Ready:
        """Collect the work to do. Must be followed by ``advance()`` before the next call."""
        assert self._pending is None, "ready() called again before advance()"
        r = self.raft
        r.flush_read_index()
        log = r.raft_log
        rd = Ready()
        rd.entries = list(log.unstable.entries)
        rd.snapshot = log.unstable.snapshot
        rd.committed_entries = log.next_committed_ents()
        rd.messages = r.msgs
        r.msgs = []
        rd.read_states = r.read_states
        r.read_states = []
        ss = r.soft_state()
        if ss != self._prev_soft:
            rd.soft_state = ss
            self._prev_soft = ss
        hs = r.hard_state()
        prev = self._prev_hard
        if hs != prev:
            rd.hard_state = hs
            self._prev_hard = hs
        rd.must_sync = bool(rd.entries) or rd.snapshot is not None or (
            hs.term != prev.term or hs.vote != prev.vote
        )
        last_index = last_term = 0
        if rd.entries:
            last_index, last_term = rd.entries[-1].index, rd.entries[-1].term
        snap_index = rd.snapshot.metadata.index if rd.snapshot is not None else 0
        applied = size = 0
        if rd.committed_entries:
            applied = rd.committed_entries[-1].index
            size = payload_size(rd.committed_entries)
            log.accept_applying(applied)
        self._pending = (last_index, last_term, snap_index, applied, size)
        return rd

    def advance(self) -> None:
        """The last Ready was persisted, sent and applied."""
        assert self._pending is not None, "advance() without ready()"
        last_index, last_term, snap_index, applied, size = self._pending
        self._pending = None
        r = self.raft
        if snap_index:
            r.raft_log.stable_snap_to(snap_index)
            r.raft_log.applied_to(max(snap_index, r.raft_log.applied))
        if last_index:
            r.raft_log.stable_to(last_index, last_term)
            r.leader_persisted(last_index, last_term)
        if applied:
            r.applied_to(applied, size)

    # --- cheap views (no Status copy) ---

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def committed(self) -> int:
        return self.raft.raft_log.committed

    @property
    def election_tick(self) -> int:
        return self.raft.election_timeout

    def pending_snapshot_index(self) -> int:
        """Index of a snapshot raft accepted but the application has not persisted yet
        (0 if none): tells whether a stepped MsgSnap was taken or ignored."""
        snap = self.raft.raft_log.unstable.snapshot
        return 0 if snap is None else snap.metadata.index

    def status(self) -> Status:
        r = self.raft
        prs = {}
        if r.state == StateType.Leader:
            prs = {i: (p.match, p.next, p.state, p.is_learner) for i, p in r.trk.progress.items()}
        return Status(r.id, r.term, r.vote, r.raft_log.committed, r.raft_log.applied, r.lead,
                      r.state, r.lead_transferee, prs, r.trk.conf_state())
