"""Election (Go's concurrency.Election), same keys: ``<prefix>/<lease id in hex>``.

Differences from Go, all on the safe side: ``campaign`` fails with ``SessionExpired``
when the session ends or our key disappears while waiting, and only returns after a read
that saw our key intact with no older candidate; a failed/cancelled/timed-out campaign
deletes its key (guarded by its create revision); ``resign`` keeps its state when the
delete fails so it can be retried; ``observe`` reports "no leader" as ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from conch.client.concurrency import _core as C
from conch.client.concurrency._wait import _maybe_await, wait_turn, wait_turn_async
from conch.client.concurrency.errors import NoLeader, NotLeader, SessionExpired
from conch.client.errors import ClientError, Compacted


class _ElectionBase:
    def __init__(self, session: Any, prefix: C.Key) -> None:
        self.session = session
        self.client = session.client
        self._kprefix = C.key_prefix(prefix)
        self._key: bytes | None = None
        self._rev = 0
        self._header: Any = None

    @property
    def prefix(self) -> bytes:
        """The key prefix, ``pfx + "/"`` as in Go."""
        return self._kprefix

    @property
    def key(self) -> bytes | None:
        """Our candidate/leader key (None before campaign / after resign)."""
        return self._key

    @property
    def rev(self) -> int:
        """Create revision of our key: the fencing token (0 when none)."""
        return self._rev

    @property
    def header(self) -> Any:
        return self._header

    def is_leader(self) -> Any:
        """A Compare true while our key is the one we created: a fence for guarded txns."""
        Compare, _ = C._client_api()
        return Compare.create(self._key or b"\0") == (self._rev if self._key else -1)

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout

    def _forget(self) -> None:
        self._key, self._rev = None, 0


class Election(_ElectionBase):
    def campaign(self, value: C.Key, timeout: float | None = None) -> int:
        """Become leader; returns our key's create revision (the fencing token).

        Raises SessionExpired (session ended / key lost while waiting), WaitTimeout, or
        the client's error; on any failure our key is removed.
        """
        deadline = self._deadline(timeout)
        s = self.session
        if s.done.is_set():
            raise SessionExpired("session ended before campaign")
        val = C.to_bytes(value)
        my_key = C.candidate_key(self._kprefix, s.lease_id)
        acq = C.acquire_result(
            self.client.txn(*C.acquire_txn(my_key, val, s.lease_id, self._kprefix, False)), False
        )
        self._key, self._rev, self._header = my_key, acq.rev, acq.header
        try:
            if acq.existing_value is not None and acq.existing_value != val:
                self.proclaim(val)
            self._header = wait_turn(s, self._kprefix, my_key, acq.rev, deadline)
        except BaseException:
            self._abandon()
            raise
        return self._rev

    def _abandon(self) -> None:
        if self._key is None:
            return
        with contextlib.suppress(ClientError):
            self.resign()

    def proclaim(self, value: C.Key) -> None:
        """Set the leader value without a new election; NotLeader if our key is gone."""
        if self._key is None:
            raise NotLeader("election: not leader")
        r = self.client.txn(
            *C.guarded_put_txn(self._key, self._rev, C.to_bytes(value), self.session.lease_id)
        )
        if not r.succeeded:
            self._forget()
            raise NotLeader("election: not leader")
        self._header = r.header

    def resign(self) -> None:
        """Give up leadership / candidacy. Idempotent; on error nothing changes (retry)."""
        if self._key is None:
            return
        r = self.client.txn(*C.guarded_delete_txn(self._key, self._rev))
        self._header = r.header
        self._forget()

    def leader(self) -> Any:
        """The current leader's KeyValue; NoLeader when there is none."""
        r = self.client.get(self._kprefix, **C.first_create_kwargs())
        if not r.kvs:
            raise NoLeader("election: no leader")
        return r.kvs[0]

    def observe(self) -> Observer:
        """Iterator of leader changes (KeyValue, or None for "no leader")."""
        return Observer(self.client, self._kprefix)


