"""One test per rule of the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable
Consensus Algorithm", extended version). Each docstring quotes or paraphrases the rule.
Structure: set up a node or cluster, act, check.
"""

from __future__ import annotations

import random

import pytest

from conch.raft import (
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    StateType,
)
from conch.raft.raft import Config, Raft
from tests.raft.rafttest import Cluster

M = MessageType
ET = 10  # election tick
HT = 1  # heartbeat tick


def new_raft(
    node_id: int = 1,
    peers: tuple[int, ...] = (1, 2, 3),
    log: list[tuple[int, int]] | None = None,
    term: int = 0,
    pre_vote: bool = False,
    check_quorum: bool = False,
    seed: int = 0,
) -> Raft:
    st = MemoryStorage(conf_state=ConfState(voters=list(peers)))
    if log:
        st.append([Entry(term=t, index=i) for i, t in log])
    if term:
        st.set_hard_state(HardState(term=term))
    return Raft(Config(id=node_id, storage=st, election_tick=ET, heartbeat_tick=HT,
                       pre_vote=pre_vote, check_quorum=check_quorum,
                       rng=random.Random(seed + node_id)))


def take(r: Raft) -> list[Message]:
    msgs, r.msgs = r.msgs, []
    return msgs


def become(r: Raft, state: StateType, term: int = 1) -> None:
    if state == StateType.Follower:
        r.become_follower(term, 2)
    elif state == StateType.Candidate:
        r.become_follower(term - 1, 0)
        r.become_candidate()
    else:
        r.become_follower(term - 1, 0)
        r.become_candidate()
        r.become_leader()
    take(r)


@pytest.mark.parametrize("state", [StateType.Follower, StateType.Candidate, StateType.Leader])
def test_update_term_from_message(state: StateType) -> None:
    """§5.1: if one server's current term is smaller than the other's, it updates its term to
    the larger value; a candidate or leader with an out-of-date term reverts to follower."""
    r = new_raft()
    become(r, state, term=1)
    r.step(Message(M.MsgApp, frm=2, to=1, term=2))
    assert r.term == 2
    assert r.state == StateType.Follower
    assert r.lead == 2


def test_reject_stale_term_message() -> None:
    """§5.1: if a server receives a request with a stale term number, it rejects the request."""
    r = new_raft(term=2, log=[(1, 1)])
    r.step(Message(M.MsgApp, frm=2, to=1, term=1, index=1, log_term=1,
                   entries=[Entry(1, 2)]))
    assert r.raft_log.last_index() == 1  # nothing appended
    assert r.term == 2


def test_start_as_follower() -> None:
    """§5.2: when servers start up, they begin as followers."""
    r = new_raft()
    assert r.state == StateType.Follower
    assert r.lead == 0


def test_leader_sends_heartbeats() -> None:
    """§5.2: leaders send periodic heartbeats (AppendEntries with no entries) to all followers."""
    r = new_raft()
    become(r, StateType.Leader)
    for _ in range(HT):
        r.tick()
    msgs = sorted(take(r), key=lambda m: m.to)
    assert [(m.to, m.type, m.entries) for m in msgs] == [
        (2, M.MsgHeartbeat, []), (3, M.MsgHeartbeat, [])
    ]


@pytest.mark.parametrize("state", [StateType.Follower, StateType.Candidate])
def test_nonleader_starts_election(state: StateType) -> None:
    """§5.2: a follower that hears nothing for an election timeout increments its term, votes for
    itself and sends RequestVote to every other server (a candidate does the same on timeout)."""
    r = new_raft()
    become(r, state, term=1)
    for _ in range(2 * ET):
        r.tick()
    assert r.term == 2
    assert r.state == StateType.Candidate
    assert r.vote == 1
    msgs = sorted(take(r), key=lambda m: m.to)
    assert [(m.to, m.type, m.term) for m in msgs] == [(2, M.MsgVote, 2), (3, M.MsgVote, 2)]


