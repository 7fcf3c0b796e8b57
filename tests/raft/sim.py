"""Deterministic cluster simulator for conch.raft, with invariant checks after every step.

One seed fixes everything: cluster size (3 or 5), raft knobs, the fault mix, and every random
choice during the run (message delay, loss, duplication and reordering, partitions, crashes,
client proposals, reads, membership changes, leadership transfers). A run is:

1. **chaos** for a seed-chosen number of rounds. Each round delivers due messages, ticks every
   live node and processes each node's Ready like a real server: persist to its MemoryStorage
   (the "disk"), send, apply, advance. A crash drops the RawNode and the volatile state machine:
   everything not persisted through a Ready is lost (sometimes mid-Ready: after persisting,
   before sending). A restart rebuilds the node from its storage.
2. **heal**: the network is made reliable, every node restarted; within a bounded number of
   rounds a leader must emerge and a fresh proposal must be applied by every member.

Checked after every Ready (and on every leadership change):
- election safety: at most one leader per term;
- log matching: an (index, term) pair always names the same entry with the same predecessor term;
- leader completeness: a new leader holds every entry known committed;
- commit safety: an index known committed always holds the same entry (no committed entry lost
  or replaced, across crashes too);
- state machine safety: each node applies exactly the global committed sequence, in order, and
  snapshots carry a digest equal to the global prefix they claim;
- linearizable reads: a read index is >= every commit index known when the read was issued.

Membership changes are proposed at the leader after validating them against its configuration
(as a server does). Two liveness hazards of apply-time membership, shared with etcd, are avoided
by the workload rather than "fixed": removals/demotions only with PreVote on, and never below two
voters (see ``conf_change``). Reads are safe-mode only (lease reads trade safety for clock
assumptions the simulator does not model).

Replay a seed: ``python -m tests.raft.sim --seed N [--bug NAME] [--trace]``.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from conch.raft import (
    ConfChange,
    ConfChangeError,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfChangeV2,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    Snapshot,
    StateType,
    conf_change_from_entry,
)
from conch.raft.confchange import Changer
from conch.raft.errors import Compacted, Unavailable

LEADER = StateType.Leader
ENTRY_NORMAL = EntryType.EntryNormal
MSG_SNAP = MessageType.MsgSnap
CCT = ConfChangeType


class SimFailure(AssertionError):
    pass


def replay_command(seed: int, bug: str = "") -> str:
    extra = f" --bug {bug}" if bug else ""
    return f".venv/bin/python -m tests.raft.sim --seed {seed}{extra} --trace"


@dataclass
class Params:
    n: int
    election_tick: int
    pre_vote: bool
    check_quorum: bool
    max_size_per_msg: int
    max_inflight: int
    compact_every: int
    p_drop: float
    p_dup: float
    max_delay: int
    chaos_rounds: int
    p_partition: float
    p_crash: float
    p_propose: float
    p_read: float
    p_conf: float
    p_transfer: float
    allow_remove: bool

    @classmethod
    def from_seed(cls, seed: int) -> Params:
        r = random.Random(seed ^ 0x5EED)
        pre_vote = r.random() < 0.7
        check_quorum = r.random() < 0.8
        return cls(
            n=3 if seed % 2 == 0 else 5,
            election_tick=r.choice([4, 5, 8]),
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            max_size_per_msg=r.choice([1 << 20, 1 << 20, 40, 0]),
            max_inflight=r.choice([1, 2, 256]),
            compact_every=r.choice([0, 3, 8, 20]),
            p_drop=r.choice([0.0, 0.02, 0.1, 0.25]),
            p_dup=r.choice([0.0, 0.02, 0.1]),
            max_delay=r.choice([0, 1, 2, 5]),
            chaos_rounds=r.randint(50, 160),
            p_partition=r.choice([0.0, 0.03, 0.08]),
            p_crash=r.choice([0.0, 0.01, 0.04]),
            p_propose=r.choice([0.1, 0.3, 0.6]),
            p_read=r.choice([0.0, 0.1, 0.3]),
            p_conf=r.choice([0.0, 0.03, 0.08]),
            p_transfer=r.choice([0.0, 0.01, 0.04]),
            # Without PreVote, a node whose configuration lags (it does not know a newer voter)
            # can livelock elections: each failed campaign of its own bumps its term to exactly
            # the term the real candidate asks for next. etcd runs with PreVote for this reason.
            allow_remove=pre_vote,
        )


@dataclass
class SimNode:
    id: int
    storage: MemoryStorage
    raw: RawNode | None = None
    incarnation: int = 0
    # Volatile state machine: applied index, rolling digest of the applied sequence, config.
    applied: int = 0
    digest: int = 0
    conf_state: ConfState = field(default_factory=ConfState)
    seen_commit: int = 0
    crash_mid_ready: bool = False
    force_snapshot: bool = False


def _digest(prev: int, term: int, etype: int, data: bytes) -> int:
    return hash((prev, term, etype, data))


class Sim:
    def __init__(self, seed: int, bug: str = "", trace: bool = False,
                 params: Params | None = None) -> None:
        self.seed = seed
        self.bug = bug
        self.p = params if params is not None else Params.from_seed(seed)
        self.rng = random.Random(seed)
        self.trace_on = trace
        self.now = 0
        self.ids = list(range(1, self.p.n + 1))
        initial = ConfState(voters=self.ids)
        self.nodes = {i: SimNode(i, MemoryStorage(conf_state=initial), conf_state=initial)
                      for i in self.ids}
        # network: due round -> list of (sender incarnation, message)
        self.queue: dict[int, list[tuple[int, Message]]] = {}
        self.blocked: set[tuple[int, int]] = set()
        self.p_drop = self.p.p_drop
        self.p_dup = self.p.p_dup
        self.max_delay = self.p.max_delay
        # --- checker state ---
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.entries_seen: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self.committed: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, type, data)
        self.max_committed = 0
        self.global_digest: dict[int, int] = {0: 0}
        self.applied_seq: dict[int, tuple[int, int, bytes]] = {}
        self.reads: dict[bytes, tuple[int, int]] = {}  # ctx -> (node, min index)
        self.reads_answered = 0
        self.counter = 0
        for i in self.ids:
            self.start(i)

    # --- lifecycle ---

    def log(self, msg: str) -> None:
        if self.trace_on:
            print(f"[{self.now:4d}] {msg}")

    def fail(self, msg: str) -> None:
        raise SimFailure(f"seed {self.seed}: round {self.now}: {msg}")

    def start(self, i: int) -> None:
        node = self.nodes[i]
        snap = node.storage.snapshot()
        meta = snap.metadata
        cfg = Config(
            id=i,
            storage=node.storage,
            election_tick=self.p.election_tick,
            heartbeat_tick=1,
            applied=meta.index,
            max_size_per_msg=self.p.max_size_per_msg,
            max_inflight_msgs=self.p.max_inflight,
            check_quorum=self.p.check_quorum,
            pre_vote=self.p.pre_vote,
            rng=random.Random(self.rng.getrandbits(32)),
            unsafe_bug=self.bug,
        )
        node.raw = RawNode(cfg)
        node.incarnation += 1
        node.applied = meta.index
        node.digest = self._snapshot_digest(snap) if meta.index else 0
        node.conf_state = meta.conf_state
        node.seen_commit = node.raw.raft.raft_log.committed
        node.crash_mid_ready = False
        self.check_commit(node)
        self.log(f"start {i} (incarnation {node.incarnation}, snapshot {meta.index})")

    def crash(self, i: int) -> None:
        node = self.nodes[i]
        node.raw = None
        self.log(f"crash {i}")

    def up(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raw is not None]

    # --- network ---

    def send(self, frm: SimNode, msgs: list[Message]) -> None:
        rng = self.rng
        for m in msgs:
            if (m.frm, m.to) in self.blocked or (self.p_drop and rng.random() < self.p_drop):
                self._dropped(frm, m)
                continue
            copies = 2 if self.p_dup and rng.random() < self.p_dup else 1
            for _ in range(copies):
                due = self.now + 1 + (rng.randint(0, self.max_delay) if self.max_delay else 0)
                self.queue.setdefault(due, []).append((frm.incarnation, m))

    def _dropped(self, frm: SimNode, m: Message) -> None:
        raw = frm.raw
        if raw is None:
            return
        if m.type == MSG_SNAP:
            raw.report_snapshot(m.to, True)
        elif (m.frm, m.to) in self.blocked and self.rng.random() < 0.5:
            raw.report_unreachable(m.to)

    def deliver(self) -> None:
        batch = self.queue.pop(self.now, None)
        if not batch:
            return
        for inc, m in batch:
            dst = self.nodes[m.to]
            if dst.raw is None or (m.frm, m.to) in self.blocked:
                src = self.nodes[m.frm]
                if src.incarnation == inc:
                    self._dropped(src, m)
                continue
            dst.raw.step(m)
            if m.type == MSG_SNAP:
                src = self.nodes[m.frm]
                if src.raw is not None and src.incarnation == inc:
                    src.raw.report_snapshot(m.to, False)

    # --- Ready processing (the "server loop") ---

    def process(self, node: SimNode) -> None:
        for _ in range(4):
            raw = node.raw
            if raw is None or not raw.has_ready():
                return
            rd = raw.ready()
            r = raw.raft
            if rd.soft_state is not None and rd.soft_state.raft_state == LEADER:
                self.check_new_leader(node)
            # 1. persist
            st = node.storage
            if rd.snapshot is not None:
                st.apply_snapshot(rd.snapshot)
            if rd.entries:
                self.check_entries(node, rd.entries)
                st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            if node.crash_mid_ready:
                self.log(f"crash {node.id} mid-Ready (persisted, nothing sent)")
                self.crash(node.id)
                return
            # 2. send
            if rd.messages:
                self.send(node, rd.messages)
            # 3. apply
            if rd.snapshot is not None:
                self.apply_snapshot(node, rd.snapshot)
            for e in rd.committed_entries:
                self.apply(node, e)
            for rs in rd.read_states:
                self.log(f"read {rs.request_ctx!r} answered at {node.id}: index {rs.index}")
                self.check_read(node, rs.index, rs.request_ctx)
            raw.advance()
            if r.raft_log.committed != node.seen_commit:
                self.check_commit(node)
            self.maybe_compact(node)

    def apply(self, node: SimNode, e: Entry) -> None:
        if e.index != node.applied + 1:
            self.fail(f"node {node.id} applies {e.index} after {node.applied}")
        want = self.applied_seq.get(e.index)
        got = (e.term, e.type, e.data)
        if want is None:
            if e.index - 1 not in self.global_digest:
                self.fail(f"node {node.id} applies {e.index} before anyone applied {e.index - 1}")
            self.applied_seq[e.index] = got
            self.global_digest[e.index] = _digest(self.global_digest[e.index - 1], *got)
        elif want != got:
            self.fail(f"state machine safety: node {node.id} applies {got} at {e.index}, "
                      f"others applied {want}")
        node.applied = e.index
        node.digest = self.global_digest[e.index]
        if e.type != ENTRY_NORMAL:
            raw = node.raw
            assert raw is not None
            cc = conf_change_from_entry(e)
            try:
                node.conf_state = raw.apply_conf_change(cc)
            except ConfChangeError as exc:
                self.fail(f"node {node.id}: committed conf change {cc!r} invalid: {exc}")
            self.log(f"node {node.id} applied {cc!r} -> {node.conf_state}")
            # Snapshot policy: a conf change forces a snapshot, so a snapshot never predates
            # the latest membership (a re-added node ignores snapshots that do not list it).
            node.force_snapshot = True

    def apply_snapshot(self, node: SimNode, snap: Snapshot) -> None:
        idx = snap.metadata.index
        if idx <= node.applied:
            self.fail(f"node {node.id}: snapshot {idx} does not move applied {node.applied}")
        digest = self._snapshot_digest(snap)
        if self.global_digest.get(idx) != digest:
            self.fail(f"snapshot at {idx} does not match the applied sequence")
        node.applied = idx
        node.digest = digest
        node.conf_state = snap.metadata.conf_state
        self.log(f"node {node.id} installed snapshot {idx}")

    def _snapshot_digest(self, snap: Snapshot) -> int:
        return int(snap.data.decode())

    def maybe_compact(self, node: SimNode) -> None:
        every = self.p.compact_every
        st = node.storage
        if not every or (node.applied - st.first_index() < every and not node.force_snapshot):
            return
        node.force_snapshot = False
        if node.applied <= st.snapshot().metadata.index:
            return
        # Keep a couple of entries so slightly lagging followers need no snapshot.
        st.create_snapshot(node.applied, node.conf_state, str(node.digest).encode())
        keep = self.rng.randint(0, 2)
        if node.applied - keep >= st.first_index():
            st.compact(node.applied - keep)

    # --- invariants ---

    def check_new_leader(self, node: SimNode) -> None:
        raw = node.raw
        assert raw is not None
        term = raw.raft.term
        prev = self.leaders.setdefault(term, node.id)
        if prev != node.id:
            self.fail(f"election safety: {prev} and {node.id} are both leader in term {term}")
        self.log(f"leader {node.id} term {term}")
        # Leader completeness: every entry known committed is in the new leader's log.
        log = raw.raft.raft_log
        first = log.first_index()
        for idx in range(max(first, 1), self.max_committed + 1):
            want = self.committed.get(idx)
            if want is None:
                continue
            try:
                t = log.term(idx)
            except (Compacted, Unavailable):
                t = -1
            if t != want[0]:
                self.fail(f"leader completeness: leader {node.id} (term {term}) has term {t} "
                          f"at committed index {idx}, want {want[0]}")

    def check_entries(self, node: SimNode, ents: list[Entry]) -> None:
        raw = node.raw
        assert raw is not None
        log = raw.raft.raft_log
        try:
            prev_term = log.term(ents[0].index - 1)
        except (Compacted, Unavailable):
            prev_term = -1
        seen = self.entries_seen
        for e in ents:
            key = (e.index, e.term)
            got = (e.type, e.data, prev_term)
            old = seen.get(key)
            if old is None:
                seen[key] = got
            elif old != got and not (prev_term == -1 or old[2] == -1) or old[:2] != got[:2]:
                self.fail(f"log matching: node {node.id} persists {e!r} (prev term {prev_term})"
                          f", but ({e.index}, {e.term}) was {old}")
            prev_term = e.term

    def check_commit(self, node: SimNode) -> None:
        raw = node.raw
        assert raw is not None
        log = raw.raft.raft_log
        c = log.committed
        lo = max(node.seen_commit + 1, log.first_index())
        node.seen_commit = c
        if c <= 0 or lo > c:
            return
        for e in log.slice(lo, c + 1, 1 << 62):
            got = (e.term, e.type, e.data)
            want = self.committed.get(e.index)
            if want is None:
                self.committed[e.index] = got
            elif want != got:
                self.fail(f"commit safety: node {node.id} has {got} committed at {e.index}, "
                          f"but {want} was committed there")
        if c > self.max_committed:
            self.max_committed = c

    def check_read(self, node: SimNode, index: int, ctx: bytes) -> None:
        info = self.reads.get(ctx)
        if info is None:
            self.fail(f"node {node.id} got an answer to unknown read {ctx!r}")
            return
        asker, min_index = info
        if asker != node.id:
            self.fail(f"read {ctx!r} of node {asker} answered at node {node.id}")
        if index < min_index:
            self.fail(f"linearizability: read {ctx!r} got index {index} but {min_index} was "
                      f"committed before the read began")
        self.reads_answered += 1

    # --- client operations ---

    def leader(self) -> SimNode | None:
        best: SimNode | None = None
        for n in self.up():
            assert n.raw is not None
            if n.raw.raft.state == LEADER and (
                best is None or n.raw.raft.term > best.raw.raft.term  # type: ignore[union-attr]
            ):
                best = n
        return best

    def propose(self, node: SimNode, count: int = 1) -> None:
        raw = node.raw
        assert raw is not None
        datas = []
        for _ in range(count):
            self.counter += 1
            datas.append(b"v%d" % self.counter)
        try:
            raw.propose_batch(datas)
        except ProposalDropped:
            pass

    def read(self, node: SimNode) -> None:
        raw = node.raw
        assert raw is not None
        self.counter += 1
        ctx = b"r%d" % self.counter
        self.reads[ctx] = (node.id, self.max_committed_now())
        self.log(f"read {ctx!r} at {node.id}, min index {self.reads[ctx][1]}")
        raw.read_index(ctx)

    def max_committed_now(self) -> int:
        m = self.max_committed
        for n in self.up():
            assert n.raw is not None
            c = n.raw.raft.raft_log.committed
            if c > m:
                m = c
        return m

    def conf_change(self, node: SimNode) -> None:
        raw = node.raw
        assert raw is not None
        trk = raw.raft.trk
        voters = sorted(trk.voters.incoming)
        learners = sorted(trk.learners)
        absent = [i for i in self.ids if i not in trk.progress]
        rng = self.rng
        options: list[Callable[[], ConfChange | ConfChangeV2]] = []
        if absent:
            options.append(lambda: ConfChange(CCT.ConfChangeAddLearnerNode, rng.choice(absent)))
            options.append(lambda: ConfChange(CCT.ConfChangeAddNode, rng.choice(absent)))
        if learners:
            options.append(lambda: ConfChange(CCT.ConfChangeAddNode, rng.choice(learners)))
        # Shrinking below two voters is not attempted: with membership taking effect on apply,
        # a 2-voter config that drops one voter can deadlock if the dropped node (now a
        # non-voter that never campaigns) holds a longer log than the remaining one and refuses
        # its vote. etcd has the same hazard; it is a liveness, not a safety, problem.
        if self.p.allow_remove and len(voters) > 2:
            options.append(lambda: ConfChange(CCT.ConfChangeRemoveNode, rng.choice(voters)))
            options.append(lambda: ConfChangeV2(changes=[
                ConfChangeSingle(CCT.ConfChangeAddLearnerNode, rng.choice(voters))]))
        if absent and len(voters) > 2 and self.p.allow_remove:
            options.append(lambda: ConfChangeV2(changes=[
                ConfChangeSingle(CCT.ConfChangeAddNode, rng.choice(absent)),
                ConfChangeSingle(CCT.ConfChangeRemoveNode, rng.choice(voters)),
            ], transition=rng.choice([ConfChangeTransition.Auto,
                                      ConfChangeTransition.JointImplicit])))
        if not options:
            return
        cc = rng.choice(options)()
        # Validate against the leader's configuration, as a real server does before proposing.
        v2 = cc.as_v2()
        changer = Changer(trk, raw.raft.raft_log.last_index())
        try:
            auto_leave, joint = v2.enter_joint()
            if joint:
                changer.enter_joint(auto_leave, v2.changes)
            else:
                changer.simple(v2.changes)
        except ConfChangeError:
            return
        self.log(f"propose {cc!r} at {node.id}")
        try:
            raw.propose_conf_change(cc)
        except ProposalDropped:
            pass

    # --- the run ---

    def round(self, chaos: bool) -> None:
        rng = self.rng
        p = self.p
        self.now += 1
        if chaos:
            self.faults()
            up = self.up()
            if up and rng.random() < p.p_propose:
                self.propose(rng.choice(up), rng.choice([1, 1, 1, 3]))
            if up and p.p_read and rng.random() < p.p_read:
                self.read(rng.choice(up))
            if p.p_conf and rng.random() < p.p_conf:
                ld = self.leader()
                if ld is not None:
                    self.conf_change(ld)
            if p.p_transfer and rng.random() < p.p_transfer:
                ld = self.leader()
                if ld is not None:
                    assert ld.raw is not None
                    target = rng.choice(self.ids)
                    self.log(f"transfer {ld.id} -> {target}")
                    ld.raw.transfer_leader(target)
        self.deliver()
        for n in self.up():
            assert n.raw is not None
            if not chaos or rng.random() < 0.97:  # a little clock skew
                n.raw.tick()
        for n in self.up():
            self.process(n)

    def faults(self) -> None:
        rng = self.rng
        p = self.p
        if p.p_partition and rng.random() < p.p_partition:
            if self.blocked:
                self.blocked = set()
                self.log("heal")
            else:
                k = rng.randint(1, p.n // 2)
                side = set(rng.sample(self.ids, k))
                self.blocked = {(a, b) for a in self.ids for b in self.ids
                                if (a in side) != (b in side)}
                self.log(f"partition {sorted(side)} | rest")
        if p.p_crash:
            for n in self.nodes.values():
                if n.raw is None:
                    if rng.random() < 0.1:
                        self.start(n.id)
                elif rng.random() < p.p_crash:
                    if rng.random() < 0.3:
                        n.crash_mid_ready = True
                    else:
                        self.crash(n.id)

    def run(self) -> None:
        for _ in range(self.p.chaos_rounds):
            self.round(chaos=True)
        self.heal()

    def heal(self) -> None:
        self.log("--- heal: reliable network, everyone up ---")
        self.blocked = set()
        self.p_drop = 0.0
        self.p_dup = 0.0
        self.max_delay = 0
        for n in self.nodes.values():
            if n.raw is None:
                self.start(n.id)
            n.crash_mid_ready = False
        et = self.p.election_tick
        # Bound: a few election timeouts, plus one round per log entry, because with one-entry
        # messages (max_size_per_msg=0) and a window of one, a lagging member catches up by
        # one entry per round trip.
        longest = max(n.raw.raft.raft_log.last_index() for n in self.up() if n.raw is not None)
        limit = 60 + 12 * et + longest
        probe_index = 0
        probe_at = 0
        for k in range(limit):
            self.round(chaos=False)
            ld = self.leader()
            if ld is None:
                continue
            assert ld.raw is not None
            members = ld.raw.raft.trk.progress
            if probe_index and all(self.nodes[i].applied >= probe_index for i in members):
                self.log(f"live: probe {probe_index} applied by {sorted(members)} at round {k}")
                return
            if k - probe_at >= 2 * et or not probe_index:
                probe_at = k
                try:
                    ld.raw.propose(b"probe%d" % k)
                    probe_index = ld.raw.raft.raft_log.last_index()
                except ProposalDropped:
                    pass
        states = "; ".join(
            f"{n.id}:{n.raw.raft.state.name} t{n.raw.raft.term} applied={n.applied} "
            f"commit={n.raw.raft.raft_log.committed} last={n.raw.raft.raft_log.last_index()}"
            for n in self.nodes.values() if n.raw is not None
        )
        self.fail(f"liveness: no probe committed and applied by all members within {limit} "
                  f"rounds of healing ({states})")


def run_seed(seed: int, bug: str = "", trace: bool = False) -> str | None:
    """Run one seed; return None if every check passed, else the failure text."""
    try:
        Sim(seed, bug=bug, trace=trace).run()
    except SimFailure as exc:
        return str(exc)
    except Exception as exc:  # a crash inside raft is a failure too
        return f"seed {seed}: {type(exc).__name__}: {exc}"
    return None


def run_range(start: int, count: int, bug: str = "", stop_at_first: bool = False) -> list[str]:
    failures = []
    for seed in range(start, start + count):
        err = run_seed(seed, bug)
        if err is not None:
            failures.append(err)
            if stop_at_first:
                break
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--bug", default="")
    ap.add_argument("--trace", action="store_true")
    args = ap.parse_args(argv)
    bad = 0
    for seed in range(args.seed, args.seed + args.count):
        if args.trace:
            print(Params.from_seed(seed))
        err = run_seed(seed, args.bug, args.trace)
        if err is not None:
            bad += 1
            print(f"FAIL {err}\n  replay: {replay_command(seed, args.bug)}")
    print(f"{args.count - bad}/{args.count} seeds passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
