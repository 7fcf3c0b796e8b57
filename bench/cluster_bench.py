#!/usr/bin/env python3
"""Three-member conch vs three-member etcd 3.4, in the same run, on loopback.

1. starts a three-member etcd cluster and a three-member conch cluster (fresh
   temporary data dirs, free 127.0.0.1 ports; conch as `<python> -m conch`),
2. waits (polling, bounded by --ready-timeout) until every member of each
   cluster agrees on a leader (`etcdctl endpoint status`) and every member
   answers a linearizable range,
3. warms each cluster up with unrecorded puts, then runs every workload with
   bench/bin/loadgen against all three members (the Go client balances its
   requests over them) or, with --leader-only, against the leader alone; every
   workload is bounded by an op count *and* a duration cap; the two clusters
   alternate run by run (etcd, conch, etcd, conch ...) so that background load
   hits both alike, and only one cluster is under load at a time,
4. stops every process it started, by pid, in a `finally` (also on Ctrl-C,
   SIGTERM, SIGHUP), and removes its temp dir unless --keep.

Prints a markdown table (QPS, p50, p99 per cluster and the conch/etcd ratios)
and writes bench/results/cluster_latest.json.

    python bench/cluster_bench.py
    python bench/cluster_bench.py --single-ops 500 --conc-ops 5000 --repeat 1
    python bench/cluster_bench.py --leader-only

Needs /usr/bin/etcd and /usr/bin/etcdctl (Debian etcd-server, etcd-client),
bench/bin/loadgen (built by bench/build.sh when missing) and, for conch,
<repo>/.venv/bin/python. Stdlib only (Python >= 3.11).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (  # bench/ is sys.path[0] when run as a script
    BENCH_DIR,
    DEFAULT_LOADGEN,
    REPO,
    Server,
    Workload,
    conch_env,
    ensure_loadgen,
    etcd_env,
    etcd_version,
    free_ports,
    fsync_probe,
    git_commit,
    git_dirty,
    loadgen_probe,
    log,
    markdown_table,
    median_result,
    run_loadgen,
    set_log_prefix,
    stop_servers,
    tcp_open,
    write_json_atomic,
)

DEFAULT_OUT = BENCH_DIR / "results" / "cluster_latest.json"
MEMBERS = 3
KINDS = ("etcd", "conch")

set_log_prefix("cluster_bench")


# --------------------------------------------------------------------------
# clusters


@dataclass
class Cluster:
    kind: str  # "etcd" | "conch"
    members: list[Server]
    token: str
    started: float | None = None  # time.monotonic() when its members were started
    leader_id: int | None = None
    leader_endpoint: str | None = None
    raft_term: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None and m.alive()]

    def dead(self) -> list[Server]:
        return [m for m in self.members if not m.alive()]

    def log_tails(self, n: int = 20) -> str:
        parts = []
        for m in self.members:
            state = "running" if m.alive() else f"exited {m.proc.returncode if m.proc else '?'}"
            parts.append(f"--- {m.name} ({state}), last {n} lines of {m.log_path} ---")
            parts.append(m.log_tail(n) or "(empty)")
        return "\n".join(parts)


def make_cluster(
    kind: str, workdir: Path, ports: list[int], a: argparse.Namespace, token: str
) -> Cluster:
    """Three members; ports = 3 client ports then 3 peer ports."""
    names = [f"{kind}-{i}" for i in range(MEMBERS)]
    clients, peers = ports[:MEMBERS], ports[MEMBERS:]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peers, strict=True))
    members = []
    for name, client, peer in zip(names, clients, peers, strict=True):
        wd = workdir / name
        wd.mkdir(parents=True)
        if kind == "etcd":
            prog = [a.etcd_bin]
            tail = ["--log-level", "warn"]  # as put_bench runs etcd
            env = etcd_env()
        else:
            prog = [a.conch_python, "-m", "conch"]
            tail = []
            env = conch_env()
        argv = [
            *prog,
            "--name", name,
            "--data-dir", str(wd / "data"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", token,
            *tail,
        ]  # fmt: skip
        members.append(Server(name, argv, client, wd, env=env))
    return Cluster(kind, members, token)


def etcdctl_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


def cluster_status(cl: Cluster, etcdctl: str | None) -> dict[str, Any] | str:
    """`etcdctl endpoint status` of every member: the agreed leader, or why there is none."""
    if etcdctl is None:
        return "etcdctl not found"
    try:
        out = subprocess.run(
            [
                etcdctl, "--endpoints", ",".join(cl.endpoints),
                "--dial-timeout", "2s", "--command-timeout", "3s",
                "endpoint", "status", "-w", "json",
            ],
            capture_output=True, text=True, timeout=20, env=etcdctl_env(),
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return f"etcdctl endpoint status: {e}"
    try:
        statuses = json.loads(out.stdout) if out.stdout.strip() else []
    except json.JSONDecodeError:
        statuses = []
    if len(statuses) != MEMBERS:
        err = (out.stderr or out.stdout).strip().splitlines()
        return f"{len(statuses)}/{MEMBERS} members answered status" + (
            f" ({err[-1]})" if err else ""
        )
    ids = {s["Status"]["header"]["member_id"]: s["Endpoint"] for s in statuses}
    leaders = {s["Status"].get("leader", 0) for s in statuses}
    if len(leaders) != 1 or 0 in leaders:
        return f"no agreed leader yet (members report {sorted(leaders)})"
    (leader,) = leaders
    if leader not in ids:
        return f"leader {leader:x} is not one of the members {[f'{i:x}' for i in ids]}"
    return {
        "leader_id": leader,
        "leader_endpoint": ids[leader],
        "raft_term": max(s["Status"]["header"].get("raft_term", 0) for s in statuses),
        "revision": max(s["Status"]["header"].get("revision", 0) for s in statuses),
    }


def wait_cluster_ready(cl: Cluster, loadgen: Path, etcdctl: str | None, timeout: float) -> float:
    """Poll until the members agree on a leader and each answers a linearizable range.

    Returns the seconds since the members were started (or since the call).
    """
    t0 = cl.started if cl.started is not None else time.monotonic()
    deadline = t0 + timeout
    last = ""
    while time.monotonic() < deadline:
        dead = cl.dead()
        if dead:
            raise RuntimeError(
                f"{', '.join(m.name for m in dead)} exited before the cluster became ready; "
                f"log tails:\n{cl.log_tails()}"
            )
        errs = [e for e in (tcp_open(m.client_port) for m in cl.members) if e]
        if errs:
            last = errs[0]
            time.sleep(0.2)
            continue
        st = cluster_status(cl, etcdctl)
        if isinstance(st, str) and etcdctl is not None:
            last = st
            time.sleep(0.3)
            continue
        if isinstance(st, dict):
            cl.leader_id, cl.leader_endpoint = st["leader_id"], st["leader_endpoint"]
            cl.raft_term = st["raft_term"]
        probe = [(m.name, loadgen_probe(loadgen, m.endpoint, "range")) for m in cl.members]
        bad = [f"{n}: {e}" for n, e in probe if e is not None]
        if not bad:
            return time.monotonic() - t0
        last = bad[0]
        time.sleep(0.3)
    raise RuntimeError(
        f"{cl.kind} cluster not ready after {timeout:.0f}s (last: {last}); "
        f"log tails:\n{cl.log_tails()}"
    )


# --------------------------------------------------------------------------
# workloads


def build_workloads(a: argparse.Namespace) -> list[Workload]:
    n, s, c = a.clients, a.single_ops, a.conc_ops
    ks = max(1, s)  # the reads hit the keys written by put-1c (all present)
    return [
        Workload("put-1c", f"put, 1 client, sequential keys, {s} ops", "put", 1, s, True, ks),
        Workload("txn-put-1c", f"txn If(version(k) > -1) Then(put k), 1 client, {s} ops",
                 "txn-put", 1, s, False, a.key_space),
        Workload(f"put-{n}c", f"put, {n} clients, random keys, {c} ops",
                 "put", n, c, False, a.key_space),
        Workload(f"txn-put-{n}c", f"txn If(version(k) > -1) Then(put k), {n} clients, {c} ops",
                 "txn-put", n, c, False, a.key_space),
        Workload("range-1c", f"linearizable get, 1 client, {s} ops", "range", 1, s, False, ks),
        Workload("range-serializable-1c", f"serializable get, 1 client, {s} ops",
                 "range-serializable", 1, s, False, ks),
        Workload(f"range-{n}c", f"linearizable get, {n} clients, {c} ops",
                 "range", n, c, False, ks),
        Workload(f"range-serializable-{n}c", f"serializable get, {n} clients, {c} ops",
                 "range-serializable", n, c, False, ks),
    ]  # fmt: skip


def target(cl: Cluster, a: argparse.Namespace) -> list[str]:
    if a.leader_only:
        if cl.leader_endpoint is None:
            raise RuntimeError(f"{cl.kind}: leader unknown (is etcdctl installed?)")
        return [cl.leader_endpoint]
    return cl.endpoints


def prepare_cluster(cl: Cluster, loadgen: Path, etcdctl: str | None, a: argparse.Namespace) -> bool:
    """Wait until cl serves, warm it up. False (and cl stopped) on failure."""
    info = cl.info
    try:
        info["ready_s"] = round(wait_cluster_ready(cl, loadgen, etcdctl, a.ready_timeout), 2)
        info["leader_at_start"] = cl.leader_endpoint
        info["raft_term_at_start"] = cl.raft_term
        log(f"{cl.kind} cluster ready in {info['ready_s']}s, leader {cl.leader_endpoint}")
        if a.warmup_ops > 0:
            wu = Workload("warmup", "warm-up puts", "put", a.clients, a.warmup_ops, False, 1000)
            r = run_loadgen(loadgen, target(cl, a), wu, a, cl.pids())
            info["warmup"] = {k: r[k] for k in ("ops", "errors", "qps", "elapsed_s")}
            log(f"{cl.kind} warm-up: {r['ops']} puts, {r['qps']:.0f} qps")
            if r["ops"] == 0:
                log(f"WARNING: no warm-up put succeeded on {cl.kind}: {r.get('first_error')}")
        return True
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        info["error"] = str(e)
        log(f"{cl.kind}: ERROR: {e}")
        stop_servers(cl.members)
        return False


def bench_clusters(
    clusters: list[Cluster],
    loadgen: Path,
    etcdctl: str | None,
    workloads: list[Workload],
    a: argparse.Namespace,
) -> None:
    """Every workload on every (ready) cluster, interleaved run by run; fills cl.info."""
    active = list(clusters)
    for wl in workloads:
        runs: dict[str, list[dict[str, Any]]] = {c.kind: [] for c in active}
        finished: set[str] = set()
        for i in range(a.repeat):
            for cl in list(active):
                if cl.kind in finished:
                    continue
                dead = cl.dead()
                if dead:
                    cl.info["error"] = (
                        f"{', '.join(m.name for m in dead)} died before {wl.name}; "
                        f"log tails:\n{cl.log_tails()}"
                    )
                    log(f"{cl.kind}: ERROR: {cl.info['error']}")
                    stop_servers(cl.members)
                    active.remove(cl)
                    continue
                idle = [p for o in active if o is not cl for p in o.pids()]
                try:
                    r = run_loadgen(loadgen, target(cl, a), wl, a, cl.pids(), idle)
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    # The generator itself failed (no result line): record it with
                    # the members' log tails and go on with the next workload.
                    cl.info.setdefault("workload_errors", {})[wl.name] = {
                        "error": str(e),
                        "log_tails": cl.log_tails(),
                    }
                    log(f"{cl.kind} {wl.name}: ERROR: {e}\n{cl.log_tails()}")
                    finished.add(cl.kind)
                    continue
                st = cluster_status(cl, etcdctl)
                if isinstance(st, dict):
                    r["leader_after"] = st["leader_endpoint"]
                    r["raft_term_after"] = st["raft_term"]
                    if st["leader_id"] != cl.leader_id:
                        log(f"{cl.kind}: leader changed to {st['leader_endpoint']} "
                            f"(term {st['raft_term']}) during {wl.name}")  # fmt: skip
                        r["leader_changed"] = True
                        cl.leader_id, cl.leader_endpoint = st["leader_id"], st["leader_endpoint"]
                    cl.raft_term = st["raft_term"]
                else:
                    r["status_after"] = st
                log(
                    f"{cl.kind} {wl.name} [{i + 1}/{a.repeat}]: {r['qps']:.0f} qps, "
                    f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, errors {r['errors']}, "
                    f"servers cpu {r['server_cpu_pct']}% {r.get('member_cpu_pct')}, "
                    f"loadgen cpu {r['loadgen_cpu_pct']}%"
                )
                if r["errors"]:
                    r["log_tails"] = cl.log_tails()
                    log(f"  first error: {r.get('first_error')}")
                runs[cl.kind].append(r)
                if r["ops"] == 0:
                    # Nothing succeeded: repeating would only wait out the cap again.
                    log(f"  {cl.kind} log tails:\n{r['log_tails']}")
                    finished.add(cl.kind)
        for kind, rs in runs.items():
            if rs:
                next(c for c in clusters if c.kind == kind).info["workloads"][wl.name] = (
                    median_result(rs)
                )


# --------------------------------------------------------------------------
# main

_cleaning_up = False


def _on_signal(signum: int, _frame: Any) -> None:
    if _cleaning_up:
        log(f"signal {signum} during clean-up; finishing the clean-up first")
        return
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    global _cleaning_up
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only",
        choices=["etcd", "conch", "both"],
        default="both",
        help="which cluster(s) to benchmark (default: both)",
    )
    ap.add_argument(
        "--single-ops",
        type=int,
        default=2000,
        help="ops for each 1-client workload (put-1c, range-1c, range-serializable-1c)",
    )
    ap.add_argument(
        "--conc-ops",
        type=int,
        default=20000,
        help="ops for each concurrent workload (put, txn-put, ranges)",
    )
    ap.add_argument("--clients", type=int, default=100, help="clients of the concurrent workloads")
    ap.add_argument(
        "--conns",
        type=int,
        default=0,
        help="gRPC client connections shared by the clients (0 = one per client); "
        "each connection balances over all endpoints",
    )
    ap.add_argument(
        "--leader-only",
        action="store_true",
        help="send every request to the leader (found with etcdctl endpoint status) "
        "instead of balancing over all three members",
    )
    ap.add_argument(
        "--duration", type=float, default=30.0, help="wall-clock cap per workload run, seconds"
    )
    ap.add_argument("--key-size", type=int, default=8)
    ap.add_argument("--val-size", type=int, default=256)
    ap.add_argument(
        "--key-space", type=int, default=100000, help="distinct keys for random-key puts and txns"
    )
    ap.add_argument(
        "--warmup-ops",
        type=int,
        default=1000,
        help="unrecorded puts per cluster before measuring (0 = none)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per workload and cluster; the median-QPS run is reported",
    )
    ap.add_argument(
        "--ready-timeout",
        type=float,
        default=90.0,
        help="seconds to wait for a cluster to elect a leader and serve",
    )
    ap.add_argument("--etcd-bin", default=shutil.which("etcd") or "/usr/bin/etcd")
    ap.add_argument("--etcdctl-bin", default=shutil.which("etcdctl") or "/usr/bin/etcdctl")
    ap.add_argument(
        "--conch-python",
        default=str(REPO / ".venv" / "bin" / "python"),
        help="python used to run `-m conch` (default: <repo>/.venv/bin/python)",
    )
    ap.add_argument("--loadgen", type=Path, default=DEFAULT_LOADGEN)
    ap.add_argument(
        "--tmp-dir", default=None, help="parent of the temporary dir (default: system temp dir)"
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary dir (data dirs and server logs) after the run",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON path")
    ap.add_argument("--no-fsync-probe", action="store_true", help="skip the fsync latency probe")
    ap.add_argument(
        "--workloads",
        default="",
        help="comma-separated workload names to run (default: all), e.g. put-1c,txn-put-1c",
    )
    a = ap.parse_args(argv)

    for n in ("single_ops", "conc_ops", "clients", "repeat", "key_space"):
        if getattr(a, n) < 1:
            ap.error(f"--{n.replace('_', '-')} must be >= 1")
    if a.duration <= 0 or a.duration > 600:
        ap.error("--duration must be in (0, 600]")
    if a.ready_timeout <= 0 or a.ready_timeout > 600:
        ap.error("--ready-timeout must be in (0, 600]")

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    loadgen = ensure_loadgen(a.loadgen)
    etcdctl = a.etcdctl_bin if Path(a.etcdctl_bin).exists() else None
    if etcdctl is None:
        log(f"WARNING: {a.etcdctl_bin} not found: no leader information")
        if a.leader_only:
            ap.error("--leader-only needs etcdctl")
    workloads = build_workloads(a)
    if a.workloads:
        wanted = [w.strip() for w in a.workloads.split(",") if w.strip()]
        known = {w.name for w in workloads}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            ap.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        workloads = [w for w in workloads if w.name in wanted]
    kinds = list(KINDS) if a.only == "both" else [a.only]
    ncpu = os.cpu_count()
    nproc_servers = MEMBERS * len(kinds)
    cpu_note = (
        f"{nproc_servers} server processes ({' + '.join(f'{MEMBERS} {k}' for k in kinds)}; "
        f"all up for the whole run, one cluster under load at a time) and the load generator "
        f"share this machine's {ncpu} CPU cores"
    )

    results: dict[str, Any] = {
        "meta": {
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "host": {
                "nproc": ncpu,
                "machine": platform.machine(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            },
            "git_commit": git_commit(),
            # Uncommitted changes under conch/ at start (then HEAD is not all that ran).
            "git_dirty_conch": git_dirty(),
            "etcd_version": etcd_version(a.etcd_bin),
            "loadgen": str(loadgen),
            "members_per_cluster": MEMBERS,
            "endpoints": "leader only" if a.leader_only else "all members (client balances)",
            "cpu_note": cpu_note,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "workloads": {w.name: w.desc for w in workloads},
        },
        "servers": {},
    }

    clusters: list[Cluster] = []
    interrupted = False
    tmpdir: Path | None = None
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix="conch-cluster-bench-", dir=a.tmp_dir))
        if not a.no_fsync_probe:
            results["meta"]["fsync_probe"] = fsync_probe(tmpdir)
            log(f"fsync probe in {tmpdir}: {results['meta']['fsync_probe']}")
        # All ports in one go, so the two clusters cannot be handed the same one.
        ports = free_ports(2 * MEMBERS * len(kinds))
        token_salt = os.urandom(3).hex()
        for i, kind in enumerate(kinds):
            if kind == "conch" and not Path(a.conch_python).exists():
                results["servers"]["conch"] = {
                    "error": f"{a.conch_python} not found (create the venv first)"
                }
                log(results["servers"]["conch"]["error"])
                continue
            cl = make_cluster(
                kind, tmpdir / kind, ports[2 * MEMBERS * i : 2 * MEMBERS * (i + 1)], a,
                token=f"bench-{kind}-{token_salt}",
            )  # fmt: skip
            cl.info.update({
                "members": [
                    {"name": m.name, "endpoint": m.endpoint, "argv": m.argv} for m in cl.members
                ],
                "workloads": {},
            })  # fmt: skip
            results["servers"][kind] = cl.info
            clusters.append(cl)
        # Start every member of both clusters, then wait for each cluster.
        for cl in clusters:
            cl.started = time.monotonic()
            for m in cl.members:
                m.start()
            cl.info["pids"] = [m.proc.pid for m in cl.members if m.proc]
        ready = [cl for cl in clusters if prepare_cluster(cl, loadgen, etcdctl, a)]
        bench_clusters(ready, loadgen, etcdctl, workloads, a)
        for cl in ready:
            st = cluster_status(cl, etcdctl)
            cl.info["status_at_end"] = st
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; stopping servers")
    finally:
        _cleaning_up = True
        stop_servers([m for cl in clusters for m in cl.members])
        for cl in clusters:
            cl.info["exit_codes"] = [m.proc.returncode if m.proc else None for m in cl.members]
        if tmpdir is not None:
            if a.keep:
                log(f"keeping {tmpdir} (--keep)")
                results["meta"]["kept_dir"] = str(tmpdir)
            else:
                shutil.rmtree(tmpdir, ignore_errors=True)

    results["meta"]["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    results["meta"]["host"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if interrupted:
        results["meta"]["interrupted"] = True

    table = markdown_table(results, workloads, ratios=("qps", "p50", "p99"))
    results["table_markdown"] = table
    write_json_atomic(a.out, results)

    host = results["meta"]["host"]
    la0, la1 = host["loadavg_at_start"], host["loadavg_at_end"]
    print(table)
    print(
        f"\nThree members per cluster; endpoints: {results['meta']['endpoints']}; "
        f"{a.clients} clients on "
        f"{'one gRPC client each' if a.conns == 0 else f'{a.conns} gRPC clients'} "
        f"(each balancing over its endpoints); "
        f"median of {a.repeat} interleaved run(s).\n"
        f"Note: {cpu_note}.\n"
        f"Load average (1/5/15 min): {la0} at start, {la1} at end."
    )
    dirty = results["meta"]["git_dirty_conch"]
    if dirty:
        print(
            f"Commit {results['meta']['git_commit']}, but conch/ had {len(dirty)} uncommitted "
            f"change(s) at start (see meta.git_dirty_conch): HEAD is not all that ran."
        )
    for kind, info in results["servers"].items():
        if info.get("error"):
            print(f"\n**{kind}: error:**\n```\n{info['error']}\n```")
        for wname, werr in info.get("workload_errors", {}).items():
            print(f"\n**{kind} {wname}: error:**\n```\n{werr['error']}\n{werr['log_tails']}\n```")
        for wname, r in info.get("workloads", {}).items():
            if r.get("errors"):
                print(
                    f"\n**{kind} {wname}: {r['errors']} failed requests** "
                    f"(first: {r.get('first_error')})"
                )
    print(f"\nresults: {a.out}")
    if interrupted:
        return 130
    failed = any(
        i.get("error") or i.get("workload_errors")
        or any(not r.get("ops") for r in i.get("workloads", {}).values())
        for i in results["servers"].values()
    )  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
