#!/usr/bin/env python3
"""Side-by-side put (and read) benchmark of conch vs etcd.

Runs entirely on loopback. For each server (etcd, conch) it:

1. starts a fresh single-member instance in a temporary data dir on free
   127.0.0.1 ports,
2. waits until it answers a linearizable range over gRPC (polling, bounded),
3. runs each workload with bench/bin/loadgen (every workload is bounded by an
   op count *and* a duration cap),
4. stops the server by pid (SIGTERM, then SIGKILL) -- always, also on Ctrl-C.

By default (--order interleaved) both servers are up and the runs alternate,
etcd then conch, for every workload and repeat, so background load on a shared
machine hits both alike; only one server is under load at any time. With
--order sequential the second server is started only after the first has been
stopped. Prints a markdown table and writes bench/results/latest.json.

    python bench/put_bench.py                 # etcd and conch
    python bench/put_bench.py --only etcd     # etcd alone (until conch runs)
    python bench/put_bench.py --seq-ops 500 --conc-ops 5000 --no-reads

Stdlib only (Python >= 3.11).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
    loadgen_probe,
    log,
    markdown_table,
    median_result,
    run_loadgen,
    set_log_prefix,
    tcp_open,
    write_json_atomic,
)

DEFAULT_OUT = BENCH_DIR / "results" / "latest.json"

set_log_prefix("put_bench")


# --------------------------------------------------------------------------
# servers


def make_etcd(etcd_bin: str, workdir: Path) -> Server:
    client, peer = free_ports(2)
    data = workdir / "etcd-data"
    argv = [
        etcd_bin,
        "--name", "bench",
        "--data-dir", str(data),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
        "--initial-cluster-state", "new",
        "--log-level", "warn",
    ]  # fmt: skip
    return Server("etcd", argv, client, workdir, env=etcd_env())


def make_conch(python: str, workdir: Path) -> Server:
    (client,) = free_ports(1)
    data = workdir / "conch-data"
    argv = [
        python, "-m", "conch",
        "--name", "bench",
        "--data-dir", str(data),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
    ]  # fmt: skip
    return Server("conch", argv, client, workdir, env=conch_env())


def wait_ready(srv: Server, loadgen: Path, timeout: float) -> float:
    """Poll until a linearizable range succeeds over gRPC. Returns seconds waited."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = ""
    while time.monotonic() < deadline:
        if not srv.alive():
            raise RuntimeError(
                f"{srv.name} exited with code {srv.proc.returncode if srv.proc else '?'}"
                f" before becoming ready; log tail:\n{srv.log_tail()}"
            )
        err = tcp_open(srv.client_port)
        if err is not None:
            last = err
            time.sleep(0.2)
            continue
        err = loadgen_probe(loadgen, srv.endpoint)
        if err is None:
            return time.monotonic() - t0
        last = err
        time.sleep(0.3)
    raise RuntimeError(f"{srv.name} not ready after {timeout:.0f}s (last: {last})")


# --------------------------------------------------------------------------
# workloads


def build_workloads(a: argparse.Namespace) -> list[Workload]:
    w = [
        Workload("put-seq-1c", f"put, 1 client, sequential keys, {a.seq_ops} ops",
                 "put", 1, a.seq_ops, True, max(1, a.seq_ops)),
        Workload(f"put-{a.clients}c", f"put, {a.clients} clients, random keys, {a.conc_ops} ops",
                 "put", a.clients, a.conc_ops, False, a.key_space),
    ]  # fmt: skip
    if a.txn:
        w.append(
            Workload(f"txn-put-{a.clients}c", f"txn(put), {a.clients} clients, {a.conc_ops} ops",
                     "txn-put", a.clients, a.conc_ops, False, a.key_space)
        )  # fmt: skip
    if not a.no_reads:
        # Reads hit the keys written by put-seq-1c (all present).
        ks = max(1, a.seq_ops)
        w += [
            Workload(f"range-{a.clients}c",
                     f"linearizable get, {a.clients} clients, {a.read_ops} ops",
                     "range", a.clients, a.read_ops, False, ks),
            Workload(f"range-serializable-{a.clients}c",
                     f"serializable get, {a.clients} clients, {a.read_ops} ops",
                     "range-serializable", a.clients, a.read_ops, False, ks),
        ]  # fmt: skip
    return w


