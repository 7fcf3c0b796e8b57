"""Smoke tests of devkit/harness.py itself (process lifecycle against real servers)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from devkit import harness


def test_free_port_unique() -> None:
    ports = {harness.free_port() for _ in range(50)}
    assert len(ports) == 50


def test_any_server_put_get(any_server: harness.ServerProcess) -> None:
    cp = harness.etcdctl(any_server, "put", "foo", "bar", timeout=10)
    assert cp.returncode == 0, cp.stderr
    cp = harness.etcdctl(any_server, "get", "foo", timeout=10)
    assert cp.stdout == "foo\nbar\n"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_restart_keeps_data(any_server: harness.ServerProcess, sig: int) -> None:
    assert harness.etcdctl(any_server, "put", "k", "v", timeout=10).returncode == 0
    old_pid = any_server.pid
    any_server.restart(sig)
    assert any_server.pid != old_pid
    assert harness.etcdctl(any_server, "get", "k", "--print-value-only", timeout=10).stdout == "v\n"


def test_kill_and_cleanup(server_factory: Callable[..., harness.ServerProcess]) -> None:
    srv = server_factory("etcd")
    assert srv.is_running()
    rc = srv.kill(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not srv.is_running()
    assert harness.probe(srv.endpoint, timeout=0.3) is not None


def test_start_failure_shows_log(server_factory: Callable[..., harness.ServerProcess]) -> None:
    srv = server_factory("etcd", start=False, extra_args=["--no-such-flag"])
    with pytest.raises(harness.ServerStartError, match="exited with code"):
        srv.start(timeout=10)
    assert not srv.is_running()


@pytest.mark.etcd
def test_context_manager(tmp_path: Path) -> None:
    with harness.EtcdProcess(base_dir=tmp_path) as srv:
        pid = srv.pid
        assert harness.probe(srv.endpoint) is None
    assert not srv.is_running() and pid is not None
