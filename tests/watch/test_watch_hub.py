"""WatchHub against the real KVStore/Backend, driven step by step.

The catch-up task only runs when the test awaits; most tests never await, so the order of
notify() / sync_once() / draining is fully under the test's control."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from conch.errors import WATCH_DUPLICATE_ID_REASON, ErrCompacted
from conch.mvcc.watch import EMPTY_RANGE_REASON, FILTER_NODELETE, FILTER_NOPUT, WatchStream
from tests.watch.watchutil import DELETE, PUT, Env, drain, event_revs, run


def small(stream: WatchStream, limit: int = 16) -> WatchStream:
    """A stream whose queue counts as full at `limit` (queued events + responses)."""
    stream.limit = limit
    stream.low_water = limit // 2
    return stream


@pytest.fixture
def env(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = Env(tmp_path, stream_buffer=256, sync_batch_revs=10)
    yield e
    e.close()


def test_created_before_events_and_per_stream_ids(env: Env) -> None:
    s = env.hub.new_stream()
    assert s.watch(b"a") == 0
    assert s.watch(b"a") == 1
    other = env.hub.new_stream()
    assert other.watch(b"a") == 0  # ids are per stream
    rev = env.put(b"a")
    items = drain(s)
    assert [(i.watch_id, i.created, len(i.events)) for i in items] == [
        (0, True, 0),
        (1, True, 0),
        (0, False, 1),
        (1, False, 1),
    ]
    assert items[0].revision == rev - 1  # created carries the revision at creation
    assert items[2].revision == rev  # a synced event response carries its revision


def test_auto_ids_skip_client_chosen_ids_and_duplicates_refused(env: Env) -> None:
    s = env.hub.new_stream()
    assert s.watch(b"a", watch_id=1) == 1
    assert s.watch(b"a") == 0
    assert s.watch(b"a") == 2  # 1 is taken
    assert s.watch(b"b", watch_id=2) == -1
    items = drain(s)
    dup = items[-1]
    assert (dup.watch_id, dup.created, dup.canceled) == (-1, True, True)
    assert dup.cancel_reason == WATCH_DUPLICATE_ID_REASON
    assert sorted(s.watch_ids()) == [0, 1, 2]


def test_refusals_negative_start_and_empty_range(env: Env) -> None:
    s = env.hub.new_stream()
    assert s.watch(b"a", start_revision=-1) == -1
    assert s.watch(b"b", range_end=b"a") == -1
    assert s.watch(b"b", range_end=b"b") == -1
    items = drain(s)
    assert [(i.watch_id, i.created, i.canceled) for i in items] == [(-1, True, True)] * 3
    assert items[0].cancel_reason == ErrCompacted.message
    assert items[1].cancel_reason == items[2].cancel_reason == EMPTY_RANGE_REASON
    assert env.hub.watcher_count() == 0


def test_start_revision_replay_then_live_without_gap(env: Env) -> None:
    for i in range(25):
        env.put(b"k", b"%d" % i)  # revs 2..26
    s = small(env.hub.new_stream())
    wid = s.watch(b"k", start_revision=5)
    assert env.hub.unsynced_count == 1
    assert [i.created for i in drain(s)] == [True]
    env.hub.sync_once()  # 5..14
    items = drain(s)
    env.put(b"k", b"live1")  # 27 arrives while unsynced: must come from history
    env.hub.sync_once()  # 15..24
    items += drain(s)
    env.hub.sync_once()  # 25..27 -> synced
    assert env.hub.unsynced_count == 0
    env.put(b"k", b"live2")  # 28, pushed directly
    items += drain(s)
    assert all(i.watch_id == wid for i in items)
    assert event_revs(items) == list(range(5, 29))
    # catch-up responses carry the current revision at the time they were made
    assert [i.revision for i in items] == [26, 27, 27, 28]


def test_start_zero_is_now_and_future_start_waits(env: Env) -> None:
    for _ in range(3):
        env.put(b"a")  # revs 2..4
    s = env.hub.new_stream()
    now_id = s.watch(b"a")
    fut_id = s.watch(b"a", start_revision=7)
    assert env.hub.unsynced_count == 0
    for _ in range(5):
        env.put(b"a")  # revs 5..9
    items = [i for i in drain(s) if i.events]
    assert event_revs(i for i in items if i.watch_id == now_id) == [5, 6, 7, 8, 9]
    assert event_revs(i for i in items if i.watch_id == fut_id) == [7, 8, 9]  # etcd #20221


def test_ranges_prefix_from_key_and_all_keys(env: Env) -> None:
    s = env.hub.new_stream()
    single = s.watch(b"foo")
    prefix = s.watch(b"foo", range_end=b"fop")
    from_key = s.watch(b"foo1", range_end=b"\0")
    all_keys = s.watch(b"", range_end=b"\0")
    empty_key = s.watch(b"")  # rewritten to "\0": the single key "\0"
    keys = [b"fo", b"foo", b"foo1", b"fop", b"zzz", b"\0"]
    for k in keys:
        env.put(k)
    got: dict[int, list[bytes]] = {}
    for i in drain(s):
        for ev in i.events:
            got.setdefault(i.watch_id, []).append(ev.kv.key)
    assert got[single] == [b"foo"]
    assert got[prefix] == [b"foo", b"foo1"]
    assert got[from_key] == [b"foo1", b"fop", b"zzz"]
    assert got[all_keys] == keys
    assert got[empty_key] == [b"\0"]


def test_matching_agrees_with_brute_force(env: Env) -> None:
    rnd = random.Random(7)
    alphabet = [b"a", b"b", b"c", b"\xff"]

    def rkey() -> bytes:
        return b"".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 3)))

    s = env.hub.new_stream()
    specs: dict[int, tuple[bytes, bytes]] = {}
    for _ in range(60):
        k, e = rkey(), rnd.choice([b"", b"\0", rkey()])
        wid = s.watch(k, range_end=e)
        if wid >= 0:
            specs[wid] = (k, e)
    drain(s)
    written = []
    got: dict[int, list[bytes]] = {w: [] for w in specs}
    for _ in range(40):
        k = rkey()
        env.put(k)
        written.append(k)
        for i in drain(s):
            got[i.watch_id].extend(ev.kv.key for ev in i.events)
    assert env.hub.unsynced_count == 0
    for wid, (k, e) in specs.items():
        if e == b"":
            want = [x for x in written if x == k]
        elif e == b"\0":
            want = [x for x in written if x >= k]
        else:
            want = [x for x in written if k <= x < e]
        assert got[wid] == want, (k, e)


def test_filters(env: Env) -> None:
    s = env.hub.new_stream()
    no_put = s.watch(b"a", filters=[FILTER_NOPUT])
    no_del = s.watch(b"a", filters=[FILTER_NODELETE])
    env.put(b"a")
    env.delete(b"a")
    env.put(b"a")
    items = [i for i in drain(s) if i.events]
    assert [(i.watch_id, [e.type for e in i.events]) for i in items] == [
        (no_del, [PUT]),
        (no_put, [DELETE]),
        (no_del, [PUT]),
    ]


def test_one_revision_is_one_response(env: Env) -> None:
    s = env.hub.new_stream()
    s.watch(b"k", range_end=b"l")
    rev = env.puts([(b"k1", b"x"), (b"k2", b"y"), (b"zz", b"q"), (b"k3", b"z")])
    items = [i for i in drain(s) if i.events]
    assert len(items) == 1
    assert [e.kv.key for e in items[0].events] == [b"k1", b"k2", b"k3"]
    assert {e.kv.mod_revision for e in items[0].events} == {rev}


def test_cancel_and_close_remove_watchers(env: Env) -> None:
    s = env.hub.new_stream()
    a = s.watch(b"a")
    s.watch(b"b", range_end=b"c")
    s.watch(b"a", start_revision=1)  # unsynced
    assert env.hub.watcher_count() == 3
    assert s.cancel(a) is True
    assert s.cancel(a) is False  # unknown id: nothing queued
    items = drain(s)
    assert (items[-1].watch_id, items[-1].canceled) == (a, True)
    env.put(b"a")
    assert all(i.watch_id != a for i in drain(s))
    s.close()
    assert env.hub.watcher_count() == 0 and env.hub.stream_count == 0
    env.put(b"b")
    assert s.get_nowait() is None


def test_progress_all_deferred_until_every_watcher_synced(env: Env) -> None:
    for _ in range(30):
        env.put(b"a")  # revs 2..31
    s = env.hub.new_stream()
    s.watch(b"b")  # synced
    s.request_progress_all()
    first = drain(s)
    assert [(i.watch_id, i.is_progress, i.revision) for i in first[1:]] == [(-1, True, 31)]
    s.watch(b"a", start_revision=2)  # unsynced
    s.request_progress_all()
    s.request_progress_all()  # answered once
    assert [i.is_progress for i in drain(s)] == [False]  # only the created response
    seen = []
    while env.hub.unsynced_count:
        env.hub.sync_once()
        env.put(b"a")  # writes keep coming during the catch-up
        seen.extend(drain(s))
    seen.extend(drain(s))
    progress = [n for n, i in enumerate(seen) if i.is_progress]
    assert len(progress) == 1
    p = seen[progress[0]]
    assert p.watch_id == -1
    before = event_revs(seen[: progress[0]])
    assert before == list(range(2, p.revision + 1))  # everything up to it, in order
    env.put(b"a")
    after = event_revs(seen[progress[0] + 1 :]) + event_revs(drain(s))
    assert after == list(range(p.revision + 1, env.hub.current_revision + 1))


def test_progress_notify_tick_elided_after_events_and_needs_synced(env: Env) -> None:
    env.put(b"a")
    s = env.hub.new_stream()
    pn = s.watch(b"a", progress_notify=True)
    s.watch(b"b")  # no progress_notify: never ticks
    lagging = s.watch(b"a", start_revision=1, progress_notify=True)  # unsynced
    drain(s)
    s.progress_tick()
    ticks = drain(s)
    assert [(i.watch_id, i.is_progress, i.revision) for i in ticks] == [(pn, True, 2)]
    env.put(b"a")
    drain(s)
    s.progress_tick()  # events were just sent: elided
    assert drain(s) == []
    s.progress_tick()
    assert [i.watch_id for i in drain(s)] == [pn]
    while env.hub.unsynced_count:
        env.hub.sync_once()
    drain(s)
    s.progress_tick()  # lagging just got its catch-up events: elided
    s.progress_tick()
    assert sorted(i.watch_id for i in drain(s)) == [pn, pn, lagging]


def test_slow_consumer_goes_unsynced_and_loses_nothing(env: Env) -> None:
    hub = env.hub
    slow = small(hub.new_stream())
    fast = hub.new_stream()
    sw = slow.watch(b"k", range_end=b"l")
    fw = fast.watch(b"k", range_end=b"l")
    drain(slow)
    drain(fast)
    fast_got: list[int] = []
    for i in range(200):
        env.put(b"k%03d" % i)
        fast_got.extend(event_revs(drain(fast)))  # the fast one keeps up
        assert slow.pending <= slow.limit  # notify never queues past the limit
    assert fast_got == list(range(2, 202))
    slow_w, fast_w = slow.watcher(sw), fast.watcher(fw)
    assert slow_w is not None and not slow_w.synced
    assert fast_w is not None and fast_w.synced
    assert not hub.sync_once()  # no room: catch-up waits for the consumer
    got: list[int] = []
    while True:
        item = slow.get_nowait()
        if item is None:
            if not hub.sync_once():
                break
            continue
        got.extend(event_revs([item]))
        assert slow.pending <= slow.limit + hub.sync_batch_revs
    assert got == list(range(2, 202))
    assert hub.unsynced_count == 0
    env.put(b"k999")
    assert event_revs(drain(slow)) == [202]


def test_compaction_overtakes_unsynced_watcher(env: Env) -> None:
    s = small(env.hub.new_stream())
    wid = s.watch(b"a")
    for _ in range(40):
        env.put(b"a")  # the consumer never reads: goes unsynced
    w = s.watcher(wid)
    assert w is not None and not w.synced
    behind = w.next_rev
    env.compact(behind + 5)
    drain(s)
    env.hub.sync_once()
    items = drain(s)
    assert len(items) == 1
    c = items[0]
    assert (c.watch_id, c.canceled, c.compact_revision, c.revision) == (wid, True, behind + 5, 0)
    assert env.hub.watcher_count() == 0 and s.watch_ids() == []


def test_start_revision_below_compaction_is_canceled_after_created(env: Env) -> None:
    for _ in range(10):
        env.put(b"a")  # 2..11
    env.compact(6)
    s = env.hub.new_stream()
    old = s.watch(b"a", start_revision=5)
    at = s.watch(b"a", start_revision=6)  # == compact revision: still allowed
    env.hub.sync_once()
    items = drain(s)
    assert [(i.watch_id, i.created, i.canceled) for i in items[:2]] == [
        (old, True, False),
        (at, True, False),
    ]
    cancel = [i for i in items if i.canceled]
    assert [(i.watch_id, i.compact_revision) for i in cancel] == [(old, 6)]
    assert event_revs(i for i in items if i.watch_id == at) == list(range(6, 12))


def test_store_ahead_of_hub_is_not_read(env: Env) -> None:
    """The member commits before it notifies: catch-up must stop at the hub's revision."""
    env.put(b"a")  # 2
    s = env.hub.new_stream()
    s.watch(b"a", start_revision=1)
    env.notify = False
    env.put(b"a")  # 3: committed, not yet notified
    env.notify = True
    env.hub.sync_once()
    assert event_revs(drain(s)) == [2]
    assert env.hub.unsynced_count == 0
    with env.backend.read() as txn:  # now notify 3 as the member would
        events = env.store.read_events(3, 3, txn)[0][1]
    env.hub.notify(3, events)
    assert event_revs(drain(s)) == [3]


