"""Watch through conch.client.Client against etcd 3.4 and conch."""

from __future__ import annotations

import signal
import threading

import pytest

from conch.client import Client, WatchResult
from conch.client import errors as errs
from devkit.polling import poll


def collect(w, n: int, timeout: float = 10.0) -> list[WatchResult]:  # type: ignore[no-untyped-def]
    """Whole responses until `n` events have arrived."""
    out: list[WatchResult] = []
    got = 0
    while got < n:
        r = w.get(timeout=timeout)
        out.append(r)
        got += len(r.events)
    return out


def events(results: list[WatchResult]) -> list[tuple[str, bytes, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for r in results for e in r.events]


def test_watch_history_prefix_prev_kv(client: Client) -> None:
    first = client.put("w/a", "1").header.revision
    client.put("w/b", "2")
    client.put("other", "x")
    client.delete("w/a")
    with client.watch("w/", prefix=True, start_revision=first, prev_kv=True) as w:
        got = events(collect(w, 3))
        assert [(t, k, v) for t, k, v, _ in got] == [
            ("PUT", b"w/a", b"1"), ("PUT", b"w/b", b"2"), ("DELETE", b"w/a", b"")]  # fmt: skip
        client.put("w/b", "3")
        (r,) = collect(w, 1)
        ev = r.events[0]
        assert ev.prev_kv is not None and ev.prev_kv.value == b"2" and ev.kv.value == b"3"
        assert r.header.revision == ev.kv.mod_revision


def test_watch_whole_txn_in_one_response(client: Client) -> None:
    from conch.client import Op

    with client.watch("t/", prefix=True) as w:
        client.txn([], [Op.put("t/1", "a"), Op.put("t/2", "b"), Op.put("t/3", "c")])
        r = w.get(timeout=10)
        assert [e.kv.key for e in r.events] == [b"t/1", b"t/2", b"t/3"]


def test_watch_filters(client: Client) -> None:
    w_np = client.watch("f", no_put=True)
    w_nd = client.watch("f", no_delete=True)
    client.put("f", "1")
    client.delete("f")
    client.put("f", "2")
    assert [e.type for e in w_np.get(timeout=10).events] == ["DELETE"]
    assert [e.kv.value for e in collect(w_nd, 2)[0].events] == [b"1"]
    w_np.cancel()
    w_nd.cancel()


def test_watch_compacted(client: Client) -> None:
    for i in range(5):
        client.put("c", str(i))
    rev = client.get("c").header.revision
    client.compact(rev, physical=True)
    w = client.watch("c", start_revision=2)
    with pytest.raises(errs.Compacted) as ei:
        w.get(timeout=10)
    assert ei.value.compact_revision == rev
    with pytest.raises(StopIteration):
        w.get(timeout=10)
    poll(lambda: not w.alive, 10, "watch thread exit after compaction")


def test_watch_cancel_stops_thread(client: Client) -> None:
    before = set(threading.enumerate())
    w = client.watch("z")
    client.put("z", "1")
    assert w.get(timeout=10).events[0].kv.value == b"1"
    assert w.alive
    w.cancel()
    assert not w.alive and not w._thread.is_alive()
    with pytest.raises(StopIteration):
        next(w)
    assert list(w) == []
    w.cancel()  # idempotent
    leaked = [t for t in set(threading.enumerate()) - before if t.name.startswith("conch-")]
    assert leaked == []


def test_watch_iterator_and_callback(client: Client) -> None:
    seen: list[WatchResult | errs.ClientError] = []
    cw = client.watch_callback("cb", seen.append)
    w = client.watch("cb")
    client.put("cb", "1")
    client.put("cb", "2")
    it_vals = []
    for r in w:
        it_vals += [e.kv.value for e in r.events]
        if len(it_vals) == 2:
            break
    assert it_vals == [b"1", b"2"]
    poll(lambda: sum(len(r.events) for r in seen if isinstance(r, WatchResult)) == 2, 10, "cb")
    cw.cancel()
    w.cancel()


def test_client_close_stops_watches(any_server) -> None:  # type: ignore[no-untyped-def]
    c = Client([any_server.endpoint])
    w = c.watch("x")
    c.close()
    assert not w.alive


@pytest.mark.parametrize("kind", ["etcd", "conch"])
def test_watch_resumes_after_server_restart(server_factory, kind: str) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(kind)
    with Client([srv.endpoint], timeout=15) as c:
        w = c.watch("r/", prefix=True)
        for i in range(5):
            c.put(f"r/{i}", str(i))
        got = collect(w, 2)  # some delivered before the crash, the rest maybe not
        srv.kill(signal.SIGKILL)
        srv.start()
        for i in range(5, 10):
            c.put(f"r/{i}", str(i))
        got += collect(w, 10 - sum(len(r.events) for r in got), timeout=30)
        evs = events(got)
        assert [k for _, k, _, _ in evs] == [f"r/{i}".encode() for i in range(10)]
        revs = [r for *_, r in evs]
        assert revs == sorted(set(revs))  # no repeats, in order
        w.cancel()
        assert not w.alive