def run_workload(
    srv: Server,
    loadgen: Path,
    wl: Workload,
    a: argparse.Namespace,
    others: list[Server] | None = None,
) -> dict[str, Any]:
    assert srv.proc is not None
    idle = [o.proc.pid for o in (others or []) if o.proc is not None and o.alive()]
    return run_loadgen(loadgen, [srv.endpoint], wl, a, [srv.proc.pid], idle)


def prepare_server(srv: Server, loadgen: Path, a: argparse.Namespace, info: dict[str, Any]) -> bool:
    """Start srv, wait until it serves, warm it up. False (and srv stopped) on failure."""
    info.update({"argv": srv.argv, "endpoint": srv.endpoint, "workloads": {}})
    try:
        srv.start()
        info["ready_s"] = round(wait_ready(srv, loadgen, a.ready_timeout), 2)
        log(f"{srv.name} ready in {info['ready_s']}s at {srv.endpoint}")
        if a.warmup_ops > 0:
            # Not recorded: opens connections, warms caches/allocators, and
            # keeps the first measured workload from paying for start-up.
            wu = Workload("warmup", "warm-up puts", "put", a.clients, a.warmup_ops, False, 1000)
            r = run_workload(srv, loadgen, wu, a)
            info["warmup"] = {k: r[k] for k in ("ops", "errors", "qps", "elapsed_s")}
            log(f"{srv.name} warm-up: {r['ops']} puts, {r['qps']:.0f} qps")
            if r["ops"] == 0:
                log(f"WARNING: no warm-up put succeeded on {srv.name}: {r.get('first_error')}")
        return True
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        info["error"] = str(e)
        log(f"{srv.name}: ERROR: {e}")
        srv.stop()
        return False


def bench_servers(
    servers: list[Server],
    loadgen: Path,
    workloads: list[Workload],
    a: argparse.Namespace,
    infos: dict[str, dict[str, Any]],
) -> None:
    """Run every workload on every (prepared) server, filling infos in place.

    With several servers the runs are interleaved: workload by workload,
    repeat by repeat, one server after the other, so that background load on
    the machine hits all of them alike and the ratios stay meaningful.
    """
    active = list(servers)
    for wl in workloads:
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in active}
        finished: set[str] = set()
        for i in range(a.repeat):
            for srv in list(active):
                if srv.name in finished:
                    continue
                others = [o for o in active if o is not srv]
                try:
                    if not srv.alive():
                        raise RuntimeError(f"{srv.name} died; log tail:\n{srv.log_tail()}")
                    r = run_workload(srv, loadgen, wl, a, others)
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    infos[srv.name]["error"] = str(e)
                    log(f"{srv.name}: ERROR: {e}")
                    srv.stop()
                    active.remove(srv)
                    finished.add(srv.name)
                    continue
                log(
                    f"{srv.name} {wl.name} [{i + 1}/{a.repeat}]: {r['qps']:.0f} qps, "
                    f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, errors {r['errors']}, "
                    f"server cpu {r['server_cpu_pct']}%, loadgen cpu {r['loadgen_cpu_pct']}%"
                )
                if r["errors"]:
                    log(f"  first error: {r.get('first_error')}")
                runs[srv.name].append(r)
                if r["ops"] == 0:
                    # Nothing succeeded: repeating would only wait out the
                    # duration cap again.
                    finished.add(srv.name)
        for name, rs in runs.items():
            if rs:
                infos[name]["workloads"][wl.name] = median_result(rs)


