"""conchctl elect / lock against etcdctl 3.4 on the same server and the same scenarios:
the same stdout and stderr (keys differ only in the lease id), the same usage errors;
conchctl and etcdctl contend in one election. Runs on etcd and conch (``any_server``)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from devkit import harness
from devkit.polling import poll

LEASE = re.compile(rb"/[0-9a-f]{1,16}\n")


@pytest.fixture
def ep(any_server: harness.ServerProcess) -> str:
    if harness.etcdctl_binary() is None:
        pytest.skip("etcdctl not found")
    return any_server.endpoint


def conchctl(ep: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "conch.cli.ctl", f"--endpoints={ep}", *args]


def etcdctl(ep: str, *args: str) -> list[str]:
    ctl = harness.etcdctl_binary()
    assert ctl is not None
    return [ctl, f"--endpoints={ep}", *args]


def run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv, capture_output=True, timeout=30, cwd=str(harness.REPO_ROOT),
        env=harness.clean_env({"ETCDCTL_API": "3"}), stdin=subprocess.DEVNULL,
    )  # fmt: skip


def norm(b: bytes) -> bytes:
    return LEASE.sub(b"/LEASE\n", b)


class Procs:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            cwd=str(harness.REPO_ROOT), env=harness.clean_env({"ETCDCTL_API": "3"}),
        )  # fmt: skip
        self.started.append(p)
        return p


@pytest.fixture
def procs() -> Iterator[Procs]:
    ps = Procs()
    yield ps
    for p in ps.started:
        if p.poll() is None:
            p.kill()  # our own child, by pid
            p.wait(10)


@pytest.mark.parametrize(
    "args",
    [
        ["lock"], ["elect"], ["elect", "e1"], ["elect", "-l"], ["elect", "a", "b", "c"],
        ["lock", "lk", "--", "sh", "-c", "echo out; echo err >&2; exit 3"],
        ["lock", "lk", "--", "sh", "-c", "kill -TERM $$"],
        ["lock", "lk", "echo", "hi"],
        ["lock", "lk", "no-such-command-xyz"],
    ],
)  # fmt: skip
def test_one_shot_output_matches_etcdctl(ep: str, args: list[str]) -> None:
    ours, theirs = run(conchctl(ep, *args)), run(etcdctl(ep, *args))
    assert ours.stdout == theirs.stdout
    assert ours.stderr == theirs.stderr
    if theirs.returncode in (0, 128) or b"executable file not found" in theirs.stderr:
        assert ours.returncode == theirs.returncode
    else:  # etcdctl 3.4 exits 1 when the command fails; conchctl passes its status on
        assert theirs.returncode == 1
        assert ours.returncode in (3, 128 + signal.SIGTERM)


def _lines(p: subprocess.Popen[bytes], n: int) -> bytes:
    assert p.stdout is not None
    return b"".join(p.stdout.readline() for _ in range(n))


@pytest.mark.parametrize("tool", ["etcdctl", "conchctl"])
def test_hold_output_and_sigterm(ep: str, procs: Procs, tool: str) -> None:
    mk = conchctl if tool == "conchctl" else etcdctl
    results = {}
    for name, args in (("lock", ["lock", f"hl-{tool}"]), ("elect", ["elect", f"he-{tool}", "v1"])):
        p = procs.start(mk(ep, *args))
        results[name] = norm(_lines(p, 2))
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        assert p.stderr is not None and p.stderr.read() == b""
    assert results["lock"] == f"hl-{tool}/LEASE\n\n".encode()
    assert results["elect"] == f"he-{tool}/LEASE\nv1\n".encode()


def test_observe_and_contend_with_etcdctl(ep: str, procs: Procs) -> None:
    """etcdctl leads, conchctl campaigns behind it and both observers print the same."""
    obs_ours = procs.start(conchctl(ep, "elect", "-l", "mix"))
    obs_theirs = procs.start(etcdctl(ep, "elect", "-l", "mix"))
    go = procs.start(etcdctl(ep, "elect", "mix", "from-go"))
    go_out = _lines(go, 2)
    assert go_out.endswith(b"\nfrom-go\n")
    py = procs.start(conchctl(ep, "elect", "mix", "from-py"))
    assert _lines(obs_ours, 2) == _lines(obs_theirs, 2) == go_out
    go.send_signal(signal.SIGTERM)  # etcdctl resigns: conchctl leads
    py_out = _lines(py, 2)
    assert py_out.endswith(b"\nfrom-py\n")
    assert _lines(obs_ours, 2) == _lines(obs_theirs, 2) == py_out
    py.send_signal(signal.SIGTERM)
    assert py.wait(10) == 0 and go.wait(10) == 0
    for o in (obs_ours, obs_theirs):
        o.send_signal(signal.SIGTERM)
        assert o.wait(10) == 0


def test_lock_excludes_etcdctl_lock(ep: str, procs: Procs) -> None:
    ours = procs.start(conchctl(ep, "lock", "xl"))
    key = _lines(ours, 2)
    theirs = procs.start(etcdctl(ep, "lock", "xl"))
    assert theirs.stdout is not None
    # etcdctl waits while we hold it; it acquires once we unlock on SIGTERM
    poll(lambda: ours.poll() is None, 1, "conchctl holding")
    ours.send_signal(signal.SIGTERM)
    assert ours.wait(10) == 0
    got = _lines(theirs, 2)
    assert got != key and got.startswith(b"xl/")
