"""KVStore: revisions, put/delete semantics, history reads, every Range option, events."""

from __future__ import annotations

import pytest

from conch.errors import (
    ErrCompacted,
    ErrFutureRev,
    ErrInvalidSortOption,
    ErrKeyNotFound,
    ErrLeaseNotFound,
    ErrRequestTooLarge,
    EtcdError,
)
from conch.proto.etcdserverpb import rpc_pb2 as pb
from conch.proto.mvccpb.kv_pb2 import Event
from tests.mvcc.mvcc_helpers import Harness, kv

PUT, DELETE = Event.PUT, Event.DELETE


# --- revision arithmetic -------------------------------------------------------------------
def test_empty_store(h: Harness) -> None:
    assert h.rev() == 1
    assert h.store.compact_revision() == -1
    r = h.get(b"a")
    assert r.header.revision == 1 and r.count == 0 and list(r.kvs) == [] and not r.more


def test_put_revisions_and_versions(h: Harness) -> None:
    r = h.put(b"a", b"1")
    assert r.header.revision == 2 and not r.HasField("prev_kv")
    assert list(h.get(b"a").kvs) == [kv(b"a", b"1", 2, 2, 1)]
    h.put(b"b", b"x")
    h.put(b"a", b"1")  # same value still bumps
    assert h.rev() == 4
    assert list(h.get(b"a").kvs) == [kv(b"a", b"1", 2, 4, 2)]


def test_delete_tombstone_and_recreate(h: Harness) -> None:
    h.put(b"a", b"1")  # 2
    h.put(b"a", b"2")  # 3
    resp, evs = h.delete(b"a", prev_kv=True)  # 4
    assert resp.deleted == 1 and resp.header.revision == 4
    assert list(resp.prev_kvs) == [kv(b"a", b"2", 2, 3, 2)]
    assert len(evs) == 1 and evs[0].type == DELETE
    assert evs[0].kv == kv(b"a", b"", 0, 4, 0)  # key + mod_revision only
    assert h.get(b"a").count == 0
    # no-op delete: no bump, header = current
    resp, evs = h.delete(b"a")
    assert resp.deleted == 0 and resp.header.revision == 4 and evs == [] and h.rev() == 4
    resp, evs = h.delete(b"zz", b"zzz")
    assert resp.deleted == 0 and h.rev() == 4
    # re-creation resets version and create_revision
    h.put(b"a", b"3")  # 5
    assert list(h.get(b"a").kvs) == [kv(b"a", b"3", 5, 5, 1)]


def test_history_reads(h: Harness) -> None:
    h.put(b"a", b"1")  # 2
    h.put(b"b", b"1")  # 3
    h.put(b"a", b"2")  # 4
    h.delete(b"b")  # 5
    h.put(b"b", b"3")  # 6
    assert h.rev() == 6
    at = {
        rev: [(x.key, x.value, x.version) for x in h.get(b"a", range_end=b"c", revision=rev).kvs]
        for rev in range(1, 7)
    }
    assert at[1] == []
    assert at[2] == [(b"a", b"1", 1)]
    assert at[3] == [(b"a", b"1", 1), (b"b", b"1", 1)]
    assert at[4] == [(b"a", b"2", 2), (b"b", b"1", 1)]
    assert at[5] == [(b"a", b"2", 2)]
    assert at[6] == [(b"a", b"2", 2), (b"b", b"3", 1)]
    r = h.get(b"b", revision=3)
    assert r.header.revision == 6  # header is the current revision for historical reads
    assert list(r.kvs) == [kv(b"b", b"1", 3, 3, 1)]
    assert h.get(b"b", revision=5).count == 0
    with pytest.raises(EtcdError) as ei:
        h.get(b"a", revision=7)
    assert ei.value == ErrFutureRev
    assert h.get(b"a", revision=-3).kvs[0].value == b"2"  # <= 0 means latest


def test_multi_delete_one_revision_like_revoke(h: Harness) -> None:
    h.put(b"a", b"1", lease=1)
    h.put(b"b", b"1", lease=1)
    h.put(b"c", b"1")
    assert h.leases.keys[1] == {b"a", b"b"}
    with h.backend.write() as t:
        w = h.store.write(t)
        assert w.delete_key(b"a") and w.delete_key(b"b") and not w.delete_key(b"nope")
        evs = w.end()
    assert h.rev() == 5
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in evs] == [
        (DELETE, b"a", 5),
        (DELETE, b"b", 5),
    ]
    assert h.leases.keys[1] == set()
    assert h.keys() == [b"c"]