@pytest.mark.parametrize(
    "size,votes,want",
    [
        (1, {}, StateType.Leader),
        (3, {2: True, 3: True}, StateType.Leader),
        (3, {2: True}, StateType.Leader),
        (5, {2: True, 3: True, 4: True, 5: True}, StateType.Leader),
        (5, {2: True, 3: True}, StateType.Leader),
        (3, {2: False, 3: False}, StateType.Follower),
        (5, {2: False, 3: False, 4: False}, StateType.Follower),
        (3, {}, StateType.Candidate),
        (5, {2: True}, StateType.Candidate),
        (5, {2: False, 3: False}, StateType.Candidate),
    ],
)
def test_leader_election_in_one_round(size: int, votes: dict[int, bool],
                                      want: StateType) -> None:
    """§5.2: a candidate wins with votes from a majority; it loses (reverts to follower) once a
    majority rejected it; otherwise it stays a candidate."""
    r = new_raft(peers=tuple(range(1, size + 1)))
    r.step(Message(M.MsgHup, frm=1))
    for node, granted in votes.items():
        r.step(Message(M.MsgVoteResp, frm=node, to=1, term=r.term, reject=not granted))
    assert r.state == want


@pytest.mark.parametrize(
    "vote,candidate,granted",
    [(0, 2, True), (0, 3, True), (2, 2, True), (3, 3, True), (2, 3, False), (3, 2, False)],
)
def test_follower_votes_at_most_once(vote: int, candidate: int, granted: bool) -> None:
    """§5.2: each server votes for at most one candidate in a given term, first-come-first-served;
    and it persists the vote (it is part of the hard state)."""
    r = new_raft(term=1)
    r.vote = vote
    r.step(Message(M.MsgVote, frm=candidate, to=1, term=1))
    (resp,) = take(r)
    assert resp.type == M.MsgVoteResp
    assert resp.reject == (not granted)
    if granted:
        assert r.hard_state() == HardState(term=1, vote=candidate, commit=0)


def test_vote_and_term_persist_before_response() -> None:
    """§5.2 / Figure 2 "persistent state": the vote is on stable storage before it is answered:
    the Ready carrying the vote response also carries the new hard state (term and vote in one
    record) and asks for a sync."""
    st = MemoryStorage(conf_state=ConfState(voters=[1, 2, 3]))
    rn = RawNode(Config(id=1, storage=st, rng=random.Random(1)))
    rn.step(Message(M.MsgVote, frm=2, to=1, term=5))
    rd = rn.ready()
    assert rd.hard_state == HardState(term=5, vote=2, commit=0)
    assert rd.must_sync
    assert [(m.type, m.reject) for m in rd.messages] == [(M.MsgVoteResp, False)]


def test_candidate_falls_back_to_leader_of_same_term() -> None:
    """§5.2: a candidate that receives AppendEntries from a leader whose term is at least its own
    recognises the leader and returns to follower."""
    for term in (1, 2):  # same term, and a larger one
        r = new_raft()
        r.step(Message(M.MsgHup, frm=1))
        assert r.state == StateType.Candidate
        r.step(Message(M.MsgApp, frm=2, to=1, term=term))
        # mypy keeps the narrowing from the assert above across step(), which changes r.state
        assert r.state == StateType.Follower  # type: ignore[comparison-overlap]
        assert r.lead == 2
        assert r.term == max(1, term)


def test_election_timeout_randomized() -> None:
    """§5.2: election timeouts are chosen randomly from a fixed interval ([ET, 2ET) here)."""
    r = new_raft()
    seen = set()
    for term in range(1, 200):
        r.become_follower(term, 0)
        ticks = 0
        for _ in range(3 * ET):
            r.tick()
            ticks += 1
            if r.state == StateType.Candidate:
                break
        assert ET <= ticks < 2 * ET
        seen.add(ticks)
    assert len(seen) == ET  # every value of the interval shows up


def test_election_timeouts_rarely_conflict() -> None:
    """§5.2: randomisation spreads the timeouts so that in most cases a single server times out
    first (5 followers: conflicts are the exception)."""
    conflicts = 0
    trials = 300
    rafts = [new_raft(node_id=i, peers=(1, 2, 3, 4, 5), seed=7) for i in range(1, 6)]
    for term in range(1, trials + 1):
        for r in rafts:
            r.become_follower(term, 0)
        timed_out = 0
        for _ in range(2 * ET):
            for r in rafts:
                r.tick()
            timed_out = sum(r.state == StateType.Candidate for r in rafts)
            if timed_out:
                break
        conflicts += timed_out > 1
    assert conflicts / trials < 0.3


