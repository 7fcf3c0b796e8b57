"""One robustness run: a real cluster, traffic, a fault, then every checker.

``run_scenario(target, scenario, seed, duration, out_dir)`` starts a three-member cluster of
conch or etcd behind fault proxies, runs the traffic generator for ``duration`` seconds while
the scenario's fault is injected, heals everything, reads the final state, checks that the
members converged (same raft index, same HashKV), and runs the checkers. The run directory
(member logs and data, ``history.jsonl``, ``report.txt``) is kept when the run fails or when
asked to; otherwise it is removed.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from devkit.robustness import check_all
from devkit.robustness.cluster import Cluster, ClusterSpec
from devkit.robustness.faults import Fault, FaultContext, FaultNotTriggered, MixedFaults, all_faults
from devkit.robustness.history import Recorder
from devkit.robustness.report import CheckResult, Summary
from devkit.robustness.traffic import TrafficConfig, TrafficStats, final_read, run_traffic

#: conch flags that make snapshot scenarios reachable in a short run (etcd's robustness tests
#: lower --snapshot-count the same way).
SNAPSHOT_COUNT = 100
CATCHUP_ENTRIES = 20
#: traffic may run this much past --duration while a fault sequence finishes
MAX_EXTRA_TRAFFIC = 120.0


@dataclass
class RunResult:
    target: str
    scenario: str
    seed: int
    summary: Summary
    run_dir: Path
    kept: bool
    faults_applied: int
    traffic: TrafficStats | None
    elapsed: float
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.summary.status == "ok" and not self.errors

    def to_text(self) -> str:
        lines = [
            f"scenario {self.scenario} on {self.target}, seed {self.seed}: "
            f"{'PASS' if self.ok else 'FAIL'} in {self.elapsed:.1f}s",
            f"replay: python -m devkit.robustness --target {self.target} "
            f"--scenario {self.scenario} --seed {self.seed}",
        ]
        if self.traffic is not None:
            t = self.traffic
            kinds = dict(sorted(t.by_kind.items()))
            lines.append(f"traffic: {t.requests} requests, by kind {kinds}")
            lines.append(f"compaction reached revision {t.compact_revision}; "
                         f"watch resumes {t.watch_resumes}, events {t.watch_events}")
        lines.append(f"faults applied: {self.faults_applied}")
        lines.extend(f"error: {e}" for e in self.errors)
        lines.append(self.summary.to_text())
        if self.kept:
            lines.append(f"run directory kept: {self.run_dir}")
        return "\n".join(lines)


def scenario_names(target: str) -> list[str]:
    return [n for n, f in all_faults().items() if target in f.targets] + ["mixed"]


def make_fault(name: str, target: str) -> Fault:
    if name == "mixed":
        return MixedFaults(target)
    faults = all_faults()
    if name not in faults:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(scenario_names(target))}")
    f = faults[name]
    if target not in f.targets:
        raise ValueError(f"scenario {name!r} does not apply to {target}")
    return f


def cluster_spec(target: str, seed: int, scenario: str) -> ClusterSpec:
    extra: list[str] = []
    snapshot_count: int | None = None
    if target == "conch":
        # Small snapshot/catch-up thresholds so log compaction and snapshot transfer happen in
        # every run, not only in the snapshot failpoints.
        snapshot_count = SNAPSHOT_COUNT
        extra = [f"--experimental-snapshot-catchup-entries={CATCHUP_ENTRIES}"]
    elif scenario in ("leader-kill", "follower-kill", "all-kill", "mixed"):
        snapshot_count = SNAPSHOT_COUNT
    return ClusterSpec(
        target=target,  # type: ignore[arg-type]
        size=3,
        snapshot_count=snapshot_count,
        extra_args=extra,
        failpoints_http=target == "conch",
        seed=seed,
    )


def run_scenario(
    target: str,
    scenario: str,
    seed: int,
    duration: float = 20.0,
    out_dir: Path | str = "robustness-runs",
    *,
    keep: bool = False,
    traffic: TrafficConfig | None = None,
    check_seconds: float = 8.0,
) -> RunResult:
    fault = make_fault(scenario, target)
    started = time.monotonic()
    run_dir = Path(out_dir) / f"{scenario}-{target}-seed{seed}-{time.strftime('%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []
    log_lock = threading.Lock()

    def log(msg: str) -> None:
        with log_lock:
            log_lines.append(f"{time.monotonic() - started:7.2f}s {msg}")

    errors: list[str] = []
    stats: TrafficStats | None = None
    applied = 0
    recorder = Recorder()
    convergence: CheckResult | None = None
    cluster = Cluster(cluster_spec(target, seed, scenario), run_dir)
    try:
        cluster.start(timeout=60)
        log(f"cluster of {target} started: {', '.join(cluster.endpoints)}")
        ctx = FaultContext(
            cluster=cluster,
            rng=random.Random(seed),
            deadline=0.0,
            log=log,
        )
        stats, applied, fault_error = asyncio.run(
            _traffic_with_fault(cluster, recorder, fault, ctx, seed, duration, traffic))
        if fault_error:
            errors.append(fault_error)
        log("recovering: heal, resume and restart every member")
        _recover(cluster)
        asyncio.run(final_read(cluster.endpoints, recorder, traffic, timeout=30))
        convergence = _check_convergence(cluster)
        log(f"convergence: {convergence.status} {convergence.summary}")
    except Exception as e:  # noqa: BLE001 - the report must say what broke the run
        errors.append(f"run aborted: {type(e).__name__}: {e}")
        log(errors[-1])
    finally:
        faults_log = cluster.faults()
        cluster.close()
    history = recorder.history()
    summary = check_all(
        history,
        seconds=check_seconds,
        compact_revision=stats.compact_revision if stats else 0,
        faults=faults_log,
        seed=seed,
    )
    if convergence is not None:
        summary.results.append(convergence)
    if applied == 0 and not errors:
        errors.append(f"fault {scenario} was never applied")
    result = RunResult(target, scenario, seed, summary, run_dir, False, applied, stats,
                       time.monotonic() - started, errors)
    history.write_jsonl(str(run_dir / "history.jsonl"))
    (run_dir / "events.log").write_text("\n".join(log_lines) + "\n")
    result.kept = keep or not result.ok
    (run_dir / "report.txt").write_text(result.to_text() + "\n")
    if not result.kept:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


async def _traffic_with_fault(
    cluster: Cluster,
    recorder: Recorder,
    fault: Fault,
    ctx: FaultContext,
    seed: int,
    duration: float,
    traffic: TrafficConfig | None,
) -> tuple[TrafficStats, int, str | None]:
    # Faults start after a warm-up and new ones stop early enough for the last one to recover
    # while traffic still runs, so every run has traffic before, during and after a fault.
    # Traffic goes on past ``duration`` until the fault has finished (a failpoint sequence needs
    # traffic to reach its points), bounded by a hard cap.
    warmup = min(3.0, duration * 0.15)
    ctx.deadline = time.monotonic() + warmup + max(duration * 0.6, 1.0)
    stop = asyncio.Event()
    fault_done = threading.Event()

    def inject() -> tuple[int, str | None]:
        try:
            time.sleep(warmup)
            return fault.inject(ctx), None
        except FaultNotTriggered as e:
            return 0, f"fault {fault.name} not triggered: {e}"
        except Exception as e:  # noqa: BLE001 - reported, the run fails
            return 0, f"fault {fault.name} failed: {type(e).__name__}: {e}"
        finally:
            fault_done.set()

    async def stopper() -> None:
        started = time.monotonic()
        while not (fault_done.is_set() and time.monotonic() - started >= duration):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # traffic after the last recovery
        stop.set()

    fault_task = asyncio.create_task(asyncio.to_thread(inject))
    stop_task = asyncio.create_task(stopper())
    stats = await run_traffic(cluster.endpoints, recorder, seed=seed,
                              duration=duration + MAX_EXTRA_TRAFFIC, config=traffic, stop=stop)
    stop_task.cancel()
    applied, error = await fault_task
    return stats, applied, error


def _recover(cluster: Cluster) -> None:
    cluster.heal()
    for m in cluster.members:
        if m.stopped:
            cluster.cont(m.index)
        if not m.is_running():
            cluster.restart(m.index, wait=False)
    cluster.wait_healthy(timeout=60)


def _check_convergence(cluster: Cluster, timeout: float = 30.0) -> CheckResult:
    """Every member applied the same log: equal raft applied index, then equal HashKV at the
    same revision (etcd's corruption check)."""
    channels = {m.endpoint: grpc.insecure_channel(m.endpoint) for m in cluster.members}
    try:
        return _converged(cluster, channels, timeout)
    finally:
        for ch in channels.values():
            ch.close()


def _converged(cluster: Cluster, channels: dict[str, grpc.Channel], timeout: float) -> CheckResult:
    def _stub(endpoint: str) -> rpc_pb2_grpc.MaintenanceStub:
        return rpc_pb2_grpc.MaintenanceStub(channels[endpoint])

    end = time.monotonic() + timeout
    statuses: list[rpc_pb2.StatusResponse] = []
    while True:
        try:
            statuses = [_stub(m.endpoint).Status(rpc_pb2.StatusRequest(), timeout=5)
                        for m in cluster.members]
            indexes = {_applied(s) for s in statuses}
            revs = {s.header.revision for s in statuses}
            if len(indexes) == 1 and len(revs) == 1:
                break
        except grpc.RpcError:
            pass
        if time.monotonic() > end:
            return CheckResult("convergence", "violation",
                               "members did not reach the same applied index",
                               [f"{m.name}: {_applied(s)} rev {s.header.revision}"
                                for m, s in zip(cluster.members, statuses, strict=False)])
        time.sleep(0.2)
    rev = statuses[0].header.revision
    hashes = []
    for m in cluster.members:
        r = _stub(m.endpoint).HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=10)
        hashes.append((m.name, r.hash, r.compact_revision))
    if len({(h, c) for _, h, c in hashes}) != 1:
        return CheckResult("convergence", "violation", f"HashKV differs at revision {rev}",
                           [f"{n}: hash {h} compact {c}" for n, h, c in hashes])
    return CheckResult("convergence", "ok",
                       f"{len(hashes)} members at revision {rev}, hash {hashes[0][1]}")


def _applied(s: rpc_pb2.StatusResponse) -> int:
    # etcd 3.4 has raftAppliedIndex; both conch and etcd fill it.
    return s.raftAppliedIndex or s.raftIndex