class Observer:
    """Yields the current leader at once, then every change: a new leader, a new value
    of the leader, or None when no candidate is left. Watches the whole prefix from the
    snapshot's revision + 1, so no change is missed; after a compaction it re-reads."""

    def __init__(self, client: Any, kprefix: bytes) -> None:
        self._client = client
        self._kprefix = kprefix
        self._watch: Any = None
        self._closed = False
        self._gen = self._run()

    def _run(self) -> Iterator[Any]:
        tracker = C.LeaderTracker()
        while not self._closed:
            r = self._client.get(self._kprefix, prefix=True)
            yield from tracker.reset(r.kvs)
            if self._closed:
                return
            self._watch = self._client.watch(
                self._kprefix, prefix=True, start_revision=C.header_revision(r) + 1
            )
            if self._closed:  # close() raced the watch's creation
                self._watch.cancel()
            try:
                for wr in self._watch:
                    yield from tracker.apply(wr.events)
            except Compacted:
                continue
            finally:
                self._watch.cancel()
            return  # cancelled

    def __iter__(self) -> Observer:
        return self

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        """Stop; safe from another thread (a blocked ``next`` then ends the iteration)."""
        self._closed = True
        w = self._watch
        if w is not None:
            w.cancel()

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncElection(_ElectionBase):
    async def campaign(self, value: C.Key, timeout: float | None = None) -> int:
        deadline = self._deadline(timeout)
        s = self.session
        if s.done.is_set():
            raise SessionExpired("session ended before campaign")
        val = C.to_bytes(value)
        my_key = C.candidate_key(self._kprefix, s.lease_id)
        call = asyncio.ensure_future(
            self.client.txn(*C.acquire_txn(my_key, val, s.lease_id, self._kprefix, False)))
        try:
            r = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The txn may still create our key: a candidate nobody campaigns for could later
            # be elected. Wait for its outcome and resign if it did.
            with contextlib.suppress(BaseException):
                acq = C.acquire_result(await call, False)
                self._key, self._rev, self._header = my_key, acq.rev, acq.header
                await asyncio.shield(self._abandon())
            raise
        acq = C.acquire_result(r, False)
        self._key, self._rev, self._header = my_key, acq.rev, acq.header
        try:
            if acq.existing_value is not None and acq.existing_value != val:
                await self.proclaim(val)
            self._header = await wait_turn_async(s, self._kprefix, my_key, acq.rev, deadline)
        except BaseException:
            await asyncio.shield(self._abandon())
            raise
        return self._rev

    async def _abandon(self) -> None:
        if self._key is None:
            return
        with contextlib.suppress(ClientError):
            await self.resign()

    async def proclaim(self, value: C.Key) -> None:
        if self._key is None:
            raise NotLeader("election: not leader")
        r = await self.client.txn(
            *C.guarded_put_txn(self._key, self._rev, C.to_bytes(value), self.session.lease_id)
        )
        if not r.succeeded:
            self._forget()
            raise NotLeader("election: not leader")
        self._header = r.header

    async def resign(self) -> None:
        if self._key is None:
            return
        r = await self.client.txn(*C.guarded_delete_txn(self._key, self._rev))
        self._header = r.header
        self._forget()

    async def leader(self) -> Any:
        r = await self.client.get(self._kprefix, **C.first_create_kwargs())
        if not r.kvs:
            raise NoLeader("election: no leader")
        return r.kvs[0]

    def observe(self) -> AsyncIterator[Any]:
        return self._observe()

    async def _observe(self) -> AsyncIterator[Any]:
        tracker = C.LeaderTracker()
        while True:
            r = await self.client.get(self._kprefix, prefix=True)
            for x in tracker.reset(r.kvs):
                yield x
            w = await _maybe_await(
                self.client.watch(
                    self._kprefix, prefix=True, start_revision=C.header_revision(r) + 1
                )
            )
            try:
                async for wr in w:
                    for x in tracker.apply(wr.events):
                        yield x
            except Compacted:
                continue
            finally:
                with contextlib.suppress(ClientError):
                    await _maybe_await(w.cancel())
            return
