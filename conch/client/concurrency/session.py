"""Session: a lease kept alive in the background (Go's concurrency.Session).

The keepalive runs at TTL/3 (one LeaseKeepAlive round trip at a time, so the send time of
every acknowledged keepalive is known exactly). ``expires_at`` is that send time plus the
TTL the server answered, on the monotonic clock: the server cannot expire the lease before
it. ``done`` is set once the lease is gone: TTL 0 / lease not found answered, keepalives
failing until ``expires_at`` passed, ``orphan()`` or ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from conch.client.concurrency._core import KeepAliveState
from conch.client.concurrency.errors import SessionExpired
from conch.client.errors import ClientError, LeaseNotFound

Clock = Callable[[], float]
DEFAULT_TTL = 60


def _check_ttl(ttl: int) -> int:
    if not isinstance(ttl, int) or ttl <= 0:
        raise ValueError(f"session ttl must be a positive number of seconds, not {ttl!r}")
    return ttl


class Session:
    """``with Session(client, ttl=60) as s:`` -- grants (or adopts) a lease and keeps it alive."""

    def __init__(
        self,
        client: Any,
        ttl: int = DEFAULT_TTL,
        lease_id: int = 0,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.client = client
        self._clock = clock
        ttl = _check_ttl(ttl)
        sent = clock()
        if lease_id:
            # adopt an existing lease: one keepalive tells us it exists and its TTL
            try:
                left = client.lease_keep_alive_once(lease_id)
            except LeaseNotFound:
                left = 0
            if left <= 0:
                raise SessionExpired(f"lease {lease_id:x} not found")
            self._lease_id, granted = lease_id, int(left)
        else:
            lease = client.lease_grant(ttl)
            self._lease_id, granted = int(lease.id), int(lease.ttl)
        self.ttl = granted
        self._ka = KeepAliveState(granted, sent)
        self._mu = threading.Lock()
        self.done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._closed = False
        self._revoked = False
        self._thread = threading.Thread(
            target=self._run, name=f"conch-session-{self._lease_id:x}", daemon=True
        )
        self._thread.start()

    # -- accessors
    @property
    def lease_id(self) -> int:
        return self._lease_id

    @property
    def expires_at(self) -> float:
        """Monotonic time before which the server cannot have expired the lease."""
        return self._ka.expires_at

    def expired(self) -> bool:
        return self.done.is_set() or self._ka.expired(self._clock())

    # -- lifecycle
    def _set_done(self) -> None:
        with self._mu:
            if self.done.is_set():
                return
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            with contextlib.suppress(Exception):
                cb()

    def _add_done_callback(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Call ``cb`` (from any thread) once ``done`` is set; returns a remover."""
        with self._mu:
            if not self.done.is_set():
                self._callbacks.append(cb)

                def remove() -> None:
                    with self._mu, contextlib.suppress(ValueError):
                        self._callbacks.remove(cb)

                return remove
        cb()
        return lambda: None

    def _run(self) -> None:
        ka = self._ka
        try:
            while not self._stop.wait(ka.delay(self._clock())):
                now = self._clock()
                if ka.expired(now):
                    return
                sent = self._clock()
                try:
                    left = self.client.lease_keep_alive_once(self._lease_id)
                except LeaseNotFound:
                    return
                except (ClientError, OSError):
                    if not ka.on_error(self._clock()):
                        return
                    continue
                if self._stop.is_set() or not ka.on_ack(sent, int(left)):
                    return
        finally:
            ka.alive = ka.alive and not self._stop.is_set()
            self._set_done()

    def orphan(self) -> None:
        """Stop refreshing the lease without revoking it (it expires after its TTL)."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=max(self.client_timeout(), 1.0) + 1.0)
        self._set_done()

    def client_timeout(self) -> float:
        t = getattr(self.client, "timeout", None)
        return float(t) if isinstance(t, int | float) else 5.0

    def close(self) -> None:
        """Orphan, then revoke the lease (deleting every key the session owns). Idempotent."""
        self.orphan()
        with self._mu:
            if self._revoked:
                return
            self._revoked = True
        with contextlib.suppress(LeaseNotFound):
            self.client.lease_revoke(self._lease_id)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session(lease_id={self._lease_id:x}, ttl={self.ttl}, done={self.done.is_set()})"


class AsyncSession:
    """The asyncio flavour: ``async with AsyncSession(client, ttl) as s`` or
    ``s = await AsyncSession.create(client, ttl)``. ``done`` is an asyncio.Event."""

    def __init__(
        self,
        client: Any,
        ttl: int = DEFAULT_TTL,
        lease_id: int = 0,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.client = client
        self._clock = clock
        self._want_ttl = _check_ttl(ttl)
        self._lease_id = lease_id
        self.ttl = ttl
        self._ka: KeepAliveState | None = None
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._revoked = False

    @classmethod
    async def create(
        cls,
        client: Any,
        ttl: int = DEFAULT_TTL,
        lease_id: int = 0,
        *,
        clock: Clock = time.monotonic,
    ) -> AsyncSession:
        s = cls(client, ttl, lease_id, clock=clock)
        await s.start()
        return s

    async def start(self) -> None:
        if self._ka is not None:
            return
        sent = self._clock()
        if self._lease_id:
            try:
                left = await self.client.lease_keep_alive_once(self._lease_id)
            except LeaseNotFound:
                left = 0
            if left <= 0:
                raise SessionExpired(f"lease {self._lease_id:x} not found")
            granted = int(left)
        else:
            lease = await self.client.lease_grant(self._want_ttl)
            self._lease_id, granted = int(lease.id), int(lease.ttl)
        self.ttl = granted
        self._ka = KeepAliveState(granted, sent)
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"conch-session-{self._lease_id:x}"
        )

    def _state(self) -> KeepAliveState:
        if self._ka is None:
            raise RuntimeError("AsyncSession not started (use `await AsyncSession.create(...)`)")
        return self._ka

    @property
    def lease_id(self) -> int:
        self._state()
        return self._lease_id

    @property
    def expires_at(self) -> float:
        return self._state().expires_at

    def expired(self) -> bool:
        return self.done.is_set() or self._state().expired(self._clock())

    async def _run(self) -> None:
        ka = self._state()
        try:
            while True:
                await asyncio.sleep(ka.delay(self._clock()))
                if ka.expired(self._clock()):
                    return
                sent = self._clock()
                try:
                    left = await self.client.lease_keep_alive_once(self._lease_id)
                except LeaseNotFound:
                    return
                except (ClientError, OSError):
                    if not ka.on_error(self._clock()):
                        return
                    continue
                if not ka.on_ack(sent, int(left)):
                    return
        finally:
            self.done.set()

    async def orphan(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.done.set()

    async def close(self) -> None:
        await self.orphan()
        if self._revoked or self._ka is None:
            return
        self._revoked = True
        with contextlib.suppress(LeaseNotFound):
            await self.client.lease_revoke(self._lease_id)

    async def __aenter__(self) -> AsyncSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        done = self.done.is_set()
        return f"AsyncSession(lease_id={self._lease_id:x}, ttl={self.ttl}, done={done})"
