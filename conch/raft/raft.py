"""The raft protocol state machine: roles, elections, replication, reads, transfers, membership.

Everything here is driven by ``step(message)`` and ``tick()``; outputs accumulate in ``msgs``,
``read_states`` and the log, and ``RawNode`` packages them into Readys. There is no I/O and no
clock; the only randomness is the election timeout, drawn from the injected ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from conch.raft import confchange
from conch.raft.errors import (
    Compacted,
    ConfChangeError,
    ProposalDropped,
    SnapshotTemporarilyUnavailable,
    Unavailable,
)
from conch.raft.log import NO_LIMIT, RaftLog
from conch.raft.read_only import ReadOnly, ReadOnlyOption
from conch.raft.storage import Storage
from conch.raft.tracker import PROBE, REPLICATE, SNAPSHOT, ProgressTracker, VoteResult
from conch.raft.types import (
    NONE,
    AnyConfChange,
    ConfChangeV2,
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
    conf_change_from_entry,
    payload_size,
)

M = MessageType
HUP, BEAT, PROP, APP, APP_RESP = M.MsgHup, M.MsgBeat, M.MsgProp, M.MsgApp, M.MsgAppResp
VOTE, VOTE_RESP, SNAP, HB, HB_RESP = (
    M.MsgVote, M.MsgVoteResp, M.MsgSnap, M.MsgHeartbeat, M.MsgHeartbeatResp
)
PRE_VOTE, PRE_VOTE_RESP = M.MsgPreVote, M.MsgPreVoteResp
ENTRY_NORMAL = EntryType.EntryNormal
ENTRY_CC = EntryType.EntryConfChange
ENTRY_CC2 = EntryType.EntryConfChangeV2

FOLLOWER, CANDIDATE, LEADER, PRE_CANDIDATE = (
    StateType.Follower, StateType.Candidate, StateType.Leader, StateType.PreCandidate
)

CAMPAIGN_PRE_ELECTION = b"CampaignPreElection"
CAMPAIGN_ELECTION = b"CampaignElection"
CAMPAIGN_TRANSFER = b"CampaignTransfer"


@dataclass(slots=True)
class Config:
    """Knobs, with etcd's names. Ticks are abstract: the application decides their length."""

    id: int
    storage: Storage
    election_tick: int = 10
    heartbeat_tick: int = 1
    applied: int = 0
    max_size_per_msg: int = 1 << 20
    max_committed_size_per_ready: int = NO_LIMIT
    max_uncommitted_entries_size: int = NO_LIMIT
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0
    check_quorum: bool = True
    pre_vote: bool = True
    read_only_option: ReadOnlyOption = ReadOnlyOption.Safe
    disable_proposal_forwarding: bool = False
    # A leader that applies its own removal or demotion hands leadership to the most
    # caught-up voter (transfer, retried each election timeout) and proposals are refused
    # meanwhile. False keeps etcd's default: it keeps leading until the application acts.
    step_down_on_removal: bool = True
    rng: random.Random | None = None
    # Deliberately broken behaviours for proving that the simulator's checker has teeth:
    # "votes_across_terms" (votes of an earlier round, including pre-votes, still count),
    # "commit_prev_term" (commit any entry replicated on a quorum, ignoring §5.4.2),
    # "stale_read" (answer ReadIndex without confirming leadership). Never set outside tests.
    unsafe_bug: str = ""

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("cannot use none as id")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election tick must be greater than heartbeat tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max inflight messages must be greater than 0")
        if self.read_only_option == ReadOnlyOption.LeaseBased and not self.check_quorum:
            raise ValueError("CheckQuorum must be enabled when ReadOnlyOption is LeaseBased")
        if self.unsafe_bug not in ("", "votes_across_terms", "commit_prev_term", "stale_read"):
            raise ValueError(f"unknown unsafe_bug {self.unsafe_bug!r}")


