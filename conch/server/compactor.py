"""Auto compaction (--auto-compaction-mode / --auto-compaction-retention), on the leader.

- periodic: keep `retention` of history. The retention is a duration ("30m", "2s") or a bare
  number of hours. Every min(retention, 1h) the leader compacts to the revision the store had
  `retention` ago (sampled every tenth of the interval), as etcd's periodic compactor does.
- revision: every 5 minutes the leader compacts to (current revision - retention).

Compactions are proposed like a client's Compact, so every member applies the same one.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable

from conch.server.config import ConfigError, periodic_retention_s
from conch.server.ports import Clock, SystemClock

log = logging.getLogger("conch.compactor")

REVISION_MODE_INTERVAL_S = 300.0


class Compactor:
    def __init__(
        self,
        mode: str,
        retention: str,
        *,
        is_leader: Callable[[], bool],
        revisions: Callable[[], tuple[int, int]],  # (current, compacted)
        compact: Callable[[int], Awaitable[None]],
        revision_interval_s: float = REVISION_MODE_INTERVAL_S,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._mode = mode
        self._is_leader = is_leader
        self._revisions = revisions
        self._compact = compact
        if mode == "periodic":
            self._retention_s = periodic_retention_s(retention)
            self._keep = 0
        elif mode == "revision":
            try:
                self._keep = int(retention)
            except ValueError as exc:
                raise ConfigError(f"invalid auto-compaction-retention {retention!r}") from exc
            self._retention_s = 0.0
        else:
            raise ConfigError(f"unknown auto-compaction-mode {mode!r}")
        self._revision_interval_s = revision_interval_s

    @property
    def enabled(self) -> bool:
        return self._retention_s > 0 or self._keep > 0

    async def run(self) -> None:
        if self._mode == "periodic":
            await self._run_periodic()
        else:
            await self._run_revision()

    async def _run_periodic(self) -> None:
        retention = self._retention_s
        interval = min(retention, 3600.0)
        step = max(interval / 10.0, 0.05)
        samples: collections.deque[tuple[float, int]] = collections.deque()
        next_compact = self._clock.monotonic() + interval
        while True:
            now = self._clock.monotonic()
            current, compacted = self._revisions()
            samples.append((now, current))
            while len(samples) > 1 and samples[1][0] <= now - retention:
                samples.popleft()  # keep the newest sample that is at least `retention` old
            if now >= next_compact:
                next_compact = now + interval
                t, rev = samples[0]
                if t <= now - retention and rev > max(compacted, 1) and self._is_leader():
                    await self._propose(rev)
            await self._clock.sleep(step)

    async def _run_revision(self) -> None:
        while True:
            await self._clock.sleep(self._revision_interval_s)
            current, compacted = self._revisions()
            rev = current - self._keep
            if rev > max(compacted, 1) and self._is_leader():
                await self._propose(rev)

    async def _propose(self, rev: int) -> None:
        try:
            await self._compact(rev)
            log.info("auto compaction to revision %d (%s mode)", rev, self._mode)
        except Exception as exc:  # compacted meanwhile, leader changed: try next time
            log.info("auto compaction to revision %d not done: %s", rev, exc)
