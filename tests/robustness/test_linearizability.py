"""Linearizability checker: known-bad histories are caught, good ones (including timed-out writes
and non-obvious orders) pass."""

from __future__ import annotations

from devkit.robustness import linearizability
from devkit.robustness.history import (
    KV,
    Compare,
    Delete,
    History,
    LeaseExpired,
    LeaseRevoke,
    Put,
    Range,
    Response,
    Txn,
)
from devkit.robustness.report import CheckResult
from tests.robustness.robustutil import B


def lin(b: B) -> CheckResult:
    return linearizability.check(b.h, seconds=5)


def test_simple_sequential_history_passes() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.get(1, 2, 3, "a", 2, KV("a", "1", 2, 2, 1))
    b.put(0, 4, 5, "a", "2", 3)
    b.get(1, 6, 7, "a", 3, KV("a", "2", 3, 2, 2))
    r = lin(b)
    assert r.status == "ok", r.to_text()


def test_stale_read_is_caught_with_window() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(0, 2, 3, "a", "2", 3)
    b.get(1, 4, 5, "a", 3, KV("a", "1", 2))  # the put of "2" had returned
    r = lin(b)
    assert r.status == "violation", r.to_text()
    text = r.to_text()
    assert "key 'a'" in text and "minimal violating window" in text
    assert "#2" in text and "get(a)" in text
    assert "#0" not in text.split("minimal violating window")[1]  # window is small


def test_stale_read_with_old_header_is_caught() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(0, 2, 3, "a", "2", 3)
    b.get(1, 4, 5, "a", 2, KV("a", "1", 2))
    assert lin(b).status == "violation"


def test_stale_read_across_keys_via_revision() -> None:
    # b's write at rev 3 finished before the read of a was invoked; the read claims rev 2.
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(0, 2, 3, "b", "1", 3)
    b.get(1, 4, 5, "a", 2, KV("a", "1", 2))
    r = lin(b)
    assert r.status == "violation" and "revision order" in r.summary, r.to_text()


def test_concurrent_read_may_see_old_or_new() -> None:
    for seen in ("1", "2"):
        b = B()
        b.put(0, 0, 1, "a", "1", 2)
        b.put(0, 2, 10, "a", "2", 3)
        mod = 2 if seen == "1" else 3
        b.get(1, 3, 5, "a", mod, KV("a", seen, mod))
        assert lin(b).status == "ok"


def test_non_obvious_order_passes() -> None:
    # put(1) is invoked first but linearizes second (its revision is 3); a read that returned
    # before put(1) returned already saw "1" - so put(2) < put(1) < read, while put(2)'s read
    # of the old value constrains nothing else.
    b = B()
    b.put(0, 0, 10, "a", "1", 3)
    b.put(1, 1, 9, "a", "2", 2)
    b.get(2, 2, 8, "a", 3, KV("a", "1", 3, 2, 2))
    b.get(3, 11, 12, "a", 3, KV("a", "1", 3, 2, 2))
    r = lin(b)
    assert r.status == "ok", r.to_text()


def test_read_before_concurrent_write_then_after() -> None:
    # reads overlapping a write see old, then new, then never old again
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(0, 2, 20, "a", "2", 3)
    b.get(1, 3, 4, "a", 2, KV("a", "1", 2))
    b.get(1, 5, 6, "a", 3, KV("a", "2", 3))
    b.get(1, 7, 8, "a", 3, KV("a", "1", 2))  # went back: violation
    r = lin(b)
    assert r.status == "violation"
    assert "ops 2..4" in r.to_text() or "get(a)" in r.to_text()


def test_timed_out_write_that_took_effect() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.unknown(1, 2, Put("a", "2"))
    b.get(2, 10, 11, "a", 3, KV("a", "2", 3, 2, 2))
    b.put(0, 12, 13, "a", "3", 4)
    assert lin(b).status == "ok"