def test_write_without_changes_does_not_bump(h: Harness) -> None:
    h.put(b"a")
    with h.backend.write() as t:
        w = h.store.write(t)
        r = w.range(pb.RangeRequest(key=b"a"))
        assert r.header.revision == 2
        assert w.end() == []
    assert h.rev() == 2


def test_write_sees_own_changes_one_revision(h: Harness) -> None:
    h.put(b"a", b"0")  # 2
    with h.backend.write() as t:
        w = h.store.write(t)
        assert w.put(pb.PutRequest(key=b"b", value=b"1")).header.revision == 3
        r = w.range(pb.RangeRequest(key=b"a", range_end=b"z"))
        assert r.header.revision == 3 and [x.key for x in r.kvs] == [b"a", b"b"]
        # historical read inside the write does not see the new change
        assert w.range(pb.RangeRequest(key=b"b", revision=2)).count == 0
        d = w.delete_range(pb.DeleteRangeRequest(key=b"a", prev_kv=True))
        assert d.deleted == 1 and d.header.revision == 3
        assert w.delete_range(pb.DeleteRangeRequest(key=b"q")).header.revision == 3
        w.put(pb.PutRequest(key=b"c", value=b"2"))
        evs = w.end()
    assert h.rev() == 3
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in evs] == [
        (PUT, b"b", 3),
        (DELETE, b"a", 3),
        (PUT, b"c", 3),
    ]
    # sub revisions in order, grouped in read_events
    assert [(rev, [(e.type, e.kv.key) for e in g]) for rev, g in h.store.read_events(3, 3)] == [
        (3, [(PUT, b"b"), (DELETE, b"a"), (PUT, b"c")])
    ]


# --- put options ---------------------------------------------------------------------------
def test_put_prev_kv_ignore_value_ignore_lease(h: Harness) -> None:
    r = h.put(b"a", b"v1", lease=1, prev_kv=True)
    assert not r.HasField("prev_kv")
    r = h.put(b"a", b"", ignore_value=True, prev_kv=True)  # keeps value; lease=0 detaches
    assert r.prev_kv == kv(b"a", b"v1", 2, 2, 1, lease=1)
    assert list(h.get(b"a").kvs) == [kv(b"a", b"v1", 2, 3, 2, lease=0)]
    h.put(b"a", b"v2", lease=2)
    h.put(b"a", b"v3", ignore_lease=True)
    assert list(h.get(b"a").kvs) == [kv(b"a", b"v3", 2, 5, 4, lease=2)]
    h.put(b"a", b"", ignore_value=True, ignore_lease=True)
    assert list(h.get(b"a").kvs) == [kv(b"a", b"v3", 2, 6, 5, lease=2)]
    assert h.leases.keys == {1: set(), 2: {b"a"}}
    for kw in ({"ignore_value": True}, {"ignore_lease": True}):
        with pytest.raises(EtcdError) as ei:
            h.put(b"missing", b"", **kw)
        assert ei.value == ErrKeyNotFound
    with pytest.raises(EtcdError) as ei:
        h.put(b"a", b"x", lease=99)
    assert ei.value == ErrLeaseNotFound
    assert h.rev() == 6


def test_lease_hooks_attach_detach(h: Harness) -> None:
    h.put(b"k", lease=1)
    h.put(b"k", lease=2)
    h.put(b"k")
    h.put(b"k", lease=3)
    h.delete(b"k")
    assert h.leases.log == [
        ("attach", 1, b"k"),
        ("detach", 1, b"k"),
        ("attach", 2, b"k"),
        ("detach", 2, b"k"),
        ("attach", 3, b"k"),
        ("detach", 3, b"k"),
    ]


def test_put_event_shape(h: Harness) -> None:
    evs = h.put_ev(b"a", b"1", lease=1)
    assert len(evs) == 1 and evs[0].type == PUT
    assert evs[0].kv == kv(b"a", b"1", 2, 2, 1, lease=1)
    assert not evs[0].HasField("prev_kv")


