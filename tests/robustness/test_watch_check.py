"""Watch validation: etcd's guarantees."""

from __future__ import annotations

from devkit.robustness import watch
from devkit.robustness.history import KV, Delete, Response, WatchRequest, WatchResponse
from tests.robustness.robustutil import B, ev_del, ev_put, wresp


def base() -> B:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(0, 2, 3, "b", "1", 3)
    b.put(0, 4, 5, "a", "2", 4)
    return b


ALL = WatchRequest("a", "z", start_revision=2)


def status(b: B) -> str:
    r = watch.check(b.h)
    return r.status


def test_good_watch() -> None:
    b = base()
    b.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wresp(2, 3, ev_put("b", "1", 3)),
            wresp(3, 4, ev_put("a", "2", 4)), wresp(4, 4))
    r = watch.check(b.h)
    assert r.status == "ok", r.to_text()


def test_duplicated_event() -> None:
    b = base()
    b.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wresp(2, 3, ev_put("b", "1", 3)),
            wresp(3, 3, ev_put("b", "1", 3)), wresp(4, 4, ev_put("a", "2", 4)))
    r = watch.check(b.h)
    assert r.status == "violation"
    assert any("twice" in d or "not ordered" in d or "split" in d for d in r.details)
    assert any("twice" in d for d in r.details)


def test_gap_in_watch() -> None:
    b = base()
    b.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wresp(3, 4, ev_put("a", "2", 4)))
    r = watch.check(b.h)
    assert r.status == "violation" and "gap" in r.summary and "revision 3" in r.summary


def test_gap_at_the_start() -> None:
    b = base()
    b.watch(ALL, wresp(2, 3, ev_put("b", "1", 3)), wresp(3, 4, ev_put("a", "2", 4)))
    assert "gap" in watch.check(b.h).summary


def test_start_from_now_uses_created_revision() -> None:
    b = base()
    req = WatchRequest("a", "z")
    b.watch(req, WatchResponse(0, 3, created=True), wresp(3, 4, ev_put("a", "2", 4)))
    assert status(b) == "ok"
    b2 = base()
    b2.watch(req, WatchResponse(0, 2, created=True), wresp(3, 4, ev_put("a", "2", 4)))
    assert status(b2) == "violation"  # missed b@3


def test_revision_going_backwards_in_watch() -> None:
    b = base()
    b.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wresp(2, 4, ev_put("a", "2", 4)),
            wresp(3, 4, ev_put("b", "1", 3)))
    r = watch.check(b.h)
    assert r.status == "violation" and any("not ordered" in d for d in r.details)


def test_event_below_start_revision() -> None:
    b = base()
    b.watch(WatchRequest("a", "z", start_revision=4), wresp(1, 4, ev_put("b", "1", 3)),
            wresp(2, 4, ev_put("a", "2", 4)))
    assert any("below the start" in d for d in watch.check(b.h).details)


def test_split_revision_across_responses() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    txn_events = (ev_put("a", "2", 3), ev_put("b", "2", 3))
    b.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wresp(2, 3, txn_events[0]),
            wresp(3, 3, txn_events[1]))
    r = watch.check(b.h)
    assert r.status == "violation" and "split" in r.summary
    # allowed when the first piece is a fragment
    b2 = B()
    b2.put(0, 0, 1, "a", "1", 2)
    b2.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wresp(2, 3, txn_events[0], fragment=True),
             wresp(3, 3, txn_events[1]))
    assert status(b2) == "ok", watch.check(b2.h).to_text()


def test_progress_notify_before_events() -> None:
    b = base()
    b.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wresp(2, 4),  # claims all <= 4 delivered
            wresp(3, 4, ev_put("b", "1", 3)), wresp(4, 4, ev_put("a", "2", 4)))
    r = watch.check(b.h)
    assert r.status == "violation" and "progress notification" in r.summary


def test_progress_notify_only_is_reliable_horizon() -> None:
    b = base()
    b.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wresp(2, 3))
    r = watch.check(b.h)
    assert r.status == "violation" and "revision 3" in r.summary
    b2 = base()
    b2.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wresp(2, 2))
    assert status(b2) == "ok"


