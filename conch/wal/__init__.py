"""etcd-format write-ahead log: segmented files, rolling CRC-32C, torn-tail repair.

See :mod:`conch.wal.wal` for the life cycle and :mod:`conch.wal.frame` for the on-disk format.
"""

from conch.wal.errors import (
    CorruptWALError,
    CRCMismatchError,
    MetadataConflictError,
    SnapshotMismatchError,
    SnapshotNotFoundError,
    UnexpectedEOFError,
    WALError,
)
from conch.wal.wal import (
    SEGMENT_SIZE_BYTES,
    WAL,
    WalSnapshot,
    decode_metadata,
    encode_metadata,
    exists,
    purge,
    repair,
    valid_snapshot_entries,
    wal_name,
)

__all__ = [
    "SEGMENT_SIZE_BYTES",
    "WAL",
    "CRCMismatchError",
    "CorruptWALError",
    "MetadataConflictError",
    "SnapshotMismatchError",
    "SnapshotNotFoundError",
    "UnexpectedEOFError",
    "WALError",
    "WalSnapshot",
    "decode_metadata",
    "encode_metadata",
    "exists",
    "purge",
    "repair",
    "valid_snapshot_entries",
    "wal_name",
]
