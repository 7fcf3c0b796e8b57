"""Snapshots: compacting the raft log, and shipping the database to a follower that fell
behind it.

- **Log compaction** (`maybe_start`): every `--snapshot-count` applied entries, once the
  backend is fsynced up to that index, a raft snapshot is recorded (.snap file + WAL record),
  the in-memory log is compacted keeping `--experimental-snapshot-catchup-entries`, and old
  WAL segments and .snap files are released. It runs beside the Ready loop so heartbeats go
  on meanwhile.
- **Sending** (`send`): a MsgSnap travels with a consistent copy of the backend. The message
  is restamped with the copy's own applied index, term and configuration (etcd's merged
  snapshot message), so a follower that installs it and crashes before logging the entries up
  to that index never finds its backend ahead of its WAL.
- **Receiving** (`received`, `install`): the database is kept until raft hands the snapshot
  back in a Ready, then swapped in and every in-memory room rebuilt from it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from conch import failpoints
from conch.backend import Backend
from conch.raft.types import Message, Snapshot, SnapshotMetadata
from conch.server.applying import ApplyStage
from conch.server.config import Config
from conch.server.ports import Blocking
from conch.server.raftnode import RaftNode

log = logging.getLogger("conch.member")


class Snapshotter:
    def __init__(
        self,
        *,
        cfg: Config,
        snap_dir: str,
        raft: RaftNode,
        apply_stage: ApplyStage,
        backend: Backend,
        blocking: Blocking,
        maintenance_lock: asyncio.Lock,
        snap_index: int,
        fatal: Callable[[str, BaseException | None], None],
    ) -> None:
        self._cfg = cfg
        self.snap_dir = snap_dir
        self._raft = raft
        self._apply = apply_stage
        self._backend = backend
        self._blocking = blocking
        self._lock = maintenance_lock
        self._fatal = fatal
        #: index of the newest raft snapshot (the log is compacted up to here)
        self.snap_index = snap_index
        self._task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._incoming: dict[int, str] = {}  # snapshot index -> received database

    # --- log compaction --------------------------------------------------------------------
    def maybe_start(self) -> None:
        if (
            self._task is None
            and self._apply.raft_applied - self.snap_index >= self._cfg.snapshot_count
        ):
            self._task = asyncio.get_running_loop().create_task(self._snapshot(), name="snapshot")
            self._task.add_done_callback(self._snapshot_done)

    def _snapshot_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            self._fatal("raft snapshot failed", task.exception())

    async def _snapshot(self) -> None:
        raft = self._raft
        index = self._apply.raft_applied
        # Everything up to `index` must be durable in the backend before the WAL may lose it;
        # the lock keeps defragment from swapping the file meanwhile.
        async with self._lock:
            await self._blocking.run(self._backend.sync)
        if index <= self.snap_index:  # a snapshot from the leader overtook us
            return
        cs = raft.node.status().conf_state
        snap = raft.storage.create_snapshot(index, cs, b"")
        await raft.log_store.save_snapshot(snap)
        self.snap_index = index
        compact_to = index - self._cfg.snapshot_catchup_entries
        if compact_to > raft.storage.first_index():
            raft.storage.compact(compact_to)
        await raft.log_store.release(compact_to, self._cfg.max_wals, self._cfg.max_snapshots)
        log.info("raft snapshot at index %d; log compacted to %d", index, max(compact_to, 0))

    # --- sending ---------------------------------------------------------------------------
    def send(self, m: Message) -> None:
        task = asyncio.get_running_loop().create_task(self._send(m))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _send(self, m: Message) -> None:
        raft = self._raft
        transport = raft.transport
        assert m.snapshot is not None and transport is not None
        index = m.snapshot.metadata.index
        path = os.path.join(self.snap_dir, f"send-{m.to:x}-{index:016x}.db")
        ok = False
        try:
            if os.path.exists(path):
                os.unlink(path)
            async with self._lock:
                # A consistent copy whose applied index is at or past the snapshot's.
                await self._blocking.run(self._backend.env.copy, path, True)
            copied = await self._blocking.run(Backend.read_consistent_index, path)
            if copied < index:
                raise RuntimeError(f"database copy at {copied} is behind snapshot {index}")
            m.snapshot = Snapshot(
                b"",
                SnapshotMetadata(raft.node.status().conf_state, copied, raft.storage.term(copied)),
            )
            ok = await transport.send_snapshot(m.to, m, path)
        except Exception:
            log.exception("sending snapshot %d to %x failed", index, m.to)
        finally:
            if os.path.exists(path):
                os.unlink(path)
        raft.report_snapshot(m.to, not ok)

    # --- receiving -------------------------------------------------------------------------
    async def received(self, header: Any, path: str) -> None:
        """The transport received a database with a MsgSnap: keep the file for when raft
        hands the snapshot back in a Ready, then step the message."""
        m: Message = header.message
        assert m.snapshot is not None
        index = m.snapshot.metadata.index
        old = self._incoming.pop(index, None)
        if old is not None and old != path and os.path.exists(old):
            os.unlink(old)
        self._incoming[index] = path
        self._raft.step(m)
        if self._raft.node.pending_snapshot_index() != index:
            # Raft ignored it (stale, a retransmission, a deposed leader): no Ready will
            # install it, so do not keep a whole database copy around.
            self._incoming.pop(index, None)
            if os.path.exists(path):
                os.unlink(path)

    async def install(self, snap: Snapshot) -> None:
        """Replace the backend with the database that came with the snapshot and rebuild
        everything held in memory from it."""
        index = snap.metadata.index
        path = self._incoming.pop(index, None)
        if path is None or not os.path.exists(path):
            self._fatal(f"snapshot {index} arrived without its database; cannot install it", None)
            raise RuntimeError(f"snapshot {index} without its database")
        await failpoints.hit_async("raftBeforeApplySnap")
        async with self._lock:
            self._backend.swap_in(path)
        await failpoints.hit_async("raftAfterApplySnap")
        self.snap_index = index
        self._apply.reload(index, self._raft.clock.monotonic())
        for stale in list(self._incoming):
            if stale <= index:
                p = self._incoming.pop(stale)
                if os.path.exists(p):
                    os.unlink(p)
        log.info("installed snapshot %d from the leader (applied index %d, revision %d)",
                 index, self._apply.applied_index, self._apply.revision)
        await failpoints.hit_async("afterSnapshotInstall")

    async def stop(self) -> None:
        """Cancel snapshot sends; let a log compaction in progress finish (it may be inside
        a backend fsync on a thread, which must not race the backend's close)."""
        tasks = list(self._side_tasks)
        for t in tasks:
            t.cancel()
        if self._task is not None:
            tasks.append(self._task)
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
