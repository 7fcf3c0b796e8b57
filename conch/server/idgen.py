"""Request and lease ID generation, shaped like etcd's idutil.Generator.

An ID is 2 bytes of the member ID followed by a 6-byte counter that starts at the current
time in milliseconds shifted left by 8 bits, so IDs from different members never collide
and IDs from one member increase across restarts (unless the clock goes back)."""

from __future__ import annotations

import threading

_SUFFIX_BITS = 48
_SUFFIX_MASK = (1 << _SUFFIX_BITS) - 1


class IdGenerator:
    def __init__(self, member_id: int, now_ms: int) -> None:
        self._prefix = (member_id & 0xFFFF) << _SUFFIX_BITS
        self._suffix = (now_ms << 8) & _SUFFIX_MASK
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._suffix = (self._suffix + 1) & _SUFFIX_MASK
            return self._prefix | self._suffix

    def next_lease_id(self) -> int:
        """A positive int64 (etcd clears the top bit of a request ID)."""
        while True:
            lease_id = self.next() & ((1 << 63) - 1)
            if lease_id:
                return lease_id
