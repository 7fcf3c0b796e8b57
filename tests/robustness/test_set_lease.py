"""Set check (lost writes, values nobody wrote) and lease check."""

from __future__ import annotations

from devkit.robustness import lease_check, set_check
from devkit.robustness.history import (
    KV,
    Delete,
    LeaseExpired,
    LeaseRevoke,
    Put,
    Range,
    Response,
    WatchRequest,
)
from tests.robustness.robustutil import B, ev_put, wresp


def final(b: B, t: int, rev: int, *kvs: KV) -> None:
    b.op(9, t, t + 1, Range("a", "z"), Response(revision=rev, kvs=kvs, count=len(kvs)))


def test_all_acknowledged_writes_present() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(1, 0, 1, "b", "1", 3)
    b.unknown(2, 2, Put("c", "1"))
    final(b, 10, 3, KV("a", "1", 2), KV("b", "1", 3))
    assert set_check.check(b.h).status == "ok"
    b.h.operations.pop()
    final(b, 10, 4, KV("a", "1", 2), KV("b", "1", 3), KV("c", "1", 4))
    assert set_check.check(b.h).status == "ok"


def test_lost_write_missing_key() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(1, 0, 1, "b", "1", 3)
    final(b, 10, 3, KV("a", "1", 2))
    r = set_check.check(b.h)
    assert r.status == "violation" and "lost write" in r.summary and "b=" in r.summary


def test_lost_write_older_version() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.put(0, 2, 3, "a", "2", 3)
    final(b, 10, 3, KV("a", "1", 2))
    assert "lost write" in set_check.check(b.h).summary


def test_missing_key_explained_by_unknown_delete_or_lease() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.unknown(1, 2, Delete("a"))
    final(b, 10, 3)
    assert set_check.check(b.h).status == "ok"
    b2 = B()
    b2.put(0, 0, 1, "a", "1", 2, lease=5)
    final(b2, 10, 3)
    assert set_check.check(b2.h).status == "ok"
    b3 = B()
    b3.put(0, 0, 1, "a", "1", 2)
    b3.op(1, 2, 3, Delete("a"), Response(revision=2, deleted=0))  # deleted nothing
    final(b3, 10, 3)
    assert set_check.check(b3.h).status == "violation"


def test_read_of_value_nobody_wrote() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2)
    b.op(1, 2, 3, Range("a", serializable=True), Response(revision=2, kvs=(KV("a", "ghost", 2),)))
    r = set_check.check(b.h)
    assert r.status == "violation" and "nobody wrote" in r.summary
    b2 = B()
    b2.put(0, 0, 1, "a", "1", 2)
    b2.get(1, 2, 3, "a", 5, KV("a", "1", 5))  # right value, wrong revision
    assert set_check.check(b2.h).status == "violation"
    b3 = B()
    b3.put(0, 0, 1, "a", "1", 2)
    b3.watch(WatchRequest("a", start_revision=1), wresp(1, 3, ev_put("a", "boo", 3)))
    assert set_check.check(b3.h).status == "violation"


def test_lease_keys_unreadable_after_revoke_reported() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2, lease=7)
    b.get(1, 2, 3, "a", 2, KV("a", "1", 2))
    b.op(0, 4, 5, LeaseRevoke(7), Response(revision=3))
    b.get(1, 6, 7, "a", 3)
    assert lease_check.check(b.h).status == "ok"
    b.get(1, 8, 9, "a", 3, KV("a", "1", 2))
    r = lease_check.check(b.h)
    assert r.status == "violation" and "lease 7" in r.summary


def test_lease_expiry_reported_then_key_read() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2, lease=7)
    b.op(0, 4, 5, LeaseExpired(7))
    b.get(1, 4, 6, "a", 2, KV("a", "1", 2))  # concurrent with the report: allowed
    assert lease_check.check(b.h).status == "ok"
    b.op(1, 8, 9, Range("a"), Response(revision=2, kvs=(KV("a", "1", 2, lease=7),)))
    assert lease_check.check(b.h).status == "violation"


def test_key_reattached_without_lease_is_fine() -> None:
    b = B()
    b.put(0, 0, 1, "a", "1", 2, lease=7)
    b.put(0, 2, 3, "a", "2", 3)
    b.op(0, 4, 5, LeaseRevoke(7), Response(revision=3))
    b.get(1, 6, 7, "a", 3, KV("a", "2", 3))
    assert lease_check.check(b.h).status == "ok"


def test_put_with_revoked_lease_must_fail() -> None:
    b = B()
    b.op(0, 0, 1, LeaseRevoke(7), Response(revision=1))
    b.put(0, 2, 3, "a", "1", 2, lease=7)
    assert lease_check.check(b.h).status == "violation"