def test_timed_out_write_that_did_not_take_effect() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.unknown(1, 2, Put("a", "2"))
    b.get(2, 10, 11, "a", 2, KV("a", "1", 2))
    b.put(0, 12, 13, "a", "3", 3)
    b.get(2, 14, 15, "a", 3, KV("a", "3", 3))
    assert lin(b).status == "ok"


def test_timed_out_write_applied_late() -> None:
    # not seen by the first read, seen by the second: applied between them
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.unknown(1, 2, Put("a", "2"))
    b.get(2, 10, 11, "a", 2, KV("a", "1", 2))
    b.get(2, 12, 13, "a", 3, KV("a", "2", 3))
    assert lin(b).status == "ok"


def test_timed_out_write_seen_then_unseen_is_a_violation() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.unknown(1, 2, Put("a", "2"))
    b.get(2, 10, 11, "a", 3, KV("a", "2", 3))
    b.get(2, 12, 13, "a", 3, KV("a", "1", 2))
    assert lin(b).status == "violation"


def test_unknown_write_cannot_precede_its_invoke() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.get(2, 2, 3, "a", 3, KV("a", "2", 3))
    b.unknown(1, 5, Put("a", "2"))
    assert lin(b).status == "violation"


def test_value_nobody_wrote() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.get(1, 2, 3, "a", 2, KV("a", "zzz", 2))
    assert lin(b).status == "violation"


def test_revision_going_backwards() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 3)
    b.put(0, 2, 3, "b", "1", 2)
    r = lin(b)
    assert r.status == "violation" and "revision order" in r.summary


def test_duplicate_revision() -> None:
    b = B()
    b.put(0, 0, 10, "a", "1", 2)
    b.put(1, 0, 10, "b", "1", 2)
    assert lin(b).status == "violation"


def test_skipped_revision_needs_an_unknown_write() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(0, 2, 3, "a", "2", 4)
    assert lin(b).status == "violation"
    b2 = B()
    b2.put(0, 0, 1, "a", "1", 2)
    b2.unknown(1, 1, Put("b", "x"))
    b2.put(0, 2, 3, "a", "2", 4)
    assert lin(b2).status == "ok"


def test_lost_acknowledged_write() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(0, 2, 3, "a", "2", 3)
    b.get(1, 10, 11, "a", 3)  # key missing
    assert lin(b).status == "violation"


def test_txn_compare_and_set() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    cas = Txn((Compare("a", "mod", "=", 2),), (Put("a", "2"),), (Range("a"),))
    # two concurrent CAS on the same mod revision: only one may succeed
    b.op(1, 2, 10, cas, Response(revision=3, succeeded=True, responses=(Response(revision=3),)))
    b.op(2, 2, 10, cas, Response(revision=3, succeeded=False, responses=(
        Response(revision=3, kvs=(KV("a", "2", 3),)),)))
    assert lin(b).status == "ok"
    bad = B()
    bad.put(0, 0, 1, "a", "1", 2)
    bad.op(1, 2, 10, cas, Response(revision=3, succeeded=True))
    bad.op(2, 2, 10, cas, Response(revision=4, succeeded=True))
    assert lin(bad).status == "violation"


def test_txn_value_compare_on_missing_key_is_false() -> None:
    b = B()
    t = Txn((Compare("a", "value", "=", ""),), (Put("a", "x"),))
    b.op(0, 0, 1, t, Response(revision=2, succeeded=True))
    assert lin(b).status == "violation"


def test_delete_and_no_op_delete() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.op(0, 2, 3, Delete("a"), Response(revision=3, deleted=1))
    b.op(0, 4, 5, Delete("a"), Response(revision=3, deleted=0))
    b.get(1, 6, 7, "a", 3)
    assert lin(b).status == "ok"
    bad = B()
    bad.put(0, 0, 1, "a", "1", 2)
    bad.op(0, 4, 5, Delete("a"), Response(revision=2, deleted=0))
    assert lin(bad).status == "violation"


