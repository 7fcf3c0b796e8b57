"""A small synchronous in-memory cluster for paper and scenario tests (like etcd's ``network``).

Each node is a RawNode over a MemoryStorage. ``stabilize()`` processes Readys and delivers
messages until nothing moves; ``isolate``/``cut``/``drop`` shape the network. Everything is
deterministic: election timeouts come from ``random.Random(seed + id)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from conch.raft import (
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadState,
    StateType,
    conf_change_from_entry,
)
from conch.raft.raft import Raft


@dataclass
class Node:
    id: int
    storage: MemoryStorage
    raw: RawNode
    applied: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    conf_state: ConfState = field(default_factory=ConfState)

    @property
    def raft(self) -> Raft:
        return self.raw.raft

    @property
    def state(self) -> StateType:
        return self.raw.raft.state

    def applied_data(self) -> list[bytes]:
        return [e.data for e in self.applied if e.type == EntryType.EntryNormal and e.data]


def make_config(node_id: int, storage: MemoryStorage, seed: int = 0, **kw: object) -> Config:
    cfg = Config(id=node_id, storage=storage, rng=random.Random(seed * 1000 + node_id))
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


class Cluster:
    def __init__(
        self,
        voters: Iterable[int] = (1, 2, 3),
        learners: Iterable[int] = (),
        seed: int = 0,
        extra: Iterable[int] = (),
        **kw: object,
    ) -> None:
        self.seed = seed
        self.kw = kw
        cs = ConfState(voters=list(voters), learners=list(learners))
        self.nodes: dict[int, Node] = {}
        for i in [*cs.voters, *cs.learners]:
            self.add_node(i, cs)
        for i in extra:
            # Nodes to be added later. Like a joining etcd member they know the current
            # configuration (in etcd they learn it from the log) but are not part of it.
            self.add_node(i, cs)
        self.dropped: set[tuple[int, int]] = set()
        self.drop_filter: Callable[[Message], bool] | None = None
        self.trace: list[Message] = []
        self.inflight: list[Message] = []

    def add_node(self, i: int, cs: ConfState) -> Node:
        st = MemoryStorage(conf_state=cs)
        node = Node(i, st, RawNode(make_config(i, st, self.seed, **self.kw)), conf_state=cs)
        self.nodes[i] = node
        return node

    def restart(self, i: int) -> None:
        old = self.nodes[i]
        applied = old.storage.snapshot().metadata.index
        raw = RawNode(make_config(i, old.storage, self.seed + 7, applied=applied, **self.kw))
        self.nodes[i] = Node(i, old.storage, raw, conf_state=old.conf_state)

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    # --- network shaping ---

    def cut(self, a: int, b: int) -> None:
        self.dropped |= {(a, b), (b, a)}

    def isolate(self, a: int) -> None:
        for b in self.nodes:
            if b != a:
                self.cut(a, b)

    def recover(self) -> None:
        self.dropped.clear()
        self.drop_filter = None

    # --- driving ---

    def process_ready(self, node: Node) -> list[Message]:
        raw = node.raw
        if not raw.has_ready():
            return []
        rd = raw.ready()
        if rd.snapshot is not None:
            node.storage.apply_snapshot(rd.snapshot)
            node.conf_state = rd.snapshot.metadata.conf_state
            node.applied = [Entry(index=rd.snapshot.metadata.index, data=b"<snapshot>")]
        node.storage.append(rd.entries)
        if rd.hard_state is not None:
            node.storage.set_hard_state(rd.hard_state)
        for e in rd.committed_entries:
            node.applied.append(e)
            if e.type != EntryType.EntryNormal:
                node.conf_state = raw.apply_conf_change(conf_change_from_entry(e))
        node.read_states.extend(rd.read_states)
        raw.advance()
        return rd.messages

    def deliverable(self, m: Message) -> bool:
        if (m.frm, m.to) in self.dropped or m.to not in self.nodes:
            return False
        return not (self.drop_filter is not None and self.drop_filter(m))

    def stabilize(self, max_rounds: int = 1000) -> None:
        """Process Readys and deliver messages until quiescent."""
        for _ in range(max_rounds):
            moved = False
            for node in list(self.nodes.values()):
                msgs = self.process_ready(node)
                if msgs:
                    moved = True
                    self.inflight.extend(msgs)
            if self.inflight:
                moved = True
                msgs, self.inflight = self.inflight, []
                for m in msgs:
                    self.trace.append(m)
                    if self.deliverable(m):
                        self.nodes[m.to].raw.step(m)
            if not moved:
                return
        raise AssertionError("cluster did not stabilize")

    def tick(self, i: int, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[i].raw.tick()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for node in self.nodes.values():
                node.raw.tick()
            self.stabilize()

    def campaign(self, i: int) -> None:
        self.nodes[i].raw.campaign()
        self.stabilize()

    def elect(self, i: int) -> None:
        self.campaign(i)
        assert self.nodes[i].state == StateType.Leader, self.describe()

    def propose(self, i: int, data: bytes) -> None:
        self.nodes[i].raw.propose(data)
        self.stabilize()

    def leader(self) -> int:
        leaders = [i for i, n in self.nodes.items() if n.state == StateType.Leader]
        assert len(leaders) <= 1 or len({self.nodes[i].raft.term for i in leaders}) == len(
            leaders
        )
        return max(leaders, key=lambda i: self.nodes[i].raft.term) if leaders else 0

    def types_sent(self, since: int = 0) -> list[tuple[int, int, MessageType]]:
        return [(m.frm, m.to, MessageType(m.type)) for m in self.trace[since:]]

    def describe(self) -> str:
        lines = []
        for i, n in self.nodes.items():
            r = n.raft
            lines.append(
                f"{i}: {r.state.name} term={r.term} lead={r.lead} last={r.raft_log.last_index()}"
                f" commit={r.raft_log.committed} applied={r.raft_log.applied}"
            )
        return "\n".join(lines)
