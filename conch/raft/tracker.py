"""Quorum arithmetic, per-follower replication progress and the tracked configuration.

Quorums: a configuration has an incoming voter set and, during joint consensus, an outgoing one.
A decision (commit index, election, read confirmation, CheckQuorum) needs a majority of *each*
non-empty set. An empty set agrees with everything, so a plain config is a joint config whose
outgoing half is empty.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from conch.raft.types import ConfState

INF_INDEX = 1 << 63


class VoteResult(enum.IntEnum):
    VotePending = 1
    VoteLost = 2
    VoteWon = 3


def majority_committed(voters: frozenset[int] | set[int], match: Mapping[int, int]) -> int:
    """The highest index acknowledged by a majority of ``voters`` (INF for no voters)."""
    n = len(voters)
    if n == 0:
        return INF_INDEX
    if n == 1:
        (v,) = voters
        return match.get(v, 0)
    acked = sorted(match.get(v, 0) for v in voters)
    return acked[n - (n // 2 + 1)]


def majority_vote(voters: frozenset[int] | set[int], votes: Mapping[int, bool]) -> VoteResult:
    if not voters:
        return VoteResult.VoteWon  # an empty config agrees with everything
    yes = missing = 0
    for v in voters:
        got = votes.get(v)
        if got is None:
            missing += 1
        elif got:
            yes += 1
    q = len(voters) // 2 + 1
    if yes >= q:
        return VoteResult.VoteWon
    if yes + missing >= q:
        return VoteResult.VotePending
    return VoteResult.VoteLost


class JointConfig:
    """Voters: ``incoming`` always; ``outgoing`` only while in a joint configuration."""

    __slots__ = ("incoming", "outgoing")

    def __init__(self, incoming: Iterable[int] = (), outgoing: Iterable[int] = ()) -> None:
        self.incoming: set[int] = set(incoming)
        self.outgoing: set[int] = set(outgoing)

    def ids(self) -> set[int]:
        return self.incoming | self.outgoing

    def committed(self, match: Mapping[int, int]) -> int:
        a = majority_committed(self.incoming, match)
        if not self.outgoing:
            return a
        return min(a, majority_committed(self.outgoing, match))

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        r1 = majority_vote(self.incoming, votes)
        if not self.outgoing:
            return r1
        r2 = majority_vote(self.outgoing, votes)
        if r1 == r2:
            return r1
        if VoteResult.VoteLost in (r1, r2):
            return VoteResult.VoteLost
        return VoteResult.VotePending

    def copy(self) -> JointConfig:
        return JointConfig(self.incoming, self.outgoing)


class Inflights:
    """A bounded window of in-flight MsgApps, identified by their last index, with their sizes.
    Full when either ``max_count`` messages or ``max_bytes`` payload bytes are outstanding."""

    __slots__ = ("max_count", "max_bytes", "indexes", "sizes", "bytes")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.indexes: list[int] = []
        self.sizes: list[int] = []
        self.bytes = 0

    def add(self, index: int, size: int) -> None:
        assert not self.full(), "inflights full"
        assert not self.indexes or index > self.indexes[-1], (index, self.indexes[-1:])
        self.indexes.append(index)
        self.sizes.append(size)
        self.bytes += size

    def free_le(self, to: int) -> None:
        """Acknowledge every message whose last index is <= ``to``."""
        idx = self.indexes
        k = 0
        n = len(idx)
        while k < n and idx[k] <= to:
            k += 1
        if k:
            self.bytes -= sum(self.sizes[:k])
            del idx[:k]
            del self.sizes[:k]

    def free_first_one(self) -> None:
        if self.indexes:
            self.free_le(self.indexes[0])

    def full(self) -> bool:
        return len(self.indexes) >= self.max_count or (
            self.max_bytes > 0 and self.bytes >= self.max_bytes
        )

    def count(self) -> int:
        return len(self.indexes)

    def reset(self) -> None:
        self.indexes.clear()
        self.sizes.clear()
        self.bytes = 0


class ProgressState(enum.IntEnum):
    """Probe: one MsgApp per heartbeat until the follower's position is known.
    Replicate: pipelined MsgApps, bounded by the inflight window.
    Snapshot: a snapshot is on its way; nothing else is sent until it is reported."""

    Probe = 0
    Replicate = 1
    Snapshot = 2


PROBE = ProgressState.Probe
REPLICATE = ProgressState.Replicate
SNAPSHOT = ProgressState.Snapshot


class Progress:
    """The leader's view of one follower: ``match`` (known replicated) and ``next`` (to send)."""

    __slots__ = (
        "match", "next", "state", "pending_snapshot", "recent_active",
        "msg_app_flow_paused", "inflights", "is_learner",
    )

    def __init__(
        self, match: int, next: int, inflights: Inflights, is_learner: bool = False,
        recent_active: bool = False,
    ) -> None:
        self.match = match
        self.next = next
        self.state = PROBE
        self.pending_snapshot = 0
        self.recent_active = recent_active
        self.msg_app_flow_paused = False
        self.inflights = inflights
        self.is_learner = is_learner

    def __repr__(self) -> str:
        s = f"{self.state.name} match={self.match} next={self.next}"
        if self.is_learner:
            s += " learner"
        if self.state == SNAPSHOT:
            s += f" pending_snap={self.pending_snapshot}"
        if self.inflights.count():
            s += f" inflight={self.inflights.count()}"
        return s

    def _reset_state(self, state: ProgressState) -> None:
        self.msg_app_flow_paused = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def sent_entries(self, count: int, size: int) -> None:
        """Bookkeeping after sending a MsgApp with ``count`` entries starting at ``next``."""
        if self.state == REPLICATE:
            if count:
                last = self.next + count - 1
                self.next = last + 1
                self.inflights.add(last, size)
            self.msg_app_flow_paused = self.inflights.full()
        elif self.state == PROBE:
            # Probing: wait for the answer (or the next heartbeat) before sending again.
            self.msg_app_flow_paused = True
        else:
            raise AssertionError("sending entries in snapshot state")

    def maybe_update(self, n: int) -> bool:
        """An ack up to n arrived; returns whether match moved (stale acks are ignored)."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.msg_app_flow_paused = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A MsgApp at ``rejected`` was refused; move ``next`` back using the follower's hint.
        Returns False for a stale rejection (one not about our latest probe)."""
        if self.state == REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.msg_app_flow_paused = False
        return True

    def is_paused(self) -> bool:
        if self.state == PROBE:
            return self.msg_app_flow_paused
        if self.state == REPLICATE:
            return self.inflights.full()
        return True


