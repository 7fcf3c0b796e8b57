#!/usr/bin/env python3
"""`make demo`: the seed article's test, automated. Starts a local three-member conch
cluster (scripts/local_cluster.py, fresh data in a temporary directory), three nanoPing
copies a, b, c, then kills the leader copy once with SIGTERM and once with SIGKILL and
prints who took over and how long it took. Bounded (every wait has a deadline); stops only
the processes it started, by pid.

    python examples/nanoping/demo.py [--ttl 15] [--interval 2] [--base-port 42379]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from conch.client import Client  # noqa: E402

_lock = threading.Lock()
events: list[tuple[float, str, str]] = []  # (monotonic, copy, line)


def say(msg: str) -> None:
    with _lock:
        print(f"demo: {msg}", flush=True)


def pump(name: str, proc: subprocess.Popen[str], record: bool) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        with _lock:
            if record:
                events.append((time.monotonic(), name, line))
            print(f"{name:>7} | {line}", flush=True)


def wait_for(pred: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise SystemExit(f"demo: timed out after {timeout:g}s waiting for {what}")


def master_since(t: float, exclude: str | None = None) -> tuple[float, str] | None:
    with _lock:
        for ts, name, line in events:
            if ts >= t and name != exclude and "[info] Service master" in line:
                return ts, name
    return None


def main() -> int:
    p = argparse.ArgumentParser(description="nanoPing failover demo")
    p.add_argument("--ttl", type=int, default=15)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--base-port", type=int, default=42379)
    a = p.parse_args()
    procs: list[subprocess.Popen[str]] = []
    tmp = tempfile.TemporaryDirectory(prefix="nanoping-demo-")
    step = 10
    endpoints = ",".join(f"127.0.0.1:{a.base_port + off * step}" for off in (0, 2, 3))
    try:
        cluster = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "local_cluster.py"), "--base-port",
             str(a.base_port), "--port-step", str(step), "--data-dir", tmp.name, "--grace", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
        )  # fmt: skip
        procs.append(cluster)
        threading.Thread(target=pump, args=("cluster", cluster, False), daemon=True).start()
        say(f"starting a three-member conch cluster on {endpoints}")
        with Client(endpoints.split(","), timeout=2.0) as c:

            def ready() -> bool:
                try:
                    c.put(b"/demo/ready", b"1")
                    return True
                except Exception:
                    return False

            wait_for(ready, 60, "the cluster")
        say(f"cluster ready; starting copies a, b, c (TTL {a.ttl}s)")
        copies: dict[str, subprocess.Popen[str]] = {}
        for name in "abc":
            proc = subprocess.Popen(
                [sys.executable, "-u", str(Path(__file__).with_name("service.py")),
                 "--endpoints", endpoints, "--ttl", str(a.ttl), "--interval", str(a.interval),
                 "--name", name],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
            )  # fmt: skip
            procs.append(proc)
            copies[name] = proc
            threading.Thread(target=pump, args=(name, proc, True), daemon=True).start()
        first = wait_for(lambda: master_since(0.0), 30, "a master")
        assert isinstance(first, tuple)
        leader = first[1]
        say(f"copy {leader} is master")
        results = []
        for sig, budget in ((signal.SIGTERM, 10.0), (signal.SIGKILL, a.ttl + 10.0)):
            victim = copies[leader]
            t0 = time.monotonic()
            say(f"sending {signal.Signals(sig).name} to copy {leader} (pid {victim.pid})")
            victim.send_signal(sig)
            took = wait_for(partial(master_since, t0, leader), budget, "a new master")
            assert isinstance(took, tuple)
            victim.wait(10)
            results.append((signal.Signals(sig).name, leader, took[1], took[0] - t0))
            say(f"copy {took[1]} took over {took[0] - t0:.2f}s after {signal.Signals(sig).name}")
            leader = took[1]
        say("summary:")
        for name, old, new, dt in results:
            say(f"  {name:7} to master {old}: copy {new} took over in {dt:.2f}s (TTL {a.ttl}s)")
        return 0
    finally:
        # the copies first (the leader resigns while the cluster still runs), then the
        # cluster script, which stops its members
        for group in (procs[1:], procs[:1]):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
