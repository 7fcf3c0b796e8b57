"""Linearizable reads, batched: every read waiting when a round starts shares one raft
ReadIndex request (etcd's `linearizableReadLoop`). Sans-IO: this class only moves opaque
waiters between states and says which are ready; the caller owns futures, clocks and raft.

A waiter goes: pending -> in flight (one request context per round) -> waiting for the
applied index to reach the round's read index -> released. A round not answered within
`retry_s` is asked again with the same context (etcd: 500 ms). A leader change fails every
pending and in-flight waiter at once ("leader changed"), since a round addressed to the old
leader may never be answered.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from conch.errors import (
    ErrLeaderChanged,
    ErrStopped,
    ErrTimeout,
    ErrTimeoutWaitAppliedIndex,
    EtcdError,
    err,
)
from conch.raft.types import ReadState

if TYPE_CHECKING:
    from conch.server.applying import ApplyStage
    from conch.server.raftnode import RaftNode

W = TypeVar("W")

_CTX = struct.Struct(">Q")
RETRY_S = 0.5


class ReadIndexBatcher(Generic[W]):
    def __init__(self, retry_s: float = RETRY_S) -> None:
        self.retry_s = retry_s
        self._pending: list[W] = []
        self._seq = 0
        self._inflight: tuple[bytes, float, list[W]] | None = None
        self._apply_waiters: list[tuple[int, list[W]]] = []

    def add(self, waiter: W) -> None:
        self._pending.append(waiter)

    def wait_applied(self, index: int, waiter: W) -> None:
        self._apply_waiters.append((index, [waiter]))

    def next_request(self, now: float) -> bytes | None:
        """The context of a new round to send to raft, if reads are waiting and no round
        is in flight."""
        if not self._pending or self._inflight is not None:
            return None
        waiters, self._pending = self._pending, []
        self._seq += 1
        ctx = _CTX.pack(self._seq)
        self._inflight = (ctx, now, waiters)
        return ctx

    def retry(self, now: float, gone: Callable[[W], bool]) -> bytes | None:
        """The context to send again if the round in flight is overdue; waiters for which
        `gone` is true (timed out, cancelled) are dropped first."""
        inflight = self._inflight
        if inflight is None or now - inflight[1] <= self.retry_s:
            return None
        ctx, _, waiters = inflight
        waiters = [w for w in waiters if not gone(w)]
        if not waiters:
            self._inflight = None
            return None
        self._inflight = (ctx, now, waiters)
        return ctx

    def on_read_state(self, ctx: bytes, index: int, applied: int) -> list[W]:
        """Raft answered a round: the waiters that may read now (the rest wait for apply)."""
        inflight = self._inflight
        if inflight is None or ctx != inflight[0]:
            return []
        self._inflight = None
        if index <= applied:
            return inflight[2]
        self._apply_waiters.append((index, inflight[2]))
        return []

    def on_applied(self, applied: int) -> list[W]:
        if not self._apply_waiters:
            return []
        ready: list[W] = []
        still = []
        for target, waiters in self._apply_waiters:
            if target <= applied:
                ready.extend(waiters)
            else:
                still.append((target, waiters))
        self._apply_waiters = still
        return ready

    def on_leader_changed(self) -> list[W]:
        """Pending and in-flight waiters, to fail: their round cannot finish."""
        out = self._pending
        self._pending = []
        if self._inflight is not None:
            out.extend(self._inflight[2])
            self._inflight = None
        return out

    def drain(self) -> list[W]:
        out = self.on_leader_changed()
        for _, waiters in self._apply_waiters:
            out.extend(waiters)
        self._apply_waiters = []
        return out


class LinearizableReads:
    """The asyncio side: futures around a `ReadIndexBatcher`, fed by the raft node driver.

    A leader that is the only voter needs no round: nobody else can have committed anything,
    so its commit index is the read index."""

    def __init__(self, raft: RaftNode, timeout_s: float) -> None:
        self._raft = raft
        self._timeout_s = timeout_s
        self._batcher: ReadIndexBatcher[asyncio.Future[None]] = ReadIndexBatcher()
        self.apply_stage: ApplyStage  # set by the member

    async def barrier(self) -> None:
        """Linearizable read point: a raft read index round, then wait for it to apply."""
        raft = self._raft
        if raft.is_leader and self.apply_stage.lone_voter:
            await self.wait_applied(raft.committed_index)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batcher.add(fut)
        raft.wake()
        try:
            await asyncio.wait_for(fut, self._timeout_s)
        except TimeoutError:
            raise err(ErrTimeout) from None  # etcd's linearizableReadNotify

    async def wait_applied(self, index: int) -> None:
        """Wait until the applied index reaches `index` (e.g. a new leader catching up on
        what the previous one committed before it answers for leases)."""
        if self.apply_stage.applied_index >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batcher.wait_applied(index, fut)
        try:
            await asyncio.wait_for(fut, self._timeout_s)
        except TimeoutError:
            raise err(ErrTimeoutWaitAppliedIndex) from None

    # --- driven by the raft node driver ----------------------------------------------------
    def pump(self) -> None:
        ctx = self._batcher.next_request(self._raft.clock.monotonic())
        if ctx is not None:
            self._raft.node.read_index(ctx)

    def retry(self) -> None:
        ctx = self._batcher.retry(self._raft.clock.monotonic(), _gone)
        if ctx is not None:
            self._raft.node.read_index(ctx)

    def on_read_states(self, states: Iterable[ReadState]) -> None:
        applied = self.apply_stage.applied_index
        for rs in states:
            _release(self._batcher.on_read_state(rs.request_ctx, rs.index, applied))
        self._raft.wake()

    def on_applied(self, applied: int) -> None:
        _release(self._batcher.on_applied(applied))

    def on_leader_change(self, old: int, new: int) -> None:
        """Any leader change fails reads waiting for a round (etcd's leaderChangedNotifier);
        the client retries them."""
        if old:
            _fail(self._batcher.on_leader_changed(), ErrLeaderChanged)

    def stop(self) -> None:
        _fail(self._batcher.drain(), ErrStopped)


def _gone(fut: asyncio.Future[None]) -> bool:
    return fut.done()


def _release(futs: list[asyncio.Future[None]]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(None)


def _fail(futs: list[asyncio.Future[None]], proto: EtcdError) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_exception(err(proto))
