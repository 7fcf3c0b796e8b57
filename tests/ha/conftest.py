"""Fixtures for the leader-only runner tests: ``conchctl elect`` runners (children started
here, each in its own session so a test can stop its whole process group) whose command is
``worker.py``, and a parser for the shared log. Every process is stopped by its own pid (or
its own process group) at teardown."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conch.client import Client
from devkit import harness

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "worker.py")
TTL, GRACE, MARGIN = 3, 0.5, 0.5


@dataclass(frozen=True)
class Line:
    kind: str  # start / stop / write
    rev: int
    arg: str  # pid, or ok/rejected
    t: float


def read_log(path: Path) -> list[Line]:
    if not path.exists():
        return []
    out = []
    for raw in path.read_text().splitlines():
        parts = raw.split()
        if len(parts) == 4:
            out.append(Line(parts[0], int(parts[1]), parts[2], float(parts[3])))
    return out


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


class Runner:
    def __init__(
        self,
        endpoint: str,
        name: str,
        proposal: str,
        log: Path,
        *extra: str,
        ttl: int = TTL,
        grace: float = GRACE,
        margin: float = MARGIN,
    ) -> None:
        self.proposal = proposal
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conch.cli.ctl", f"--endpoints={endpoint}", "elect",
             "--ttl", str(ttl), "--grace", str(grace), "--margin", str(margin), name, proposal,
             "--", sys.executable, WORKER, str(log), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            cwd=str(harness.REPO_ROOT), env=harness.clean_env(), start_new_session=True,
        )  # fmt: skip
        self.pid = self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        # the group we created (start_new_session): its id is our child's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal_group(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.proc.wait(10)
        else:  # its watchdog / worker may still be there if a test broke things
            self.signal_group(signal.SIGKILL)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


StartRunner = Callable[..., Runner]


@pytest.fixture
def conch(server_factory: Callable[..., harness.ServerProcess]) -> harness.ServerProcess:
    return server_factory("conch")


@pytest.fixture
def client(conch: harness.ServerProcess) -> Iterator[Client]:
    with Client([conch.endpoint], timeout=5.0) as c:
        yield c


@pytest.fixture
def runners(conch: harness.ServerProcess, tmp_path: Path) -> Iterator[StartRunner]:
    started: list[Runner] = []

    def start(name: str, proposal: str, *extra: str, **kw: object) -> Runner:
        r = Runner(conch.endpoint, name, proposal, tmp_path / "log", *extra, **kw)  # type: ignore[arg-type]
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "log"


def leader_value(client: Client, name: str) -> tuple[bytes, int] | None:
    """(proposal, create revision) of the current leader of ``name``."""
    r = client.get(name.encode() + b"/", prefix=True, sort_order="ascend",
                   sort_target="create", limit=1)  # fmt: skip
    if not r.kvs:
        return None
    return r.kvs[0].value, r.kvs[0].create_revision


def check_no_overlap(lines: list[Line]) -> list[int]:
    """Every start is followed by its own stop before the next start; tokens strictly
    increase. Returns the tokens in order. (The last interval may still be open.)"""
    tokens: list[int] = []
    open_rev: int | None = None
    for ln in lines:
        if ln.kind == "start":
            assert open_rev is None, f"start {ln.rev} while {open_rev} still runs: {lines}"
            assert not tokens or ln.rev > tokens[-1], f"token not increasing: {lines}"
            tokens.append(ln.rev)
            open_rev = ln.rev
        elif ln.kind == "stop":
            assert ln.rev == open_rev, f"stop {ln.rev} but {open_rev} runs: {lines}"
            open_rev = None
    return tokens


def now() -> float:
    return time.monotonic()
