"""Compaction and HashKV.

The golden hashes were produced by a real etcd (3.4.23, whose HashKV algorithm 3.5 keeps)
fed exactly the same requests; equal hashes mean the `key` bucket rows are byte-identical
to etcd's."""

from __future__ import annotations

import time

import pytest

from conch.backend.schema import META_FINISHED_COMPACT, META_SCHEDULED_COMPACT
from conch.errors import ErrCompacted, ErrFutureRev, EtcdError
from conch.proto.etcdserverpb import rpc_pb2 as pb
from tests.mvcc.mvcc_helpers import Harness, kv
from tests.mvcc.txn_cases import dele, put, txn


def feed_golden(h: Harness) -> None:
    h.put(b"a", b"1")  # 2
    h.put(b"b", b"2")  # 3
    h.put(b"a", b"3")  # 4
    h.delete(b"a")  # 5
    h.put(b"c", b"")  # 6
    h.put(b"a", b"5")  # 7
    h.txn(txn([put(b"x", value=b"1"), put(b"y", value=b"2"), dele(b"b")]))  # 8


def test_hash_matches_etcd(h: Harness) -> None:
    feed_golden(h)
    assert h.store.hash_kv(0) == (3747800527, -1, 8)
    h.compact(5)
    assert h.store.hash_kv(0) == (1464340057, 5, 8)
    h.put(b"z", b"9")  # 9
    assert h.store.hash_kv(0) == (2569601547, 5, 9)
    assert h.store.hash_kv(7) == (832211017, 5, 7)


def test_hash_equal_for_equal_histories_and_differs_otherwise(h: Harness, h2: Harness) -> None:
    for hh in (h, h2):
        feed_golden(hh)
    assert h.store.hash_kv(0) == h2.store.hash_kv(0)
    assert h.store.hash_kv(5) == h2.store.hash_kv(5)
    h.put(b"q", b"1")
    h2.put(b"q", b"2")
    assert h.store.hash_kv(0)[0] != h2.store.hash_kv(0)[0]
    assert h.store.hash_kv(8) == h2.store.hash_kv(8)  # history up to 8 still equal


def test_hash_same_compaction_same_hash(h: Harness, h2: Harness) -> None:
    """Members with the same history and the same compactions agree; etcd's corruption
    check compares hashes only at equal compact revisions, since compaction changes them."""
    for hh in (h, h2):
        for i in range(10):
            hh.put(b"k%d" % (i % 3), b"%d" % i)
        hh.delete(b"k1")
    before = h.store.hash_kv(10)
    h.compact(5)
    h2.compact(5)
    assert h.store.hash_kv(10) == h2.store.hash_kv(10) != before
    assert h.store.hash_kv(0) == h2.store.hash_kv(0)
    h2.compact(9)
    assert h.store.hash_kv(10)[1:] == (5, 10) and h2.store.hash_kv(10)[1:] == (9, 10)


def test_hash_errors(h: Harness) -> None:
    feed_golden(h)
    h.compact(5)
    with pytest.raises(EtcdError) as ei:
        h.store.hash_kv(4)
    assert ei.value == ErrCompacted
    with pytest.raises(EtcdError) as ei:
        h.store.hash_kv(9)
    assert ei.value == ErrFutureRev
    assert h.store.hash_kv(5)[1:] == (5, 5)  # at the compact revision is allowed


def test_compaction_rules(h: Harness) -> None:
    h.put(b"a", b"1")  # 2
    h.put(b"a", b"2")  # 3
    h.put(b"b", b"1")  # 4
    h.delete(b"b")  # 5
    h.put(b"c", b"1")  # 6
    h.put(b"a", b"3")  # 7
    with pytest.raises(EtcdError) as ei:
        h.compact(8)
    assert ei.value == ErrFutureRev
    removed = h.compact(5)
    # a@2 and b@4 go; a@3 (newest <= 5) survives, and so does b's tombstone@5: revision 5
    # is the compact revision and a watch from it still gets its events (etcd #18089).
    assert removed == 2
    assert h.store.compact_revision() == 5 and h.rev() == 7
    assert [rev for rev, _ in h.store.read_events(0, 100)] == [3, 5, 6, 7]
    # reading at the compact revision works, below it does not
    assert list(h.get(b"a", revision=5).kvs) == [kv(b"a", b"2", 2, 3, 2)]
    assert h.get(b"b", revision=5).count == 0
    assert [x.key for x in h.get(b"\x00", range_end=b"\x00", revision=6).kvs] == [b"a", b"c"]
    for bad in (4, 1):
        with pytest.raises(EtcdError) as ei:
            h.get(b"a", revision=bad)
        assert ei.value == ErrCompacted
    for again in (5, 3):
        with pytest.raises(EtcdError) as ei:
            h.compact(again)
        assert ei.value == ErrCompacted
    assert h.store.get_prev_kv(b"a", 7) == kv(b"a", b"2", 2, 3, 2)
    # index entries of removed revisions are gone too
    with h.backend.read() as t:
        n_index = t.stat(h.backend.db(b"index"))["entries"]
        n_key = t.stat(h.backend.db(b"key"))["entries"]
        assert (n_index, n_key) == (4, 4)  # a@3, b's tombstone@5, c@6, a@7
        assert t.get(META_SCHEDULED_COMPACT, db=h.backend.db(b"meta")) == t.get(
            META_FINISHED_COMPACT, db=h.backend.db(b"meta")
        )
    # compact at the current revision, then everything still readable at current
    h.compact(7)
    assert [x.value for x in h.get(b"a", range_end=b"z").kvs] == [b"3", b"1"]
    assert h.put(b"d").header.revision == 8


def test_compaction_when_last_revision_was_a_delete(h: Harness) -> None:
    h.put(b"a")
    h.delete(b"a")
    h.compact(3)
    with h.backend.read() as t:  # the tombstone at the compact revision stays (etcd #18089)
        assert t.stat(h.backend.db(b"key"))["entries"] == 1
    assert [ev.type for _, evs in h.store.read_events(3, 3) for ev in evs] == [1]  # DELETE
    h.reopen()
    assert h.rev() == 3 and h.store.compact_revision() == 3
    assert h.put(b"b").header.revision == 4
    h.compact(4)  # a later compaction removes it
    assert [rev for rev, _ in h.store.read_events(0, 100)] == [4]


def test_compaction_100k_revisions_is_fast(h: Harness) -> None:
    with h.backend.write() as t:
        for i in range(100_000):
            w = h.store.write(t)
            w.put(pb.PutRequest(key=b"key/%05d" % (i % 5000), value=b"v"))
            w.end()
    t0 = time.perf_counter()
    removed = h.compact(90_000)
    assert time.perf_counter() - t0 < 10
    assert removed == 89_999 - 5000
    assert h.get(b"key/", range_end=b"key0", revision=90_000, count_only=True).count == 5000
    assert h.get(b"key/00000", revision=90_000).kvs[0].mod_revision == 85_002


def test_hash_when_no_key_is_live_matches_etcd(h: Harness) -> None:
    """kvindex.Keep(rev) is empty when nothing is live at rev: etcd then hashes every
    surviving row at/below the compact revision (golden values from a real etcd)."""
    h.put(b"a", b"1")  # 2
    h.put(b"b", b"1")  # 3
    h.compact(3)
    h.delete(b"a")  # 4
    h.delete(b"b")  # 5
    assert h.store.hash_kv(0) == (1785112597, 3, 5)
    assert h.store.hash_kv(4) == (3397199720, 3, 4)
    assert h.store.hash_kv(5) == (1785112597, 3, 5)