# --------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only",
        choices=["etcd", "conch", "both"],
        default="both",
        help="which server(s) to benchmark (default: both)",
    )
    ap.add_argument(
        "--seq-ops", type=int, default=2000, help="ops for the 1-client sequential put workload"
    )
    ap.add_argument(
        "--conc-ops", type=int, default=20000, help="ops for the concurrent put workload"
    )
    ap.add_argument(
        "--read-ops", type=int, default=20000, help="ops for each concurrent read workload"
    )
    ap.add_argument(
        "--clients", type=int, default=50, help="concurrent clients for the concurrent workloads"
    )
    ap.add_argument(
        "--conns",
        type=int,
        default=0,
        help="gRPC connections shared by the clients (0 = one per client)",
    )
    ap.add_argument(
        "--duration", type=float, default=30.0, help="wall-clock cap per workload, seconds"
    )
    ap.add_argument("--key-size", type=int, default=8)
    ap.add_argument("--val-size", type=int, default=256)
    ap.add_argument(
        "--key-space", type=int, default=100000, help="distinct keys for random-key puts"
    )
    ap.add_argument(
        "--warmup-ops", type=int, default=1000, help="unrecorded puts before measuring (0 = none)"
    )
    ap.add_argument(
        "--order",
        choices=["interleaved", "sequential"],
        default="interleaved",
        help="interleaved (default): both servers up, runs alternate etcd/conch per workload "
        "and repeat, so background load hits both alike; sequential: one server at a time, "
        "the other not running",
    )
    ap.add_argument("--no-reads", action="store_true", help="skip the range workloads")
    ap.add_argument("--txn", action="store_true", help="also run a concurrent txn(put) workload")
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs per workload; the median-QPS run is reported"
    )
    ap.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds to wait for a server to serve"
    )
    ap.add_argument("--etcd-bin", default=shutil.which("etcd") or "/usr/bin/etcd")
    ap.add_argument(
        "--conch-python",
        default=str(REPO / ".venv" / "bin" / "python"),
        help="python used to run `-m conch` (default: <repo>/.venv/bin/python)",
    )
    ap.add_argument("--loadgen", type=Path, default=DEFAULT_LOADGEN)
    ap.add_argument(
        "--tmp-dir",
        default=None,
        help="parent of the temporary data dirs (default: system temp dir)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON path")
    ap.add_argument("--no-fsync-probe", action="store_true", help="skip the fsync latency probe")
    a = ap.parse_args(argv)

    for n in ("seq_ops", "conc_ops", "read_ops", "clients", "repeat", "key_space"):
        if getattr(a, n) < 1:
            ap.error(f"--{n.replace('_', '-')} must be >= 1")
    if a.duration <= 0 or a.duration > 600:
        ap.error("--duration must be in (0, 600]")

    # SIGTERM/SIGHUP -> same clean-up path as Ctrl-C.
    def _on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    loadgen = ensure_loadgen(a.loadgen)
    workloads = build_workloads(a)
    which = ["etcd", "conch"] if a.only == "both" else [a.only]

    results: dict[str, Any] = {
        "meta": {
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "host": {
                "nproc": os.cpu_count(),
                "machine": platform.machine(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            },
            "git_commit": git_commit(),
            "loadgen": str(loadgen),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
            "workloads": {w.name: w.desc for w in workloads},
        },
        "servers": {},
    }
    results["meta"]["etcd_version"] = etcd_version(a.etcd_bin)

    servers: list[Server] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="conch-bench-", dir=a.tmp_dir) as tmp:
        tmpdir = Path(tmp)
        try:
            if not a.no_fsync_probe:
                results["meta"]["fsync_probe"] = fsync_probe(tmpdir)
                log(f"fsync probe in {tmpdir}: {results['meta']['fsync_probe']}")
            for name in which:
                wd = tmpdir / name
                wd.mkdir()
                if name == "etcd":
                    srv = make_etcd(a.etcd_bin, wd)
                else:
                    if not Path(a.conch_python).exists():
                        results["servers"]["conch"] = {
                            "error": f"{a.conch_python} not found (create the venv first)"
                        }
                        log(results["servers"]["conch"]["error"])
                        continue
                    srv = make_conch(a.conch_python, wd)
                servers.append(srv)
                results["servers"][name] = {}
            infos = results["servers"]
            if a.order == "sequential":
                # One server at a time; the others are not even started.
                for srv in servers:
                    if prepare_server(srv, loadgen, a, infos[srv.name]):
                        bench_servers([srv], loadgen, workloads, a, infos)
                    srv.stop()
            else:
                ready = [s for s in servers if prepare_server(s, loadgen, a, infos[s.name])]
                bench_servers(ready, loadgen, workloads, a, infos)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted; stopping servers")
        finally:
            for s in servers:
                s.stop()

    results["meta"]["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    # Other work on this (small) machine skews the numbers; keep a trace of it.
    results["meta"]["host"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if interrupted:
        results["meta"]["interrupted"] = True

    table = markdown_table(results, workloads)
    results["table_markdown"] = table
    write_json_atomic(a.out, results)

    print(table)
    for n, info in results["servers"].items():
        if info.get("error"):
            print(f"\n**{n}: error:**\n```\n{info['error']}\n```")
    print(f"\nresults: {a.out}")
    if interrupted:
        return 130
    return 1 if any(i.get("error") for i in results["servers"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
