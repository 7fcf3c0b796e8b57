"""The simulated disk: a member's WAL and backend run inline on virtual time, and a crash
loses exactly what was not yet durable.

- `SimWalStore` is the real `WalStore` with its disk work queued on a per-member FIFO that
  completes each write after a seeded latency (the "disk thread", on virtual time). After
  every write it records, per WAL segment, how many bytes are written and how many are
  durable (fsynced).
- `SimBackend` is the real LMDB `Backend`; every `sync()` (and every swap to a received
  snapshot database) takes a shadow copy: the state a power loss reverts to.
- `SimDisk.power_loss()` truncates each WAL segment to its durable size plus, sometimes,
  a prefix of what was written after it (a torn tail), and reverts the backend file to its
  shadow. A process crash (kill -9) keeps every file as it is.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from conch.backend import Backend
from conch.proto.raftpb import raft_pb2
from conch.raft.types import Snapshot
from conch.server.storage import WalStore
from conch.wal import WAL

T = TypeVar("T")


class SimDisk:
    """One member's disk across its incarnations: latency, and what a power loss keeps."""

    def __init__(self, rng: random.Random, shadow_dir: str, latency: tuple[float, float]) -> None:
        self.rng = rng
        self.shadow_dir = shadow_dir
        os.makedirs(shadow_dir, exist_ok=True)
        self.latency = latency
        #: segment path -> (bytes written, bytes durable)
        self.segments: dict[str, tuple[int, int]] = {}
        self.backend_path: str | None = None
        self._busy_until = 0.0
        self.epoch = 0  # bumped by a crash: queued disk work of the dead process never runs
        self.fsyncs = 0

    # --- the disk "thread" ----------------------------------------------------------------
    def submit(self, fn: Callable[[], Any], fut: asyncio.Future[Any] | None) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        lo, hi = self.latency
        done = max(now, self._busy_until) + lo + self.rng.random() * (hi - lo)
        self._busy_until = done
        epoch = self.epoch

        def complete() -> None:
            if epoch != self.epoch:
                return  # the process died before its disk finished this write
            try:
                res = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
                return
            if fut is not None and not fut.done():
                fut.set_result(res)

        loop.call_at(done, complete)

    # --- WAL bookkeeping ------------------------------------------------------------------
    def note_wal(self, wal: WAL, synced: bool) -> None:
        segs = wal._segments
        for seg in segs[:-1]:  # cut segments were truncated and fsynced
            size = os.fstat(seg.fd).st_size
            self.segments[seg.path] = (size, size)
        if segs:
            tail = segs[-1]
            off = wal._tail_off
            old = self.segments.get(tail.path)
            durable = off if synced or old is None else min(old[1], off)
            self.segments[tail.path] = (off, durable)

    # --- crashes --------------------------------------------------------------------------
    def crash(self) -> None:
        self.epoch += 1
        self._busy_until = 0.0

    def power_loss(self, torn: bool) -> list[str]:
        """Drop what was not durable. Returns a description of what was lost."""
        lost: list[str] = []
        for path, (written, durable) in sorted(self.segments.items()):
            if not os.path.exists(path):
                continue
            keep = durable
            if torn and written > durable and self.rng.random() < 0.5:
                keep = durable + self.rng.randrange(written - durable + 1)
            if os.path.getsize(path) > keep:
                with open(path, "r+b") as f:
                    f.truncate(keep)
                if written > keep:
                    lost.append(f"{os.path.basename(path)}: {written - keep} bytes")
        self.segments.clear()
        if self.backend_path is not None:
            shadow = self.shadow_path()
            lock = self.backend_path + "-lock"
            if os.path.exists(lock):
                os.unlink(lock)
            if os.path.exists(shadow):
                shutil.copyfile(shadow, self.backend_path)
            elif os.path.exists(self.backend_path):
                os.unlink(self.backend_path)
                lost.append("backend (never synced)")
        return lost

    def shadow_path(self) -> str:
        return os.path.join(self.shadow_dir, "db.durable")


class SimWalStore(WalStore):
    """`WalStore` whose disk work runs on the member's `SimDisk` (inline, on virtual time)."""

    def __init__(
        self,
        wal: WAL,
        wal_dir: str,
        snap_dir: str,
        *,
        disk: SimDisk,
        on_fsync: Callable[[float], None] | None = None,
        on_failure: Callable[[str, BaseException | None], None] | None = None,
    ) -> None:
        super().__init__(wal, wal_dir, snap_dir, on_fsync=on_fsync, on_failure=on_failure)
        self.sim_disk = disk
        disk.note_wal(wal, synced=True)  # what a (re)opened WAL holds is on disk

    def write(
        self, hs: raft_pb2.HardState | None, entries: Sequence[raft_pb2.Entry], sync: bool
    ) -> None:
        super().write(hs, entries, sync)
        self.sim_disk.fsyncs += int(sync)
        self.sim_disk.note_wal(self.wal, synced=sync)

    def write_snapshot(self, snap: Snapshot) -> None:
        super().write_snapshot(snap)
        self.sim_disk.note_wal(self.wal, synced=True)

    def write_release(self, compacted_to: int, max_wals: int, max_snapshots: int) -> None:
        super().write_release(compacted_to, max_wals, max_snapshots)
        for path in list(self.sim_disk.segments):
            if not os.path.exists(path):
                del self.sim_disk.segments[path]

    def _run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sim_disk.submit(fn, fut)
        return fut

    def _run_nowait(self, fn: Callable[[], Any]) -> None:
        self.sim_disk.submit(fn, None)

    def crash(self) -> None:
        """The process died: release the files without writing or syncing anything."""
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._pending_commit = None
        self.wal._release_all()
        self.wal._closed = True


class SimBackend(Backend):
    """The LMDB backend; `sync()` also records the state a power loss reverts to."""

    def __init__(self, path: str, disk: SimDisk) -> None:
        self._sim_disk = disk
        super().__init__(path)
        disk.backend_path = path
        self._shadow()  # what is in the file when a process opens it survived

    def _shadow(self) -> None:
        shadow = self._sim_disk.shadow_path()
        tmp = shadow + ".tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)
        self._env.copy(tmp)
        os.replace(tmp, shadow)

    def sync(self) -> None:
        super().sync()
        self._shadow()

    def swap_in(self, tmp: str, failpoint: str | None = None) -> None:
        super().swap_in(tmp, failpoint)
        self._shadow()

    def crash(self) -> None:
        """The process died: close the environment without syncing."""
        try:
            self._env.close()
        except Exception:  # noqa: BLE001 - already closed
            pass


class InlineBlocking:
    """`Blocking` that runs the work inline after a seeded delay on virtual time."""

    def __init__(self, rng: random.Random, latency: tuple[float, float]) -> None:
        self.rng = rng
        self.latency = latency

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        lo, hi = self.latency
        await asyncio.sleep(lo + self.rng.random() * (hi - lo))
        return fn(*args)
