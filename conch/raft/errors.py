"""Errors raised by the raft core and its storage. Nothing here depends on the rest of conch."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of raft core errors."""


class ProposalDropped(RaftError):
    """The proposal was not accepted: no known leader, a leadership transfer is in progress,
    this node was removed, or the uncommitted log is full. Retry later (maybe elsewhere)."""


class StepLocalMessage(RaftError):
    """A local-only message type (MsgHup, MsgBeat, ...) arrived through ``step``."""


class StepPeerNotFound(RaftError):
    """A response from a peer the leader does not track (e.g. a removed node)."""


class ConfChangeError(RaftError):
    """An invalid configuration change (e.g. leaving a joint config that was never entered)."""


class StorageError(RaftError):
    """Base class of storage errors."""


class Compacted(StorageError):
    """The requested index is older than the storage's first index: it was compacted."""


class Unavailable(StorageError):
    """The requested index is newer than the storage's last index."""


class SnapOutOfDate(StorageError):
    """The snapshot is older than the one storage already holds."""


class SnapshotTemporarilyUnavailable(StorageError):
    """The snapshot is being produced; raft retries later."""
