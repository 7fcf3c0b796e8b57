"""Deliberately injected bugs, to show the simulator catches them (`--bug NAME`).

Each is a monkeypatch of product code applied only inside `inject(name)`; product code
itself never knows about them.

- `ack-before-durable`: a follower sends its acknowledgements before persisting the entries
  they acknowledge (raftnode's Ready handling moves the follower send before the save).
  A power loss then loses writes a quorum acknowledged.
- `double-apply`: the applier does not skip entries at or below the consistent index, so
  the entries raft replays after a restart are applied a second time.
- `leader-self-ack`: the raft leader counts its own entries as durable as soon as it
  appends them (before its WAL write), so a commit may rest on one durable copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from conch.backend import META_CONSISTENT_INDEX
from conch.proto.etcdserverpb import raft_internal_pb2
from conch.raft import Ready
from conch.raft.codec import entry_to_pb, hard_state_to_pb
from conch.raft.raft import Raft
from conch.raft.types import StateType
from conch.server.applier import Applied, Applier
from conch.server.raftnode import RaftNode

InternalRaftRequest = raft_internal_pb2.InternalRaftRequest


async def _handle_ready_ack_before_durable(self: RaftNode, rd: Ready) -> None:
    if rd.soft_state is not None:
        self._on_soft_state(rd.soft_state.lead, rd.soft_state.raft_state)
    snap = rd.snapshot if rd.snapshot is not None and not rd.snapshot.is_empty() else None
    if snap is not None:
        await self._persist(self.log_store.save_snapshot(snap))
        self.storage.apply_snapshot(snap)
    leader = self.raft_state == StateType.Leader
    unsent = rd.messages
    if unsent and snap is None:  # BUG: followers too send before they persist
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
        self._send(unsent)
        unsent = []
    if snap is not None:
        await self.snapshotter.install(snap)
    if rd.committed_entries:
        self.apply_stage.apply(rd.committed_entries)
    if rd.read_states:
        self.reads.on_read_states(rd.read_states)
    if unsent:
        self._send(unsent)


def _apply_batch_double(
    self: Applier, entries: Sequence[tuple[int, InternalRaftRequest | bytes]]
) -> Applied:
    applied = Applied(last_index=0)
    with self.backend.write() as txn:
        ci = self.backend.get_meta_u64(txn, META_CONSISTENT_INDEX)
        last = ci
        for index, item in entries:
            # BUG: no skip of entries at or below the consistent index
            last = max(last, index)
            if isinstance(item, bytes):
                if not item:
                    continue
                req = InternalRaftRequest.FromString(item)
            else:
                req = item
            rid = req.header.ID or req.ID
            try:
                resp, events, rev = self._apply_one(txn, req, applied)
            except Exception as exc:  # noqa: BLE001 - as the real one, for EtcdError
                applied.results.append((rid, exc))
                continue
            if events:
                applied.events.append((rev, events))
            applied.results.append((rid, resp))
        if last > ci:
            self.backend.put_meta_u64(txn, META_CONSISTENT_INDEX, last)
    applied.last_index = last
    applied.size_in_use = self.backend.size_in_use()
    return applied


BUGS = ("ack-before-durable", "double-apply", "leader-self-ack")


@contextlib.contextmanager
def inject(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    if name not in BUGS:
        raise ValueError(f"unknown bug {name!r}; known: {', '.join(BUGS)}")
    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, attr: str, value: Any) -> None:
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    if name == "ack-before-durable":
        patch(RaftNode, "_handle_ready", _handle_ready_ack_before_durable)
    elif name == "double-apply":
        patch(Applier, "apply_batch", _apply_batch_double)
    elif name == "leader-self-ack":
        _patch_leader_self_ack(patch)
    try:
        yield
    finally:
        for obj, attr, old in reversed(saved):
            setattr(obj, attr, old)


def _patch_leader_self_ack(patch: Any) -> None:
    orig = Raft.append_entries

    def append_entries(self: Raft, es: list[Any], fresh: bool = False) -> bool:
        ok = orig(self, es, fresh)
        if ok:  # BUG: the leader's own copy counts before it is written
            self.leader_persisted(self.raft_log.last_index(), self.term)
        return ok

    patch(Raft, "append_entries", append_entries)
