"""The faults a robustness run injects while traffic runs, one class per kind.

A fault runs in its own thread next to the traffic (the cluster harness is synchronous). It
injects, waits until the cluster has *noticed* (a new leader, a member that exited) rather than
for a fixed time where it can, holds the fault for a while, then recovers. ``inject`` returns
the number of times the fault was applied, so a run can refuse to pass when its fault never
happened (a failpoint nobody hit proves nothing).

Waiting here is scheduling, not synchronisation: how long a partition lasts is part of the
fault's definition. Every wait is bounded by the run's fault deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from conch.proto.etcdserverpb import rpc_pb2

if TYPE_CHECKING:
    from devkit.robustness.cluster import Cluster


class FaultNotTriggered(Exception):
    """The fault could not be applied (e.g. the failpoint was never reached)."""


@dataclass
class FaultContext:
    cluster: Cluster
    rng: random.Random
    #: monotonic time after which no new fault may start (recovery may run past it)
    deadline: float
    log: Callable[[str], None]
    #: how long a fault is held once applied (seconds)
    hold: float = 2.0
    #: pause between two applications of a repeated fault
    gap: float = 1.5

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


def _wait(seconds: float) -> None:
    time.sleep(max(0.0, seconds))


def _poll(what: str, cond: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise FaultNotTriggered(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _pick(ctx: FaultContext, role: Literal["leader", "follower", "any"]) -> int:
    leader = ctx.cluster.leader(timeout=15)
    if role == "leader":
        return leader
    others = [m.index for m in ctx.cluster.members if m.index != leader and m.is_running()]
    if role == "follower":
        return ctx.rng.choice(others)
    return ctx.rng.choice([leader, *others])


def _new_leader_among(ctx: FaultContext, excluded: int, timeout: float = 15) -> None:
    """Poll until the members other than ``excluded`` agree on a leader that is not it."""
    def elected() -> bool:
        try:
            return ctx.cluster.leader(timeout=1, among=[
                m.index for m in ctx.cluster.members if m.index != excluded]) != excluded
        except Exception:
            return False
    _poll("a new leader", elected, timeout)


class Fault:
    name = "fault"
    targets: tuple[str, ...] = ("conch", "etcd")
    #: applied repeatedly until the deadline (at least once)
    repeat = True

    def inject(self, ctx: FaultContext) -> int:
        n = 0
        while True:
            self.apply_once(ctx)
            n += 1
            if not self.repeat or ctx.time_left() < ctx.hold + ctx.gap + 2:
                return n
            _wait(ctx.gap)

    def apply_once(self, ctx: FaultContext) -> None:
        raise NotImplementedError


@dataclass
class KillMember(Fault):
    """SIGKILL a member, let the others go on without it, restart it on the same data."""

    role: Literal["leader", "follower", "any"] = "leader"

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.role}-kill"

    def apply_once(self, ctx: FaultContext) -> None:
        i = _pick(ctx, self.role)
        ctx.log(f"kill -9 member {i} ({self.role})")
        ctx.cluster.kill(i)
        if self.role == "leader":
            _new_leader_among(ctx, i)
        _wait(ctx.hold / 2)
        ctx.log(f"restart member {i}")
        ctx.cluster.restart(i)


class KillAll(Fault):
    """SIGKILL every member at once (power cut of the whole cluster), restart them all."""

    name = "all-kill"

    def apply_once(self, ctx: FaultContext) -> None:
        ctx.log("kill -9 all members")
        for m in ctx.cluster.members:
            ctx.cluster.kill(m.index)
        _wait(0.5)
        ctx.log("restart all members")
        for m in ctx.cluster.members:
            ctx.cluster.restart(m.index, wait=False)
        ctx.cluster.wait_healthy(timeout=60)


@dataclass
class PauseMember(Fault):
    """SIGSTOP a member past the election timeout, then SIGCONT: a stale leader comes back."""

    role: Literal["leader", "follower", "any"] = "leader"

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.role}-pause"

    def apply_once(self, ctx: FaultContext) -> None:
        i = _pick(ctx, self.role)
        ctx.log(f"SIGSTOP member {i} ({self.role})")
        ctx.cluster.stop(i)
        try:
            if self.role == "leader":
                _new_leader_among(ctx, i)
            _wait(ctx.hold / 2)
        finally:
            ctx.log(f"SIGCONT member {i}")
            ctx.cluster.cont(i)


@dataclass
class PartitionMember(Fault):
    """Blackhole every peer link of one member; heal after a while."""

    role: Literal["leader", "follower", "any"] = "leader"

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.role}-partition"

    def apply_once(self, ctx: FaultContext) -> None:
        i = _pick(ctx, self.role)
        # Half the partitions lose what was queued on the cut connections (a long partition
        # that outlives TCP), half deliver it late (a short one that TCP rides out).
        lossy = ctx.rng.random() < 0.5
        ctx.log(f"isolate member {i} ({self.role}){' lossy' if lossy else ''}")
        ctx.cluster.isolate(i, lossy=lossy)
        try:
            if self.role == "leader":
                _new_leader_among(ctx, i)
            _wait(ctx.hold)
        finally:
            ctx.log("heal network")
            ctx.cluster.heal()


@dataclass
class DelayPeers(Fault):
    """Delay every peer link of every member."""

    ms: int = 50
    jitter_ms: int = 30
    name = "peer-delay"

    def apply_once(self, ctx: FaultContext) -> None:
        ctx.log(f"delay all peer links {self.ms}±{self.jitter_ms} ms")
        for m in ctx.cluster.members:
            ctx.cluster.delay(m.index, self.ms, self.jitter_ms)
        try:
            _wait(ctx.hold * 2)
        finally:
            ctx.log("heal network")
            ctx.cluster.heal()


@dataclass
class DropPeers(Fault):
    """Reset peer connections at random (in-flight messages lost)."""

    probability: float = 0.05
    name = "peer-drop"

    def apply_once(self, ctx: FaultContext) -> None:
        i = _pick(ctx, "any")
        ctx.log(f"drop on member {i}'s links p={self.probability}")
        ctx.cluster.drop(i, self.probability)
        try:
            _wait(ctx.hold * 2)
        finally:
            ctx.log("heal network")
            ctx.cluster.heal()


Trigger = Literal["traffic", "snapshot-catchup", "defrag", "compact"]


@dataclass
class Failpoint(Fault):
    """Arm a conch failpoint with ``panic`` on one member, make it reachable, wait for the
    member to exit, restart it. ``trigger`` says what reaches the point: ordinary traffic, a
    follower catching up by snapshot, a Defragment call, or a Compact request."""

    point: str = ""
    role: Literal["leader", "follower", "any"] = "any"
    trigger: Trigger = "traffic"
    term: str = "panic"
    targets: tuple[str, ...] = field(default=("conch",))
    repeat = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"failpoint-{self.point}"

    def apply_once(self, ctx: FaultContext) -> None:
        cl = ctx.cluster
        i = _pick(ctx, self.role)
        ctx.log(f"arm failpoint {self.point}={self.term} on member {i} ({self.role})")
        if self.trigger == "snapshot-catchup":
            # The member must fall behind the leader's log compaction, then be healed so the
            # leader sends it a snapshot.
            # Lossy: the leader's appends queued on the stalled connections must not reach the
            # member after the heal, or it catches up from the log instead of a snapshot.
            cl.isolate(i, lossy=True)
            ctx.log(f"isolate member {i} (lossy) so it needs a snapshot")
            cl.set_failpoint(i, self.point, self.term)
            _wait_for_log_growth(ctx, exclude=i)
            ctx.log("heal network")
            cl.heal()
        else:
            cl.set_failpoint(i, self.point, self.term)
            if self.trigger == "defrag":
                _call_member(cl, i, "defragment")
            elif self.trigger == "compact":
                _call_member(cl, i, "compact")
        try:
            _poll(f"member {i} to panic at {self.point}",
                  lambda: cl.exit_code(i) is not None, timeout=max(10.0, ctx.time_left() + 10))
        except FaultNotTriggered:
            cl.clear_failpoint(i, self.point)
            raise
        ctx.log(f"member {i} exited with status {cl.exit_code(i)} at {self.point}")
        _wait(min(ctx.hold / 2, 0.5))  # the others run without it for a moment
        ctx.log(f"restart member {i}")
        cl.restart(i)


def _wait_for_log_growth(ctx: FaultContext, exclude: int) -> None:
    """Wait until the majority's raft index moved past the snapshot threshold."""
    cl = ctx.cluster
    count = cl.spec.snapshot_count or 10000
    catchup = cl.catchup_entries()
    start = cl.raft_index(exclude=exclude)
    _poll("the log to grow past a snapshot",
          lambda: cl.raft_index(exclude=exclude) - start > 2 * count + catchup + 10,
          timeout=max(15.0, ctx.time_left() + 15))


