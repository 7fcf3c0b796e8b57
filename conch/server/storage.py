"""The member's durable raft storage: the WAL and the snapshot files, on one disk thread.

`WalStore` is the real `LogStore`. Every write runs on a single dedicated thread, in the order
the raft node driver issued it, so the WAL (which is not thread-safe) has one owner; the thread
drops the GIL while the disk works. The hand-off is a plain queue and one
`call_soon_threadsafe` back, about half the cost of an executor round trip.

A commit-index-only hard state (`save_commit`) is not written on its own: it rides on the next
`save` (whose hard state is at least as new) or, if none comes within `COMMIT_FLUSH_DELAY_S`, is
written then, unsynced. Raft recomputes the commit index after a crash, so a lost commit record
costs nothing; writing one per Ready cost a thread hand-off per applied batch on every member.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from conch import failpoints
from conch.proto.raftpb import raft_pb2
from conch.raft.codec import conf_state_to_pb
from conch.raft.types import Snapshot
from conch.server import snap as snapfile
from conch.wal import WAL, WalSnapshot
from conch.wal import purge as purge_wal

COMMIT_FLUSH_DELAY_S = 0.1


class DiskThread:
    """One thread that runs submitted functions in order; results come back as futures on the
    event loop."""

    def __init__(self, name: str = "wal") -> None:
        self._q: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any] | None] | None]
        self._q = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self.failed: BaseException | None = None

    def submit(self, fn: Callable[[], Any], wait: bool = True) -> asyncio.Future[Any] | None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if not self._started:
            self._started = True
            self._thread.start()
        fut = self._loop.create_future() if wait else None
        self._q.put((fn, fut))
        return fut

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, fut = item
            try:
                res = fn()
            except BaseException as exc:  # reported to the waiter, or kept for the next one
                if fut is None:
                    self.failed = exc
                else:
                    loop.call_soon_threadsafe(_set_exception, fut, exc)
                continue
            if fut is not None:
                loop.call_soon_threadsafe(_set_result, fut, res)

    def stop(self) -> None:
        if self._started:
            self._q.put(None)
            self._thread.join()


def _set_result(fut: asyncio.Future[Any], res: Any) -> None:
    if not fut.done():
        fut.set_result(res)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class WalStore:
    """`LogStore` over a `WAL` and the snap directory."""

    def __init__(
        self,
        wal: WAL,
        wal_dir: str,
        snap_dir: str,
        *,
        on_fsync: Callable[[float], None] | None = None,
        on_failure: Callable[[str, BaseException | None], None] | None = None,
    ) -> None:
        self.wal = wal
        self._wal_dir = wal_dir
        self._snap_dir = snap_dir
        self._disk = DiskThread()
        self._on_fsync = on_fsync
        self._on_failure = on_failure
        self._pending_commit: raft_pb2.HardState | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._closed = False

    # --- the disk side (runs on the disk thread, or inline in a simulation) ----------------
    def write(
        self, hs: raft_pb2.HardState | None, entries: Sequence[raft_pb2.Entry], sync: bool
    ) -> None:
        failpoints.hit("raftBeforeSave")
        t0 = time.perf_counter()
        self.wal.save(hs, list(entries), sync)
        if sync and self._on_fsync is not None:
            self._on_fsync(time.perf_counter() - t0)
        failpoints.hit("raftAfterSave")

    def write_snapshot(self, snap: Snapshot) -> None:
        """The .snap file, then the WAL's record of it (etcd's order)."""
        snapfile.save(self._snap_dir, snap)
        cs = conf_state_to_pb(snap.metadata.conf_state)
        self.wal.save_snapshot(WalSnapshot(snap.metadata.index, snap.metadata.term, cs))

    def write_release(self, compacted_to: int, max_wals: int, max_snapshots: int) -> None:
        if compacted_to > 0:
            self.wal.release_lock_to(compacted_to)
            purge_wal(self._wal_dir, max_wals)
        snapfile.purge(self._snap_dir, max_snapshots)
        failpoints.hit("raftAfterWALRelease")

    # --- LogStore -----------------------------------------------------------------------
    def _run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        self._check_lazy_failure()
        fut = self._disk.submit(fn)
        assert fut is not None
        return fut

    def _run_nowait(self, fn: Callable[[], Any]) -> None:
        self._check_lazy_failure()
        self._disk.submit(fn, wait=False)

    def _check_lazy_failure(self) -> None:
        failed = self._disk.failed
        if failed is not None and self._on_failure is not None:
            self._on_failure("WAL write failed", failed)

    def _take_commit(self, hs: raft_pb2.HardState | None) -> raft_pb2.HardState | None:
        pending, self._pending_commit = self._pending_commit, None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        return hs if hs is not None else pending

    async def save(
        self, hard_state: raft_pb2.HardState | None, entries: Sequence[raft_pb2.Entry], sync: bool
    ) -> None:
        hs = self._take_commit(hard_state)
        await self._run(lambda: self.write(hs, entries, sync))

    def save_commit(self, hard_state: raft_pb2.HardState) -> None:
        self._pending_commit = hard_state
        if self._flush is None and not self._closed:
            self._flush = asyncio.get_running_loop().call_later(
                COMMIT_FLUSH_DELAY_S, self._flush_commit
            )

    def _flush_commit(self) -> None:
        self._flush = None
        hs, self._pending_commit = self._pending_commit, None
        if hs is not None and not self._closed:
            self._run_nowait(lambda: self.write(hs, (), False))

    async def save_snapshot(self, snap: Snapshot) -> None:
        await self._run(lambda: self.write_snapshot(snap))

    async def release(self, compacted_to: int, max_wals: int, max_snapshots: int) -> None:
        await self._run(lambda: self.write_release(compacted_to, max_wals, max_snapshots))

    def close(self) -> None:
        """Write what is pending (a commit record), stop the thread, close the WAL."""
        if self._closed:
            return
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
        hs, self._pending_commit = self._pending_commit, None
        self._disk.stop()
        if hs is not None:
            self.write(hs, (), False)
        self.wal.close()


def remove_stale_snapshot_dbs(snap_dir: str) -> None:
    """Databases received for snapshots that were never installed only take space."""
    try:
        names = os.listdir(snap_dir)
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(".snap.db") or (name.startswith("send-") and name.endswith(".db")):
            os.unlink(os.path.join(snap_dir, name))
