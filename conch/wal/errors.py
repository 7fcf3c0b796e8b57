"""Exceptions raised by the WAL.

Hierarchy::

    WALError
    ├── CorruptWALError          (refuse to start; never repaired automatically)
    │   └── CRCMismatchError
    ├── UnexpectedEOFError       (torn tail of the last segment; ``repair()`` fixes it)
    ├── SnapshotNotFoundError
    ├── SnapshotMismatchError
    └── MetadataConflictError
"""

from __future__ import annotations


class WALError(Exception):
    """Base class of every error raised by :mod:`conch.wal`."""


class CorruptWALError(WALError):
    """The log is damaged somewhere other than a torn tail of the last segment.

    ``path`` and ``offset`` name the file and the byte offset of the first bad frame.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"wal: corrupt WAL in {path!r} at byte offset {offset}: {reason}")


class CRCMismatchError(CorruptWALError):
    """A record's CRC (or a segment's carried-over CRC) does not match the running CRC."""


class UnexpectedEOFError(WALError, EOFError):
    """The last segment ends in a torn (partially written) frame.

    ``repair(dirpath)`` truncates the segment at ``offset`` (the end of the last valid record).
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"wal: unexpected EOF (torn tail) in {path!r} at byte offset {offset}: "
                         f"{reason}")


class SnapshotNotFoundError(WALError):
    """The snapshot the WAL was opened at has no matching Snapshot record."""


class SnapshotMismatchError(WALError):
    """A Snapshot record at the requested index carries a different term."""


class MetadataConflictError(WALError):
    """Two segments carry different metadata."""