def test_prev_kv() -> None:
    req = WatchRequest("a", "z", start_revision=2, prev_kv=True)
    good = base()
    good.watch(req, wresp(1, 2, ev_put("a", "1", 2, 1, 2)), wresp(2, 3, ev_put("b", "1", 3, 1, 3)),
               wresp(3, 4, ev_put("a", "2", 4, 2, 2, prev=KV("a", "1", 2))))
    assert status(good) == "ok", watch.check(good.h).to_text()
    wrong = base()
    wrong.watch(req, wresp(1, 2, ev_put("a", "1", 2)), wresp(2, 3, ev_put("b", "1", 3)),
                wresp(3, 4, ev_put("a", "2", 4, prev=KV("a", "0", 2))))
    assert status(wrong) == "violation"
    missing = base()
    missing.watch(req, wresp(1, 2, ev_put("a", "1", 2)), wresp(2, 3, ev_put("b", "1", 3)),
                  wresp(3, 4, ev_put("a", "2", 4)))
    r = watch.check(missing.h)
    assert r.status == "violation" and "prev_kv missing" in r.summary
    stale = base()
    stale.put(0, 6, 7, "a", "3", 5)
    stale.watch(WatchRequest("a", start_revision=5, prev_kv=True),
                wresp(1, 5, ev_put("a", "3", 5, prev=KV("a", "1", 2))))
    assert "stale" in watch.check(stale.h).summary
    create = base()
    create.watch(WatchRequest("b", start_revision=3, prev_kv=True),
                 wresp(1, 3, ev_put("b", "1", 3, 1, 3, prev=KV("b", "1", 3))))
    assert status(create) == "violation"


def test_delete_event_and_filters() -> None:
    b = base()
    b.op(0, 6, 7, Delete("a"), Response(revision=5, deleted=1))
    b.watch(WatchRequest("a", start_revision=4, filters=("noput",)), wresp(1, 5, ev_del("a", 5)))
    assert status(b) == "ok", watch.check(b.h).to_text()
    b.watch(WatchRequest("a", start_revision=4, filters=("nodelete",)),
            wresp(1, 5, ev_del("a", 5)))
    assert status(b) == "violation"


def test_event_disagreeing_with_acknowledged_write() -> None:
    b = base()
    b.watch(ALL, wresp(1, 2, ev_put("a", "X", 2)))
    r = watch.check(b.h)
    assert r.status == "violation" and "disagrees" in r.summary
    b2 = base()
    b2.watch(ALL, wresp(1, 2, ev_put("a", "1", 2), ev_put("c", "9", 2)))
    assert "did not touch" in watch.check(b2.h).summary


def test_watchers_disagree_on_unknown_write() -> None:
    b = B()
    w1 = WatchRequest("a", start_revision=2)
    b.watch(w1, wresp(1, 2, ev_put("a", "x", 2)))
    b.watch(w1, wresp(1, 2, ev_put("a", "y", 2)))
    assert status(b) == "violation"


def test_resume() -> None:
    b = base()
    first = b.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wid=1)
    b.watch(WatchRequest("a", "z", start_revision=3), wresp(2, 3, ev_put("b", "1", 3)),
            wresp(3, 4, ev_put("a", "2", 4)), wid=2, resumes=first.id)
    assert status(b) == "ok"
    b2 = base()
    first = b2.watch(ALL, wresp(1, 2, ev_put("a", "1", 2)), wid=1)
    b2.watch(WatchRequest("a", "z", start_revision=4), wresp(3, 4, ev_put("a", "2", 4)),
             wid=2, resumes=first.id)
    assert "resumes" in watch.check(b2.h).summary


def test_compaction_cancel_stops_reliability() -> None:
    b = base()
    b.watch(ALL, WatchResponse(1, 4, canceled=True, compact_revision=3))
    assert status(b) == "ok"


def test_is_create_flag_and_sequencing() -> None:
    b = base()
    b.watch(WatchRequest("a", start_revision=2),
            wresp(1, 2, ev_put("a", "1", 2, version=2, create=2)))
    assert "version 2 but create_revision 2" in watch.check(b.h).summary
    b2 = base()
    b2.watch(WatchRequest("a", start_revision=2), wresp(1, 2, ev_put("a", "1", 2)),
             WatchResponse(2, 2, created=True))
    assert "created response came after" in watch.check(b2.h).summary
    b3 = base()
    b3.watch(WatchRequest("a", start_revision=2), wresp(1, 2, ev_put("a", "1", 2)),
             WatchResponse(2, 3, canceled=True), wresp(3, 4, ev_put("a", "2", 4)))
    assert "after the watch was cancelled" in watch.check(b3.h).summary
