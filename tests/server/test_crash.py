"""Nothing acknowledged is lost: SIGKILL a real conch under concurrent puts, restart, check.

Also the WAL's failure modes at process level: a torn tail (an unacknowledged write cut
short) is repaired on restart; corruption before the tail makes the member refuse to start
with a message that says so."""

from __future__ import annotations

import glob
import os
import random
import signal
import threading
from collections.abc import Callable

import grpc
import pytest

from conch.proto.etcdserverpb import rpc_pb2
from devkit.harness import ServerProcess
from devkit.polling import poll
from tests.grpc_stubs import connect

ROUNDS = int(os.environ.get("CONCH_CRASH_ROUNDS", "4"))
WRITERS = 8


class _Writers:
    """WRITERS threads putting unique keys; each records a put only once it is acknowledged."""

    def __init__(self, endpoint: str, round_no: int) -> None:
        self.acked: dict[bytes, tuple[bytes, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(endpoint, round_no, w), daemon=True)
            for w in range(WRITERS)
        ]
        for t in self._threads:
            t.start()

    def _run(self, endpoint: str, round_no: int, w: int) -> None:
        with connect(endpoint) as s:
            n = 0
            while not self._stop.is_set() and n < 100_000:
                key = b"r%d/w%d/%06d" % (round_no, w, n)
                value = b"v-%d-%d-%d" % (round_no, w, n)
                n += 1
                try:
                    resp = s.kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=5)
                except grpc.RpcError:
                    return  # the server died: this put may or may not have been applied
                with self._lock:
                    self.acked[key] = (value, resp.header.revision)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
            assert not t.is_alive(), "writer thread hung"


def _check_all_present(endpoint: str, acked: dict[bytes, tuple[bytes, int]]) -> int:
    with connect(endpoint) as s:
        resp: rpc_pb2.RangeResponse = s.kv.Range(
            rpc_pb2.RangeRequest(key=b"r", range_end=b"s"), timeout=30
        )
    got = {kv.key: kv for kv in resp.kvs}
    missing = [k for k in acked if k not in got]
    assert not missing, f"{len(missing)} acknowledged puts lost, e.g. {missing[:3]}"
    for key, (value, rev) in acked.items():
        assert got[key].value == value
        assert got[key].mod_revision == rev, (key, got[key].mod_revision, rev)
    return resp.header.revision


def test_acknowledged_puts_survive_sigkill(server_factory: Callable[..., ServerProcess]) -> None:
    rng = random.Random(20261126)
    srv = server_factory("conch")
    all_acked: dict[bytes, tuple[bytes, int]] = {}
    last_rev = 1
    for round_no in range(ROUNDS):
        writers = _Writers(srv.endpoint, round_no)
        target = rng.randint(50, 600)

        def enough(w: _Writers = writers, t: int = target) -> bool:
            return w.count() >= t

        poll(enough, 60, f"{target} acknowledged puts")
        srv.kill(signal.SIGKILL)
        writers.stop()
        all_acked.update(writers.acked)
        srv.start()
        rev = _check_all_present(srv.endpoint, all_acked)
        assert rev >= last_rev, f"revision went backwards: {rev} < {last_rev}"
        assert rev >= max(r for _, r in all_acked.values())
        last_rev = rev


def _wal_files(srv: ServerProcess) -> list[str]:
    return sorted(glob.glob(os.path.join(srv.data_dir, "member", "wal", "*.wal")))


def _fill(srv: ServerProcess, n: int) -> dict[bytes, bytes]:
    written: dict[bytes, bytes] = {}
    with connect(srv.endpoint) as s:
        for i in range(n):
            key, value = b"key%04d" % i, b"value%04d" % i
            s.kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=10)
            written[key] = value
    return written


def test_torn_wal_tail_is_repaired(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("conch")
    written = _fill(srv, 50)
    srv.kill(signal.SIGKILL)
    wal = _wal_files(srv)[-1]
    # A write that was cut short: a length word promising more bytes than follow.
    with open(wal, "ab") as fh:
        fh.write((200).to_bytes(8, "little") + b"\x08\x02\x10")
    srv.start()
    with connect(srv.endpoint) as s:
        resp = s.kv.Range(rpc_pb2.RangeRequest(key=b"key", range_end=b"kez"), timeout=10)
        assert {kv.key: kv.value for kv in resp.kvs} == written
        s.kv.Put(rpc_pb2.PutRequest(key=b"after", value=b"repair"), timeout=10)
    assert glob.glob(os.path.join(srv.data_dir, "member", "wal", "*.broken"))
    # And the repaired log keeps working across another crash.
    srv.kill(signal.SIGKILL)
    srv.start()
    with connect(srv.endpoint) as s:
        assert s.kv.Range(rpc_pb2.RangeRequest(key=b"after"), timeout=10).kvs[0].value == b"repair"


def test_corruption_before_tail_refuses_to_start(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("conch")
    _fill(srv, 50)
    srv.kill(signal.SIGKILL)
    wal = _wal_files(srv)[-1]
    with open(wal, "r+b") as fh:
        data = bytearray(fh.read())
        pos = data.find(b"value0010")  # inside a record with many valid records after it
        assert pos > 0
        data[pos] ^= 0xFF
        fh.seek(0)
        fh.write(data)
    srv.spawn()
    assert srv.proc is not None
    code = srv.proc.wait(30)
    assert code not in (0, None)
    log = srv.log_tail(40).lower()
    assert "corrupt" in log and "refusing to start" in log, log
    # Nothing was "repaired" away: the file still holds the corrupted record and its successors.
    with open(wal, "rb") as fh:
        assert fh.read() == bytes(data)


@pytest.mark.skipif(not os.environ.get("CONCH_SLOW"), reason="long crash loop: CONCH_SLOW=1")
def test_many_sigkills(server_factory: Callable[..., ServerProcess]) -> None:
    global ROUNDS
    ROUNDS = 20
    test_acknowledged_puts_survive_sigkill(server_factory)
