"""Pending ReadIndex requests on the leader (safe mode).

A request records the leader's commit index when it arrives. It is answered once a quorum has
acknowledged a heartbeat that was sent *after* the request arrived: then no other leader can have
committed anything newer. Requests are identified by their context bytes. An ack for a later
request also confirms every earlier one, so a whole queue is released at once; the leader sends
one heartbeat round per batch (see ``Raft.flush_read_index``).
"""

from __future__ import annotations

import enum

from conch.raft.types import Message


class ReadOnlyOption(enum.IntEnum):
    Safe = 0
    LeaseBased = 1


class ReadIndexStatus:
    __slots__ = ("req", "index", "acks")

    def __init__(self, req: Message, index: int) -> None:
        self.req = req
        self.index = index
        self.acks: dict[int, bool] = {}


class ReadOnly:
    def __init__(self, option: ReadOnlyOption) -> None:
        self.option = option
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []
        # Index into ``queue`` of the first request whose heartbeat round has not been sent.
        self.unsent_from = 0

    def add_request(self, index: int, m: Message) -> None:
        ctx = m.entries[0].data
        if ctx in self.pending:
            return
        self.pending[ctx] = ReadIndexStatus(m, index)
        self.queue.append(ctx)

    def has_unsent(self) -> bool:
        return self.unsent_from < len(self.queue)

    def mark_sent(self) -> bytes:
        """The context to put on the next heartbeat round: the newest request."""
        assert self.queue, "no pending read"
        self.unsent_from = len(self.queue)
        return self.queue[-1]

    def recv_ack(self, node: int, ctx: bytes) -> dict[int, bool] | None:
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks[node] = True
        return rs.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Release every request up to and including ``ctx``."""
        if ctx not in self.pending:
            return []
        k = self.queue.index(ctx) + 1
        released = [self.pending.pop(c) for c in self.queue[:k]]
        del self.queue[:k]
        self.unsent_from = max(0, self.unsent_from - k)
        return released

    def last_pending_request_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""

    def reset(self) -> None:
        self.pending.clear()
        self.queue.clear()
        self.unsent_from = 0
