"""Helpers shared by bench/put_bench.py and bench/cluster_bench.py.

Stdlib only (Python >= 3.11). Everything here is bounded: process waits,
polls and probes all have deadlines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_LOADGEN = BENCH_DIR / "bin" / "loadgen"
CLK_TCK = os.sysconf("SC_CLK_TCK")

_log_prefix = "bench"


def set_log_prefix(prefix: str) -> None:
    global _log_prefix
    _log_prefix = prefix


def log(msg: str) -> None:
    print(f"[{_log_prefix}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# machine helpers


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def proc_trees_cpu_s(root_pids: Iterable[int]) -> dict[int, float]:
    """user+sys CPU seconds of each root pid and all its live descendants (one /proc scan)."""
    roots = set(root_pids)
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        # comm may contain spaces/parens: split after the last ')'
        rest = data[data.rfind(")") + 2 :].split()
        pid = int(entry)
        parents[pid] = int(rest[1])
        times[pid] = (int(rest[11]) + int(rest[12])) / CLK_TCK
    total = {r: 0.0 for r in roots}
    for pid, t in times.items():
        p = pid
        for _ in range(64):  # walk up to a root, bounded
            if p in roots:
                total[p] += t
                break
            p = parents.get(p, 0)
            if p <= 1:
                break
    return total


def proc_tree_cpu_s(root_pid: int) -> float:
    """user+sys CPU seconds of root_pid and all its live descendants (from /proc)."""
    return proc_trees_cpu_s([root_pid])[root_pid]


def fsync_probe(directory: Path, iterations: int = 200, size: int = 4096) -> dict[str, float]:
    """Latency of write(4 KiB)+fsync in `directory`: what a WAL append costs here."""
    path = directory / "fsync-probe.bin"
    buf = os.urandom(size)
    lat: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        deadline = time.monotonic() + 20
        for _ in range(iterations):
            t0 = time.perf_counter()
            os.write(fd, buf)
            os.fsync(fd)
            lat.append((time.perf_counter() - t0) * 1000)
            if time.monotonic() > deadline:
                break
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    lat.sort()
    return {
        "iterations": len(lat),
        "bytes": size,
        "p50_ms": round(lat[len(lat) // 2], 3),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(lat), 3),
    }


def ensure_loadgen(path: Path) -> Path:
    if path.exists():
        return path
    if path != DEFAULT_LOADGEN:
        raise SystemExit(f"loadgen not found at {path}")
    log("bench/bin/loadgen missing; building it with bench/build.sh")
    subprocess.run(["bash", str(BENCH_DIR / "build.sh")], check=True, timeout=600)
    return path


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty(paths: tuple[str, ...] = ("conch",)) -> list[str]:
    """`git status --porcelain` lines under paths: uncommitted changes in what is measured."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", *paths],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []


def etcd_version(etcd_bin: str) -> str | None:
    try:
        ver = subprocess.run([etcd_bin, "--version"], capture_output=True, text=True, timeout=10)
        return ver.stdout.splitlines()[0] if ver.stdout else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = path.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(data, indent=2) + "\n")
    tmp_out.replace(path)


# --------------------------------------------------------------------------
# server processes


def etcd_env() -> dict[str, str]:
    """The environment for an etcd server under test: no inherited ETCD_* settings."""
    env = dict(os.environ)
    env.pop("ETCDCTL_API", None)
    # Never let inherited ETCD_* settings change the server under test.
    for k in list(env):
        if k.startswith("ETCD_"):
            env.pop(k)
    return env


def conch_env() -> dict[str, str]:
    """The environment for `python -m conch`: the repo on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


@dataclass
class Server:
    name: str
    argv: list[str]
    client_port: int
    workdir: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        log(f"starting {self.name}: {' '.join(self.argv)}")
        logf = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        # Own session: a Ctrl-C at the terminal reaches only this script, which
        # then stops the server itself (by pid) in its finally block.
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self.env,
            start_new_session=True,
        )
        logf.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            log(f"stopping {self.name} (pid {p.pid})")
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {p.pid}) ignored SIGTERM; sending SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(timeout=10)
        # Anything the server itself forked is in the process group we created
        # for it (pgid == its pid); make sure none of it outlives the run.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def stop_servers(servers: list[Server], timeout: float = 10.0) -> None:
    """Stop several servers at once, by pid: SIGTERM to all, wait (bounded), SIGKILL the rest.

    Like Server.stop, but the SIGTERM grace period runs for all of them in
    parallel, so stopping N servers takes at most ~timeout, not N * timeout.
    """
    running = [s for s in servers if s.proc is not None and s.proc.poll() is None]
    for s in running:
        assert s.proc is not None
        log(f"stopping {s.name} (pid {s.proc.pid})")
        with contextlib.suppress(ProcessLookupError):
            s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for s in running:
        assert s.proc is not None
        try:
            s.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"{s.name} (pid {s.proc.pid}) ignored SIGTERM; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                s.proc.kill()
    for s in running:
        assert s.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            s.proc.wait(timeout=10)
    for s in servers:
        if s.proc is not None:
            # The process group we created for it (pgid == its pid).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(s.proc.pid, signal.SIGKILL)


def loadgen_probe(loadgen: Path, endpoint: str, op: str = "range") -> str | None:
    """One request through loadgen against `endpoint`. None on success, else why not."""
    try:
        out = subprocess.run(
            [
                str(loadgen), "-endpoints", endpoint, "-op", op,
                "-clients", "1", "-total", "1", "-duration", "3s",
                "-dial-timeout", "2s", "-request-timeout", "2s",
            ],
            capture_output=True, text=True, timeout=15,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "loadgen probe timed out"
    if out.returncode == 0:
        return None
    tail = (out.stderr or out.stdout).strip().splitlines()
    return tail[-1] if tail else f"loadgen probe exited {out.returncode}"


def tcp_open(port: int, timeout: float = 0.5) -> str | None:
    """None if 127.0.0.1:port accepts a connection, else the error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return None
    except OSError as e:
        return f"tcp: {e}"


