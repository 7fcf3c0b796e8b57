"""Three raft cores talking through real transports on loopback: election, replication, a
partitioned follower caught up by snapshot transfer (MsgSnap + file through send_snapshot).

This is also a sketch of how a member drives the transport from its Ready loop.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from conch.raft import (
    Config,
    ConfState,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    StateType,
)
from conch.raft.codec import message_to_pb
from conch.transport import SnapshotHeader, Transport

from .nodes import CLUSTER, run, wait_until

TICK = 0.01


class RaftMember:
    def __init__(self, member_id: int, peers: list[int], root: Path) -> None:
        self.id = member_id
        self.peers = peers
        self.dir = root / f"m{member_id}"
        self.storage = MemoryStorage(ConfState(voters=peers))
        self.node = RawNode(Config(id=member_id, storage=self.storage, election_tick=10,
                                   heartbeat_tick=1, rng=random.Random(member_id)))
        self.applied: list[bytes] = []
        self.applied_index = 0
        self.port = 0
        self.transport: Transport | None = None
        self.tick_handle: asyncio.TimerHandle | None = None
        self.snap_tasks: set[asyncio.Task[None]] = set()
        self.processing = False

    def new_transport(self) -> Transport:
        self.transport = Transport(
            member_id=self.id, cluster_id=CLUSTER, listen_urls=[f"http://127.0.0.1:{self.port}"],
            snap_dir=str(self.dir / "snap"), on_message=self.on_message,
            on_snapshot=self.on_snapshot, on_unreachable=self.node.report_unreachable,
            unreachable_after=5 * TICK)
        return self.transport

    # --- inputs ---

    def on_message(self, m: Message) -> None:
        self.node.step(m)
        self.process()

    async def on_snapshot(self, header: SnapshotHeader, path: str) -> None:
        data = await asyncio.to_thread(Path(path).read_bytes)
        m = header.message
        assert m.snapshot is not None
        m.snapshot.data = data  # the "database" came as the file
        self.node.step(m)
        self.process()

    def tick(self) -> None:
        self.node.tick()
        self.process()
        self.tick_handle = asyncio.get_running_loop().call_later(TICK, self.tick)

    # --- the Ready loop ---

    def process(self) -> None:
        if self.processing:
            return
        self.processing = True
        try:
            while self.node.has_ready():
                rd = self.node.ready()
                if rd.snapshot is not None:
                    self.storage.apply_snapshot(rd.snapshot)
                    self.applied = rd.snapshot.data.split(b"\n") if rd.snapshot.data else []
                    self.applied_index = rd.snapshot.metadata.index
                self.storage.append(rd.entries)
                if rd.hard_state is not None:
                    self.storage.set_hard_state(rd.hard_state)
                assert self.transport is not None
                snaps = [m for m in rd.messages if m.type == MessageType.MsgSnap]
                self.transport.send([m for m in rd.messages if m.type != MessageType.MsgSnap])
                for m in snaps:
                    t = asyncio.get_running_loop().create_task(self.ship_snapshot(m))
                    self.snap_tasks.add(t)
                    t.add_done_callback(self.snap_tasks.discard)
                for e in rd.committed_entries:
                    if e.type == EntryType.EntryNormal and e.data:
                        self.applied.append(e.data)
                    self.applied_index = e.index
                self.node.advance()
        finally:
            self.processing = False

    async def ship_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None and self.transport is not None
        path = self.dir / f"out-{m.snapshot.metadata.index}.db"
        await asyncio.to_thread(path.write_bytes, m.snapshot.data)
        header = message_to_pb(m)
        header.snapshot.ClearField("data")  # the data travels as the file, as etcd's db does
        ok = await self.transport.send_snapshot(m.to, header, str(path))
        self.node.report_snapshot(m.to, failed=not ok)
        self.process()

    def compact(self) -> None:
        i = self.applied_index
        self.storage.create_snapshot(i, self.node.status().conf_state, b"\n".join(self.applied))
        self.storage.compact(i)


def _leader(members: list[RaftMember]) -> RaftMember | None:
    leaders = [m for m in members if m.node.status().raft_state == StateType.Leader]
    return leaders[0] if len(leaders) == 1 else None


async def _propose(members: list[RaftMember], datas: list[bytes]) -> RaftMember:
    await wait_until(lambda: _leader(members) is not None, what="a leader")
    leader = _leader(members)
    assert leader is not None
    leader.node.propose_batch(datas)
    leader.process()
    return leader


def test_raft_cluster_over_transport(tmp_path: Path) -> None:
    async def main() -> None:
        ids = [1, 2, 3]
        members = [RaftMember(i, ids, tmp_path) for i in ids]
        for m in members:
            os.makedirs(m.dir, exist_ok=True)
            await m.new_transport().start()
            assert m.transport is not None
            m.port = int(m.transport.listen_urls[0].rsplit(":", 1)[1])
        urls = {m.id: m.transport.listen_urls for m in members if m.transport}
        for m in members:
            assert m.transport is not None
            for o in ids:
                if o != m.id:
                    m.transport.add_peer(o, urls[o])
            m.tick()
        try:
            first = [b"a%d" % i for i in range(300)]
            leader = await _propose(members, first)
            await wait_until(lambda: all(m.applied == first for m in members), what="replicated")

            # partition a follower (its transport goes away), write and compact on the leader
            f = next(m for m in members if m is not leader)
            assert f.transport is not None
            await f.transport.stop()
            second = [b"b%d" % i for i in range(200)]
            leader = await _propose([m for m in members if m is not f], second)
            await wait_until(lambda: leader.applied == first + second, what="quorum applies")
            leader.compact()
            # the leader's queue for f (kept for unreachable_after) must be gone too, or the
            # entries would still arrive by MsgApp after the heal
            assert leader.transport is not None
            lt = leader.transport
            await wait_until(lambda: lt.stats()["etcd_network_peer_sent_failures_total"]
                             [f"{f.id:x}"] > 0, what="leader drops for f")

            # heal: the follower can only catch up through a snapshot
            await f.new_transport().start()
            assert f.transport is not None
            for o in ids:
                if o != f.id:
                    f.transport.add_peer(o, urls[o])
            await wait_until(lambda: f.applied == first + second, timeout=20,
                             what="snapshot catch-up")
            assert leader.transport is not None
            key = f"{f.id:x}"
            # the ack reaches the leader just after f installed the snapshot
            await wait_until(lambda: lt.stats()["etcd_network_snapshot_send_success"][key] >= 1,
                             what="snapshot acked")
            assert f.storage.first_index() > 1  # its log now starts at the snapshot
            third = [b"c%d" % i for i in range(50)]
            await _propose(members, third)
            await wait_until(lambda: all(m.applied == first + second + third for m in members),
                             what="replication after catch-up")
        finally:
            for m in members:
                if m.tick_handle is not None:
                    m.tick_handle.cancel()
                for t in list(m.snap_tasks):
                    t.cancel()
                if m.transport is not None:
                    await m.transport.stop()
    run(main(), timeout=60)
