"""Helpers for transport tests: in-process members on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from conch.raft.types import Entry, Message, MessageType
from conch.transport import SnapshotHeader, Transport

T = TypeVar("T")

CLUSTER = 0xCDF818194E3A8C32


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run a test coroutine with a hard deadline."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.002)


def app(frm: int, to: int, index: int, payload: bytes = b"x" * 16) -> Message:
    return Message(MessageType.MsgApp, to=to, frm=frm, term=1, log_term=1, index=index,
                   entries=[Entry(1, index + 1, 0, payload)], commit=index)


class Node:
    def __init__(self, member_id: int, snap_dir: str, *, port: int = 0, cluster: int = CLUSTER,
                 on_snapshot: Callable[[SnapshotHeader, str], Awaitable[None]] | None = None,
                 **kw: Any) -> None:
        self.id = member_id
        self.received: dict[int, list[Message]] = {}
        self.count = 0
        self.unreachable: list[int] = []
        self.snapshots: list[tuple[SnapshotHeader, str]] = []
        self.log = logging.getLogger(f"test.transport.{member_id:x}")
        self.on_count: Callable[[int], None] | None = None
        self.t = Transport(member_id=member_id, cluster_id=cluster,
                           listen_urls=[f"http://127.0.0.1:{port}"], snap_dir=snap_dir,
                           on_message=self._on_message,
                           on_snapshot=on_snapshot or self._on_snapshot,
                           on_unreachable=self.unreachable.append, logger=self.log, **kw)

    def _on_message(self, m: Message) -> None:
        self.received.setdefault(m.frm, []).append(m)
        self.count += 1
        if self.on_count is not None:
            self.on_count(self.count)

    async def _on_snapshot(self, header: SnapshotHeader, path: str) -> None:
        self.snapshots.append((header, path))

    @property
    def url(self) -> str:
        return self.t.listen_urls[0]

    async def start(self) -> Node:
        await self.t.start()
        return self


def connect(nodes: list[Node]) -> None:
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.t.add_peer(b.id, [b.url])


async def wait_active(nodes: list[Node]) -> None:
    await wait_until(lambda: all(a.t.active_since(b.id) is not None
                                 for a in nodes for b in nodes if a is not b),
                     what="all streams active")
