"""One seed -> one simulated run -> a verdict; and batches of seeds in subprocesses.

A run: 3 members start; clients run a workload for a few virtual seconds while a seeded
nemesis crashes members (process crash or power loss, now and then all at once), restarts
them, partitions the network, jumps clocks and changes the network's loss; then everything
heals and restarts, the members must converge to one state, a final linearizable read is
recorded, and the history goes to the linearizability, set and lease checkers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from conch.proto.etcdserverpb import rpc_pb2
from devkit.sim import loop as vloop
from devkit.sim.bugs import inject
from devkit.sim.checks import check_all
from devkit.sim.cluster import Cluster, Node, small_wal_segments
from devkit.sim.net import NetParams
from devkit.sim.workload import Workload

WORKLOAD_S = 3.0
CONVERGE_S = 30.0
#: linearizability search budget (wall seconds); out of budget is a note, not a pass
CHECK_S = 1.0


@dataclass
class SimResult:
    seed: int
    bug: str | None
    ok: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    digest: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def replay(self) -> str:
        return f"python -m devkit.sim --seed {self.seed}" + (
            f" --bug {self.bug}" if self.bug else "")


class _Ring(logging.Handler):
    def __init__(self, n: int = 300) -> None:
        super().__init__(logging.INFO)
        self.n = n
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            t = asyncio.get_running_loop().time()
        except RuntimeError:
            t = -1.0
        self.lines.append(f"{t:8.3f} {record.name} {record.getMessage()}")
        if len(self.lines) > 2 * self.n:
            del self.lines[: -self.n]


async def _nemesis(c: Cluster, rng: random.Random, until: float) -> None:
    loop = asyncio.get_running_loop()
    restarts: list[asyncio.Task[Any]] = []

    async def restart_later(node: Node, after: float) -> None:
        await asyncio.sleep(after)
        if node.member is None:
            await c.start(node)

    while loop.time() < until:
        await asyncio.sleep(0.3 + rng.random() * 0.7)
        r = rng.random()
        alive = c.alive()
        if r < 0.35 and alive:
            leader = c.leader()
            node = leader if leader is not None and rng.random() < 0.5 else rng.choice(alive)
            if len(alive) < len(c.nodes) and rng.random() < 0.5:
                continue  # mostly one member down at a time
            c.crash(node, power_loss=rng.random() < 0.6, torn=rng.random() < 0.5)
            restarts.append(asyncio.ensure_future(restart_later(node, 0.1 + rng.random() * 1.2)))
        elif r < 0.47 and alive:
            torn = rng.random() < 0.5
            for node in alive:  # the whole rack loses power
                c.crash(node, power_loss=True, torn=torn)
            for node in c.nodes:
                restarts.append(asyncio.ensure_future(
                    restart_later(node, 0.1 + rng.random() * 0.5)))
        elif r < 0.62:
            ids = [n.member_id for n in c.nodes]
            if rng.random() < 0.5:
                victim = rng.randrange(len(ids))
                c.net.isolate(ids[victim])
                c.note(f"isolate m{victim}")
            else:
                rng.shuffle(ids)
                c.net.split(ids[:1] + ids[2:3] if rng.random() < 0.3 else ids[:1])
                c.note("split")
        elif r < 0.75:
            c.net.heal()
            c.note("heal")
        elif r < 0.87:
            node = rng.choice(c.nodes)
            jump = 0.1 + rng.random() * 3.0
            node.clock_offset += jump
            node.wall_offset += jump - 2 * rng.random() * jump
            c.note(f"m{node.index} clock jumps {jump:.2f}s")
        else:
            c.net.params = _net_params(rng)
            c.note(f"network {c.net.params}")
    for t in restarts:
        await t


def _net_params(rng: random.Random) -> NetParams:
    hi = 0.0005 + rng.random() * (0.02 if rng.random() < 0.2 else 0.004)
    return NetParams(
        delay=(hi / 10, hi),
        drop=rng.choice((0.0, 0.0, 0.01, 0.05, 0.2)),
        duplicate=rng.choice((0.0, 0.01, 0.05)),
        reorder=rng.choice((0.0, 0.02, 0.1)),
    )


def _state(node: Node) -> tuple[Any, ...]:
    assert node.member is not None
    s = node.member.server
    resp = s.store.range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"))
    kvs = tuple((kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
                for kv in resp.kvs)
    return (s.store.current_revision(), kvs, tuple(sorted(s.lessor.leases())))


async def _converge(c: Cluster) -> str | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONVERGE_S
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        for node in c.nodes:
            if node.member is None and not await c.start(node):
                return f"m{node.index} cannot restart"
        leader = c.leader()
        if leader is None or leader.member is None:
            continue
        commit = leader.member.raft.committed_index
        members = [n.member for n in c.nodes]
        if all(m is not None and m.raft.committed_index == commit
               and m.apply_stage.applied_index >= commit
               and m.raft.lead == leader.member_id for m in members):
            return None
    return f"members did not converge within {CONVERGE_S:.0f} virtual seconds"


async def scenario(seed: int, base_dir: str) -> SimResult:
    res = SimResult(seed, None, True)
    rng = random.Random(f"faults-{seed}")
    c = Cluster(seed, base_dir)
    c.net.params = _net_params(rng)
    await c.start_all()
    wl = Workload(c, seed)
    loop = asyncio.get_running_loop()
    nemesis = asyncio.ensure_future(_nemesis(c, rng, loop.time() + WORKLOAD_S))
    await wl.run(WORKLOAD_S)
    await nemesis
    c.net.heal()
    c.net.params = NetParams()
    c.note("heal all; calm network")
    why = await _converge(c)
    if why:
        res.problems.append(why)
    else:
        for _ in range(5):
            leader = c.leader()
            if leader is not None and await wl.final_read(leader) == "ok":
                break
            await asyncio.sleep(0.5)
        else:
            res.problems.append("final read failed")
        # Compare at one applied index (lease revokes keep being proposed as leases expire).
        states: dict[int, Any] = {}
        for _ in range(50):
            await asyncio.sleep(0.1)
            ms = [n.member for n in c.nodes]
            if all(m is not None for m in ms) and len(
                {(m.raft.committed_index, m.apply_stage.applied_index) for m in ms if m}
            ) == 1:
                states = {n.index: _state(n) for n in c.nodes}
                break
        else:
            res.problems.append("members never reached one applied index")
        distinct = set(states.values())
        if len(distinct) > 1:
            detail = "; ".join(f"m{i}: rev {s[0]}, {len(s[1])} keys, leases {s[2]}"
                               for i, s in states.items())
            res.problems.append(f"members diverged: {detail}")
    history = wl.history()
    res.problems += c.problems + wl.unexpected
    for r in check_all(history, seconds=CHECK_S):
        if r.status == "violation":
            res.problems.append(r.to_text())
        elif r.status != "ok":
            res.notes.append(r.to_text())
    d = hashlib.blake2b(digest_size=16)
    d.update(c.net.digest.digest())
    d.update(history.to_jsonl().encode())
    res.digest = d.hexdigest()
    counts = history.counts()
    res.stats = {
        "ops": len(history.operations), **counts,
        "crashes": sum(n.crashes for n in c.nodes), "virtual_s": round(loop.time(), 3),
        "snapshots_sent": c.net.stats.snapshots, "delivered": c.net.stats.delivered,
        "dropped": c.net.stats.dropped,
    }
    res.events = c.events
    for node in c.nodes:  # tear down without a graceful stop
        c.crash(node, power_loss=False)
    res.ok = not res.problems
    return res


def _tmp_root() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def run_seed(seed: int, bug: str | None = None, verbose: bool = False) -> SimResult:
    logger = logging.getLogger("conch")
    ring = _Ring()
    old_level, old_prop = logger.level, logger.propagate
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    logger.addHandler(ring)
    base = tempfile.mkdtemp(prefix=f"conch-sim-{seed}-", dir=_tmp_root())
    t0 = time.perf_counter()
    try:
        with small_wal_segments(), inject(bug):
            res: SimResult = vloop.run(scenario(seed, base))
    except Exception as exc:  # noqa: BLE001 - a crash of the simulation is a failed seed
        import traceback

        res = SimResult(seed, bug, False, [f"simulation raised {exc!r}",
                                           traceback.format_exc()])
    finally:
        shutil.rmtree(base, ignore_errors=True)
        logger.removeHandler(ring)
        logger.setLevel(old_level)
        logger.propagate = old_prop
    res.bug = bug
    res.wall_s = round(time.perf_counter() - t0, 3)
    if verbose or not res.ok:
        res.events = res.events + ["-- log --"] + ring.lines[-150:]
    return res


def parse_range(text: str) -> range:
    a, _, b = text.partition("..")
    return range(int(a), int(b) + 1) if b else range(int(a), int(a) + 1)


def run_batch(
    seeds: range, bug: str | None = None, jobs: int = 2, stop_on_fail: bool = False,
    timeout: float = 1800,
) -> list[SimResult]:
    """Run `seeds` in `jobs` subprocesses (PYTHONHASHSEED=0, so runs replay exactly)."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = []
    for k in range(jobs):
        cmd = [sys.executable, "-m", "devkit.sim", "--seeds", f"{seeds.start}..{seeds.stop - 1}",
               "--shard", f"{k}/{jobs}", "--json"]
        if bug:
            cmd += ["--bug", bug]
        if stop_on_fail:
            cmd.append("--stop-on-fail")
        procs.append(subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results: list[SimResult] = []
    for p in procs:
        out, errs = p.communicate(timeout=timeout)
        for line in out.splitlines():
            if line.startswith("{"):
                results.append(SimResult(**json.loads(line)))
        if p.returncode not in (0, 1):
            raise RuntimeError(f"sim worker exited {p.returncode}: {errs[-3000:]}")
    results.sort(key=lambda r: r.seed)
    return results


def to_json(res: SimResult) -> str:
    return json.dumps(asdict(res))