def _call_member(cl: Cluster, i: int, what: str) -> None:
    import grpc

    from conch.proto.etcdserverpb import rpc_pb2_grpc

    with grpc.insecure_channel(cl.members[i].endpoint) as ch:
        try:
            if what == "defragment":
                rpc_pb2_grpc.MaintenanceStub(ch).Defragment(
                    rpc_pb2.DefragmentRequest(), timeout=10)
            else:
                kv = rpc_pb2_grpc.KVStub(ch)
                rev = kv.Range(rpc_pb2.RangeRequest(key=b"\0"), timeout=5).header.revision
                kv.Compact(rpc_pb2.CompactionRequest(revision=max(1, rev - 1)), timeout=10)
        except grpc.RpcError:
            pass  # the member may die answering: that is the point


#: etcd's failpoints in conch, with the member and the traffic that reach them.
FAILPOINTS: dict[str, tuple[Literal["leader", "follower", "any"], Trigger]] = {
    "raftBeforeSave": ("any", "traffic"),
    "raftAfterSave": ("any", "traffic"),
    "beforeCommit": ("any", "traffic"),
    "afterCommit": ("any", "traffic"),
    "raftBeforeLeaderSend": ("leader", "traffic"),
    "raftBeforeFollowerSend": ("follower", "traffic"),
    "raftBeforeSaveSnap": ("any", "snapshot-catchup"),
    "raftAfterSaveSnap": ("any", "snapshot-catchup"),
    "raftBeforeApplySnap": ("follower", "snapshot-catchup"),
    "raftAfterApplySnap": ("follower", "snapshot-catchup"),
    "afterSnapshotInstall": ("follower", "snapshot-catchup"),
    "raftAfterWALRelease": ("any", "snapshot-catchup"),
    "compactBeforeCommitScheduledCompact": ("any", "compact"),
    "compactAfterCommitScheduledCompact": ("any", "compact"),
    "compactBeforeCommitBatch": ("any", "compact"),
    "compactAfterCommitBatch": ("any", "compact"),
    "compactBeforeSetFinishedCompact": ("any", "compact"),
    "compactAfterSetFinishedCompact": ("any", "compact"),
    "defragBeforeCopy": ("any", "defrag"),
    "defragBeforeRename": ("any", "defrag"),
}