class ProgressTracker:
    """The active configuration plus the leader's Progress for every member, and votes."""

    def __init__(self, max_inflight: int, max_inflight_bytes: int) -> None:
        self.voters = JointConfig()
        self.learners: set[int] = set()
        # Learners that are still voters in the outgoing config; they become learners on
        # leaving the joint config (a node cannot be a voter and a learner at once).
        self.learners_next: set[int] = set()
        self.auto_leave = False
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes

    def new_inflights(self) -> Inflights:
        return Inflights(self.max_inflight, self.max_inflight_bytes)

    def conf_state(self) -> ConfState:
        return ConfState(
            voters=sorted(self.voters.incoming),
            learners=sorted(self.learners),
            voters_outgoing=sorted(self.voters.outgoing),
            learners_next=sorted(self.learners_next),
            auto_leave=self.auto_leave,
        )

    def is_singleton(self) -> bool:
        return len(self.voters.incoming) == 1 and not self.voters.outgoing

    def is_joint(self) -> bool:
        return bool(self.voters.outgoing)

    def committed(self) -> int:
        match = {i: pr.match for i, pr in self.progress.items()}
        return self.voters.committed(match)

    def quorum_active(self) -> bool:
        votes = {i: pr.recent_active for i, pr in self.progress.items() if not pr.is_learner}
        return self.voters.vote_result(votes) == VoteResult.VoteWon

    def voter_ids(self) -> list[int]:
        return sorted(self.voters.ids())

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node: int, granted: bool) -> None:
        if node not in self.votes:
            self.votes[node] = granted

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = rejected = 0
        for node, pr in self.progress.items():
            if pr.is_learner:
                continue
            v = self.votes.get(node)
            if v is None:
                continue
            if v:
                granted += 1
            else:
                rejected += 1
        return granted, rejected, self.voters.vote_result(self.votes)
