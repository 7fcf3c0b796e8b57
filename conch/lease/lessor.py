"""The lessor: lease grant, revoke, renew (keepalive), time-to-live and expiry.

What lives where
----------------
On disk (the `lease` bucket, written in the apply thread's LMDB write transaction):
    key   = the lease ID as 8 big-endian bytes (uint64 of the int64, like etcd),
    value = marshalled `leasepb.Lease{ID, TTL}`.
That is all that is durable about a lease. `RemainingTTL` is never written: there is no
lease checkpointing in conch.

In memory only (rebuilt on start):
    * lease -> attached keys, and key -> lease. Rebuilt from the live keys of the MVCC
      store (`store.iter_live()`, each KeyValue carries its `lease`), so it can never
      disagree with the key space after a restart.
    * each lease's expiry (monotonic seconds) and the expiry heap. Clocks are not
      persisted: a restarted member's leases are "forever" until `promote(now)` starts
      every clock at the full granted TTL, exactly as etcd's leader promotion does.
      A lease therefore lives at least its TTL after the last keepalive, possibly longer
      across restarts, never shorter.

Why expiry goes through the log
-------------------------------
The apply path must be deterministic: replaying the WAL after a crash (or, later, on
another member) has to produce byte-identical buckets and revisions. Wall and monotonic
clocks differ between the original apply and a replay, so apply never looks at time.
Instead the member asks `expired(now)` (outside apply), proposes a `LeaseRevoke` for each
ID, and the revoke - deleting every attached key in one revision - happens when that entry
is applied, the same way on every replay. Time only influences *what is proposed*, never
*how an entry is applied*. Likewise a keepalive (`renew`) touches only the in-memory
clock and is not logged.

Threads
-------
grant/revoke/attach/detach run on the apply thread; renew/time_to_live/leases/expired
run on the event loop. All in-memory state is guarded by one lock, held only for short
dictionary/heap operations and never while calling into the store (the store calls
back into attach/detach, so holding it there would deadlock).
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import lmdb

from conch.backend import Backend, schema
from conch.errors import (
    ErrLeaseExist,
    ErrLeaseNotFound,
    ErrLeaseTTLTooLarge,
    err,
)
from conch.proto.etcdserverpb import rpc_pb2
from conch.proto.leasepb import lease_pb2
from conch.proto.mvccpb import kv_pb2

__all__ = [
    "MAX_LEASE_TTL",
    "NO_LEASE",
    "KVStoreLike",
    "LeaseInfo",
    "Lessor",
    "new_lease_id",
]

NO_LEASE = 0
# etcd's MaxLeaseTTL (server/lease/lessor.go), seconds.
MAX_LEASE_TTL = 9_000_000_000
# etcd's leaseRevokeRate: leases revoked per second at most; shapes promote()'s spreading.
DEFAULT_REVOKE_RATE = 1000
# etcd's defaultExpiredleaseRetryInterval: an expired lease reported by expired() is not
# reported again for this long, unless it is still there (its revoke was lost).
DEFAULT_EXPIRED_RETRY_INTERVAL = 3.0

_LEASE_BUCKET = schema.LEASE
_U64 = struct.Struct(">Q")
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_FOREVER = float("inf")


# --- the store, as far as the lessor needs it -------------------------------------------
class _Writer(Protocol):
    def delete_range(self, req: rpc_pb2.DeleteRangeRequest) -> Any: ...

    def end(self) -> list[kv_pb2.Event]: ...


class KVStoreLike(Protocol):
    """The part of `conch.mvcc.KVStore` the lessor uses."""

    lease_hooks: Any

    def write(self, txn: lmdb.Transaction) -> _Writer: ...

    def iter_live(self) -> Iterable[kv_pb2.KeyValue]: ...


def new_lease_id(rng: random.Random) -> int:
    """A fresh lease ID for a LeaseGrant with ID=0: uniform over the positive int64s.

    Pure: the member calls it (before proposing, so the chosen ID is in the log and
    replay is deterministic) and retries if the ID happens to exist already."""
    while True:
        lid = rng.getrandbits(63)
        if lid != 0:
            return lid


def _id_key(lease_id: int) -> bytes:
    return _U64.pack(lease_id & 0xFFFF_FFFF_FFFF_FFFF)


@dataclass(frozen=True)
class LeaseInfo:
    """A snapshot of one lease, as `Lessor.lookup` returns it."""

    id: int
    ttl: int  # the granted TTL, seconds
    expiry: float | None  # monotonic seconds; None while the clock is not running
    keys: tuple[bytes, ...]  # attached keys, sorted

    def remaining(self, now: float) -> float | None:
        """Seconds until expiry (negative once expired); None if the clock is stopped."""
        return None if self.expiry is None else self.expiry - now


@dataclass
class _Lease:
    id: int
    ttl: int
    expiry: float = _FOREVER  # when the lease expires; _FOREVER = clock not running
    seq: int = 0  # the heap entry (deadline, seq, id) that is current for this lease
    keys: set[bytes] = field(default_factory=set)


class Lessor:
    """Owns the leases. Also the store's `lease_hooks` (exists/attach/detach)."""

    def __init__(
        self,
        backend: Backend,
        store: KVStoreLike,
        *,
        min_ttl: int = 2,
        revoke_rate: int = DEFAULT_REVOKE_RATE,
        expired_retry_interval: float = DEFAULT_EXPIRED_RETRY_INTERVAL,
    ) -> None:
        self._backend = backend
        self._store = store
        self._db = backend.db(_LEASE_BUCKET)
        backend.add_reopen_listener(self._rebind)
        self.min_ttl = min_ttl
        self._revoke_rate = revoke_rate
        self._retry = expired_retry_interval
        self._mu = threading.Lock()
        self._leases: dict[int, _Lease] = {}
        self._key_lease: dict[bytes, int] = {}
        # (deadline, seq, id); an entry is live iff the lease exists and has that seq.
        self._heap: list[tuple[float, int, int]] = []
        self._seq = itertools.count(1)
        self._primary = False
        store.lease_hooks = self
        self._load()

    # --- loading ------------------------------------------------------------------------
    def _rebind(self) -> None:
        self._db = self._backend.db(_LEASE_BUCKET)

    def _load(self) -> None:
        """(Re)build the in-memory state from the lease bucket and the live keys."""
        leases: dict[int, _Lease] = {}
        with self._backend.read() as txn:
            for _, raw in txn.cursor(db=self._db):
                lpb = lease_pb2.Lease()
                lpb.ParseFromString(bytes(raw))
                leases[lpb.ID] = _Lease(id=lpb.ID, ttl=max(lpb.TTL, self.min_ttl))
        key_lease: dict[bytes, int] = {}
        for kv in self._store.iter_live():
            if kv.lease == NO_LEASE:
                continue
            lease = leases.get(kv.lease)
            if lease is None:  # a key naming a vanished lease: etcd logs and ignores it
                continue
            lease.keys.add(kv.key)
            key_lease[kv.key] = kv.lease
        with self._mu:
            self._leases = leases
            self._key_lease = key_lease
            self._heap = []
            self._primary = False

    def recover(self, now: float | None = None) -> None:
        """Rebuild from disk after the in-memory state may have diverged from it (an
        aborted batch transaction, a restored snapshot). Leases that survive keep their
        clocks; leases new to memory start at their full TTL if the clock is running
        (`now` required then)."""
        with self._mu:
            was_primary = self._primary
            old = {lid: lease.expiry for lid, lease in self._leases.items()}
        self._load()
        if not was_primary:
            return
        if now is None:
            raise ValueError("recover(now) needs the time while the lessor is promoted")
        with self._mu:
            self._primary = True
            for lease in self._leases.values():
                expiry = old.get(lease.id, _FOREVER)
                lease.expiry = expiry if expiry != _FOREVER else now + lease.ttl
                self._schedule(lease, lease.expiry)

    # --- apply-thread operations (deterministic; run inside the caller's write txn) -------
    def grant(self, txn: lmdb.Transaction, lease_id: int, ttl: int, now: float) -> tuple[int, int]:
        """Create lease `lease_id`; returns (id, TTL actually granted).

        `now` starts the lease's clock if this lessor is promoted (it does not affect what
        is written, so replay stays deterministic)."""
        if lease_id == NO_LEASE:
            # The member picks IDs for ID=0 requests before proposing; etcd's lessor
            # answers a zero ID with "not found".
            raise err(ErrLeaseNotFound)
        if not _I64_MIN <= lease_id <= _I64_MAX:
            raise ValueError(f"lease ID {lease_id} is not an int64")
        if ttl > MAX_LEASE_TTL:
            raise err(ErrLeaseTTLTooLarge)
        ttl = max(ttl, self.min_ttl)
        with self._mu:
            if lease_id in self._leases:
                raise err(ErrLeaseExist)
        # disk first: if the put fails, memory is untouched
        txn.put(
            _id_key(lease_id),
            lease_pb2.Lease(ID=lease_id, TTL=ttl).SerializeToString(),
            db=self._db,
        )
        lease = _Lease(id=lease_id, ttl=ttl)
        with self._mu:
            self._leases[lease_id] = lease
            if self._primary:
                lease.expiry = now + ttl
                self._schedule(lease, lease.expiry)
        return lease_id, ttl

    def revoke(self, txn: lmdb.Transaction, lease_id: int) -> list[kv_pb2.Event]:
        """Delete the lease and every key attached to it, all in one store revision (no
        revision at all if no key is attached). Raises ErrLeaseNotFound."""
        with self._mu:
            lease = self._leases.get(lease_id)
            if lease is None:
                raise err(ErrLeaseNotFound)
            # Sorted so every member (and every replay) deletes in the same order.
            keys = sorted(lease.keys)
        try:
            w = self._store.write(txn)
            for key in keys:
                w.delete_range(rpc_pb2.DeleteRangeRequest(key=key))
            events = w.end()
            txn.delete(_id_key(lease_id), db=self._db)
        except BaseException:
            # The store detached keys through our hooks as it went; the caller's child
            # transaction rolls the disk back, so put memory back too.
            with self._mu:
                if self._leases.get(lease_id) is lease:
                    for key in keys:
                        self._unsafe_attach(lease, key)
            raise
        with self._mu:
            # The store detached every key it deleted: a key still attached is one the
            # lessor and the store disagree about (the store has no such key).
            assert not lease.keys, (
                f"lease {lease_id:x}: {len(lease.keys)} attached key(s) not in the store, "
                f"e.g. {sorted(lease.keys)[0]!r}"
            )
            if self._leases.get(lease_id) is lease:
                del self._leases[lease_id]
                for key in lease.keys:  # anything the store did not detach
                    if self._key_lease.get(key) == lease_id:
                        del self._key_lease[key]
                lease.keys.clear()
        return events

    # --- the store's hooks (lease_hooks) -------------------------------------------------
    def exists(self, lease_id: int) -> bool:
        with self._mu:
            return lease_id in self._leases

    def attach(self, lease_id: int, key: bytes) -> None:
        """The store put `key` with `lease_id`. ErrLeaseNotFound if there is no such lease
        (the store checks `exists` first, so this means a store bug)."""
        with self._mu:
            lease = self._leases.get(lease_id)
            if lease is None:
                raise err(ErrLeaseNotFound)
            self._unsafe_attach(lease, key)

    def detach(self, lease_id: int, key: bytes) -> None:
        """The store deleted `key`, or re-put it without / with another lease. Tolerant:
        an unknown lease or key is a no-op (revoke deletes keys of a lease on its way out)."""
        with self._mu:
            lease = self._leases.get(lease_id)
            if lease is not None:
                lease.keys.discard(key)
            if self._key_lease.get(key) == lease_id:
                del self._key_lease[key]

    def _unsafe_attach(self, lease: _Lease, key: bytes) -> None:
        prev = self._key_lease.get(key)
        if prev is not None and prev != lease.id:
            other = self._leases.get(prev)
            if other is not None:
                other.keys.discard(key)
        lease.keys.add(key)
        self._key_lease[key] = lease.id

    # --- event-loop operations (clocks; not logged) --------------------------------------
    def renew(self, lease_id: int, now: float) -> int:
        """A keepalive: restart the lease's clock at its full TTL and return that TTL.

        0 if the lease is unknown, or already expired (it is about to be revoked; etcd
        waits for the revoke and then answers "not found", which the keepalive stream
        turns into TTL 0). Before promote() the clock is not running and the TTL is
        returned without changing anything."""
        with self._mu:
            lease = self._leases.get(lease_id)
            if lease is None:
                return 0
            if not self._primary:
                return lease.ttl
            if lease.expiry <= now:
                return 0
            lease.expiry = now + lease.ttl
            self._schedule(lease, lease.expiry)
            return lease.ttl

    def time_to_live(
        self, lease_id: int, now: float, keys: bool = False
    ) -> tuple[int, int, list[bytes]]:
        """(remaining TTL, granted TTL, attached keys if `keys`, sorted).

        Unknown lease: (-1, 0, []). The remaining TTL is etcd's
        `int64(le.Remaining().Seconds())`, i.e. whole seconds truncated: a lease granted
        with TTL 10 reports 10 at the instant of the grant and 9 a moment later. An
        expired lease that is not revoked yet reports 0 (etcd would report a negative
        number; -1 would read as "not found"). Before promote() the full TTL is reported."""
        with self._mu:
            lease = self._leases.get(lease_id)
            if lease is None:
                return -1, 0, []
            if lease.expiry == _FOREVER:
                remaining = lease.ttl
            else:
                remaining = max(0, int(lease.expiry - now))
            return remaining, lease.ttl, sorted(lease.keys) if keys else []

    def leases(self) -> list[int]:
        """All lease IDs, soonest expiry first (etcd's Leases order), ties by ID."""
        with self._mu:
            return [
                lease.id
                for lease in sorted(self._leases.values(), key=lambda le: (le.expiry, le.id))
            ]

    def lookup(self, lease_id: int) -> LeaseInfo | None:
        with self._mu:
            lease = self._leases.get(lease_id)
            if lease is None:
                return None
            return LeaseInfo(
                id=lease.id,
                ttl=lease.ttl,
                expiry=None if lease.expiry == _FOREVER else lease.expiry,
                keys=tuple(sorted(lease.keys)),
            )

    def lease_of(self, key: bytes) -> int:
        """The lease `key` is attached to, or 0 (etcd's GetLease)."""
        with self._mu:
            return self._key_lease.get(key, NO_LEASE)

    def expired(self, now: float, limit: int = 1000) -> list[int]:
        """Up to `limit` IDs of leases whose expiry is <= now, soonest first, for the member
        to propose LeaseRevoke for. A returned lease is not returned again for
        `expired_retry_interval` seconds (its revoke is in flight); if it is still there
        after that, the revoke was lost and it is returned again. Empty before promote()."""
        out: list[int] = []
        with self._mu:
            if not self._primary:
                return out
            heap = self._heap
            while heap and len(out) < limit:
                deadline, seq, lid = heap[0]
                lease = self._leases.get(lid)
                if lease is None or lease.seq != seq:
                    heapq.heappop(heap)  # stale: revoked, renewed or rescheduled
                    continue
                if deadline > now:
                    break
                heapq.heappop(heap)
                if lease.expiry <= now:
                    out.append(lid)
                    self._schedule(lease, now + self._retry)
                else:  # cannot happen (deadline >= expiry), but never lose a lease
                    self._schedule(lease, lease.expiry)
        return out

    def promote(self, now: float, extend: float = 0.0) -> None:
        """Start (or restart) every lease's clock at its full TTL (+ `extend`), as etcd's
        leader promotion does. Called at member start, after WAL replay.

        Like etcd, when there are at least `revoke_rate` leases, leases that would expire
        in the same second beyond 3/4 of the revoke rate are pushed later, so a restart
        does not produce a burst of expiries larger than can be revoked."""
        with self._mu:
            self._primary = True
            self._heap = []
            for lease in self._leases.values():
                lease.expiry = now + extend + lease.ttl
            if len(self._leases) >= self._revoke_rate:
                self._spread(now, extend)
            for lease in self._leases.values():
                self._schedule(lease, lease.expiry)

    def demote(self) -> None:
        """Stop every clock (leases become "forever" until the next promote)."""
        with self._mu:
            self._primary = False
            self._heap = []
            for lease in self._leases.values():
                lease.expiry = _FOREVER

    @property
    def primary(self) -> bool:
        return self._primary

    # --- internals (call with self._mu held) ---------------------------------------------
    def _spread(self, now: float, extend: float) -> None:
        ordered = sorted(self._leases.values(), key=lambda le: (le.expiry, le.id))
        target = (3 * self._revoke_rate) // 4  # expiries per second allowed to pile up
        base = ordered[0].expiry - now
        next_window = base + 1.0
        count = 0
        for lease in ordered:
            remaining = lease.expiry - now
            if remaining > next_window:
                base = remaining
                next_window = base + 1.0
                count = 1
                continue
            count += 1
            if count <= target:
                continue
            delay = count / target - (remaining - base)
            next_window = base + delay
            lease.expiry = now + extend + delay + lease.ttl

    def _schedule(self, lease: _Lease, deadline: float) -> None:
        lease.seq = next(self._seq)
        heapq.heappush(self._heap, (deadline, lease.seq, lease.id))
        # Every renew leaves a stale entry behind; rebuild once they dominate.
        if len(self._heap) > 2 * len(self._leases) + 64:
            self._heap = [
                e
                for e in self._heap
                if (le := self._leases.get(e[2])) is not None and le.seq == e[1]
            ]
            heapq.heapify(self._heap)