# --- range options ---------------------------------------------------------------------------
@pytest.fixture
def abc(h: Harness) -> Harness:
    for k in [b"a", b"a\x00", b"a\x00b", b"ab", b"b", b"ba", b"c", b"\xff", b"\xff\xff"]:
        h.put(k, k)
    return h


def test_range_end_conventions(abc: Harness) -> None:
    h = abc
    every = [b"a", b"a\x00", b"a\x00b", b"ab", b"b", b"ba", b"c", b"\xff", b"\xff\xff"]
    assert h.keys(b"\x00", b"\x00") == every
    assert h.keys(b"b", b"\x00") == [b"b", b"ba", b"c", b"\xff", b"\xff\xff"]
    assert h.keys(b"a", b"") == [b"a"]
    assert h.keys(b"a", b"b") == [b"a", b"a\x00", b"a\x00b", b"ab"]  # prefix "a"
    assert h.keys(b"a\x00", b"a\x01") == [b"a\x00", b"a\x00b"]
    assert h.keys(b"b", b"b") == [] and h.keys(b"c", b"a") == []
    assert h.keys(b"\xff", b"\x00") == [b"\xff", b"\xff\xff"]
    assert h.keys(b"zz", b"") == []
    assert h.get(b"a", range_end=b"c").count == 6


def test_range_limit_more_count(abc: Harness) -> None:
    h = abc
    r = h.get(b"a", range_end=b"c", limit=2)
    assert [x.key for x in r.kvs] == [b"a", b"a\x00"] and r.more and r.count == 6
    r = h.get(b"a", range_end=b"c", limit=6)
    assert len(r.kvs) == 6 and not r.more and r.count == 6
    r = h.get(b"a", range_end=b"c", limit=-1)
    assert len(r.kvs) == 6 and not r.more
    r = h.get(b"\x00", range_end=b"\x00", limit=1)
    assert [x.key for x in r.kvs] == [b"a"] and r.more and r.count == 9
    r = h.get(b"a", range_end=b"c", count_only=True, limit=1)
    assert list(r.kvs) == [] and r.count == 6 and not r.more
    r = h.get(b"a", range_end=b"c", keys_only=True)
    assert all(x.value == b"" and x.version == 1 for x in r.kvs) and len(r.kvs) == 6
    # the same at a historical revision (index path)
    h.put(b"zzz")
    r = h.get(b"a", range_end=b"c", limit=2, revision=10)
    assert [x.key for x in r.kvs] == [b"a", b"a\x00"] and r.more and r.count == 6
    assert h.get(b"\x00", range_end=b"\x00", revision=10, count_only=True).count == 9
    assert h.get(b"\x00", range_end=b"\x00", count_only=True).count == 10
    assert h.get(b"a\x00", revision=10).kvs[0].key == b"a\x00"


def _sorted_keys(h: Harness, order: int, target: int, **kw: object) -> list[bytes]:
    return [
        x.key for x in h.get(b"s", range_end=b"t", sort_order=order, sort_target=target, **kw).kvs
    ]


def test_sort_all_targets(h: Harness) -> None:
    # distinct values per target so the order is fully determined
    h.put(b"s1", b"c")  # 2
    h.put(b"s2", b"a")  # 3
    h.put(b"s3", b"b")  # 4
    h.put(b"s1", b"c")  # 5: s1 version 2, mod 5
    h.put(b"s1", b"c")  # 6: s1 version 3
    h.put(b"s3", b"b")  # 7: s3 version 2, mod 7
    A, D = 1, 2
    assert _sorted_keys(h, A, 0) == [b"s1", b"s2", b"s3"]
    assert _sorted_keys(h, D, 0) == [b"s3", b"s2", b"s1"]
    assert _sorted_keys(h, A, 1) == [b"s2", b"s3", b"s1"]  # versions 1,2,3
    assert _sorted_keys(h, D, 1) == [b"s1", b"s3", b"s2"]
    assert _sorted_keys(h, A, 2) == [b"s1", b"s2", b"s3"]  # create 2,3,4
    assert _sorted_keys(h, D, 2) == [b"s3", b"s2", b"s1"]
    assert _sorted_keys(h, A, 3) == [b"s2", b"s1", b"s3"]  # mod 3,6,7
    assert _sorted_keys(h, D, 3) == [b"s3", b"s1", b"s2"]
    assert _sorted_keys(h, A, 4) == [b"s2", b"s3", b"s1"]  # values a,b,c
    assert _sorted_keys(h, D, 4) == [b"s1", b"s3", b"s2"]
    assert _sorted_keys(h, 0, 4) == [b"s2", b"s3", b"s1"]  # NONE + non-KEY = ASCEND
    assert _sorted_keys(h, 0, 0) == [b"s1", b"s2", b"s3"]
    # sort with limit: sort everything, then truncate
    r = h.get(b"s", range_end=b"t", sort_order=D, sort_target=3, limit=1)
    assert [x.key for x in r.kvs] == [b"s3"] and r.more and r.count == 3
    for bad in ({"sort_order": 3}, {"sort_target": 5}):
        with pytest.raises(EtcdError) as ei:
            h.get(b"s", **bad)
        assert ei.value == ErrInvalidSortOption


