"""The Watch gRPC stream end to end: real KVStore + Backend, WatchHub, WatchService on a
grpc.aio server on 127.0.0.1 (ephemeral port), grpc.aio client stub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conch.errors import WATCH_DUPLICATE_ID_REASON, ErrCompacted
from conch.mvcc.watch import EMPTY_RANGE_REASON
from conch.proto.etcdserverpb import rpc_pb2
from tests.watch.watchutil import (
    CLUSTER_ID,
    DELETE,
    MEMBER_ID,
    PUT,
    RAFT_TERM,
    Client,
    Env,
    run,
    serve,
    wait_until,
)

NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
NODELETE = rpc_pb2.WatchCreateRequest.NODELETE


def revs(resps: list[rpc_pb2.WatchResponse]) -> list[int]:
    return [ev.kv.mod_revision for r in resps for ev in r.events]


def with_server(tmp_path: Path, body: Any, **hub_kw: Any) -> None:
    async def main() -> None:
        env = Env(tmp_path, **hub_kw)
        try:
            async with serve(env.hub) as stub:
                await body(env, stub)
        finally:
            env.close()

    run(main)


def test_created_first_then_replay_with_current_header_revision(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        for i in range(3):
            env.put(b"a", b"%d" % i)  # 2, 3, 4
        env.put(b"other")  # 5
        c = Client(stub)
        await c.create(b"a", start_revision=2)
        created = await c.next()
        assert created.created and not created.canceled and created.watch_id == 0
        h = created.header
        assert (h.cluster_id, h.member_id, h.raft_term, h.revision) == (
            CLUSTER_ID,
            MEMBER_ID,
            RAFT_TERM,
            5,
        )
        got = await c.events(3)
        assert revs(got) == [2, 3, 4]
        assert [ev.kv.value for r in got for ev in r.events] == [b"0", b"1", b"2"]
        assert all(r.header.revision == 5 for r in got)  # catch-up: store revision
        rev = env.put(b"a", b"live")
        live = await c.next()
        assert revs([live]) == [rev] and live.header.revision == rev
        await c.close()

    with_server(tmp_path, body)


def test_start_zero_is_from_now(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        env.put(b"a")
        c = Client(stub)
        wid = await c.watch(b"a")
        rev = env.put(b"a")
        r = await c.next()
        assert r.watch_id == wid and revs([r]) == [rev]
        await c.close()

    with_server(tmp_path, body)


def test_future_start_waits_and_never_sends_older_events(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        for _ in range(3):
            env.put(b"a")  # current 4
        c = Client(stub)
        await c.watch(b"a", start_revision=7)
        for _ in range(5):
            env.put(b"a")  # 5..9
        got = await c.events(3)
        assert revs(got) == [7, 8, 9]
        assert [r.header.revision for r in got] == [7, 8, 9]
        assert await c.barrier() == []
        await c.close()

    with_server(tmp_path, body)


def test_prefix_from_key_and_all_keys(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        c = Client(stub)
        prefix = await c.watch(b"foo", range_end=b"fop")
        from_key = await c.watch(b"foo1", range_end=b"\0")
        all_keys = await c.watch(b"", range_end=b"\0")
        for k in (b"fo", b"foo", b"foo1", b"fop"):
            env.put(k)
        got: dict[int, list[bytes]] = {}
        for r in await c.events(2 + 2 + 4):
            got.setdefault(r.watch_id, []).extend(ev.kv.key for ev in r.events)
        assert got == {
            prefix: [b"foo", b"foo1"],
            from_key: [b"foo1", b"fop"],
            all_keys: [b"fo", b"foo", b"foo1", b"fop"],
        }
        await c.close()

    with_server(tmp_path, body)


def test_prev_kv(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        c = Client(stub)
        await c.watch(b"a", prev_kv=True)
        plain = await c.watch(b"a")
        env.put(b"a", b"1")  # creation: no prev_kv
        env.put(b"a", b"2")
        env.delete(b"a")
        got = await c.events(6)
        mine = [ev for r in got if r.watch_id != plain for ev in r.events]
        assert [(e.type, e.kv.value, e.HasField("prev_kv")) for e in mine] == [
            (PUT, b"1", False),
            (PUT, b"2", True),
            (DELETE, b"", True),
        ]
        assert mine[1].prev_kv.value == b"1" and mine[2].prev_kv.value == b"2"
        assert mine[2].prev_kv.mod_revision == mine[1].kv.mod_revision
        # the other watcher on the same events is untouched (events are shared in the hub)
        assert not any(
            ev.HasField("prev_kv") for r in got if r.watch_id == plain for ev in r.events
        )
        await c.close()

    with_server(tmp_path, body)


def test_prev_kv_omitted_when_compacted(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        env.put(b"a", b"1")  # 2
        r3 = env.put(b"a", b"2")  # 3
        env.put(b"b")  # 4
        env.compact(r3)
        c = Client(stub)
        await c.watch(b"a", start_revision=r3, prev_kv=True)
        (r,) = await c.events(1)
        assert r.events[0].kv.value == b"2" and not r.events[0].HasField("prev_kv")
        await c.close()

    with_server(tmp_path, body)


def test_filters(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        c = Client(stub)
        no_put = await c.watch(b"a", filters=[NOPUT])
        no_del = await c.watch(b"a", filters=[NODELETE])
        both = await c.watch(b"a", filters=[NOPUT, NODELETE])
        env.put(b"a")
        env.delete(b"a")
        got = await c.barrier()
        assert [(r.watch_id, [e.type for e in r.events]) for r in got] == [
            (no_del, [PUT]),
            (no_put, [DELETE]),
        ]
        assert all(r.watch_id != both for r in got)  # all filtered out: nothing sent
        await c.close()

    with_server(tmp_path, body)


def test_txn_revision_is_one_response(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        c = Client(stub)
        await c.watch(b"k", range_end=b"l")
        rev = env.puts([(b"k1", b"a"), (b"x", b"b"), (b"k2", b"c")])
        r = await c.next()
        assert [e.kv.key for e in r.events] == [b"k1", b"k2"] and r.header.revision == rev
        await c.close()

    with_server(tmp_path, body)


def test_cancel_and_unknown_cancel(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        c = Client(stub)
        a = await c.watch(b"a")
        b = await c.watch(b"b")
        await c.cancel(a)
        r = await c.next()
        assert (r.watch_id, r.canceled, r.created) == (a, True, False)
        assert r.header.revision == env.hub.current_revision
        await c.cancel(99)  # etcd answers nothing
        env.put(b"a")
        rb = env.put(b"b")
        got = await c.barrier()
        assert [(x.watch_id, revs([x])) for x in got] == [(b, [rb])]
        await c.close()

    with_server(tmp_path, body)


def test_many_watches_distinct_ids_duplicate_and_refusals(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        c = Client(stub)
        ids = [await c.watch(b"k%d" % i) for i in range(5)]
        assert ids == [0, 1, 2, 3, 4]
        assert await c.watch(b"x", watch_id=10) == 10
        await c.create(b"y", watch_id=10)
        dup = await c.next()
        assert (dup.watch_id, dup.created, dup.canceled, dup.cancel_reason) == (
            -1,
            True,
            True,
            WATCH_DUPLICATE_ID_REASON,
        )
        await c.create(b"y", start_revision=-5)
        neg = await c.next()
        assert (neg.watch_id, neg.created, neg.canceled) == (-1, True, True)
        assert neg.cancel_reason == ErrCompacted.message
        await c.create(b"z", range_end=b"a")
        empty = await c.next()
        assert (empty.watch_id, empty.canceled, empty.cancel_reason) == (
            -1,
            True,
            EMPTY_RANGE_REASON,
        )
        assert await c.watch(b"x") == 5
        for i in reversed(range(5)):
            env.put(b"k%d" % i)
        got = await c.events(5)
        assert [(r.watch_id, r.events[0].kv.key) for r in got] == [
            (i, b"k%d" % i) for i in reversed(range(5))
        ]
        await c.close()

    with_server(tmp_path, body)


def test_progress_request_only_after_catch_up(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        for i in range(300):
            env.put(b"a", b"%d" % i + b"x" * 2048)  # 2..301, ~600 KB: more than grpc buffers
        c = Client(stub, read=False)  # not reading yet: the catch-up stalls on a full queue
        await c.create(b"b")
        await c.create(b"a", start_revision=2)
        await c.progress()
        await wait_until(lambda: env.hub.unsynced_count == 1 and env.hub.stream_count == 1)
        (stream,) = env.hub._streams
        await wait_until(lambda: stream.unsynced_count == 1 and stream.pending > 0)
        env.put(b"a", b"during")  # 302, while the catch-up is stalled
        c.start_reading()
        seen: list[rpc_pb2.WatchResponse] = []
        while True:
            r = await c.next()
            seen.append(r)
            if r.watch_id == -1:
                break
        assert [r.created for r in seen[:2]] == [True, True]
        assert revs(seen) == list(range(2, 303))
        assert seen[-1].header.revision == 302 and not seen[-1].events
        await c.close()

    with_server(tmp_path, body, stream_buffer=16, sync_batch_revs=25)


def test_progress_request_immediate_when_synced(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        c = Client(stub)
        await c.progress()  # no watchers: answered (as etcd 3.4 does)
        r = await c.next()
        assert (r.watch_id, r.header.revision) == (-1, 1)
        await c.watch(b"a")
        rev = env.put(b"a")
        assert revs(await c.barrier()) == [rev]
        await c.close()

    with_server(tmp_path, body)


def test_progress_notify_interval(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        rev = env.put(b"x")
        c = Client(stub)
        wid = await c.watch(b"a", progress_notify=True)
        await c.watch(b"b")  # no progress_notify
        r = await c.next(timeout=10)
        assert (r.watch_id, len(r.events), r.created, r.header.revision) == (wid, 0, False, rev)
        r2 = await c.next(timeout=10)
        assert r2.watch_id == wid and not r2.events
        await c.close()

    with_server(tmp_path, body, progress_interval=0.05)


def test_fragment_matches_etcd_split(tmp_path: Path) -> None:
    """etcd 3.4.23, --max-request-bytes 1024, 800 puts of 900-byte values to f0000..f0799,
    watch [f, g) from revision 1 with fragment=true: pieces of 568 and 232 events, the first
    524611 bytes and fragment=true."""

    async def body(env: Env, stub: Any) -> None:
        for i in range(800):
            env.put(b"f%04d" % i, b"y" * 900)
        c = Client(stub)
        await c.watch(b"f", range_end=b"g", start_revision=1, fragment=True)
        got = await c.events(800)
        assert [(len(r.events), r.fragment) for r in got] == [(568, True), (232, False)]
        # etcd's first piece was 524611 bytes with a 10-byte cluster_id varint; ours is 9.
        assert got[0].ByteSize() == 524611 - 1
        limit = env.hub.fragment_threshold
        assert limit == 1024 + 512 * 1024
        assert got[0].ByteSize() < limit
        bigger = rpc_pb2.WatchResponse()
        bigger.CopyFrom(got[0])
        bigger.events.append(got[1].events[0])
        assert bigger.ByteSize() >= limit  # the piece is as full as etcd's rule allows
        assert all(r.header.revision == 801 and r.watch_id == 0 for r in got)
        assert revs(got) == list(range(2, 802))
        # without fragment=true the same history comes as one response
        await c.watch(b"f", range_end=b"g", start_revision=1)
        (whole,) = await c.events(800)
        assert not whole.fragment
        await c.close()

    with_server(tmp_path, body, max_request_bytes=1024)


def test_compaction_cancels_watcher_behind_it(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        for _ in range(10):
            env.put(b"a")  # 2..11
        env.compact(6)
        c = Client(stub)
        await c.create(b"a", start_revision=3)
        created = await c.next()
        assert created.created and not created.canceled
        r = await c.next()
        assert (r.watch_id, r.canceled, r.compact_revision) == (created.watch_id, True, 6)
        assert r.header.revision == 0  # etcd leaves it unset
        assert not r.events
        assert env.hub.watcher_count() == 0
        await c.close()

    with_server(tmp_path, body)


def test_compaction_overtakes_slow_consumer(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        c = Client(stub, read=False)
        await c.create(b"a")
        await wait_until(lambda: env.hub.watcher_count() == 1)
        (stream,) = env.hub._streams
        n = 0
        while env.hub.unsynced_count == 0:  # write until the stream falls behind
            env.put(b"a", b"x" * 1024)
            n += 1
            if n % 50 == 0:
                await wait_until(lambda: True)  # let the server send what it can
        w = stream.watcher(0)
        assert w is not None and not w.synced
        behind = w.next_rev
        for _ in range(5):
            env.put(b"a")
        env.compact(behind + 3)
        c.start_reading()
        got = []
        while True:
            r = await c.next()
            got.append(r)
            if r.canceled:
                break
        assert got[0].created
        assert revs(got) == list(range(2, behind))  # everything before the cut, in order
        assert (got[-1].compact_revision, got[-1].watch_id) == (behind + 3, 0)
        assert env.hub.watcher_count() == 0
        await c.close()

    with_server(tmp_path, body, stream_buffer=32)


def test_slow_consumer_gets_every_event_and_never_blocks_writers(tmp_path: Path) -> None:
    n_revs = 5000

    async def body(env: Env, stub: Any) -> None:
        hub = env.hub
        slow = Client(stub, read=False)
        await slow.create(b"k", range_end=b"l")
        await wait_until(lambda: hub.watcher_count() == 1)
        (slow_stream,) = hub._streams
        fast = Client(stub)
        await fast.watch(b"k", range_end=b"l")
        max_pending = 0
        went_unsynced = False
        first = env.store.current_revision() + 1
        for i in range(n_revs):
            env.put(b"k%05d" % i, b"v" * 512)
            max_pending = max(max_pending, slow_stream.pending)
            went_unsynced = went_unsynced or slow_stream.unsynced_count > 0
            if i % 100 == 99:
                await wait_until(lambda: True)  # one loop turn: servers/clients progress
        last = env.store.current_revision()
        assert last - first + 1 == n_revs
        # notify() never queued past the stream's limit; the slow watcher left the synced
        # set instead (structure, not timing, shows the writer was never held up).
        assert went_unsynced
        assert slow_stream.unsynced_count == 1  # still behind: the client really is not reading
        assert max_pending <= slow_stream.limit + hub.sync_batch_revs
        # the fast stream, on the same hub, got everything meanwhile
        fast_revs = revs(await fast.events(n_revs))
        assert fast_revs == list(range(first, last + 1))
        slow.start_reading()
        got = await slow.events(n_revs, timeout=60)
        assert got[0].created
        slow_revs = revs(got)
        assert slow_revs == list(range(first, last + 1))  # ordered, unique, no gaps
        assert all(len({e.kv.mod_revision for e in r.events}) >= 1 for r in got if r.events)
        await wait_until(lambda: hub.unsynced_count == 0)
        rev = env.put(b"k-after")
        assert revs([await slow.next()]) == [rev]
        await slow.close()
        await fast.close()

    with_server(tmp_path, body, stream_buffer=64)


def test_stream_end_removes_watchers(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        env.put(b"a")
        c = Client(stub)
        await c.watch(b"a")
        await c.watch(b"b", range_end=b"c")
        await c.create(b"a", start_revision=1)
        await c.next()
        await wait_until(lambda: env.hub.watcher_count() == 3)
        # half-close: etcd keeps the stream (and its watchers) until the client cancels
        await c.call.done_writing()
        rev = env.put(b"a")
        got = await c.events(3)
        assert sorted(revs(got)) == [2, rev, rev]
        await c.close()
        await wait_until(lambda: env.hub.watcher_count() == 0 and env.hub.stream_count == 0)

    with_server(tmp_path, body)


def test_resume_after_reconnect(tmp_path: Path) -> None:
    async def body(env: Env, stub: Any) -> None:
        c = Client(stub)
        await c.watch(b"r", range_end=b"s")
        for i in range(10):
            env.put(b"r%d" % i)
        got = await c.events(10)
        last = revs(got)[4]  # the client saw up to here, then dropped
        await c.close()
        for i in range(10, 15):
            env.put(b"r%d" % i)
        c2 = Client(stub)
        await c2.watch(b"r", range_end=b"s", start_revision=last + 1)
        resumed = revs(await c2.events(10))
        assert resumed == list(range(last + 1, env.hub.current_revision + 1))
        await c2.close()

    with_server(tmp_path, body)
