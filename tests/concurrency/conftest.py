"""Fixtures for the concurrency recipe tests: clients on the parametrised ``any_server``
(real etcd 3.4 and conch), and etcdctl child processes stopped by their own pid."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from conch.client import Client
from devkit import harness

MakeClient = Callable[[], Client]


@pytest.fixture
def make_client(any_server: harness.ServerProcess) -> Iterator[MakeClient]:
    clients: list[Client] = []

    def make() -> Client:
        c = Client([any_server.endpoint], timeout=5.0)
        clients.append(c)
        return c

    yield make
    for c in reversed(clients):
        c.close()


@pytest.fixture
def client(make_client: Callable[[], Client]) -> Client:
    return make_client()


class Ctl:
    """A long-running ``etcdctl`` child (elect / lock) with its stdout lines collected."""

    def __init__(self, endpoint: str, *args: str) -> None:
        self.proc = harness.etcdctl_popen(endpoint, *args)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)  # this pid only: we started it

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.send(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()


StartCtl = Callable[..., Ctl]


@pytest.fixture
def etcdctl_proc(any_server: harness.ServerProcess) -> Iterator[StartCtl]:
    if harness.etcdctl_binary() is None:
        if harness.require_etcd():
            pytest.fail("etcdctl not found and CONCH_REQUIRE_ETCD=1")
        pytest.skip("etcdctl not found")
    started: list[Ctl] = []

    def start(*args: str) -> Ctl:
        c = Ctl(any_server.endpoint, *args)
        started.append(c)
        return c

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.stop(signal.SIGKILL)