def test_sort_ties_follow_go_sort(h: Harness) -> None:
    """Go's sort.Sort is unstable; the expected orders were read from a real etcd (Go 1.19
    pdqsort) fed exactly these writes."""
    for i in range(20):
        for _ in range(i % 4 + 1):
            h.put(b"g%02d" % i, str((i * 7) % 3).encode())

    def order(o: int, t: int, **kw: object) -> list[int]:
        r = h.get(b"g", range_end=b"h", sort_order=o, sort_target=t, **kw)
        return [int(x.key[1:]) for x in r.kvs]

    assert order(1, 1) == [0, 16, 4, 12, 8, 1, 17, 5, 13, 9, 10, 6, 14, 2, 18, 11, 7, 15, 3, 19]
    assert order(2, 1) == [7, 19, 15, 3, 11, 10, 14, 18, 2, 6, 9, 13, 17, 5, 1, 4, 12, 0, 8, 16]
    assert order(2, 4) == [8, 17, 2, 14, 11, 5, 10, 16, 19, 1, 7, 4, 13, 12, 3, 15, 0, 9, 18, 6]
    assert order(1, 4) == [9, 18, 15, 3, 12, 0, 6, 10, 7, 4, 13, 16, 1, 19, 8, 5, 11, 14, 2, 17]
    assert order(0, 1) == order(1, 1)
    assert order(2, 0) == list(range(19, -1, -1))
    # NONE + non-KEY target keeps the limit at fetch time: first limit+1 keys, then sorted
    r = h.get(b"g", range_end=b"h", sort_order=0, sort_target=1, limit=5)
    assert [int(x.key[1:]) for x in r.kvs] == [0, 4, 1, 5, 2] and r.more and r.count == 20


def test_min_max_filters(h: Harness) -> None:
    h.put(b"f1")  # 2
    h.put(b"f2")  # 3
    h.put(b"f3")  # 4
    h.put(b"f1")  # 5  f1 create 2 mod 5
    h.put(b"f4")  # 6

    def f(**kw: object) -> tuple[list[bytes], int, bool]:
        r = h.get(b"f", range_end=b"g", **kw)
        return [x.key for x in r.kvs], r.count, r.more

    assert f(min_mod_revision=4) == ([b"f1", b"f3", b"f4"], 4, False)
    assert f(max_mod_revision=4) == ([b"f2", b"f3"], 4, False)
    assert f(min_create_revision=3) == ([b"f2", b"f3", b"f4"], 4, False)
    assert f(max_create_revision=3) == ([b"f1", b"f2"], 4, False)
    assert f(min_mod_revision=3, max_mod_revision=5) == ([b"f1", b"f2", b"f3"], 4, False)
    # count ignores filters and limit; more reflects filtered results
    assert f(min_mod_revision=3, limit=2) == ([b"f1", b"f2"], 4, True)
    assert f(min_mod_revision=5, limit=2) == ([b"f1", b"f4"], 4, False)
    assert f(max_create_revision=3, revision=3) == ([b"f1", b"f2"], 2, False)


