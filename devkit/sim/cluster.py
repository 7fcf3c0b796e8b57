"""A cluster of whole members in one process: each one the real `Member` (server, raft
node, applier, store, lessor) on a `SimDisk`, a `SimTransport` and its own clock, all on
the virtual-time loop. Members crash (process or power loss) and restart on their data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from conch.errors import ErrNoLeader, EtcdError, err
from conch.server.bootstrap import StartupError
from conch.server.config import Config, load
from conch.server.member import Member
from conch.server.ports import Ports
from conch.wal import WAL, WalSnapshot
from devkit.sim.disk import InlineBlocking, SimBackend, SimDisk, SimWalStore
from devkit.sim.net import Endpoint, Network, SimTransport

log = logging.getLogger("devkit.sim")

EPOCH_MS = 1_700_000_000_000
SIM_SEGMENT_BYTES = 64 * 1024


@contextlib.contextmanager
def small_wal_segments(size: int = SIM_SEGMENT_BYTES) -> Iterator[None]:
    """Small WAL segments: cheap to preallocate, and cut and released often."""
    create, open_ = WAL.create.__func__, WAL.open.__func__  # type: ignore[attr-defined]
    saved = (create.__defaults__, open_.__defaults__)
    create.__defaults__ = (size,)
    open_.__defaults__ = (WalSnapshot(0, 0), size)
    try:
        yield
    finally:
        create.__defaults__, open_.__defaults__ = saved


class SimClock:
    """A member's clock: virtual time plus its own offset (clock jumps move it forward)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time() + self._node.clock_offset

    def wall_ms(self) -> int:
        return EPOCH_MS + int((asyncio.get_running_loop().time() + self._node.wall_offset) * 1000)

    def sleep(self, seconds: float) -> Any:
        return asyncio.sleep(seconds)


@dataclass
class Node:
    index: int
    cfg: Config
    disk: SimDisk
    member_id: int
    client_url: str
    member: Member | None = None
    store: SimWalStore | None = None
    backend: SimBackend | None = None
    transport: SimTransport | None = None
    #: resolved when the current incarnation dies
    dead: asyncio.Future[None] | None = None
    incarnation: int = 0
    clock_offset: float = 0.0
    wall_offset: float = 0.0
    crashes: int = 0

    @property
    def alive(self) -> bool:
        return self.member is not None


