"""Microbenchmark: committed entries per second through three in-process raft cores.

No I/O: each node persists into a MemoryStorage, messages are handed directly to the peer's
``step``, and "applying" counts entries. The leader proposes batches of 128-byte entries
(``propose_batch``), keeping a bounded number of entries in flight, so this measures the core's
own cost: log bookkeeping, message construction, flow control, commit calculation, Ready
handling.

    .venv/bin/python bench/raft_bench.py [--entries 300000] [--batch 1000] [--size 128]

An entry counts as committed when the leader applies it (the figure reported); followers apply
the same entries and are checked to have done so at the end.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conch.raft import (  # noqa: E402
    Config,
    ConfState,
    MemoryStorage,
    Message,
    RawNode,
    StateType,
)


class BenchNode:
    def __init__(self, node_id: int, voters: list[int]) -> None:
        self.id = node_id
        self.storage = MemoryStorage(conf_state=ConfState(voters=voters))
        self.raw = RawNode(Config(id=node_id, storage=self.storage, election_tick=10,
                                  heartbeat_tick=1, max_size_per_msg=1 << 20,
                                  max_inflight_msgs=256, rng=random.Random(node_id)))
        self.applied = 0
        self.applied_index = 0

    def process(self) -> list[Message]:
        raw = self.raw
        if not raw.has_ready():
            return []
        rd = raw.ready()
        st = self.storage
        if rd.snapshot is not None:
            st.apply_snapshot(rd.snapshot)
        if rd.entries:
            st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        ce = rd.committed_entries
        if ce:
            self.applied += sum(1 for e in ce if e.data)
            self.applied_index = ce[-1].index
        raw.advance()
        return rd.messages


def run(total: int, batch: int, size: int, window: int) -> tuple[float, int]:
    ids = [1, 2, 3]
    nodes = {i: BenchNode(i, ids) for i in ids}
    leader = nodes[1]
    leader.raw.campaign()
    inbox: list[Message] = []
    for _ in range(100):  # elect
        for n in nodes.values():
            inbox.extend(n.process())
        msgs, inbox = inbox, []
        for m in msgs:
            nodes[m.to].raw.step(m)
        if leader.raw.raft.state == StateType.Leader and not inbox:
            break
    assert leader.raw.raft.state == StateType.Leader
    payload = [bytes([i % 256]) * size for i in range(batch)]
    proposed = 0
    t0 = time.perf_counter()
    loops = 0
    max_loops = 50 * (total // batch + 100)
    while leader.applied < total and loops < max_loops:
        loops += 1
        if proposed < total and proposed - leader.applied < window:
            leader.raw.propose_batch(payload)
            proposed += batch
        for n in nodes.values():
            inbox.extend(n.process())
        msgs, inbox = inbox, []
        for m in msgs:
            nodes[m.to].raw.step(m)
    elapsed = time.perf_counter() - t0
    assert leader.applied >= total, f"only {leader.applied} of {total} committed"
    # drain, then check the followers applied everything too
    for _ in range(20):
        for n in nodes.values():
            inbox.extend(n.process())
        msgs, inbox = inbox, []
        for m in msgs:
            nodes[m.to].raw.step(m)
    for n in nodes.values():
        assert n.applied == leader.applied, (n.id, n.applied, leader.applied)
    return elapsed, leader.applied


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--window", type=int, default=8000, help="max entries proposed, not applied")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    best = 0.0
    for k in range(args.runs):
        elapsed, n = run(args.entries, args.batch, args.size, args.window)
        rate = n / elapsed
        best = max(best, rate)
        print(f"run {k + 1}: {n} entries of {args.size} B in {elapsed:.3f}s = {rate:,.0f} "
              f"committed entries/s")
    print(f"best: {best:,.0f} committed entries/s (3 nodes, batch {args.batch}, "
          f"{args.size} B entries, Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