# --- key encoding edge cases --------------------------------------------------------------
def test_binary_keys_and_prefix_collisions(h: Harness) -> None:
    ks = [b"\x00", b"\x00\x00", b"\x00\x01", b"\x00\xff", b"\x01", b"x\x00", b"x", b"x\x00\x00"]
    for k in ks:
        h.put(k, k)
    assert h.keys() == sorted(ks)
    h.put(b"end")
    for k in ks:
        assert [x.value for x in h.get(k).kvs] == [k]
        assert [x.value for x in h.get(k, revision=h.rev() - 1).kvs] == [k]
    assert [x.key for x in h.get(b"x", range_end=b"y", revision=h.rev() - 1).kvs] == [
        b"x",
        b"x\x00",
        b"x\x00\x00",
    ]


def test_key_too_long(h: Harness) -> None:
    with pytest.raises(EtcdError) as ei:
        h.put(b"k" * 600)
    assert ei.value == ErrRequestTooLarge
    h.put(b"k" * 490, b"ok")
    assert h.get(b"k" * 490).kvs[0].value == b"ok"
    assert h.get(b"k" * 600).count == 0
    assert h.keys(b"k" * 600, b"\x00") == []
    assert h.keys(b"k" * 490 + b"a" * 100, b"\x00") == []
    assert h.keys(b"k" * 480 + b"a" * 100, b"\x00") == [b"k" * 490]
    assert h.keys(b"k" * 480 + b"a" * 100, b"k" * 600) == [b"k" * 490]
    assert h.get(b"k" * 480 + b"a" * 100, range_end=b"\x00", revision=h.rev()).count == 1


# --- watch support, live iteration, persistence -----------------------------------------
def test_read_events_and_prev_kv(h: Harness) -> None:
    h.put(b"a", b"1")  # 2
    h.put(b"b", b"1")  # 3
    h.put(b"a", b"2")  # 4
    h.delete(b"a", b"c")  # 5: a, b
    groups = h.store.read_events(3, 5)
    assert [(rev, [(e.type, e.kv.key, e.kv.mod_revision) for e in evs]) for rev, evs in groups] == [
        (3, [(PUT, b"b", 3)]),
        (4, [(PUT, b"a", 4)]),
        (5, [(DELETE, b"a", 5), (DELETE, b"b", 5)]),
    ]
    assert groups[1][1][0].kv == kv(b"a", b"2", 2, 4, 2)
    assert h.store.read_events(6, 10) == [] and h.store.read_events(5, 4) == []
    assert [r for r, _ in h.store.read_events(0, 100)] == [2, 3, 4, 5]
    assert h.store.get_prev_kv(b"a", 4) == kv(b"a", b"1", 2, 2, 1)
    assert h.store.get_prev_kv(b"a", 5) == kv(b"a", b"2", 2, 4, 2)
    assert h.store.get_prev_kv(b"a", 2) is None
    assert h.store.get_prev_kv(b"a", 6) is None


def test_iter_live(h: Harness) -> None:
    h.put(b"b", b"1", lease=1)
    h.put(b"a", b"1")
    h.put(b"c", b"1")
    h.delete(b"c")
    assert [(x.key, x.lease) for x in h.store.iter_live()] == [(b"a", 0), (b"b", 1)]


def test_persistence_across_reopen(h: Harness) -> None:
    h.put(b"a", b"1")
    h.put(b"b", b"2", lease=1)
    h.delete(b"a")
    h.put(b"c", b"3")
    h.compact(3)
    before = (h.rev(), h.store.compact_revision(), h.store.hash_kv(0), h.keys())
    h.reopen()
    after = (h.rev(), h.store.compact_revision(), h.store.hash_kv(0), h.keys())
    assert before == after == (5, 3, after[2], [b"b", b"c"])
    assert h.put(b"d").header.revision == 6
    with pytest.raises(EtcdError) as ei:
        h.get(b"a", revision=2)
    assert ei.value == ErrCompacted


def test_aborted_write_leaves_nothing(h: Harness) -> None:
    h.put(b"a", b"1")
    with pytest.raises(RuntimeError):
        with h.backend.write() as t:
            w = h.store.write(t)
            w.put(pb.PutRequest(key=b"a", value=b"2"))
            w.end()
            raise RuntimeError("abort")
    assert h.rev() == 2 and h.get(b"a").kvs[0].value == b"1"
    assert h.store.read_events(3, 3) == []