def test_leader_starts_replication() -> None:
    """§5.3: the leader appends the command to its log as a new entry, then issues AppendEntries
    in parallel to each of the other servers, with the preceding entry's index and term."""
    r = new_raft()
    become(r, StateType.Leader)
    commit_noop(r)
    li = r.raft_log.last_index()
    r.step(Message(M.MsgProp, frm=1, entries=[Entry(data=b"some data")]))
    assert r.raft_log.last_index() == li + 1
    msgs = sorted(take(r), key=lambda m: m.to)
    assert [(m.to, m.type, m.index, m.log_term, [e.data for e in m.entries]) for m in msgs] == [
        (2, M.MsgApp, li, 1, [b"some data"]), (3, M.MsgApp, li, 1, [b"some data"])
    ]


def persist(r: Raft) -> None:
    """The leader's application made its log durable (what RawNode.advance reports)."""
    r.leader_persisted(r.raft_log.last_index(), r.term)


def commit_noop(r: Raft) -> None:
    """Acknowledge everything the leader has, so the next proposal starts from a clean state."""
    take(r)
    persist(r)
    for node in r.trk.progress:
        if node != r.id:
            r.step(Message(M.MsgAppResp, frm=node, to=r.id, term=r.term,
                           index=r.raft_log.last_index()))
    take(r)


def test_leader_commits_after_majority() -> None:
    """§5.3: an entry is committed once the leader replicated it on a majority; the leader then
    includes the commit index in later AppendEntries so followers learn it."""
    r = new_raft()
    become(r, StateType.Leader)
    commit_noop(r)
    li = r.raft_log.last_index()
    r.step(Message(M.MsgProp, frm=1, entries=[Entry(data=b"x")]))
    persist(r)
    take(r)
    assert r.raft_log.committed == li
    r.step(Message(M.MsgAppResp, frm=2, to=1, term=1, index=li + 1))
    assert r.raft_log.committed == li + 1
    msgs = take(r)
    assert msgs and all(m.type == M.MsgApp and m.commit == li + 1 for m in msgs)


@pytest.mark.parametrize(
    "size,acks,committed",
    [(1, [], True), (3, [], False), (3, [2], True), (3, [2, 3], True), (5, [], False),
     (5, [2], False), (5, [2, 3], True), (5, [2, 3, 4, 5], True)],
)
def test_leader_acknowledges_commit(size: int, acks: list[int], committed: bool) -> None:
    """§5.3: an entry is committed when a majority (leader included) stores it."""
    r = new_raft(peers=tuple(range(1, size + 1)))
    become(r, StateType.Leader)
    commit_noop(r)
    li = r.raft_log.last_index()
    r.step(Message(M.MsgProp, frm=1, entries=[Entry(data=b"x")]))
    persist(r)
    for node in acks:
        r.step(Message(M.MsgAppResp, frm=node, to=1, term=1, index=li + 1))
    assert (r.raft_log.committed == li + 1) == committed


@pytest.mark.parametrize(
    "size,acks,committed",
    [(1, [], False), (3, [2], False), (3, [2, 3], True), (5, [2, 3], False),
     (5, [2, 3, 4], True)],
)
def test_commit_counts_the_leader_only_once_it_persisted(
    size: int, acks: list[int], committed: bool
) -> None:
    """Thesis §10.2.1: the leader sends its entries before (or while) it writes them, so its
    own copy counts toward the quorum only once durable; a quorum of followers alone commits."""
    r = new_raft(peers=tuple(range(1, size + 1)))
    become(r, StateType.Leader)
    commit_noop(r)
    li = r.raft_log.last_index()
    r.step(Message(M.MsgProp, frm=1, entries=[Entry(data=b"x")]))
    for node in acks:
        r.step(Message(M.MsgAppResp, frm=node, to=1, term=1, index=li + 1))
    assert (r.raft_log.committed == li + 1) == committed
    persist(r)  # with the leader's own copy, every case above has a quorum
    assert r.raft_log.committed == li + 1


def test_leader_commits_preceding_entries() -> None:
    """§5.3: committing an entry also commits all preceding entries, including those of
    previous leaders."""
    r = new_raft(log=[(1, 2), (2, 2)], term=2)
    r.become_candidate()
    r.become_leader()  # term 3, empty entry at 3
    take(r)
    r.step(Message(M.MsgProp, frm=1, entries=[Entry(data=b"x")]))
    persist(r)
    r.step(Message(M.MsgAppResp, frm=2, to=1, term=3, index=4))
    assert r.raft_log.committed == 4
    assert [e.index for e in r.raft_log.next_committed_ents()] == [1, 2, 3, 4]


