"""Mutex (Go's concurrency.Mutex), same keys: ``<prefix>/<lease id in hex>``.

Lock order is create-revision order (the first-created key under the prefix holds the
lock); waiters watch for deletions from the read's revision + 1. ``lock`` fails with
``SessionExpired`` when the session ends or our key vanishes while waiting; a failed
lock removes our key; ``unlock`` is idempotent and retry-safe (guarded by our create
revision). Use ``is_owner()`` in txns to fence writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from conch.client.concurrency import _core as C
from conch.client.concurrency._wait import wait_turn, wait_turn_async
from conch.client.concurrency.errors import Locked, SessionExpired
from conch.client.errors import ClientError


class _MutexBase:
    def __init__(self, session: Any, prefix: C.Key) -> None:
        self.session = session
        self.client = session.client
        self._kprefix = C.key_prefix(prefix)
        self._key: bytes | None = None
        self._rev = 0
        self._header: Any = None

    @property
    def key(self) -> bytes | None:
        """Our lock key while locked / waiting (None otherwise)."""
        return self._key

    @property
    def rev(self) -> int:
        """Create revision of our key: the fencing token (0 when unlocked)."""
        return self._rev

    @property
    def header(self) -> Any:
        return self._header

    def is_owner(self) -> Any:
        """``Compare.create(key) == rev``: true only while we hold this lock."""
        Compare, _ = C._client_api()
        return Compare.create(self._key or b"\0") == (self._rev if self._key else -1)

    def _my_key(self) -> bytes:
        if self.session.done.is_set():
            raise SessionExpired("session ended before lock")
        return C.candidate_key(self._kprefix, self.session.lease_id)

    def _acquire_txn(self, my_key: bytes) -> C.TxnParts:
        return C.acquire_txn(my_key, b"", self.session.lease_id, self._kprefix, True)

    def _acquired(self, my_key: bytes, r: Any) -> bool:
        acq = C.acquire_result(r, True)
        self._key, self._rev, self._header = my_key, acq.rev, acq.header
        return acq.owner_rev is None or acq.owner_rev == acq.rev

    def _forget(self) -> None:
        self._key, self._rev = None, 0


class Mutex(_MutexBase):
    def lock(self, timeout: float | None = None) -> int:
        """Acquire; returns our key's create revision (the fencing token)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        my_key = self._my_key()
        if self._acquired(my_key, self.client.txn(*self._acquire_txn(my_key))):
            return self._rev
        try:
            self._header = wait_turn(self.session, self._kprefix, my_key, self._rev, deadline)
        except BaseException:
            with contextlib.suppress(ClientError):
                self.unlock()
            raise
        return self._rev

    def try_lock(self) -> int:
        """Acquire if free, else remove our key and raise Locked at once."""
        my_key = self._my_key()
        if self._acquired(my_key, self.client.txn(*self._acquire_txn(my_key))):
            return self._rev
        self.unlock()
        raise Locked()

    def unlock(self) -> None:
        """Release (idempotent; on error nothing changes, so it can be retried)."""
        if self._key is None:
            return
        r = self.client.txn(*C.guarded_delete_txn(self._key, self._rev))
        self._header = r.header
        self._forget()

    def __enter__(self) -> Mutex:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()


class AsyncMutex(_MutexBase):
    async def _acquire(self, my_key: bytes) -> bool:
        """Run the acquire txn. Cancelled while it is in flight, the txn may still have
        created our key: wait for its outcome and remove the key, so a cancelled lock leaves
        nothing behind (a waiter key left over would block every later locker)."""
        call = asyncio.ensure_future(self.client.txn(*self._acquire_txn(my_key)))
        try:
            r = await asyncio.shield(call)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                self._acquired(my_key, await call)
                await asyncio.shield(self._unlock_quietly())
            raise
        return self._acquired(my_key, r)

    async def lock(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        my_key = self._my_key()
        if await self._acquire(my_key):
            return self._rev
        try:
            self._header = await wait_turn_async(
                self.session, self._kprefix, my_key, self._rev, deadline
            )
        except BaseException:
            await asyncio.shield(self._unlock_quietly())
            raise
        return self._rev

    async def _unlock_quietly(self) -> None:
        with contextlib.suppress(ClientError):
            await self.unlock()

    async def try_lock(self) -> int:
        my_key = self._my_key()
        if await self._acquire(my_key):
            return self._rev
        await self.unlock()
        raise Locked()

    async def unlock(self) -> None:
        if self._key is None:
            return
        r = await self.client.txn(*C.guarded_delete_txn(self._key, self._rev))
        self._header = r.header
        self._forget()

    async def __aenter__(self) -> AsyncMutex:
        await self.lock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unlock()
