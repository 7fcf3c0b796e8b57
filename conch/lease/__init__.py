"""Leases: see `conch.lease.lessor` for the design (what is on disk, what is in memory,
and why expiry is proposed through the log)."""

from conch.lease.lessor import (
    MAX_LEASE_TTL,
    NO_LEASE,
    KVStoreLike,
    LeaseInfo,
    Lessor,
    new_lease_id,
)

__all__ = ["MAX_LEASE_TTL", "NO_LEASE", "KVStoreLike", "LeaseInfo", "Lessor", "new_lease_id"]
