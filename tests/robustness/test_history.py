"""History recorder, JSON lines round trip, report text."""

from __future__ import annotations

import itertools
import threading

from devkit.robustness import check_all
from devkit.robustness.history import (
    KV,
    Compare,
    Delete,
    Event,
    History,
    LeaseRevoke,
    Put,
    Range,
    Recorder,
    Response,
    Txn,
    WatchRequest,
    WatchResponse,
)
from tests.robustness.robustutil import random_history


def test_recorder_outcomes_and_jsonl_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = itertools.count()
    rec = Recorder(clock=lambda: next(clock))
    a = rec.record_invoke(0, Put("a", "1", lease=5))
    b = rec.record_invoke(1, Txn((Compare("a", "mod", "=", 2),), (Put("a", "2"), Delete("b")),
                                 (Range("a"),)))
    rec.record_return(a, Response(revision=2))
    rec.record_return(b, error="context deadline exceeded")
    c = rec.record_invoke(2, LeaseRevoke(5))
    rec.record_return(c, error="lease not found", definite=True)
    rec.record_invoke(3, Range("a", "z"))  # never returns
    w = rec.record_watch(4, WatchRequest("a", "z", start_revision=2, prev_kv=True,
                                         filters=("nodelete",)))
    rec.record_watch_response(w, WatchResponse(9, 2, (Event("put", KV("a", "1", 2, 2, 1, 5)),)))
    h = rec.history()
    assert h.counts() == {"ok": 1, "unknown": 2, "error": 1}
    assert [op.invoke for op in h.operations] == sorted(op.invoke for op in h.operations)
    path = tmp_path / "history.jsonl"
    h.write_jsonl(str(path))
    back = History.from_jsonl(path.read_text())
    assert back.operations == h.operations
    assert back.watches == h.watches
    assert back.initial_revision == h.initial_revision


def test_generated_history_round_trips() -> None:
    h = random_history(3, n=80)
    back = History.from_jsonl(h.to_jsonl())
    assert back.operations == h.operations and back.watches == h.watches


def test_recorder_is_thread_safe() -> None:
    rec = Recorder()

    def client(cid: int) -> None:
        for i in range(200):
            op = rec.record_invoke(cid, Put(f"k{cid}", str(i)))
            rec.record_return(op, Response(revision=i))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = rec.history().operations
    assert len(ops) == 800 and len({op.id for op in ops}) == 800


def test_summary_text() -> None:
    h = random_history(5, n=40)
    s = check_all(h, seconds=5, faults=["kill leader"], seed=5)
    text = s.to_text()
    assert s.ok and "robustness report: OK" in text
    assert "seed: 5" in text and "kill leader" in text
    for name in ("linearizability", "set", "lease", "watch"):
        assert f"{name}: OK" in text
    assert f"ok={h.counts()['ok']}" in text
