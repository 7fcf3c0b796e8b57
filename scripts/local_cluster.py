#!/usr/bin/env python3
"""Run a three-member conch cluster on loopback in the foreground (`make cluster`).

Like etcd's Procfile under goreman: members infra1, infra2, infra3 on 127.0.0.1 with client
ports 2379, 22379, 32379 and peer ports 2380, 22380, 32380; every output line of a member is
prefixed with its name; Ctrl-C or SIGTERM stops all of them (SIGTERM to each member's pid,
SIGKILL after --grace seconds). If a member dies on its own, the others are stopped and the
script exits with status 1. Data lives in ./cluster.conch/<name> and is kept across runs;
delete the directory for a fresh cluster, and before changing ports or --token (a member
refuses data of another member or cluster ID).

Ports: member N (1..3) uses client port BASE + OFFSET[N] and peer port BASE + OFFSET[N] + 1,
where OFFSET = 0, 2*STEP, 3*STEP (so the defaults BASE=2379, STEP=10000 give the ports above).
For a second cluster, or in tests: `--base-port 40000 --port-step 10`.

Try it:
    etcdctl --endpoints=127.0.0.1:2379 endpoint status --cluster -w table

Exit status: 0 after a requested stop in which every member exited on its SIGTERM;
1 if a member died unexpectedly or had to be SIGKILLed; 2 on bad arguments.
Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NAMES = ("infra1", "infra2", "infra3")
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def conch_command(explicit: str | None) -> tuple[list[str], dict[str, str]]:
    """How to run conch: --conch, else the console script next to this Python (a venv's
    bin/conch), else `conch` on PATH, else `python -m conch` from this checkout."""
    if explicit:
        return [explicit], {}
    sibling = Path(sys.executable).parent / "conch"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return [str(sibling)], {}
    on_path = shutil.which("conch")
    if on_path:
        return [on_path], {}
    pp = os.environ.get("PYTHONPATH")
    return [sys.executable, "-m", "conch"], {
        "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + pp if pp else "")
    }


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


_LIBC = _libc()  # loaded before any fork: the child only makes the call


def _die_with_parent() -> None:
    """In the child: get SIGTERM if this script dies without stopping its members (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class Member:
    def __init__(self, name: str, client_port: int, peer_port: int, data_dir: Path) -> None:
        self.name = name
        self.client_url = f"http://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None
        self.ready = threading.Event()

    def args(self, initial_cluster: str, token: str, extra: list[str]) -> list[str]:
        return [
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster-token", token,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            *extra,
        ]  # fmt: skip

    def start(self, cmd: list[str], env: dict[str, str], width: int) -> None:
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            # Own process group: a terminal's Ctrl-C reaches only this script, which then
            # stops the members in order (as goreman does).
            start_new_session=True,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )
        prefix = f"{self.name:<{width}} | "
        self.reader = threading.Thread(target=self._pump, args=(prefix,), daemon=True)
        self.reader.start()

    def _pump(self, prefix: str) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if "ready to serve client requests" in line:
                self.ready.set()
            say(prefix + line)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def describe(status: int | None) -> str:
    if status is None:
        return "running"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run a three-member conch cluster on 127.0.0.1 in the foreground.",
    )
    p.add_argument("--base-port", type=int, default=2379,
                   help="client port of infra1 (default 2379); peer port is +1")
    p.add_argument("--port-step", type=int, default=10000,
                   help="infra2/infra3 ports are base + 2*step / 3*step (default 10000)")
    p.add_argument("--data-dir", default="cluster.conch",
                   help="parent of the members' data directories (default ./cluster.conch)")
    p.add_argument("--token", default="conch-cluster-1", help="--initial-cluster-token")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds between SIGTERM and SIGKILL when stopping (default 10)")
    p.add_argument("--conch", default=None,
                   help="conch executable (default: bin/conch next to this Python, "
                        "`conch` on PATH, or `python -m conch` from this checkout)")
    p.add_argument("extra", nargs="*",
                   help="extra conch flags for every member (after --), e.g. -- --log-level debug")
    ns = p.parse_args(argv)
    top = ns.base_port + 3 * ns.port_step + 1
    if ns.base_port < 1 or ns.port_step < 2 or top > 65535:
        p.error(f"ports {ns.base_port}..{top} out of range: lower --base-port or --port-step "
                "(e.g. --base-port 40000 --port-step 10)")
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    offsets = (0, 2 * ns.port_step, 3 * ns.port_step)
    root = Path(ns.data_dir).resolve()
    members = [
        Member(n, ns.base_port + off, ns.base_port + off + 1, root / n)
        for n, off in zip(NAMES, offsets, strict=True)
    ]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    base_cmd, extra_env = conch_command(ns.conch)
    # Inherited ETCD_* variables would conflict with the flags given here (etcd's rule).
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env.update(extra_env)
    env.setdefault("PYTHONUNBUFFERED", "1")

    stop_signal: list[int] = []
    wake = threading.Event()

    def on_signal(sig: int, _frame: object) -> None:
        if not stop_signal:
            stop_signal.append(sig)
        wake.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    width = max(len(n) for n in NAMES)
    for m in members:
        m.data_dir.mkdir(parents=True, exist_ok=True)
        m.start(base_cmd + m.args(initial, ns.token, ns.extra), env, width)
        say(f"local_cluster: started {m.name} pid {m.pid} client {m.client_url} "
            f"peer {m.peer_url} data {m.data_dir}")

    announced = False
    failed: Member | None = None
    while not stop_signal:
        for m in members:
            assert m.proc is not None
            if m.proc.poll() is not None:
                failed = m
                break
        if failed is not None:
            break
        if not announced and all(m.ready.is_set() for m in members):
            announced = True
            say(f"local_cluster: all members ready; try: etcdctl "
                f"--endpoints={members[0].client_url} endpoint status --cluster -w table")
        wake.wait(0.2)

    if failed is not None:
        assert failed.proc is not None
        say(f"local_cluster: {failed.name} (pid {failed.pid}) died unexpectedly: "
            f"{describe(failed.proc.returncode)}; stopping the others")
    else:
        say(f"local_cluster: got {signal.Signals(stop_signal[0]).name}, stopping members")
    killed = stop_members(members, ns.grace)
    for m in members:
        if m.reader is not None:
            m.reader.join(timeout=2.0)
    if failed is not None:
        return 1
    return 1 if killed else 0


def stop_members(members: list[Member], grace: float) -> bool:
    """SIGTERM every live member (by pid), wait up to `grace`, SIGKILL the rest.
    Returns whether any member had to be SIGKILLed."""
    for m in members:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    killed = False
    for m in members:
        if m.proc is None:
            continue
        try:
            m.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"local_cluster: {m.name} (pid {m.pid}) still running after {grace}s, SIGKILL")
            m.proc.kill()
            m.proc.wait()
            killed = True
        say(f"local_cluster: {m.name} (pid {m.pid}) stopped: {describe(m.proc.returncode)}")
    return killed


if __name__ == "__main__":
    sys.exit(main())