# --------------------------------------------------------------------------
# workloads


@dataclass
class Workload:
    name: str
    desc: str
    op: str
    clients: int
    total: int
    seq_keys: bool
    key_space: int


def run_loadgen(
    loadgen: Path,
    endpoints: list[str],
    wl: Workload,
    a: argparse.Namespace,
    busy_pids: list[int],
    idle_pids: list[int] | None = None,
) -> dict[str, Any]:
    """Run one workload; add the CPU of busy_pids (and idle_pids) trees over the same window.

    `a` needs conns, duration, key_size, val_size.
    """
    argv = [
        str(loadgen),
        "-endpoints", ",".join(endpoints),
        "-op", wl.op,
        "-clients", str(wl.clients),
        "-conns", str(a.conns),
        "-total", str(wl.total),
        "-duration", f"{a.duration}s",
        "-key-size", str(a.key_size),
        "-val-size", str(a.val_size),
        "-key-space", str(wl.key_space),
    ]  # fmt: skip
    if wl.seq_keys:
        argv.append("-seq-keys")
    idle_pids = idle_pids or []
    cpu0 = proc_trees_cpu_s(busy_pids + idle_pids)
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=a.duration + 60)
    wall = time.monotonic() - t0
    cpu1 = proc_trees_cpu_s(busy_pids + idle_pids)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(
            f"loadgen gave no result for {wl.name} on {','.join(endpoints)} "
            f"(rc={out.returncode}): {out.stderr.strip()[-500:]}"
        )
    res: dict[str, Any] = json.loads(lines[-1])
    res["workload"] = wl.name
    busy = sum(cpu1[p] - cpu0[p] for p in busy_pids)
    res["server_cpu_s"] = round(busy, 3)
    res["server_cpu_pct"] = round(busy / wall * 100, 1) if wall > 0 else None
    if len(busy_pids) > 1:
        res["member_cpu_pct"] = [
            round((cpu1[p] - cpu0[p]) / wall * 100, 1) if wall > 0 else None for p in busy_pids
        ]
    if idle_pids:
        idle = sum(cpu1[p] - cpu0[p] for p in idle_pids)
        # CPU burnt meanwhile by the other (idle) server(s) under test.
        res["idle_servers_cpu_pct"] = round(idle / wall * 100, 1) if wall > 0 else None
    return res


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median QPS (all runs kept under 'runs' when > 1)."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r["qps"])
    med = dict(ordered[(len(ordered) - 1) // 2])
    med["runs"] = runs
    return med


# --------------------------------------------------------------------------
# report


def fmt_num(x: Any, nd: int = 0) -> str:
    if x is None:
        return "—"
    return f"{x:,.{nd}f}"


def markdown_table(
    results: dict[str, Any],
    workloads: list[Workload],
    ratios: tuple[str, ...] = ("qps", "p99"),
) -> str:
    """QPS/p50/p99 per server and workload, plus conch/etcd ratios (qps, p50, p99)."""
    names = list(results["servers"].keys())
    hdr = ["workload"]
    for n in names:
        hdr += [f"{n} QPS", f"{n} p50 ms", f"{n} p99 ms"]
    both = "etcd" in names and "conch" in names
    if both:
        hdr += [f"conch/etcd {'QPS' if r == 'qps' else r}" for r in ratios]
    rows = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for wl in workloads:
        row = [wl.name]
        got: dict[str, dict[str, Any] | None] = {}
        for n in names:
            r = results["servers"][n].get("workloads", {}).get(wl.name)
            got[n] = r
            if r is None:
                row += ["—", "—", "—"]
            elif not r.get("ops"):
                row += [f"0 ({r.get('errors', 0)} err)", "—", "—"]
            else:
                err = f" ({r['errors']} err)" if r.get("errors") else ""
                row += [fmt_num(r["qps"]) + err, fmt_num(r["p50_ms"], 2), fmt_num(r["p99_ms"], 2)]
        if both:
            e, c = got.get("etcd"), got.get("conch")
            if e and c and e["qps"] and c.get("ops"):
                for ratio in ratios:
                    if ratio == "qps":
                        row.append(f"{c['qps'] / e['qps']:.3f}")
                    else:
                        k = f"{ratio}_ms"
                        row.append(f"{c[k] / e[k]:.2f}" if e[k] else "—")
            else:
                row += ["—"] * len(ratios)
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)