def test_catch_up_task_runs_on_the_loop(tmp_path: Path) -> None:
    async def body() -> None:
        e = Env(tmp_path, sync_batch_revs=7)
        try:
            for _ in range(50):
                e.put(b"a")
            s = e.hub.new_stream()
            s.watch(b"a", start_revision=2)
            revs: list[int] = []
            while len(revs) < 50:
                item = await s.get()
                assert item is not None
                revs.extend(event_revs([item]))
            assert revs == list(range(2, 52))
        finally:
            await e.hub.close()
            e.backend.close()

    run(body)


def test_watchers_sharing_a_range(env: Env) -> None:
    s1 = env.hub.new_stream()
    s2 = env.hub.new_stream()
    a = s1.watch(b"p/", range_end=b"p0")
    b = s1.watch(b"p/", range_end=b"p0")
    c = s2.watch(b"p/", range_end=b"p0")
    assert env.hub.synced_count == 3
    s1.cancel(a)
    assert env.hub.synced_count == 2
    drain(s1)
    drain(s2)
    rev = env.put(b"p/x")
    assert [(i.watch_id, event_revs([i])) for i in drain(s1)] == [(b, [rev])]
    assert [(i.watch_id, event_revs([i])) for i in drain(s2)] == [(c, [rev])]
    s1.close()
    s2.close()
    assert env.hub.watcher_count() == 0
    env.put(b"p/y")