def test_range_over_keys() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(0, 2, 3, "b", "1", 3)
    b.op(1, 4, 5, Range("a", "z"), Response(revision=3, kvs=(KV("a", "1", 2), KV("b", "1", 3)),
                                            count=2))
    assert lin(b).status == "ok"
    bad = B()
    bad.put(0, 0, 1, "a", "1", 2)
    bad.put(0, 2, 3, "b", "1", 3)
    bad.op(1, 4, 5, Range("a", "z"), Response(revision=3, kvs=(KV("a", "1", 2),), count=1))
    assert lin(bad).status == "violation"


def test_lease_revoke_deletes_keys() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2, lease=7)
    b.op(0, 2, 3, LeaseRevoke(7), Response(revision=3))
    b.get(1, 4, 5, "a", 3)
    assert lin(b).status == "ok"
    bad = B()
    bad.put(0, 0, 1, "a", "1", 2, lease=7)
    bad.op(0, 2, 3, LeaseRevoke(7), Response(revision=3))
    bad.get(1, 4, 5, "a", 3, KV("a", "1", 2))
    assert lin(bad).status == "violation"


def test_lease_expiry_as_unknown_revoke() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2, lease=7)
    b.unknown(9, 5, LeaseRevoke(7))  # TTL ran out at 5: may expire at any point later
    b.get(1, 6, 7, "a", 2, KV("a", "1", 2))
    b.op(1, 8, 9, LeaseExpired(7))
    b.get(1, 10, 11, "a", 3)
    assert lin(b).status == "ok"
    bad = B()
    bad.put(0, 0, 1, "a", "1", 2, lease=7)
    bad.unknown(9, 5, LeaseRevoke(7))
    bad.op(1, 8, 9, LeaseExpired(7))
    bad.get(1, 10, 11, "a", 2, KV("a", "1", 2))
    assert lin(bad).status == "violation"


def test_cross_key_txn_atomicity_needs_full_model() -> None:
    # a txn (outcome unknown) writing a and b at one revision; a reader sees a's new value with
    # b's old value. Each key alone is fine (the txn may have applied for a, not for b) and so
    # is the revision counter; only the full model sees the torn txn.
    b = B()
    b.put(0, 0, 1, "a", "0", 2)
    b.put(0, 2, 3, "b", "0", 3)
    b.unknown(0, 4, Txn((), (Put("a", "1"), Put("b", "1"))))
    b.op(1, 6, 19, Range("a", "z"), Response(revision=4, kvs=(KV("a", "1", 4), KV("b", "0", 3))))
    r = lin(b)
    assert r.status == "violation" and "full model" in r.summary, r.to_text()
    # the same history is accepted when the reader saw both halves
    ok = B()
    ok.h.operations = b.h.operations[:3]
    ok.op(1, 6, 19, Range("a", "z"), Response(revision=4, kvs=(KV("a", "1", 4), KV("b", "1", 4))))
    assert lin(ok).status == "ok"


def test_budget_exhaustion_is_unknown_not_pass() -> None:
    b = B()
    # many fully concurrent puts on distinct keys with one stale revision claim at the end
    for i in range(40):
        b.put(i, 0, 100, f"k{i}", "v", 2 + i)
    b.get(99, 101, 102, "k0", 1, KV("k0", "v", 2))
    r = linearizability.check(b.h, seconds=0.2, max_states=2000)
    assert r.status in ("unknown", "violation")


def test_empty_history() -> None:
    assert linearizability.check(History()).status == "ok"


def test_window_after_an_early_unknown_write_is_small() -> None:
    b = B()
    b.unknown(0, 0, Put("a", "x"))  # never returns: the old cut rule would start the window here
    for i in range(10):
        b.put(1, 10 + 4 * i, 12 + 4 * i, "a", f"v{i}", 2 + i)
    b.get(2, 100, 101, "a", 11, KV("a", "v3", 5))  # stale
    r = lin(b)
    assert r.status == "violation"
    text = r.to_text()
    assert "with 1 earlier op(s) of unknown outcome" in text, text
    window = text.split("minimal violating window")[1]
    assert "v0" not in window and "get(a)" in window
