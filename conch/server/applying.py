"""The apply stage: committed entries -> the store, in log order, then the waiters.

Normal entries go to the `Applier` in runs (one LMDB write transaction per run, the
consistent index in the same transaction); each membership change is applied on its own,
validated against the membership at that point of the log, and then handed to raft
(`apply_conf_change`) and to the transport. After a run: the proposers' futures resolve, the
watch hub gets the events, and linearizable reads waiting for this applied index are released.

Why apply stays on the event loop (docs/design/apply.md has the profile): under the GIL a
thread only helps where the work releases it; an apply run is Python (protobuf, key encoding)
around an LMDB commit of a few microseconds (no fsync: the WAL holds durability), so a thread
would add a hand-off to every write's critical path and win no parallelism.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from conch.lease import Lessor
from conch.mvcc import KVStore
from conch.mvcc.watch import WatchHub
from conch.raft import RawNode
from conch.raft.types import ConfChange, ConfChangeType, Entry, EntryType, conf_change_from_entry
from conch.server.applier import Applied, Applier
from conch.server.membership import Membership
from conch.server.metrics import Metrics
from conch.server.ports import PeerTransport
from conch.server.wait import WaitRegistry

if TYPE_CHECKING:
    from conch.server.read_index import LinearizableReads

log = logging.getLogger("conch.member")


class ApplyStage:
    def __init__(
        self,
        *,
        member_id: int,
        applier: Applier,
        store: KVStore,
        lessor: Lessor,
        hub: WatchHub,
        waits: WaitRegistry,
        cc_waits: WaitRegistry,
        metrics: Metrics,
        applied_index: int,
        raft_applied: int,
        fatal: Callable[[str, BaseException | None], None],
    ) -> None:
        self.member_id = member_id
        self.applier = applier
        self.store = store
        self.lessor = lessor
        self.hub = hub
        self.waits = waits
        self.cc_waits = cc_waits
        self.metrics = metrics
        self._fatal = fatal
        self.node: RawNode  # set by the member
        self.reads: LinearizableReads
        self.transport: PeerTransport | None = None
        #: highest index whose effects are in the store (the backend's consistent index)
        self.applied_index = applied_index
        #: the last log index raft handed us; the consistent index can be ahead of it right
        #: after a snapshot install (the leader's copy was newer)
        self.raft_applied = raft_applied
        self.revision = store.current_revision()
        self.size_in_use = applier.backend.size_in_use()
        # Set when this member applied its own removal: the process should stop.
        self.removed = asyncio.Event()
        self.is_learner = False
        self.lone_voter = False
        self.membership_changed()

    @property
    def membership(self) -> Membership:
        return self.applier.membership

    def membership_changed(self) -> None:
        me = self.membership.members.get(self.member_id)
        self.is_learner = me is not None and me.is_learner
        self.lone_voter = self.membership.voters() == [self.member_id]

    # --- applying --------------------------------------------------------------------------
    def apply(self, entries: list[Entry]) -> None:
        # raft hands out every committed entry once, in order, from the snapshot on
        assert entries[0].index == self.raft_applied + 1, (entries[0].index, self.raft_applied)
        self.raft_applied = entries[-1].index
        normal: list[tuple[int, bytes]] = []
        for e in entries:
            if e.type == EntryType.EntryNormal:
                normal.append((e.index, e.data))
                continue
            if normal:
                self._apply_normal(normal)
                normal = []
            self._apply_conf_change(e)
        if normal:
            self._apply_normal(normal)

    def _apply_normal(self, batch: list[tuple[int, bytes]]) -> None:
        t0 = time.perf_counter()
        try:
            applied = self.applier.apply_batch(batch)
        except Exception as exc:  # the store can no longer follow the log: stop, as etcd panics
            self._fatal("applying entries failed", exc)
            raise
        self.metrics.observe_commit(time.perf_counter() - t0)
        self._on_applied(applied, batch[-1][0])

    def _on_applied(self, applied: Applied, last_index: int) -> None:
        for rid, res in applied.results:
            self.waits.trigger(rid, res)
        self.metrics.proposals_applied += len(applied.results)
        for rev, events in applied.events:
            self.hub.notify(rev, events)
        if applied.events:
            rev = applied.events[-1][0]
            assert rev >= self.revision, f"revision went back from {self.revision} to {rev}"
            self.revision = rev
        self.size_in_use = applied.size_in_use
        self.set_applied(last_index)

    def _apply_conf_change(self, e: Entry) -> None:
        cc = conf_change_from_entry(e)
        problem = None
        if isinstance(cc, ConfChange):
            problem = self.applier.apply_conf_change(e.index, cc)
            if problem is None:
                self._on_conf_change_applied(cc)
                self.node.apply_conf_change(cc)
            else:  # rejected at apply time: raft applies a change of nobody (etcd)
                self.node.apply_conf_change(ConfChange(cc.type, 0))
        else:
            self.node.apply_conf_change(cc)
        self.set_applied(e.index)
        if isinstance(cc, ConfChange):
            self.cc_waits.trigger(cc.id, problem)

    def set_applied(self, index: int) -> None:
        if index > self.applied_index:
            self.applied_index = index
        self.reads.on_applied(self.applied_index)

    def _on_conf_change_applied(self, cc: ConfChange) -> None:
        self.membership_changed()
        if cc.type == ConfChangeType.ConfChangeRemoveNode and cc.node_id == self.member_id:
            log.warning("this member was removed from the cluster; stopping")
            # Like etcd's stopWithDelay: keep going a moment so the commit of the removal
            # reaches the others and the caller gets its answer.
            asyncio.get_running_loop().call_later(1.0, self.removed.set)
        t = self.transport
        if t is None or cc.node_id == self.member_id:
            return
        if cc.type in (ConfChangeType.ConfChangeAddNode, ConfChangeType.ConfChangeAddLearnerNode):
            m = self.membership.members.get(cc.node_id)
            if m is not None:
                t.add_peer(m.id, m.peer_urls)
        elif cc.type == ConfChangeType.ConfChangeRemoveNode:
            t.remove_peer(cc.node_id)
        elif cc.type == ConfChangeType.ConfChangeUpdateNode:
            m = self.membership.members.get(cc.node_id)
            if m is not None:
                t.update_peer(m.id, m.peer_urls)

    # --- after a snapshot install --------------------------------------------------------
    def reload(self, index: int, now: float) -> None:
        """The backend was replaced by the leader's copy at `index`: rebuild what is held
        in memory from it."""
        self.lessor.recover(now)
        self.applier.reload(Membership(self.applier.backend))
        self.membership_changed()
        self.raft_applied = index
        self.set_applied(max(index, self.applier.backend.consistent_index()))
        self.revision = self.store.current_revision()
        self.size_in_use = self.applier.backend.size_in_use()
        t = self.transport
        if t is not None:
            for m in self.membership.sorted():
                if m.id != self.member_id:
                    t.add_peer(m.id, m.peer_urls)
        self.hub.restored()