class Raft:
    def __init__(self, c: Config) -> None:
        c.validate()
        self.id = c.id
        self.rng = c.rng if c.rng is not None else random.Random(c.id)
        self.raft_log = RaftLog(c.storage, c.max_committed_size_per_ready)
        self.max_msg_size = c.max_size_per_msg
        self.max_uncommitted_size = c.max_uncommitted_entries_size
        self.trk = ProgressTracker(c.max_inflight_msgs, c.max_inflight_bytes)
        self.election_timeout = c.election_tick
        self.heartbeat_timeout = c.heartbeat_tick
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote
        self.read_only = ReadOnly(c.read_only_option)
        self.disable_proposal_forwarding = c.disable_proposal_forwarding
        self.step_down_on_removal = c.step_down_on_removal
        self.unsafe_bug = c.unsafe_bug

        self.term = 0
        self.vote = NONE
        self.state = FOLLOWER
        self.lead = NONE
        self.lead_transferee = NONE
        # Index of the latest conf-change entry proposed (or possibly proposed) by this leader;
        # a new one is refused until it is applied.
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.pending_read_index_messages: list[Message] = []
        # The MsgProp built by RawNode.propose* for this very call: its entries are not shared
        # with anything else, so the leader may stamp them in place instead of copying.
        self.fresh_proposal: Message | None = None
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election

        hs, cs = c.storage.initial_state()
        confchange.restore(self.trk, cs, self.raft_log.last_index())
        if not hs.is_empty():
            self._load_state(hs)
        if c.applied > 0:
            self.raft_log.applied_to(min(c.applied, self.raft_log.committed))
        self.become_follower(self.term, NONE)

    # --- helpers ---

    def _load_state(self, hs: HardState) -> None:
        if hs.commit < self.raft_log.committed or hs.commit > self.raft_log.last_index():
            raise AssertionError(
                f"commit {hs.commit} out of range [{self.raft_log.committed}, "
                f"{self.raft_log.last_index()}]"
            )
        self.raft_log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.state)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.raft_log.committed)

    def promotable(self) -> bool:
        """Only a voter that knows its log state (no pending snapshot) may campaign."""
        pr = self.trk.progress.get(self.id)
        return pr is not None and not pr.is_learner and not self.raft_log.has_pending_snapshot()

    def send(self, m: Message) -> None:
        if m.frm == NONE:
            m.frm = self.id
        t = m.type
        if t in (VOTE, VOTE_RESP, PRE_VOTE, PRE_VOTE_RESP):
            assert m.term != 0, f"term should be set when sending {t!r}"
        elif t == PROP or t == M.MsgReadIndex:
            # Forwarded proposals and reads carry no term: they are valid in any term.
            m.term = 0
        else:
            m.term = self.term
        self.msgs.append(m)

    # --- replication (leader) ---

    def send_append(self, to: int) -> None:
        self.maybe_send_append(to, True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send the next MsgApp to ``to`` if flow control allows; falls back to a snapshot
        when the entries it needs are compacted. Returns whether something was sent."""
        pr = self.trk.progress[to]
        if pr.is_paused():
            return False
        log = self.raft_log
        prev_index = pr.next - 1
        try:
            prev_term = log.term(prev_index)
            ents = log.entries(pr.next, self.max_msg_size)
        except Compacted:
            return self._maybe_send_snapshot(to)
        except Unavailable:
            # next is past our last index (stale progress after a truncation): probe again.
            pr.become_probe()
            pr.next = log.last_index() + 1
            return False
        if not ents and not send_if_empty:
            return False
        size = payload_size(ents)
        self.send(Message(APP, to=to, index=prev_index, log_term=prev_term, entries=ents,
                          commit=log.committed))
        pr.sent_entries(len(ents), size)
        return True

    def _maybe_send_snapshot(self, to: int) -> bool:
        pr = self.trk.progress[to]
        if not pr.recent_active:
            return False  # do not ship a snapshot to a node that does not answer
        try:
            snap = self.raft_log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        assert not snap.is_empty(), "need non-empty snapshot"
        pr.become_snapshot(snap.metadata.index)
        self.send(Message(M.MsgSnap, to=to, snapshot=snap))
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        # Never tell a follower to commit past what it is known to hold.
        commit = min(self.trk.progress[to].match, self.raft_log.committed)
        self.send(Message(HB, to=to, commit=commit, context=ctx))

    def bcast_append(self) -> None:
        for node in self.trk.progress:
            if node != self.id:
                self.maybe_send_append(node, True)

    def bcast_heartbeat(self) -> None:
        ctx = b""
        if self.read_only.has_unsent():
            ctx = self._start_read_round()
        else:
            ctx = self.read_only.last_pending_request_ctx()
        self._bcast_heartbeat_with_ctx(ctx)

    def _bcast_heartbeat_with_ctx(self, ctx: bytes) -> None:
        for node in self.trk.progress:
            if node != self.id:
                self.send_heartbeat(node, ctx)

    def _start_read_round(self) -> bytes:
        ctx = self.read_only.mark_sent()
        self.read_only.recv_ack(self.id, ctx)
        return ctx

    def flush_read_index(self) -> None:
        """Send one heartbeat round for every read request received since the last round."""
        if self.state == LEADER and self.read_only.has_unsent():
            ctx = self._start_read_round()
            self._bcast_heartbeat_with_ctx(ctx)
            self._maybe_release_reads(ctx)

    def maybe_commit(self) -> bool:
        mci = self.trk.committed()
        if self.unsafe_bug == "commit_prev_term":
            # BROKEN on purpose: commits an entry of an earlier term by counting replicas.
            log = self.raft_log
            if log.committed < mci <= log.last_index():
                log.commit_to(mci)
                return True
            return False
        return self.raft_log.maybe_commit(mci, self.term)

    def _on_commit(self) -> None:
        self._release_pending_read_index_messages()
        self.bcast_append()

    def applied_to(self, index: int, size: int) -> None:
        """The application applied entries up to ``index`` (``size`` payload bytes)."""
        old = self.raft_log.applied
        self.raft_log.applied_to(max(index, old))
        self.reduce_uncommitted_size(size)
        if (self.trk.auto_leave and index >= self.pending_conf_index
                and self.state == LEADER):
            # Leave the joint configuration on our own once it is in effect.
            ent = Entry(type=ENTRY_CC2, data=ConfChangeV2().marshal())
            if not self.append_entries([ent], fresh=True):
                raise AssertionError("refused to append the leave-joint entry")
            self.pending_conf_index = self.raft_log.last_index()
            self.bcast_append()

    def append_entries(self, es: list[Entry], fresh: bool = False) -> bool:
        """Leader: stamp entries with our term and the next indices, append, self-acknowledge.
        ``fresh`` entries were created for this call and are stamped in place; others may be
        shared with a (duplicated) message and are copied. Returns False if the
        uncommitted-size limit refuses them."""
        log = self.raft_log
        li = log.last_index()
        size = payload_size(es)
        if not self.increase_uncommitted_size(size):
            return False
        term = self.term
        if fresh:
            for k, e in enumerate(es, 1):
                e.term = term
                e.index = li + k
        else:
            es = [Entry(term, li + k, e.type, e.data) for k, e in enumerate(es, 1)]
        log.append(es)
        # Our own acknowledgement counts only once these entries are durable: RawNode.advance
        # (after the application persisted the Ready that carried them) calls
        # leader_persisted. So the leader may send them to followers before or while it writes
        # them, and a commit always means "durable on a quorum", the leader counted or not.
        return True

    def leader_persisted(self, index: int, term: int) -> None:
        """Entries up to ``index`` (of ``term``) are durable here: the leader's own
        acknowledgement (etcd-io/raft's self-addressed MsgAppResp on advance)."""
        if self.state != StateType.Leader or term != self.term:
            return
        pr = self.trk.progress.get(self.id)
        if pr is None or not pr.maybe_update(index):
            return
        if self.maybe_commit():
            self._on_commit()

    def increase_uncommitted_size(self, size: int) -> bool:
        if (self.uncommitted_size > 0 and size > 0
                and self.uncommitted_size + size > self.max_uncommitted_size):
            return False
        self.uncommitted_size += size
        return True

    def reduce_uncommitted_size(self, size: int) -> None:
        self.uncommitted_size = max(0, self.uncommitted_size - size)

    # --- ticking ---

    def tick(self) -> None:
        self._tick_role()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(M.MsgCheckQuorum, frm=self.id))
            # A transfer that did not finish within an election timeout is abandoned.
            if self.state == LEADER and self.lead_transferee != NONE:
                self.abort_leader_transfer()
            if (self.state == LEADER and self.step_down_on_removal
                    and self._removed_or_demoted()):
                self._hand_off_leadership()
        if self.state != LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(BEAT, frm=self.id))

    # --- role changes ---

    def reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.abort_leader_transfer()
        self.trk.reset_votes()
        last = self.raft_log.last_index()
        for node, pr in self.trk.progress.items():
            pr.match = last if node == self.id else 0
            pr.next = last + 1
            pr.state = PROBE
            pr.pending_snapshot = 0
            pr.msg_app_flow_paused = False
            pr.inflights.reset()
            pr.recent_active = node == self.id or pr.recent_active
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        # Reads waiting on a former role are dropped; their callers time out and retry.
        self.read_only.reset()
        self.pending_read_index_messages = []

    def reset_randomized_election_timeout(self) -> None:
        # Uniform in [election_timeout, 2 * election_timeout): split votes become unlikely.
        self.randomized_election_timeout = self.election_timeout + self.rng.randrange(
            self.election_timeout
        )

    def become_follower(self, term: int, lead: int) -> None:
        self._step_role = self._step_follower
        self.reset(term)
        self._tick_role = self._tick_election
        self.lead = lead
        self.state = FOLLOWER

    def become_candidate(self) -> None:
        assert self.state != LEADER, "invalid transition [leader -> candidate]"
        self._step_role = self._step_candidate
        kept_votes = dict(self.trk.votes)
        self.reset(self.term + 1)
        if self.unsafe_bug == "votes_across_terms":
            # BROKEN on purpose: votes (and granted pre-votes) of an earlier round still count.
            self.trk.votes = kept_votes
        self._tick_role = self._tick_election
        self.vote = self.id
        self.state = CANDIDATE

    def become_pre_candidate(self) -> None:
        assert self.state != LEADER, "invalid transition [leader -> pre-candidate]"
        # A pre-candidate changes neither its term nor its vote.
        self._step_role = self._step_candidate
        if self.unsafe_bug != "votes_across_terms":
            self.trk.reset_votes()
        self._tick_role = self._tick_election
        self.lead = NONE
        self.state = PRE_CANDIDATE

    def become_leader(self) -> None:
        assert self.state != FOLLOWER, "invalid transition [follower -> leader]"
        self._step_role = self._step_leader
        self.reset(self.term)
        self._tick_role = self._tick_heartbeat
        self.lead = self.id
        self.state = LEADER
        pr = self.trk.progress[self.id]
        pr.become_replicate()
        pr.recent_active = True
        # Conservatively assume the tail may hold an unapplied conf change.
        self.pending_conf_index = self.raft_log.last_index()
        # An empty entry of our term: committing it commits everything before it (§5.4.2) and
        # tells us our commit index is current, which reads need.
        if not self.append_entries([Entry()], fresh=True):
            raise AssertionError("empty entry was dropped")
        # The empty entry does not count toward the uncommitted size limit.
        self.uncommitted_size = 0

    # --- elections ---

    def hup(self, campaign_type: bytes) -> None:
        if self.state == LEADER:
            return
        if not self.promotable():
            return
        if self._has_unapplied_conf_changes():
            # The configuration we would campaign in may be about to change.
            return
        self.campaign(campaign_type)

    def _has_unapplied_conf_changes(self) -> bool:
        log = self.raft_log
        if log.applied >= log.committed:
            return False
        lo = log.applied + 1
        hi = log.committed + 1
        for _ in range(hi - lo + 1):
            if lo >= hi:
                return False
            try:
                ents = log.slice(lo, hi, 1 << 20)
            except Compacted:
                return False
            if not ents:
                return False
            for e in ents:
                if e.type != ENTRY_NORMAL:
                    return True
            lo = ents[-1].index + 1
        return False

    def campaign(self, campaign_type: bytes) -> None:
        if campaign_type == CAMPAIGN_PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = PRE_VOTE
            # Pre-votes ask about the term we would move to, without moving there.
            term = self.term + 1
        else:
            self.become_candidate()
            vote_msg = VOTE
            term = self.term
        ids = self.trk.voter_ids()
        resp_type = PRE_VOTE_RESP if vote_msg == PRE_VOTE else VOTE_RESP
        if self.id in ids:
            _, _, res = self.poll(self.id, resp_type, True)
            if res == VoteResult.VoteWon:
                # Single voter: we won outright.
                if campaign_type == CAMPAIGN_PRE_ELECTION:
                    self.campaign(CAMPAIGN_ELECTION)
                else:
                    self.become_leader()
                return
        last = self.raft_log.last_index()
        last_term = self.raft_log.last_term()
        ctx = CAMPAIGN_TRANSFER if campaign_type == CAMPAIGN_TRANSFER else b""
        for node in ids:
            if node == self.id:
                continue
            self.send(Message(vote_msg, to=node, term=term, index=last, log_term=last_term,
                              context=ctx))

    def poll(self, node: int, t: int, granted: bool) -> tuple[int, int, VoteResult]:
        self.trk.record_vote(node, granted)
        return self.trk.tally_votes()

    # --- the step function ---

    def step(self, m: Message) -> None:
        """Process one message. Raises ProposalDropped for refused local proposals."""
        if m.term == 0:
            pass  # local message, or a forwarded proposal/read
        elif m.term > self.term:
            if m.type == VOTE or m.type == PRE_VOTE:
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (self.check_quorum and self.lead != NONE
                            and self.election_elapsed < self.election_timeout)
                if not force and in_lease:
                    # We heard from a leader within the minimum election timeout: this
                    # candidate is probably partitioned or disruptive; ignore it (§6 of the
                    # thesis, "disruptive servers").
                    return
            if m.type == PRE_VOTE:
                pass  # never change term on a pre-vote request
            elif m.type == PRE_VOTE_RESP and not m.reject:
                pass  # a granted pre-vote carries the term we have not moved to yet
            elif m.type in (APP, HB, SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (HB, APP):
                # A stale leader (e.g. healed from a partition) would never learn the new term
                # if we silently dropped it, and with CheckQuorum/PreVote nobody else would
                # tell it. Answer so it steps down.
                self.send(Message(APP_RESP, to=m.frm))
            elif m.type == PRE_VOTE:
                # Reject so a pre-candidate with a stale term learns about ours.
                self.send(Message(PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        t = m.type
        if t == HUP:
            self.hup(CAMPAIGN_PRE_ELECTION if self.pre_vote else CAMPAIGN_ELECTION)
        elif t == VOTE or t == PRE_VOTE:
            self._handle_vote_request(m)
        else:
            self._step_role(m)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == PRE_VOTE and m.term > self.term)
        )
        resp = VOTE_RESP if m.type == VOTE else PRE_VOTE_RESP
        if can_vote and self.raft_log.is_up_to_date(m.index, m.log_term):
            # The granted response carries the candidate's term (for pre-votes, a future one).
            self.send(Message(resp, to=m.frm, term=m.term))
            if m.type == VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self.send(Message(resp, to=m.frm, term=self.term, reject=True))

    # --- leader ---

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == BEAT:
            self.bcast_heartbeat()
            return
        if t == M.MsgCheckQuorum:
            if not self.trk.quorum_active():
                self.become_follower(self.term, NONE)
            for node, other in self.trk.progress.items():
                if node != self.id:
                    other.recent_active = False
            return
        if t == PROP:
            self._leader_propose(m)
            return
        if t == M.MsgReadIndex:
            if not self._committed_entry_in_current_term():
                # Our commit index may be stale until our first entry commits (§6.4).
                self.pending_read_index_messages.append(m)
                return
            self._send_read_index_response(m)
            return
        if t == M.MsgForgetLeader:
            return
        pr = self.trk.progress.get(m.frm)
        if pr is None:
            return
        if t == APP_RESP:
            self._leader_app_resp(m)
        elif t == HB_RESP:
            pr.recent_active = True
            pr.msg_app_flow_paused = False
            if pr.state == REPLICATE and pr.inflights.full():
                # The follower is alive but our window is stuck (appends or their acks were
                # lost, or it restarted): let one more MsgApp out per heartbeat round.
                pr.inflights.free_first_one()
            if pr.match < self.raft_log.last_index() or pr.state == PROBE:
                self.send_append(m.frm)
            if self.read_only.option != ReadOnlyOption.Safe or not m.context:
                return
            acks = self.read_only.recv_ack(m.frm, m.context)
            if acks is None:
                return
            self._maybe_release_reads(m.context)
        elif t == M.MsgSnapStatus:
            if pr.state != SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for a MsgAppResp or heartbeat response before probing again.
            pr.msg_app_flow_paused = True
        elif t == M.MsgUnreachable:
            if pr.state == REPLICATE:
                pr.become_probe()
        elif t == M.MsgTransferLeader:
            self._leader_transfer(m)

    def _maybe_release_reads(self, ctx: bytes) -> None:
        rs = self.read_only.pending.get(ctx)
        if rs is None or self.trk.voters.vote_result(rs.acks) != VoteResult.VoteWon:
            return
        for status in self.read_only.advance(ctx):
            resp = self._response_to_read_index_req(status.req, status.index)
            if resp is not None:
                self.send(resp)

    def _leader_propose(self, m: Message) -> None:
        if not m.entries:
            raise ValueError("stepped empty MsgProp")
        if self.id not in self.trk.progress:
            raise ProposalDropped("this node was removed from the configuration")
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
        ents = m.entries
        for k, e in enumerate(m.entries):
            if e.type == ENTRY_NORMAL:
                continue
            cc = conf_change_from_entry(e)
            refused = self._refuse_conf_change(cc)
            if refused:
                if ents is m.entries:
                    ents = list(ents)  # never mutate a received message
                ents[k] = Entry(type=ENTRY_NORMAL)
            else:
                self.pending_conf_index = self.raft_log.last_index() + k + 1
        fresh = self.fresh_proposal is m and ents is m.entries
        if not self.append_entries(ents, fresh=fresh):
            raise ProposalDropped("too many uncommitted entries")
        self.bcast_append()

    def _refuse_conf_change(self, cc: AnyConfChange) -> str:
        v2 = cc.as_v2()
        already_pending = self.pending_conf_index > self.raft_log.applied
        already_joint = self.trk.is_joint()
        wants_leave = v2.leave_joint()
        if already_pending:
            return "possible unapplied conf change"
        if already_joint and not wants_leave:
            return "must transition out of joint config first"
        if not already_joint and wants_leave:
            return "not in joint state; refusing empty conf change"
        return ""

    def _leader_app_resp(self, m: Message) -> None:
        pr = self.trk.progress[m.frm]
        pr.recent_active = True
        log = self.raft_log
        if m.reject:
            # The follower's log diverges before m.index; its hint (reject_hint, log_term) lets
            # us skip every entry of a conflicting term in one round trip.
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == REPLICATE:
                    pr.become_probe()
                self.send_append(m.frm)
            return
        old_paused = pr.is_paused()
        if not (pr.maybe_update(m.index) or (pr.match == m.index and pr.state == PROBE)):
            return
        if pr.state == PROBE:
            pr.become_replicate()
        elif pr.state == SNAPSHOT and pr.match + 1 >= log.first_index():
            # The follower caught up through the snapshot (or otherwise): resume.
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == REPLICATE:
            pr.inflights.free_le(m.index)
        if self.maybe_commit():
            self._on_commit()
        elif old_paused:
            self.send_append(m.frm)
        # Fill the window while there is something to send.
        for _ in range(self.trk.max_inflight + 1):
            if not self.maybe_send_append(m.frm, False):
                break
        if m.frm == self.lead_transferee and pr.match == log.last_index():
            self.send(Message(M.MsgTimeoutNow, to=m.frm))

    def _leader_transfer(self, m: Message) -> None:
        transferee = m.frm
        pr = self.trk.progress[transferee]
        if pr.is_learner:
            return
        last = self.lead_transferee
        if last != NONE:
            if last == transferee:
                return  # already in progress
            self.abort_leader_transfer()
        if transferee == self.id:
            return
        # The transfer must finish within one election timeout.
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.raft_log.last_index():
            self.send(Message(M.MsgTimeoutNow, to=transferee))
        else:
            self.send_append(transferee)

    def abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    def _committed_entry_in_current_term(self) -> bool:
        return self.raft_log.term_or_zero(self.raft_log.committed) == self.term

    def _release_pending_read_index_messages(self) -> None:
        if not self.pending_read_index_messages or not self._committed_entry_in_current_term():
            return
        msgs = self.pending_read_index_messages
        self.pending_read_index_messages = []
        for m in msgs:
            self._send_read_index_response(m)

    def _send_read_index_response(self, m: Message) -> None:
        if self.trk.is_singleton() and self.id in self.trk.voters.incoming:
            # We are the only voter: our commit index is authoritative.
            resp = self._response_to_read_index_req(m, self.raft_log.committed)
            if resp is not None:
                self.send(resp)
            return
        if self.read_only.option == ReadOnlyOption.Safe and self.unsafe_bug != "stale_read":
            # Answered after a quorum acknowledges the next heartbeat round (flush_read_index).
            self.read_only.add_request(self.raft_log.committed, m)
        else:
            resp = self._response_to_read_index_req(m, self.raft_log.committed)
            if resp is not None:
                self.send(resp)

    def _response_to_read_index_req(self, req: Message, index: int) -> Message | None:
        if req.frm == NONE or req.frm == self.id:
            self.read_states.append(ReadState(index, req.entries[0].data))
            return None
        return Message(M.MsgReadIndexResp, to=req.frm, index=index, entries=req.entries)

    # --- candidate ---

    def _step_candidate(self, m: Message) -> None:
        my_resp = PRE_VOTE_RESP if self.state == PRE_CANDIDATE else VOTE_RESP
        t = m.type
        if t == PROP:
            raise ProposalDropped("no leader")
        if t == APP:
            self.become_follower(m.term, m.frm)
            self._handle_append_entries(m)
        elif t == HB:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == my_resp:
            _, _, res = self.poll(m.frm, t, not m.reject)
            if res == VoteResult.VoteWon:
                if self.state == PRE_CANDIDATE:
                    self.campaign(CAMPAIGN_ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res == VoteResult.VoteLost:
                # A rejected pre-vote response carries a term >= ours; with equal terms we stay.
                self.become_follower(self.term, NONE)

    # --- follower ---

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == PROP:
            if self.lead == NONE:
                raise ProposalDropped("no leader")
            if self.disable_proposal_forwarding:
                raise ProposalDropped("proposal forwarding disabled")
            self.send(_forward(m, self.lead))
        elif t == APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append_entries(m)
        elif t == HB:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == M.MsgTransferLeader:
            if self.lead == NONE:
                return
            self.send(_forward(m, self.lead))
        elif t == M.MsgForgetLeader:
            if self.read_only.option == ReadOnlyOption.LeaseBased:
                return  # forgetting would break the lease
            self.lead = NONE
        elif t == M.MsgTimeoutNow:
            # The leader handed over: campaign now, without pre-vote and ignoring leases.
            self.hup(CAMPAIGN_TRANSFER)
        elif t == M.MsgReadIndex:
            if self.lead == NONE:
                return  # dropped; the caller times out and retries
            self.send(_forward(m, self.lead))
        elif t == M.MsgReadIndexResp:
            if len(m.entries) != 1:
                return
            self.read_states.append(ReadState(m.index, m.entries[0].data))

    def _handle_append_entries(self, m: Message) -> None:
        log = self.raft_log
        if m.index < log.committed:
            self.send(Message(APP_RESP, to=m.frm, index=log.committed))
            return
        mlast = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if mlast is not None:
            self.send(Message(APP_RESP, to=m.frm, index=mlast))
            return
        # Reject with a hint: the last index <= m.index whose term is <= m.log_term. The leader
        # can then skip every entry in between without further round trips.
        hint_index = min(m.index, log.last_index())
        hint_index, hint_term = log.find_conflict_by_term(hint_index, m.log_term)
        self.send(Message(APP_RESP, to=m.frm, index=m.index, reject=True,
                          reject_hint=hint_index, log_term=hint_term))

    def _handle_heartbeat(self, m: Message) -> None:
        self.raft_log.commit_to(m.commit)
        self.send(Message(HB_RESP, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        if self.restore(snap):
            self.send(Message(APP_RESP, to=m.frm, index=self.raft_log.last_index()))
        else:
            self.send(Message(APP_RESP, to=m.frm, index=self.raft_log.committed))

    def restore(self, s: Snapshot) -> bool:
        """Install a snapshot from the leader; False if it is stale or we already have it."""
        meta = s.metadata
        log = self.raft_log
        if meta.index <= log.committed:
            return False
        if self.state != FOLLOWER:
            # Defense in depth: only followers should receive snapshots.
            self.become_follower(self.term + 1, NONE)
            return False
        cs = meta.conf_state
        if self.id not in set(cs.voters) | set(cs.learners) | set(cs.voters_outgoing):
            return False  # we are not in the snapshot's config; ignore it
        if log.match_term(meta.index, meta.term):
            # We already have the snapshot's last entry: just fast-forward the commit index.
            log.commit_to(meta.index)
            return False
        log.restore(s)
        confchange.restore(self.trk, cs, log.last_index())
        return True

    # --- membership ---

    def apply_conf_change(self, cc: AnyConfChange) -> ConfState:
        v2 = cc.as_v2()
        changer = confchange.Changer(self.trk, self.raft_log.last_index())
        if v2.leave_joint():
            cfg, prs = changer.leave_joint()
        else:
            auto_leave, joint = v2.enter_joint()
            if joint:
                cfg, prs = changer.enter_joint(auto_leave, v2.changes)
            else:
                cfg, prs = changer.simple(v2.changes)
        confchange.install(self.trk, cfg, prs)
        return self._switch_to_config()

    def _switch_to_config(self) -> ConfState:
        cs = self.trk.conf_state()
        pr = self.trk.progress.get(self.id)
        removed_or_demoted = pr is None or pr.is_learner
        if self.state != LEADER or not cs.voters:
            return cs
        if removed_or_demoted and self.step_down_on_removal:
            # Stepping down on the spot can deadlock: the remaining voters may not know the
            # change committed, and we (now a non-voter) may hold a longer log that makes us
            # refuse their votes. Hand over instead: catch up a voter, then TimeoutNow.
            self._hand_off_leadership()
        if self.maybe_commit():
            # A smaller quorum may commit more right away.
            self._on_commit()
        else:
            # Probe newly added nodes without waiting for the next heartbeat.
            for node in self.trk.progress:
                if node != self.id:
                    self.maybe_send_append(node, False)
        if self.lead_transferee != NONE and self.lead_transferee not in self.trk.voters.ids():
            self.abort_leader_transfer()
            if removed_or_demoted and self.step_down_on_removal:
                self._hand_off_leadership()
        return cs

    def _removed_or_demoted(self) -> bool:
        pr = self.trk.progress.get(self.id)
        return pr is None or pr.is_learner

    def _hand_off_leadership(self) -> None:
        """A leader that is no longer a voter transfers leadership to the most caught-up
        voter (retried every election timeout until someone takes over)."""
        if self.lead_transferee != NONE:
            return
        best = NONE
        best_match = -1
        for node in sorted(self.trk.voters.ids()):
            pr = self.trk.progress[node]
            if node != self.id and pr.match > best_match:
                best, best_match = node, pr.match
        if best == NONE:
            self.become_follower(self.term, NONE)
            return
        self._leader_transfer(Message(M.MsgTransferLeader, frm=best))


def _forward(m: Message, to: int) -> Message:
    """A copy of ``m`` addressed to ``to``: received messages are never mutated."""
    return Message(m.type, to=to, frm=m.frm, term=m.term, log_term=m.log_term, index=m.index,
                   entries=m.entries, commit=m.commit, vote=m.vote, snapshot=m.snapshot,
                   reject=m.reject, reject_hint=m.reject_hint, context=m.context)


__all__ = ["Config", "ConfChangeError", "Raft"]
