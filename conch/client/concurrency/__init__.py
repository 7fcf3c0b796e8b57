"""Concurrency recipes with the semantics and key layout of etcd's Go
``client/v3/concurrency`` package, so Python, Go and etcdctl contenders share one
election or lock: ``Session``, ``Election``, ``Mutex``, ``stm`` and their asyncio
flavours ``AsyncSession``, ``AsyncElection``, ``AsyncMutex``, ``async_stm``.

Hardened where etcd leaves traps (etcd #19597, #11456, #21128, #22124): campaign and lock
raise ``SessionExpired`` when the session ends while waiting and re-check their own key
before returning; resign/unlock are idempotent and retry-safe; observe reports "no leader".
"""

from conch.client.concurrency._core import Isolation
from conch.client.concurrency.election import AsyncElection, Election, Observer
from conch.client.concurrency.errors import (
    ConcurrencyError,
    Locked,
    NoLeader,
    NotLeader,
    SessionExpired,
    STMConflict,
    WaitTimeout,
)
from conch.client.concurrency.mutex import AsyncMutex, Mutex
from conch.client.concurrency.session import AsyncSession, Session
from conch.client.concurrency.stm import (
    STM,
    AsyncSTM,
    ReadCommitted,
    RepeatableReads,
    Serializable,
    SerializableSnapshot,
    async_stm,
    stm,
)

__all__ = [
    "AsyncElection", "AsyncMutex", "AsyncSTM", "AsyncSession", "ConcurrencyError", "Election",
    "Isolation", "Locked", "Mutex", "NoLeader", "NotLeader", "Observer", "ReadCommitted",
    "RepeatableReads", "STM", "STMConflict", "Serializable", "SerializableSnapshot",
    "Session", "SessionExpired", "WaitTimeout", "async_stm", "stm",
]  # fmt: skip