@dataclass
class Cluster:
    seed: int
    base_dir: str
    size: int = 3
    snapshot_count: int = 20
    catchup_entries: int = 5
    disk_latency: tuple[float, float] = (0.0005, 0.004)
    nodes: list[Node] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"cluster-{self.seed}")
        self.net = Network(random.Random(f"net-{self.seed}"))
        names = [f"m{i}" for i in range(self.size)]
        peer = [f"http://127.0.0.1:{10000 + i}" for i in range(self.size)]
        initial = ",".join(f"{n}={u}" for n, u in zip(names, peer, strict=True))
        for i, name in enumerate(names):
            client = f"http://127.0.0.1:{20000 + i}"
            d = os.path.join(self.base_dir, name)
            cfg = load([
                "--name", name, "--data-dir", os.path.join(d, "data"),
                "--initial-cluster", initial, "--initial-cluster-token", "sim",
                "--initial-advertise-peer-urls", peer[i], "--listen-peer-urls", peer[i],
                "--advertise-client-urls", client, "--listen-client-urls", client,
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                "--snapshot-count", str(self.snapshot_count),
                "--experimental-snapshot-catchup-entries", str(self.catchup_entries),
                "--max-wals", "2", "--max-snapshots", "2",
            ], environ={})
            # fsync latency: a fast disk, or a slow one (often slower than a network round trip)
            lat = self.disk_latency if self.rng.random() < 0.5 else (0.002, 0.03)
            disk = SimDisk(random.Random(f"disk-{self.seed}-{i}"), os.path.join(d, "shadow"),
                           lat)
            node = Node(i, cfg, disk, cfg.member_id(), client)
            self.nodes.append(node)
            self.net.endpoints[node.member_id] = Endpoint(
                snap_dir=os.path.join(cfg.member_dir, "snap"))

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def note(self, what: str) -> None:
        self.events.append(f"{self.now():8.3f} {what}")

    # --- lifecycle --------------------------------------------------------------------
    async def start_all(self) -> None:
        for node in self.nodes:
            await self.start(node)

    async def start(self, node: Node) -> bool:
        assert node.member is None
        node.incarnation += 1
        disk = node.disk

        def log_store(wal: WAL, wal_dir: str, snap_dir: str, on_fsync: Any, fatal: Any) -> Any:
            node.store = SimWalStore(wal, wal_dir, snap_dir, disk=disk, on_fsync=on_fsync,
                                     on_failure=fatal)
            return node.store

        def open_backend(path: str) -> SimBackend:
            node.backend = SimBackend(path, disk)
            return node.backend

        incarnation = node.incarnation

        def fatal(what: str, exc: BaseException | None) -> None:
            self.problems.append(f"m{node.index}: fatal: {what}: {exc!r}")
            self.note(f"m{node.index} fatal: {what}: {exc!r}")
            if node.incarnation == incarnation and node.member is not None:
                asyncio.get_running_loop().call_soon(self._crash_if, node, incarnation)

        ports = Ports(
            clock=SimClock(node),
            blocking=InlineBlocking(random.Random(f"blk-{self.seed}-{node.index}-{incarnation}"),
                                    (0.0002, 0.002)),
            open_backend=open_backend,
            log_store=log_store,
            fatal=fatal,
            raft_seed=self.rng.getrandbits(32),
        )
        member = Member(node.cfg, None, ports)
        try:
            member.open()
        except (StartupError, Exception) as exc:  # noqa: BLE001 - reported as a finding
            self.problems.append(f"m{node.index}: cannot restart: {exc!r}")
            self.note(f"m{node.index} cannot restart: {exc!r}")
            if node.backend is not None:
                node.backend.crash()
            if node.store is not None:
                node.store.crash()
            return False
        member.server.leader_client = SimLeaderClient(self)
        transport = SimTransport(self.net, node.member_id)
        node.member, node.transport = member, transport
        node.dead = asyncio.get_running_loop().create_future()
        ep = self.net.endpoints[node.member_id]
        ep.member, ep.incarnation = member, node.incarnation
        await member.start(transport)
        self.note(f"m{node.index} started (incarnation {node.incarnation})")
        return True

    def _crash_if(self, node: Node, incarnation: int) -> None:
        if node.incarnation == incarnation and node.member is not None:
            self.crash(node, power_loss=False)

    def crash(self, node: Node, power_loss: bool, torn: bool = False) -> None:
        """Kill the member's process (and, for a power loss, lose what is not durable)."""
        member = node.member
        if member is None:
            return
        node.crashes += 1
        node.member = None
        self.net.endpoints[node.member_id].member = None
        assert node.transport is not None and node.dead is not None
        node.transport.closed = True
        if not node.dead.done():
            node.dead.set_result(None)
        node.disk.crash()
        member._stopping = True
        member.raft.stopping = True
        member.server.stopping = True
        tasks = list(member._tasks)
        snap = member.snapshotter
        tasks += list(snap._side_tasks)
        if snap._task is not None:
            tasks.append(snap._task)
        for t in tasks:
            t.cancel()
        member.server.hub.stop()
        failed = err(ErrNoLeader)
        member.server.waits.fail_all(failed)
        member.server.cc_waits.fail_all(failed)
        member.reads.stop()
        if node.store is not None:
            node.store.crash()
        if node.backend is not None:
            node.backend.crash()
        lost = node.disk.power_loss(torn) if power_loss else []
        kind = "power loss" if power_loss else "process crash"
        self.note(f"m{node.index} {kind}{' (torn)' if torn else ''}"
                  f"{': lost ' + ', '.join(lost) if lost else ''}")

    async def stop_all(self) -> None:
        for node in self.nodes:
            if node.member is not None:
                m = node.member
                node.member = None
                self.net.endpoints[node.member_id].member = None
                await m.stop()

    # --- views ------------------------------------------------------------------------
    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.member is not None]

    def leader(self) -> Node | None:
        for n in self.alive():
            assert n.member is not None
            if n.member.raft.is_leader:
                return n
        return None

    def node_by_client_url(self, url: str) -> Node | None:
        for n in self.nodes:
            if n.client_url == url:
                return n
        return None


class SimLeaderClient:
    """A follower's calls to the leader's client URL, straight to that member's façade."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def _server(self, url: str) -> Any:
        node = self.cluster.node_by_client_url(url)
        if node is None or node.member is None:
            raise err(ErrNoLeader)
        return node.member.server

    async def lease_renew(self, client_url: str, lease_id: int) -> int:
        await asyncio.sleep(0.002)
        resp = await self._server(client_url).lease_keep_alive(lease_id, forwarded=True)
        return int(resp.TTL)

    async def lease_time_to_live(self, client_url: str, req: Any) -> Any:
        await asyncio.sleep(0.002)
        return await self._server(client_url).lease_time_to_live(req, forwarded=True)

    async def member_promote(self, client_url: str, req: Any) -> Any:
        raise EtcdError(err(ErrNoLeader).code, "not simulated")

    async def close(self) -> None:
        pass