def test_follower_commits_from_leader() -> None:
    """§5.3: once a follower learns an entry is committed (leader commit in AppendEntries), it
    applies it, but never beyond what it holds from this leader."""
    r = new_raft()
    r.become_follower(1, 2)
    r.step(Message(M.MsgApp, frm=2, to=1, term=1, index=0, log_term=0, commit=1,
                   entries=[Entry(1, 1, data=b"a"), Entry(1, 2, data=b"b")]))
    assert r.raft_log.committed == 1
    r.step(Message(M.MsgApp, frm=2, to=1, term=1, index=2, log_term=1, commit=9))
    assert r.raft_log.committed == 2  # min(leader commit, index of last new entry)


@pytest.mark.parametrize(
    "term,index,reject,hint",
    [(0, 0, False, 0), (1, 1, False, 0), (2, 2, False, 0), (1, 2, True, 1), (3, 3, True, 2)],
)
def test_follower_checks_append_consistency(term: int, index: int, reject: bool,
                                            hint: int) -> None:
    """§5.3: AppendEntries carries the index and term of the entry preceding the new ones; if
    the follower has no entry there with that term, it refuses (with a hint to skip back)."""
    r = new_raft(log=[(1, 1), (2, 2)], term=2)
    r.raft_log.commit_to(1)
    r.become_follower(2, 2)
    r.step(Message(M.MsgApp, frm=2, to=1, term=2, log_term=term, index=index, commit=1))
    (resp,) = take(r)
    assert resp.type == M.MsgAppResp
    assert resp.reject == reject
    if reject:
        assert resp.reject_hint == hint


@pytest.mark.parametrize(
    "index,term,ents,want",
    [
        # conflicting entry at 2: it and all that follow are deleted, new ones appended
        (1, 1, [(2, 3)], [(1, 1), (2, 3)]),
        (1, 1, [(2, 3), (3, 4)], [(1, 1), (2, 3), (3, 4)]),
        # no conflict: nothing is truncated (a stale duplicate must not erase newer entries)
        (0, 0, [(1, 1)], [(1, 1), (2, 2)]),
        (2, 2, [(3, 3)], [(1, 1), (2, 2), (3, 3)]),
        (0, 0, [(1, 1), (2, 2)], [(1, 1), (2, 2)]),
    ],
)
def test_follower_truncates_only_on_conflict(index: int, term: int, ents: list[tuple[int, int]],
                                             want: list[tuple[int, int]]) -> None:
    """§5.3: if an existing entry conflicts with a new one (same index, different terms), delete
    it and all that follow; append any new entries not already in the log."""
    r = new_raft(log=[(1, 1), (2, 2)], term=2)
    r.become_follower(2, 2)
    r.step(Message(M.MsgApp, frm=2, to=1, term=2, log_term=term, index=index,
                   entries=[Entry(t, i) for i, t in ents]))
    assert [(e.index, e.term) for e in r.raft_log.all_entries()] == want


def test_leader_never_overwrites_its_log() -> None:
    """§5.3 "leader append-only": a leader never overwrites or deletes entries in its own log,
    whatever followers answer."""
    r = new_raft(log=[(1, 1), (2, 1)], term=1)
    r.become_candidate()
    r.become_leader()
    before = [(e.index, e.term) for e in r.raft_log.all_entries()]
    r.step(Message(M.MsgAppResp, frm=2, to=1, term=2, index=3, reject=True, reject_hint=0))
    r.step(Message(M.MsgApp, frm=3, to=1, term=2, index=0, log_term=0,
                   entries=[Entry(2, 1, data=b"evil")]))  # same term: ignored by a leader
    assert [(e.index, e.term) for e in r.raft_log.all_entries()][:3] == before


FIG7_LEADER = [(1, 1), (2, 1), (3, 1), (4, 4), (5, 4), (6, 5), (7, 5), (8, 6), (9, 6), (10, 6)]
FIG7_FOLLOWERS = [
    [(1, 1), (2, 1), (3, 1), (4, 4), (5, 4), (6, 5), (7, 5), (8, 6), (9, 6)],  # (a)
    [(1, 1), (2, 1), (3, 1), (4, 4)],  # (b)
    FIG7_LEADER + [(11, 6)],  # (c)
    FIG7_LEADER + [(11, 7), (12, 7)],  # (d)
    [(1, 1), (2, 1), (3, 1), (4, 4), (5, 4), (6, 4), (7, 4)],  # (e)
    [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2), (7, 3), (8, 3), (9, 3), (10, 3),
     (11, 3)],  # (f)
]


