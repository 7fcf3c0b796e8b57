"""Per-peer sending decisions, sans-IO: the outgoing queue, link liveness, redial backoff.

Time is passed in (monotonic seconds); nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

from conch.transport.wire import HEADER, FrameType

#: etcd's per-peer stream buffer (rafthttp streamBufSize).
DEFAULT_MAX_MESSAGES = 4096
#: bytes queued for one peer before further messages are dropped.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

_pack_header = HEADER.pack
_MESSAGE = int(FrameType.MESSAGE)


class OutQueue:
    """Framed messages waiting for one write. ``take()`` returns them as one buffer."""

    __slots__ = ("_parts", "count", "nbytes", "max_messages", "max_bytes")

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._parts: list[bytes] = []
        self.count = 0
        self.nbytes = 0  # payload bytes (what the byte counters report)
        self.max_messages = max_messages
        self.max_bytes = max_bytes

    def push(self, payload: bytes) -> bool:
        """Queue one serialized message; False (nothing queued) when the queue is full."""
        n = len(payload)
        if self.count >= self.max_messages or (self.count and self.nbytes + n > self.max_bytes):
            return False
        parts = self._parts
        parts.append(_pack_header(n, _MESSAGE))
        parts.append(payload)
        self.count += 1
        self.nbytes += n
        return True

    def take(self) -> tuple[bytes, int, int]:
        """Everything queued as one buffer, with its message count and payload bytes."""
        if not self.count:
            return b"", 0, 0
        data = b"".join(self._parts)
        out = (data, self.count, self.nbytes)
        self._parts = []
        self.count = 0
        self.nbytes = 0
        return out

    def clear(self) -> int:
        n = self.count
        self._parts = []
        self.count = 0
        self.nbytes = 0
        return n


class Backoff:
    """Exponential redial delay: ``base`` doubling up to ``cap``; ``reset()`` after a success."""

    __slots__ = ("base", "cap", "_next")

    def __init__(self, base: float = 0.05, cap: float = 1.0) -> None:
        self.base = base
        self.cap = cap
        self._next = base

    def next(self) -> float:
        d = self._next
        self._next = min(self.cap, d * 2)
        return d

    def reset(self) -> None:
        self._next = self.base


class PeerLink:
    """Whether messages for a peer are queued or dropped.

    While the stream is up, messages queue until the queue is full (then drop: raft tolerates
    loss, and the caller reports the peer unreachable, as etcd does). While it is down,
    messages still queue for ``unreachable_after`` seconds (a reconnect in that window delivers
    them); after that the queue is discarded and every message is dropped and reported until
    the stream is back. A peer that never connected counts as down since it was added.
    """

    __slots__ = ("queue", "unreachable_after", "active_since", "down_since")

    def __init__(self, now: float, *, unreachable_after: float = 0.5,
                 max_messages: int = DEFAULT_MAX_MESSAGES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.queue = OutQueue(max_messages, max_bytes)
        self.unreachable_after = unreachable_after
        self.active_since: float | None = None
        self.down_since: float | None = now

    @property
    def up(self) -> bool:
        return self.active_since is not None

    def unreachable(self, now: float) -> bool:
        ds = self.down_since
        return ds is not None and now - ds >= self.unreachable_after

    def offer(self, payload: bytes, now: float) -> tuple[bool, int]:
        """Queue ``payload``. Returns (queued, number of messages dropped, this one included)."""
        ds = self.down_since
        if ds is not None and now - ds >= self.unreachable_after:
            return False, self.queue.clear() + 1
        if self.queue.push(payload):
            return True, 0
        return False, 1

    def connected(self, now: float) -> None:
        self.active_since = now
        self.down_since = None

    def disconnected(self, now: float) -> None:
        if self.down_since is None:
            self.down_since = now
        self.active_since = None
