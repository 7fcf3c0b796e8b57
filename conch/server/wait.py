"""The wait registry: request id -> the future its proposer awaits, with a deadline.

etcd's `pkg/wait` plus the proposal timeout of `processInternalRaftRequestOnce`. A proposal
registers before it enters raft; the applier resolves it by id with the response (or the
EtcdError the apply produced). Deadlines are checked on every tick: a request still waiting
when its time is up fails with "request timed out", or "... possibly due to previous leader
failure" when the leader changed (or vanished) since it was proposed, as etcd tells them apart.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from conch.errors import ErrTimeout, ErrTimeoutDueToLeaderFail, EtcdError, err


class WaitRegistry:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        # (deadline, request id, leader changes seen when it was registered), in order
        self._deadlines: collections.deque[tuple[float, int, int]] = collections.deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def register(self, rid: int, now: float, leader_changes: int) -> asyncio.Future[Any]:
        assert rid not in self._waiters, f"request id {rid:x} registered twice"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        self._deadlines.append((now + self.timeout_s, rid, leader_changes))
        return fut

    def trigger(self, rid: int, result: Any) -> None:
        """Resolve `rid` with a response, or with the EtcdError the request produced."""
        fut = self._waiters.pop(rid, None)
        if fut is None or fut.done():
            return
        if isinstance(result, EtcdError):
            fut.set_exception(result)
        else:
            fut.set_result(result)

    def fail(self, rid: int, exc: EtcdError) -> None:
        self.trigger(rid, exc)

    def expire(self, now: float, leader_changes: int, has_leader: bool) -> None:
        dq = self._deadlines
        while dq and dq[0][0] <= now:
            _, rid, changes = dq.popleft()
            fut = self._waiters.pop(rid, None)
            if fut is not None and not fut.done():
                leader_failed = leader_changes != changes or not has_leader
                fut.set_exception(err(ErrTimeoutDueToLeaderFail if leader_failed else ErrTimeout))

    def fail_all(self, exc: EtcdError) -> None:
        waiting = list(self._waiters.values())
        self._waiters.clear()
        self._deadlines.clear()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(EtcdError(exc.code, exc.message))
