"""The simulated peer network: every message is marshalled, delayed, maybe dropped,
duplicated or overtaken, and delivered as a fresh copy; partitions cut links both ways.

A message is addressed to the receiver's incarnation at the time it is sent: if that
process dies before the message arrives, the message is lost with its connection. A
snapshot is sent as a copy of the sender's database file, written where the real receiver
would put it (`<snap dir>/<index:016x>.snap.db`), then handed to the receiver's
`on_snapshot`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conch.raft.codec import decode_message, encode_message
from conch.raft.types import Message, MessageType
from conch.transport.transport import SnapshotHeader

if TYPE_CHECKING:
    from conch.server.member import Member


@dataclass
class NetParams:
    delay: tuple[float, float] = (0.0005, 0.01)
    drop: float = 0.0
    duplicate: float = 0.0
    #: probability that a message is held back long enough to be overtaken
    reorder: float = 0.0


@dataclass
class Endpoint:
    member: Member | None = None
    incarnation: int = 0
    snap_dir: str = ""


@dataclass
class NetStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    snapshots: int = 0


@dataclass
class Network:
    rng: random.Random
    params: NetParams = field(default_factory=NetParams)
    endpoints: dict[int, Endpoint] = field(default_factory=dict)
    #: unordered pairs of member IDs that cannot talk
    cut: set[frozenset[int]] = field(default_factory=set)
    stats: NetStats = field(default_factory=NetStats)
    digest: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=16))

    def blocked(self, a: int, b: int) -> bool:
        return frozenset((a, b)) in self.cut

    def reachable(self, frm: int, to: int) -> Endpoint | None:
        ep = self.endpoints.get(to)
        if ep is None or ep.member is None or self.blocked(frm, to):
            return None
        return ep

    # --- partitions -------------------------------------------------------------------
    def isolate(self, member_id: int) -> None:
        for other in self.endpoints:
            if other != member_id:
                self.cut.add(frozenset((member_id, other)))

    def split(self, side: Sequence[int]) -> None:
        a = set(side)
        for x in self.endpoints:
            for y in self.endpoints:
                if x < y and ((x in a) != (y in a)):
                    self.cut.add(frozenset((x, y)))

    def heal(self) -> None:
        self.cut.clear()

    # --- messages ---------------------------------------------------------------------
    def send(self, frm: int, m: Message) -> None:
        self.stats.sent += 1
        ep = self.reachable(frm, m.to)
        p = self.params
        rng = self.rng
        if ep is None or rng.random() < p.drop:
            self.stats.dropped += 1
            return
        data = encode_message(m)
        copies = 1
        # A proposal forwarded to the leader is not idempotent (etcd's applier does not
        # dedupe request IDs); etcd's TCP streams never duplicate one, so neither do we.
        if rng.random() < p.duplicate and m.type != MessageType.MsgProp:
            copies = 2
            self.stats.duplicated += 1
        loop = asyncio.get_running_loop()
        lo, hi = p.delay
        for _ in range(copies):
            delay = lo + rng.random() * (hi - lo)
            if rng.random() < p.reorder:
                delay += hi * (1 + 4 * rng.random())
            loop.call_later(delay, self._deliver, frm, m.to, ep.incarnation, data)

    def _deliver(self, frm: int, to: int, incarnation: int, data: bytes) -> None:
        ep = self.reachable(frm, to)
        if ep is None or ep.incarnation != incarnation or ep.member is None:
            self.stats.dropped += 1
            return
        self.stats.delivered += 1
        now = asyncio.get_running_loop().time()
        self.digest.update(b"%d>%d@%r:" % (frm, to, now))
        self.digest.update(data)
        ep.member.step(decode_message(data))

    async def send_snapshot(self, frm: int, to: int, m: Message, path: str) -> bool:
        ep = self.reachable(frm, to)
        lo, hi = self.params.delay
        if ep is None:
            await asyncio.sleep(hi)
            return False
        incarnation = ep.incarnation
        await asyncio.sleep(2 * hi + self.rng.random() * 5 * hi)  # a transfer takes a while
        ep2 = self.reachable(frm, to)
        if ep2 is not ep or ep.incarnation != incarnation or ep.member is None:
            return False
        assert m.snapshot is not None
        index = m.snapshot.metadata.index
        os.makedirs(ep.snap_dir, exist_ok=True)
        dst = os.path.join(ep.snap_dir, f"{index:016x}.snap.db")
        shutil.copyfile(path, dst)
        data = encode_message(m)
        self.digest.update(b"snap %d>%d:" % (frm, to))
        self.digest.update(data)
        self.stats.snapshots += 1
        header = SnapshotHeader(frm, decode_message(data), os.path.getsize(dst), b"")
        await ep.member.on_snapshot(header, dst)
        return True


class SimTransport:
    """One member incarnation's `PeerTransport` on the simulated network."""

    def __init__(self, net: Network, member_id: int) -> None:
        self.net = net
        self.member_id = member_id
        self.closed = False
        self.peers: set[int] = set()

    def send(self, messages: Sequence[Message]) -> None:
        if self.closed:
            return
        for m in messages:
            if m.type == MessageType.MsgSnap:  # the member sends these with send_snapshot
                continue
            self.net.send(self.member_id, m)

    async def send_snapshot(self, to: int, m: Message, path: str) -> bool:
        if self.closed:
            return False
        return await self.net.send_snapshot(self.member_id, to, m, path)

    def add_peer(self, peer_id: int, urls: list[str]) -> None:
        self.peers.add(peer_id)

    def update_peer(self, peer_id: int, urls: list[str]) -> None:
        self.peers.add(peer_id)

    def remove_peer(self, peer_id: int) -> None:
        self.peers.discard(peer_id)

    def active_since(self, peer_id: int) -> float | None:
        return 0.0 if self.net.reachable(self.member_id, peer_id) is not None else None

    async def stop(self) -> None:
        self.closed = True
