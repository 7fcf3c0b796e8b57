"""The member's ports: what it needs from the world, as typed protocols.

The server's rooms never read a clock, touch a thread, open a socket or write a file on their
own: they go through these. A real member plugs in the system clock, the WAL on a disk thread,
the TCP peer transport and worker threads (`system_ports()`); the whole-member
simulator (`devkit/sim`) plugs in a virtual clock, a crashable in-memory disk and a lossy
in-memory network, all driven by one seed, so a failing run replays exactly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from conch.backend import Backend
from conch.proto.raftpb import raft_pb2
from conch.raft.types import Message, Snapshot
from conch.wal import WAL

T = TypeVar("T")

log = logging.getLogger("conch.member")


class Clock(Protocol):
    """Time as the member sees it. `monotonic` drives lease expiry and request deadlines;
    `wall_ms` seeds request IDs. Sleeping goes through `sleep` so a simulator can run
    virtual time."""

    def monotonic(self) -> float: ...

    def wall_ms(self) -> int: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return int(time.time() * 1000)

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)


class Blocking(Protocol):
    """Runs blocking work (an LMDB copy or fsync, a hash over the whole store) off the event
    loop. The simulator runs it inline."""

    def run(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...


class ThreadBlocking:
    def run(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return asyncio.to_thread(fn, *args)


class LogStore(Protocol):
    """What raft must not forget: the WAL and the snapshot files (etcd's etcdserver.Storage).

    `save` returns once the write is done and, if `sync`, durable. `save_commit` records a
    new commit index only (no entries, no term or vote change): it may be written lazily,
    since raft recomputes the commit index after a crash. Calls are made in order from the
    event loop and complete in order."""

    def save(
        self, hard_state: raft_pb2.HardState | None, entries: Sequence[raft_pb2.Entry], sync: bool
    ) -> Awaitable[None]: ...

    def save_commit(self, hard_state: raft_pb2.HardState) -> None: ...

    def save_snapshot(self, snap: Snapshot) -> Awaitable[None]: ...

    def release(self, compacted_to: int, max_wals: int, max_snapshots: int) -> Awaitable[None]: ...

    def close(self) -> None: ...


class PeerTransport(Protocol):
    """Member-to-member raft traffic (`conch.transport.Transport` is the real one)."""

    def send(self, messages: Sequence[Message]) -> None: ...

    async def send_snapshot(self, to: int, m: Message, path: str) -> bool: ...

    def add_peer(self, peer_id: int, urls: list[str]) -> None: ...

    def update_peer(self, peer_id: int, urls: list[str]) -> None: ...

    def remove_peer(self, peer_id: int) -> None: ...

    def active_since(self, peer_id: int) -> float | None: ...

    async def stop(self) -> None: ...


class LeaderClient(Protocol):
    """Calls a follower passes on to the leader (only the leader's lessor keeps time, only the
    leader knows how far a learner is). The API layer implements it over the leader's client
    URL; errors come back as the EtcdError the leader raised."""

    async def lease_renew(self, client_url: str, lease_id: int) -> int: ...

    async def lease_time_to_live(self, client_url: str, req: Any) -> Any: ...

    async def member_promote(self, client_url: str, req: Any) -> Any: ...

    async def close(self) -> None: ...


def _open_backend(path: str) -> Backend:
    return Backend(path)


def _wal_store(
    wal: WAL,
    wal_dir: str,
    snap_dir: str,
    on_fsync: Callable[[float], None],
    fatal: Callable[[str, BaseException | None], None],
) -> LogStore:
    from conch.server.storage import WalStore

    return WalStore(wal, wal_dir, snap_dir, on_fsync=on_fsync, on_failure=fatal)


def _exit_fatal(what: str, exc: BaseException | None) -> None:
    log.critical("%s; stopping the member", what, exc_info=exc)
    os._exit(1)


@dataclass
class Ports:
    """Everything a member is given. `fatal` is called when the member must stop at once
    (a WAL it cannot write, an apply that failed): the real one exits the process, as etcd
    panics; the simulator marks the member crashed."""

    clock: Clock
    blocking: Blocking
    open_backend: Callable[[str], Backend] = _open_backend
    #: (wal, wal dir, snap dir, fsync observer, fatal) -> the member's LogStore
    log_store: Callable[
        [WAL, str, str, Callable[[float], None], Callable[[str, BaseException | None], None]],
        LogStore,
    ] = _wal_store
    fatal: Callable[[str, BaseException | None], None] = _exit_fatal
    #: seeds raft's randomized election timeouts (None: the system's randomness)
    raft_seed: int | None = None


def system_ports() -> Ports:
    return Ports(clock=SystemClock(), blocking=ThreadBlocking())
