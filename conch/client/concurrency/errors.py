"""Errors of the concurrency recipes (Go's ``concurrency.Err*``).

These are raised by the recipes themselves, never by the server, so they are *not*
``ClientError`` subclasses: a ``NoLeader`` here means "the election has no leader", not
the raft-level "etcdserver: no leader" that ``conch.client.errors.NoLeader`` stands for
(and that the client retries). Server/transport failures still surface as ``ClientError``.
"""

from __future__ import annotations


class ConcurrencyError(Exception):
    """Base class of the recipe errors."""


class SessionExpired(ConcurrencyError):
    """The session ended (lease revoked / expired / orphaned, or our key was deleted)
    while campaigning or waiting for a lock (Go's ErrSessionExpired; etcd #19597)."""


class NoLeader(ConcurrencyError):
    """The election has no leader (Go's ErrElectionNoLeader)."""


class NotLeader(ConcurrencyError):
    """We are not (or no longer) the leader of this election (Go's ErrElectionNotLeader)."""


class Locked(ConcurrencyError):
    """try_lock: the mutex is held by another session (Go's ErrLocked)."""

    def __init__(self, message: str = "mutex: Locked by another session") -> None:
        super().__init__(message)


class WaitTimeout(ConcurrencyError, TimeoutError):
    """campaign/lock gave up after its ``timeout``; our key was removed."""


class STMConflict(ConcurrencyError):
    """stm() gave up after ``max_attempts`` conflicting commits."""


__all__ = [
    "ConcurrencyError",
    "SessionExpired",
    "NoLeader",
    "NotLeader",
    "Locked",
    "WaitTimeout",
    "STMConflict",
]
