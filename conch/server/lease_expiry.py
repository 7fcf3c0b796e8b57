"""Lease expiry, driven on the leader: every half second the lessor names the leases whose
TTL ran out and the leader proposes a LeaseRevoke for each (at most 1000 a second, etcd's
rate), so every member deletes their keys at the same point of the log. A revoke that is
lost (leader change, timeout) is simply proposed again at a later check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from conch.errors import EtcdError
from conch.lease import Lessor
from conch.server.ports import Clock

CHECK_INTERVAL_S = 0.5  # etcd's lessor checks every 500 ms
REVOKE_RATE = 1000  # revocations proposed per second at most (etcd: leaseRevokeRate)


class LeaseExpiry:
    def __init__(
        self,
        lessor: Lessor,
        clock: Clock,
        is_leader: Callable[[], bool],
        propose_revoke: Callable[[int], asyncio.Future[Any]],
    ) -> None:
        self._lessor = lessor
        self._clock = clock
        self._is_leader = is_leader
        self._propose_revoke = propose_revoke
        self.stopping = False

    async def run(self) -> None:
        limit = int(REVOKE_RATE * CHECK_INTERVAL_S)
        while not self.stopping:
            await self._clock.sleep(CHECK_INTERVAL_S)
            if not self._is_leader():
                continue
            for lease_id in self._lessor.expired(self._clock.monotonic(), limit):
                try:
                    fut = self._propose_revoke(lease_id)
                except EtcdError:
                    break
                fut.add_done_callback(_consume)


def _consume(fut: asyncio.Future[Any]) -> None:
    """The outcome of a revoke nobody awaits (a lost one is retried later)."""
    if not fut.cancelled():
        fut.exception()