def failpoint_faults() -> list[Failpoint]:
    return [Failpoint(point=p, role=r, trigger=t) for p, (r, t) in FAILPOINTS.items()]


#: failpoints grouped by subsystem: one run applies each of a group in turn (the short profile
#: runs every group, so every failpoint, in a few minutes).
FAILPOINT_GROUPS: dict[str, tuple[str, ...]] = {
    "raft": ("raftBeforeSave", "raftAfterSave", "raftBeforeLeaderSend", "raftBeforeFollowerSend"),
    "backend": ("beforeCommit", "afterCommit", "defragBeforeCopy", "defragBeforeRename"),
    "snapshot": ("raftBeforeSaveSnap", "raftAfterSaveSnap", "raftBeforeApplySnap",
                 "raftAfterApplySnap", "afterSnapshotInstall", "raftAfterWALRelease"),
    "compact": ("compactBeforeCommitScheduledCompact", "compactAfterCommitScheduledCompact",
                "compactBeforeCommitBatch", "compactAfterCommitBatch",
                "compactBeforeSetFinishedCompact", "compactAfterSetFinishedCompact"),
}


class FailpointSequence(Fault):
    """Every failpoint of a group, one after the other, each on a member it can reach; the
    run's traffic goes on until the last one has been hit and its member restarted."""

    targets = ("conch",)
    repeat = False

    def __init__(self, group: str) -> None:
        self.group = group
        self.points = [Failpoint(point=p, role=FAILPOINTS[p][0], trigger=FAILPOINTS[p][1])
                       for p in FAILPOINT_GROUPS[group]]

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"failpoints-{self.group}"

    def inject(self, ctx: FaultContext) -> int:
        for fp in self.points:
            fp.apply_once(ctx)
            ctx.cluster.wait_healthy(timeout=60)
        return len(self.points)


def standard_faults() -> list[Fault]:
    return [
        KillMember("leader"),
        KillMember("follower"),
        KillAll(),
        PauseMember("leader"),
        PartitionMember("leader"),
        PartitionMember("follower"),
        DelayPeers(),
        DropPeers(),
    ]


def all_faults() -> dict[str, Fault]:
    faults: list[Fault] = [*standard_faults(), *failpoint_faults(),
                           *(FailpointSequence(g) for g in FAILPOINT_GROUPS)]
    return {f.name: f for f in faults}


class MixedFaults(Fault):
    """A random sequence of faults (failpoints only on conch) until the deadline."""

    name = "mixed"

    def __init__(self, target: str) -> None:
        self.choices = [f for f in all_faults().values()
                        if target in f.targets and not isinstance(f, FailpointSequence)]

    def inject(self, ctx: FaultContext) -> int:
        n = 0
        while ctx.time_left() > ctx.hold + 3 or n == 0:
            # half process/network faults, half failpoints (there are many more failpoints)
            fps = [c for c in self.choices if isinstance(c, Failpoint)]
            others = [c for c in self.choices if not isinstance(c, Failpoint)]
            f = ctx.rng.choice(fps if fps and ctx.rng.random() < 0.5 else others)
            ctx.log(f"mixed: {f.name}")
            try:
                f.apply_once(ctx)
                n += 1
            except FaultNotTriggered as e:
                ctx.log(f"mixed: {f.name} not triggered: {e}")
            _wait(ctx.gap)
        return n
