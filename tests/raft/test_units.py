"""Unit tests of the pieces: storage, log, quorum math, inflights/progress, conf changes,
codec, the Ready contract, flow control, and the package's purity (no I/O imports)."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from conch.proto.raftpb import raft_pb2 as pb
from conch.raft import (
    Compacted,
    ConfChange,
    ConfChangeError,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfChangeV2,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    SnapOutOfDate,
    Snapshot,
    SnapshotMetadata,
    StateType,
    Unavailable,
    codec,
)
from conch.raft.confchange import Changer
from conch.raft.log import RaftLog
from conch.raft.raft import Config, Raft
from conch.raft.tracker import (
    Inflights,
    JointConfig,
    Progress,
    ProgressState,
    ProgressTracker,
    VoteResult,
    majority_committed,
    majority_vote,
)
from tests.raft.rafttest import Cluster

M = MessageType
CCT = ConfChangeType


def ents(*pairs: tuple[int, int]) -> list[Entry]:
    return [Entry(term=t, index=i) for i, t in pairs]


# --- storage ---------------------------------------------------------------------------------


def storage_with(*pairs: tuple[int, int]) -> MemoryStorage:
    st = MemoryStorage()
    st.append(ents(*pairs))
    return st


def test_memory_storage_terms_and_bounds() -> None:
    st = storage_with((1, 1), (2, 2), (3, 3))
    assert (st.first_index(), st.last_index()) == (1, 3)
    assert [st.term(i) for i in (0, 1, 2, 3)] == [0, 1, 2, 3]
    with pytest.raises(Unavailable):
        st.term(4)
    st.compact(2)
    with pytest.raises(Compacted):
        st.term(1)
    assert st.term(2) == 2 and st.first_index() == 3
    with pytest.raises(Compacted):
        st.entries(2, 4, 1 << 30)


def test_memory_storage_append_truncates_conflicts() -> None:
    st = storage_with((1, 1), (2, 1), (3, 1))
    st.append(ents((2, 2), (3, 2), (4, 2)))
    assert [(e.index, e.term) for e in st.entries(1, 5, 1 << 30)] == [
        (1, 1), (2, 2), (3, 2), (4, 2)]
    with pytest.raises(ValueError):
        st.append(ents((9, 2)))  # a gap


def test_memory_storage_entries_size_limit() -> None:
    st = MemoryStorage()
    st.append([Entry(1, i, data=b"x" * 10) for i in range(1, 6)])
    assert len(st.entries(1, 6, 25)) == 2
    assert len(st.entries(1, 6, 0)) == 1  # always at least one


def test_memory_storage_snapshots() -> None:
    st = storage_with((1, 1), (2, 1), (3, 2))
    cs = ConfState(voters=[1, 2])
    snap = st.create_snapshot(2, cs, b"data")
    assert (snap.metadata.index, snap.metadata.term, snap.metadata.conf_state) == (2, 1, cs)
    with pytest.raises(SnapOutOfDate):
        st.create_snapshot(1, cs, b"")
    st.apply_snapshot(Snapshot(b"new", SnapshotMetadata(cs, 10, 4)))
    assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 4)
    assert st.initial_state()[1] == cs


# --- log -------------------------------------------------------------------------------------


def test_log_unstable_and_stable_views_agree() -> None:
    st = storage_with((1, 1), (2, 1))
    log = RaftLog(st)
    log.append(ents((3, 2), (4, 2)))
    assert log.last_index() == 4 and log.term(3) == 2 and log.term(1) == 1
    assert [e.index for e in log.entries(2, 1 << 30)] == [2, 3, 4]
    st.append(log.unstable.entries)
    log.stable_to(4, 2)
    assert log.unstable.entries == [] and log.unstable.offset == 5
    log.stable_to(4, 1)  # stale: term mismatch is ignored


def test_log_find_conflict_by_term_skips_whole_terms() -> None:
    st = storage_with((1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3))
    log = RaftLog(st)
    assert log.find_conflict_by_term(6, 2) == (4, 2)
    assert log.find_conflict_by_term(6, 1) == (2, 1)
    assert log.find_conflict_by_term(6, 5) == (6, 3)
    assert log.find_conflict_by_term(6, 0) == (0, 0)


def test_log_maybe_append_refuses_mismatch_and_never_truncates_committed() -> None:
    log = RaftLog(storage_with((1, 1), (2, 2)))
    assert log.maybe_append(2, 1, 0, ents((3, 3))) is None
    assert log.maybe_append(2, 2, 3, ents((3, 3))) == 3
    assert log.committed == 3
    with pytest.raises(AssertionError):
        log.maybe_append(1, 1, 3, ents((2, 4)))


# --- quorum and progress ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "voters,match,want",
    [({1}, {1: 5}, 5), ({1, 2, 3}, {1: 5, 2: 3, 3: 1}, 3), ({1, 2, 3, 4}, {1: 9, 2: 7, 3: 2}, 2),
     ({1, 2, 3, 4, 5}, {1: 9, 2: 8, 3: 7, 4: 1, 5: 1}, 7)],
)
def test_majority_committed(voters: set[int], match: dict[int, int], want: int) -> None:
    assert majority_committed(voters, match) == want


def test_joint_quorum_needs_both_halves() -> None:
    j = JointConfig({1, 2, 3}, {1, 4, 5})
    assert j.committed({1: 9, 2: 9, 3: 9, 4: 1, 5: 1}) == 1
    assert j.committed({1: 9, 2: 9, 3: 1, 4: 7, 5: 1}) == 7
    assert j.vote_result({1: True, 2: True}) == VoteResult.VotePending
    assert j.vote_result({1: True, 2: True, 4: True}) == VoteResult.VoteWon
    assert j.vote_result({2: True, 3: True, 4: False, 5: False}) == VoteResult.VoteLost
    assert majority_vote(set(), {}) == VoteResult.VoteWon


def test_inflights_window_by_count_and_bytes() -> None:
    inf = Inflights(3, 100)
    inf.add(5, 10)
    inf.add(7, 10)
    assert not inf.full()
    inf.add(9, 10)
    assert inf.full()
    inf.free_le(7)
    assert inf.count() == 1 and not inf.full()
    inf.add(10, 95)
    assert inf.full()  # bytes
    inf.free_first_one()
    assert inf.count() == 1


def test_progress_probe_replicate_snapshot_states() -> None:
    pr = Progress(0, 5, Inflights(2, 0))
    assert pr.state == ProgressState.Probe and not pr.is_paused()
    pr.sent_entries(3, 30)
    assert pr.is_paused()  # one probe in flight
    assert pr.maybe_update(7) and not pr.is_paused()
    pr.become_replicate()
    assert pr.next == 8
    pr.sent_entries(2, 20)
    pr.sent_entries(2, 20)
    assert pr.next == 12 and pr.is_paused()
    assert not pr.maybe_decr_to(6, 0)  # stale rejection
    assert pr.maybe_decr_to(9, 8)
    assert pr.next == 8
    pr.become_snapshot(20)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 21


# --- conf changes ----------------------------------------------------------------------------


def tracker(voters: list[int], learners: tuple[int, ...] = ()) -> ProgressTracker:
    trk = ProgressTracker(10, 0)
    from conch.raft.confchange import restore

    restore(trk, ConfState(voters=voters, learners=list(learners)), 10)
    return trk


def test_simple_change_allows_one_voter_at_a_time() -> None:
    ch = Changer(tracker([1, 2, 3]), 10)
    cfg, _ = ch.simple([ConfChangeSingle(CCT.ConfChangeAddNode, 4)])
    assert cfg.voters.incoming == {1, 2, 3, 4}
    with pytest.raises(ConfChangeError):
        ch.simple([ConfChangeSingle(CCT.ConfChangeAddNode, 4),
                   ConfChangeSingle(CCT.ConfChangeRemoveNode, 1)])
    # learners are free
    cfg, _ = ch.simple([ConfChangeSingle(CCT.ConfChangeAddLearnerNode, 5),
                        ConfChangeSingle(CCT.ConfChangeAddLearnerNode, 6)])
    assert cfg.learners == {5, 6}
    with pytest.raises(ConfChangeError):
        Changer(tracker([1]), 1).simple([ConfChangeSingle(CCT.ConfChangeRemoveNode, 1)])


def test_joint_change_demotes_through_learners_next() -> None:
    trk = tracker([1, 2, 3])
    cfg, prs = Changer(trk, 10).enter_joint(
        True, [ConfChangeSingle(CCT.ConfChangeAddLearnerNode, 3),
               ConfChangeSingle(CCT.ConfChangeAddNode, 4)])
    assert cfg.voters.incoming == {1, 2, 4} and cfg.voters.outgoing == {1, 2, 3}
    assert cfg.learners_next == {3} and cfg.auto_leave
    from conch.raft.confchange import install

    install(trk, cfg, prs)
    cfg2, prs2 = Changer(trk, 10).leave_joint()
    assert cfg2.voters.outgoing == set() and cfg2.learners == {3} and prs2[3].is_learner
    with pytest.raises(ConfChangeError):
        Changer(tracker([1, 2]), 10).leave_joint()


def test_conf_change_wire_format_matches_raftpb() -> None:
    cc = ConfChange(CCT.ConfChangeAddLearnerNode, 7, b"ctx", id=99)
    assert cc.marshal() == codec.conf_change_to_pb(cc).SerializeToString()
    assert ConfChange.unmarshal(cc.marshal()) == cc
    p = pb.ConfChange()
    p.ParseFromString(cc.marshal())
    assert (p.type, p.node_id, p.context, p.id) == (3, 7, b"ctx", 99)
    v2 = ConfChangeV2(ConfChangeTransition.JointExplicit,
                      [ConfChangeSingle(CCT.ConfChangeAddNode, 1 << 40),
                       ConfChangeSingle(CCT.ConfChangeRemoveNode, 2)], b"c")
    assert v2.marshal() == codec.conf_change_v2_to_pb(v2).SerializeToString()
    assert ConfChangeV2.unmarshal(v2.marshal()) == v2
    p2 = pb.ConfChangeV2()
    p2.ParseFromString(v2.marshal())
    assert codec.conf_change_v2_from_pb(p2) == v2
    assert ConfChangeV2().leave_joint() and not v2.leave_joint()


def test_message_codec_roundtrip() -> None:
    snap = Snapshot(b"s", SnapshotMetadata(ConfState([1, 2], [3], [1], [], True), 9, 2))
    m = Message(M.MsgSnap, to=2, frm=1, term=3, log_term=2, index=8, commit=7, vote=1,
                snapshot=snap, reject=True, reject_hint=4, context=b"ctx",
                entries=[Entry(3, 9, EntryType.EntryConfChange, b"d"), Entry(3, 10)])
    back = codec.decode_message(codec.encode_message(m))
    for f in Message.__slots__:
        if f not in ("entries", "snapshot"):
            assert getattr(back, f) == getattr(m, f), f
    assert back.entries == m.entries
    assert back.snapshot is not None
    assert back.snapshot.metadata.conf_state == snap.metadata.conf_state
    assert (back.snapshot.data, back.snapshot.metadata.index) == (b"s", 9)
    hs = HardState(4, 2, 9)
    assert codec.hard_state_from_pb(codec.hard_state_to_pb(hs)) == hs
    plain = codec.decode_message(codec.encode_message(Message(M.MsgHeartbeat, to=1, frm=2)))
    assert plain.snapshot is None and plain.context == b""


# --- RawNode and the Ready contract ----------------------------------------------------------


def single_node() -> tuple[RawNode, MemoryStorage]:
    st = MemoryStorage(conf_state=ConfState(voters=[1]))
    return RawNode(Config(id=1, storage=st, rng=random.Random(1))), st


def handle(rn: RawNode, st: MemoryStorage) -> list[Entry]:
    rd = rn.ready()
    if rd.snapshot is not None:
        st.apply_snapshot(rd.snapshot)
    st.append(rd.entries)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    rn.advance()
    return rd.committed_entries


def test_ready_contract_single_node() -> None:
    rn, st = single_node()
    assert not rn.has_ready()
    rn.campaign()
    rd = rn.ready()
    assert rd.soft_state is not None and rd.soft_state.raft_state == StateType.Leader
    assert rd.hard_state is not None and rd.hard_state.term == 1 and rd.hard_state.vote == 1
    assert rd.must_sync and len(rd.entries) == 1
    with pytest.raises(AssertionError):
        rn.ready()  # must advance first
    st.append(rd.entries)
    assert rd.hard_state is not None
    st.set_hard_state(rd.hard_state)
    rn.advance()
    rn.propose(b"hello")
    applied: list[bytes] = []
    for _ in range(5):
        if not rn.has_ready():
            break
        applied += [e.data for e in handle(rn, st)]
    assert b"hello" in applied
    assert not rn.has_ready()


def test_must_sync_only_for_durable_changes() -> None:
    rn, st = single_node()
    rn.campaign()
    handle(rn, st)
    rn.propose(b"x")
    handle(rn, st)
    # The commit-only change of the next Ready does not require an fsync.
    if rn.has_ready():
        rd = rn.ready()
        assert not rd.entries
        assert not rd.must_sync
        rn.advance()


def test_restart_from_storage_keeps_term_vote_and_log() -> None:
    rn, st = single_node()
    rn.campaign()
    handle(rn, st)
    rn.propose(b"x")
    for _ in range(3):
        if rn.has_ready():
            handle(rn, st)
    rn2 = RawNode(Config(id=1, storage=st, rng=random.Random(2)))
    r = rn2.raft
    assert (r.term, r.vote, r.raft_log.last_index()) == (1, 1, 2)
    assert r.raft_log.committed == 2 and r.state == StateType.Follower


def test_unpersisted_state_is_lost_on_restart() -> None:
    rn, st = single_node()
    rn.campaign()
    rn.ready()  # never persisted: "crash" now
    rn2 = RawNode(Config(id=1, storage=st, rng=random.Random(2)))
    assert (rn2.raft.term, rn2.raft.vote, rn2.raft.raft_log.last_index()) == (0, 0, 0)


def test_proposal_dropped_without_leader_and_during_transfer() -> None:
    c = Cluster()
    with pytest.raises(ProposalDropped):
        c[1].raw.propose(b"x")
    c.elect(1)
    c.isolate(3)
    c[1].raw.transfer_leader(3)
    with pytest.raises(ProposalDropped):
        c[1].raw.propose(b"x")


def test_uncommitted_size_limit_drops_proposals() -> None:
    c = Cluster(max_uncommitted_entries_size=100)
    c.elect(1)
    c.isolate(1)  # nothing commits
    c[1].raw.propose(b"a" * 60)
    c[1].raw.propose(b"b" * 30)
    with pytest.raises(ProposalDropped):
        c[1].raw.propose(b"c" * 30)


def test_max_size_per_msg_splits_appends() -> None:
    c = Cluster(max_size_per_msg=250)
    c.elect(1)
    c.isolate(2)
    c.isolate(3)
    for k in range(10):
        c[1].raw.propose(bytes([k]) * 100)
    c.stabilize()
    c.recover()
    mark = len(c.trace)
    for _ in range(3):
        c.tick(1)
        c.stabilize()
    apps = [m for m in c.trace[mark:] if m.type == M.MsgApp and m.entries]
    assert apps and max(sum(len(e.data) for e in m.entries) for m in apps) <= 250
    assert c[2].applied_data() == c[1].applied_data()


def test_max_inflight_bounds_pipelining() -> None:
    c = Cluster(max_inflight_msgs=2)
    c.elect(1)
    c.drop_filter = lambda m: m.type == M.MsgAppResp  # acks never come back
    for k in range(6):
        c[1].raw.propose(b"%d" % k)
        c.stabilize()
    sent_to_2 = [m for m in c.trace if m.type == M.MsgApp and m.to == 2 and m.entries]
    # 1 for the leader's empty entry (acknowledged before the drop) + at most 2 in flight.
    assert len(sent_to_2) <= 3


def test_fast_backoff_uses_reject_hint() -> None:
    """A follower with a long divergent tail is repaired in a couple of round trips, not one
    per entry."""
    c = Cluster(pre_vote=False)
    st = c[2].storage
    st.append([Entry(1, i) for i in range(1, 3)] + [Entry(2, i) for i in range(3, 60)])
    st.set_hard_state(HardState(term=2))
    c[1].storage.append([Entry(1, i) for i in range(1, 3)] + [Entry(3, i) for i in range(3, 6)])
    c[1].storage.set_hard_state(HardState(term=3))
    c.restart(1)
    c.restart(2)
    c.isolate(2)
    c.elect(1)
    c.recover()
    mark = len(c.trace)
    for _ in range(3):
        c.tick(1)
        c.stabilize()
    rejects = [m for m in c.trace[mark:] if m.type == M.MsgAppResp and m.reject and m.frm == 2]
    assert 1 <= len(rejects) <= 3
    assert [(e.index, e.term) for e in c[2].raft.raft_log.all_entries()] == [
        (e.index, e.term) for e in c[1].raft.raft_log.all_entries()]


def test_report_unreachable_and_snapshot_status() -> None:
    c = Cluster()
    c.elect(1)
    c.propose(1, b"x")
    r = c[1].raft
    assert r.trk.progress[2].state == ProgressState.Replicate
    c[1].raw.report_unreachable(2)
    # mypy keeps the narrowing from the assert above across the call that changes the state
    assert r.trk.progress[2].state == ProgressState.Probe  # type: ignore[comparison-overlap]
    r.trk.progress[3].become_snapshot(5)
    c[1].raw.report_snapshot(3, failed=True)
    pr = r.trk.progress[3]
    assert pr.state == ProgressState.Probe and pr.msg_app_flow_paused


def test_duplicate_proposal_message_does_not_corrupt_log() -> None:
    c = Cluster()
    c.elect(1)
    c[2].raw.propose(b"dup")
    rd = c[2].raw.ready()
    c[2].raw.advance()
    (fwd,) = [m for m in rd.messages if m.type == M.MsgProp]
    c[1].raw.step(fwd)
    c[1].raw.step(fwd)  # the transport duplicated it
    c.stabilize()
    assert c[1].applied_data() == [b"dup", b"dup"]
    assert [e.index for e in c[1].applied] == list(range(1, len(c[1].applied) + 1))


def test_local_messages_from_the_network_are_ignored() -> None:
    c = Cluster()
    c[2].raw.step(Message(M.MsgHup, frm=1, to=2))
    assert c[2].state == StateType.Follower


def test_raft_package_does_no_io() -> None:
    """conch/raft imports no I/O, clock, thread or asyncio module and nothing of conch except
    conch.proto (only in the codec)."""
    banned = {"socket", "os", "time", "threading", "asyncio", "select", "subprocess",
              "multiprocessing", "datetime", "io", "pathlib", "selectors", "signal"}
    pkg = Path(__file__).resolve().parents[2] / "conch" / "raft"
    for path in pkg.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in banned, f"{path.name} imports {name}"
                if top == "conch":
                    assert name.startswith(("conch.raft", "conch.proto")), (path.name, name)


def test_election_uses_injected_rng_only() -> None:
    def timeouts(seed: int) -> list[int]:
        st = MemoryStorage(conf_state=ConfState(voters=[1, 2, 3]))
        r = Raft(Config(id=1, storage=st, rng=random.Random(seed)))
        out = []
        for t in range(1, 20):
            r.become_follower(t, 0)
            out.append(r.randomized_election_timeout)
        return out

    assert timeouts(5) == timeouts(5)
    assert timeouts(5) != timeouts(6)


def test_lease_based_reads_require_check_quorum() -> None:
    from conch.raft import ReadOnlyOption

    st = MemoryStorage(conf_state=ConfState(voters=[1]))
    with pytest.raises(ValueError, match="CheckQuorum"):
        Raft(Config(id=1, storage=st, check_quorum=False,
                    read_only_option=ReadOnlyOption.LeaseBased))
    with pytest.raises(ValueError):
        Raft(Config(id=1, storage=st, election_tick=1, heartbeat_tick=1))