@pytest.mark.parametrize("follower_log", FIG7_FOLLOWERS, ids=list("abcdef"))
def test_leader_brings_follower_logs_in_sync(follower_log: list[tuple[int, int]]) -> None:
    """§5.3 Figure 7: whatever the follower's log (missing entries, extra uncommitted entries,
    both), the leader's consistency check and back-off make it identical to the leader's."""
    c = Cluster(voters=(1, 2, 3), pre_vote=False)
    for node, log in ((1, FIG7_LEADER), (2, follower_log), (3, [])):
        c[node].storage.append([Entry(t, i) for i, t in log])
        c[node].storage.set_hard_state(HardState(term=7))
        c.restart(node)
    c.isolate(2)  # elected with node 3's vote; node 2 may hold a "better" (uncommitted) log
    c.elect(1)
    c.recover()
    c.propose(1, b"x")
    for _ in range(5):  # a paused probe resumes on the next heartbeat response
        c.tick(1)
        c.stabilize()
    lead = [(e.index, e.term) for e in c[1].raft.raft_log.all_entries()]
    fol = [(e.index, e.term) for e in c[2].raft.raft_log.all_entries()]
    assert fol == lead


def test_vote_request_carries_last_log_position() -> None:
    """§5.4.1: RequestVote includes the index and term of the candidate's last log entry."""
    r = new_raft(log=[(1, 1), (2, 2), (3, 2)], term=2)
    r.step(Message(M.MsgHup, frm=1))
    msgs = take(r)
    assert {(m.type, m.index, m.log_term, m.term) for m in msgs} == {(M.MsgVote, 3, 2, 3)}


@pytest.mark.parametrize(
    "index,log_term,granted",
    [
        (2, 2, True), (3, 2, True), (1, 2, True),  # same last term: longer or equal... wins
        (3, 3, True), (1, 3, True),  # higher last term wins regardless of length
        (3, 1, False), (1, 1, False),  # lower last term loses
    ],
)
def test_voter_requires_up_to_date_log(index: int, log_term: int, granted: bool) -> None:
    """§5.4.1: a voter denies its vote if its own log is more up-to-date: compare last terms,
    then (same term) lengths."""
    r = new_raft(log=[(1, 1), (2, 2)], term=2)
    r.step(Message(M.MsgVote, frm=2, to=1, term=3, index=index, log_term=log_term))
    (resp,) = take(r)
    want_granted = granted and not (log_term == 2 and index < 2)
    assert resp.reject == (not want_granted)


def test_leader_only_commits_current_term_entries_by_counting() -> None:
    """§5.4.2 Figure 8: a leader never commits an entry from a previous term by counting
    replicas; it becomes committed only once an entry of the current term is committed."""
    r = new_raft(log=[(1, 1), (2, 1)], term=2)  # entry 2 is from term 1, uncommitted
    r.become_candidate()
    r.become_leader()  # term 3; empty entry at 3
    take(r)
    persist(r)
    # A majority now holds entry 2 (the old-term entry) but not yet entry 3.
    r.step(Message(M.MsgAppResp, frm=2, to=1, term=3, index=2))
    assert r.raft_log.committed == 0, "an old-term entry must not be committed by counting"
    r.step(Message(M.MsgAppResp, frm=2, to=1, term=3, index=3))
    assert r.raft_log.committed == 3


def test_broken_commit_rule_would_commit_old_entry() -> None:
    """The "commit_prev_term" test-only bug does what it says (used to check the checker)."""
    st = MemoryStorage(conf_state=ConfState(voters=[1, 2, 3]))
    st.append([Entry(1, 1), Entry(1, 2)])
    st.set_hard_state(HardState(term=2))
    r = Raft(Config(id=1, storage=st, unsafe_bug="commit_prev_term", rng=random.Random(1)))
    r.become_candidate()
    r.become_leader()
    r.step(Message(M.MsgAppResp, frm=2, to=1, term=3, index=2))
    assert r.raft_log.committed == 2
