"""Software transactional memory (Go's concurrency.NewSTM) with Go's four isolation levels.

``stm(client, apply_fn)`` runs ``apply_fn(s)`` and commits its writes in one txn guarded
according to the isolation level; on a conflict it re-runs ``apply_fn`` (with fresh values
prefetched by the failed commit, as Go does). Exceptions from ``apply_fn`` abort.

- SerializableSnapshot (default): reads at the first read's revision; guard: read set
  unchanged and no written key modified since the first read.
- Serializable: reads at the first read's revision; guard: read set unchanged.
- RepeatableReads: serializable gets, cached; guard: read set unchanged.
- ReadCommitted: serializable gets, cached; no guard (lost updates possible, as in Go).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from conch.client.concurrency._core import Isolation, Key, STMCore, to_bytes

SerializableSnapshot = Isolation.SerializableSnapshot
Serializable = Isolation.Serializable
RepeatableReads = Isolation.RepeatableReads
ReadCommitted = Isolation.ReadCommitted


class _STMBase:
    def __init__(self, core: STMCore) -> None:
        self._core = core

    def put(self, key: Key, value: Key, **put_kwargs: Any) -> None:
        """Buffer a put (``lease=`` etc. as for Client.put); committed with the txn."""
        self._core.put(to_bytes(key), to_bytes(value), put_kwargs)

    def delete(self, key: Key) -> None:
        self._core.delete(to_bytes(key))


class STM(_STMBase):
    """The object ``apply_fn`` receives."""

    def __init__(self, client: Any, core: STMCore) -> None:
        super().__init__(core)
        self._client = client

    def _read(self, keys: Sequence[bytes]) -> Any:
        first, missing, ops = self._core.begin_get(keys)
        result = self._client.txn((), ops, ()) if ops else None
        return self._core.end_get(first, keys, missing, result)

    def get(self, key: Key, *more: Key) -> bytes | None:
        """Value of ``key`` (None if absent); ``more`` keys are fetched in the same round."""
        keys = [to_bytes(key), *(to_bytes(k) for k in more)]
        found, value = self._core.written(keys[0])
        if found:
            return value
        r = self._read(keys)
        return bytes(r.kvs[0].value) if r.kvs else None

    def rev(self, key: Key) -> int:
        """Mod revision of ``key`` as read by this transaction (0 if absent)."""
        r = self._read([to_bytes(key)])
        return int(r.kvs[0].mod_revision) if r.kvs else 0


class AsyncSTM(_STMBase):
    def __init__(self, client: Any, core: STMCore) -> None:
        super().__init__(core)
        self._client = client

    async def _read(self, keys: Sequence[bytes]) -> Any:
        first, missing, ops = self._core.begin_get(keys)
        result = await self._client.txn((), ops, ()) if ops else None
        return self._core.end_get(first, keys, missing, result)

    async def get(self, key: Key, *more: Key) -> bytes | None:
        keys = [to_bytes(key), *(to_bytes(k) for k in more)]
        found, value = self._core.written(keys[0])
        if found:
            return value
        r = await self._read(keys)
        return bytes(r.kvs[0].value) if r.kvs else None

    async def rev(self, key: Key) -> int:
        r = await self._read([to_bytes(key)])
        return int(r.kvs[0].mod_revision) if r.kvs else 0


def stm(
    client: Any,
    apply_fn: Callable[[STM], object],
    isolation: Isolation = SerializableSnapshot,
    prefetch: Sequence[Key] = (),
    *,
    max_attempts: int | None = None,
) -> Any:
    """Run ``apply_fn`` until its txn commits; returns the commit's TxnResult.

    ``max_attempts`` bounds the retries (STMConflict when exhausted; None: retry forever,
    as Go does)."""
    core = STMCore(isolation, prefetch, max_attempts)
    s = STM(client, core)
    while True:
        core.start_attempt()
        if core.prefetch_keys:
            s.get(*core.prefetch_keys)
        apply_fn(s)
        compare, success, failure, else_keys = core.commit_txn()
        result = client.txn(compare, success, failure)
        if core.commit_result(result, else_keys):
            return result


async def async_stm(
    client: Any,
    apply_fn: Callable[[AsyncSTM], Awaitable[object]],
    isolation: Isolation = SerializableSnapshot,
    prefetch: Sequence[Key] = (),
    *,
    max_attempts: int | None = None,
) -> Any:
    """The asyncio flavour: ``apply_fn`` is a coroutine function."""
    core = STMCore(isolation, prefetch, max_attempts)
    s = AsyncSTM(client, core)
    while True:
        core.start_attempt()
        if core.prefetch_keys:
            await s.get(*core.prefetch_keys)
        await apply_fn(s)
        compare, success, failure, else_keys = core.commit_txn()
        result = await client.txn(compare, success, failure)
        if core.commit_result(result, else_keys):
            return result
