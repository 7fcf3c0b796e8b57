"""The watch hub: fans the events of each new revision out to watchers, on the event loop.

Model (etcd's `watchable_store.go`, reshaped for one asyncio loop):

* A `WatchStream` is one client stream (one gRPC `Watch` call). It owns its watchers (ids
  allocated per stream from 0) and one FIFO outbound queue of `Outbound` items. Control
  responses (created / canceled) go through the same queue as events, so "created before any
  event of that watch" and "canceled after its last event" hold by construction.
* A watcher is **synced** when every event up to `hub.current_revision` that it should see is
  already in its stream's queue; `notify()` then pushes new events straight to it. Single-key
  watchers are found through a dict, range watchers by scanning a (small) dict.
* A watcher is **unsynced** when it is behind: created with a start revision at or below the
  current revision, or moved out by `notify()` because its stream's queue was full (a slow
  consumer). A background task on the loop (`_sync_loop`) catches unsynced watchers up from
  `store.read_events` in batches of at most `sync_batch_revs` revisions, only while their
  stream has room, and moves each back to the synced set in the same loop step in which it
  reaches `current_revision`: no gap, no duplicate. `notify()` never blocks and never drops
  anything: it only appends to queues or flips a watcher to unsynced.
* If compaction overtakes an unsynced watcher (`next_rev < compact_revision`) it is canceled
  with `compact_revision` set.

`current_revision` is fed only by `notify()` (the member sets it from the store at start; the
constructor does the same), so the hub never reads past what it has been told: the store may
be ahead (committed, not yet notified), never behind.

Response revisions follow etcd: events pushed by `notify(rev)` carry `rev`; catch-up
responses, created/canceled responses and progress notifications carry the hub's current
revision when they were queued; a compaction cancel carries 0 (etcd leaves it unset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from conch.errors import WATCH_DUPLICATE_ID_REASON, ErrCompacted, EtcdError
from conch.proto.mvccpb import kv_pb2

log = logging.getLogger(__name__)

Event = kv_pb2.Event

# gRPC framing allowance etcd adds to --max-request-bytes for the fragment threshold
# (Cfg.MaxRequestBytesWithOverhead); verified against etcd 3.4: max 1024 → pieces < 525312.
GRPC_OVERHEAD_BYTES = 512 * 1024
DEFAULT_PROGRESS_NOTIFY_INTERVAL = 600.0  # etcd --watch-progress-notify-interval (10m)
DEFAULT_STREAM_BUFFER = 1024  # queued events (+1 per response) per stream before slow mode
DEFAULT_SYNC_BATCH_REVS = 1000  # etcd watchBatchMaxRevs
INVALID_WATCH_ID = -1  # clientv3.InvalidWatchID; also the "whole stream" progress id
AUTO_WATCH_ID = 0  # clientv3.AutoWatchID

FILTER_NOPUT = 0  # WatchCreateRequest.FilterType
FILTER_NODELETE = 1

EMPTY_RANGE_REASON = "mvcc: watcher range is empty"  # mvcc.ErrEmptyWatcherRange

_PUT = kv_pb2.Event.PUT
_DELETE = kv_pb2.Event.DELETE

_SYNCED = 0
_UNSYNCED = 1
_GONE = 2


class EventStore(Protocol):
    """What the hub needs from the MVCC store."""

    def read_events(self, start_rev: int, end_rev: int) -> Sequence[tuple[int, Sequence[Event]]]:
        """Events of revisions start_rev..end_rev inclusive, grouped by revision, ascending."""
        ...

    def current_revision(self) -> int: ...

    def compact_revision(self) -> int: ...

    def get_prev_kv(self, key: bytes, rev: int) -> kv_pb2.KeyValue | None:
        """The key as of revision `rev - 1` for an event at `rev` (None if absent or deleted
        then, or compacted away); used by the api layer for prev_kv."""
        ...


@dataclass(slots=True, eq=False)
class Outbound:
    """One response queued for a stream (the api layer turns it into a WatchResponse)."""

    watch_id: int
    revision: int  # header.revision
    events: Sequence[Event] = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    watcher: Watcher | None = field(default=None, repr=False)

    @property
    def is_progress(self) -> bool:
        return not (self.events or self.created or self.canceled)


class Watcher:
    """One watch on one stream. `next_rev` is the lowest revision it still has to see."""

    __slots__ = (
        "stream",
        "id",
        "key",
        "end",
        "next_rev",
        "no_put",
        "no_delete",
        "prev_kv",
        "fragment",
        "progress_notify",
        "progress_due",
        "state",
    )

    def __init__(
        self,
        stream: WatchStream,
        watch_id: int,
        key: bytes,
        end: bytes | None,
        *,
        no_put: bool,
        no_delete: bool,
        prev_kv: bool,
        fragment: bool,
        progress_notify: bool,
    ) -> None:
        self.stream = stream
        self.id = watch_id
        self.key = key
        # None: the single key `key`; b"": every key >= key; else the half-open [key, end).
        self.end = end
        self.next_rev = 0
        self.no_put = no_put
        self.no_delete = no_delete
        self.prev_kv = prev_kv
        self.fragment = fragment
        self.progress_notify = progress_notify
        self.progress_due = True  # etcd: sws.progress[id] = true at creation
        self.state = _SYNCED

    @property
    def synced(self) -> bool:
        return self.state == _SYNCED

    def matches(self, key: bytes) -> bool:
        if self.end is None:
            return key == self.key
        return key >= self.key and (not self.end or key < self.end)

    def accepts(self, ev: Event) -> bool:
        if ev.type == _PUT:
            return not self.no_put
        return not self.no_delete

    def filter(self, events: list[Event]) -> list[Event]:
        if not (self.no_put or self.no_delete):
            return events
        return [ev for ev in events if self.accepts(ev)]

    def __repr__(self) -> str:
        state = ("synced", "unsynced", "gone")[self.state]
        return (
            f"Watcher(id={self.id}, key={self.key!r}, end={self.end!r},"
            f" next={self.next_rev}, {state})"
        )


class WatchStream:
    """The hub side of one client stream: its watchers and its ordered outbound queue."""

    def __init__(self, hub: WatchHub) -> None:
        self._hub = hub
        self._watchers: dict[int, Watcher] = {}
        self._next_id = 0
        self._queue: deque[Outbound] = deque()
        self._pending = 0  # queued events + queued responses
        self._n_unsynced = 0
        self._progress_all_pending = False
        self._closed = False
        self._ready = asyncio.Event()
        self.limit = hub.stream_buffer
        self.low_water = max(hub.stream_buffer // 2, 1)

    # --- introspection ---------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Queued events plus queued responses (the slow-consumer measure)."""
        return self._pending

    @property
    def queued_responses(self) -> int:
        return len(self._queue)

    @property
    def unsynced_count(self) -> int:
        return self._n_unsynced

    @property
    def closed(self) -> bool:
        return self._closed

    def watch_ids(self) -> list[int]:
        return list(self._watchers)

    def watcher(self, watch_id: int) -> Watcher | None:
        return self._watchers.get(watch_id)

    # --- requests ----------------------------------------------------------------------------
    def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        start_revision: int = 0,
        *,
        watch_id: int = AUTO_WATCH_ID,
        filters: Iterable[int] = (),
        prev_kv: bool = False,
        fragment: bool = False,
        progress_notify: bool = False,
    ) -> int:
        """Create a watcher (etcd's recvLoop + watchStream.Watch). Queues the created response
        (or a created+canceled one with watch_id -1) and returns the id, or -1 if refused."""
        hub = self._hub
        cur = hub.current_revision
        if not key:
            key = b"\0"  # \x00 is the smallest key
        end: bytes | None
        if not range_end:
            end = None
        elif range_end == b"\0":
            end = b""  # all keys >= key
        else:
            end = range_end
        if start_revision < 0:
            self._refuse(cur, ErrCompacted.message)
            return INVALID_WATCH_ID
        if end and key >= end:
            self._refuse(cur, EMPTY_RANGE_REASON)
            return INVALID_WATCH_ID
        if self._closed:
            return INVALID_WATCH_ID
        if watch_id == AUTO_WATCH_ID:
            while self._next_id in self._watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self._watchers:
            self._refuse(cur, WATCH_DUPLICATE_ID_REASON)
            return INVALID_WATCH_ID
        fs = set(filters)
        w = Watcher(
            self,
            watch_id,
            key,
            end,
            no_put=FILTER_NOPUT in fs,
            no_delete=FILTER_NODELETE in fs,
            prev_kv=prev_kv,
            fragment=fragment,
            progress_notify=progress_notify,
        )
        self._watchers[watch_id] = w
        self._push(Outbound(watch_id, cur, created=True, watcher=w))
        if start_revision == 0 or start_revision > cur:
            # From now, or a future revision: synced, but never sees anything below its start
            # (etcd #20221).
            w.next_rev = max(start_revision, cur + 1)
            hub._add_synced(w)
        else:
            w.next_rev = start_revision
            w.state = _UNSYNCED
            hub._add_unsynced(w)
            hub._kick()
        return watch_id

    def cancel(self, watch_id: int) -> bool:
        """Cancel a watcher; queues `canceled=true`. An unknown id is ignored (etcd sends
        nothing back)."""
        w = self._watchers.pop(watch_id, None)
        if w is None:
            return False
        self._hub._remove(w)
        self._push(Outbound(watch_id, self._hub.current_revision, canceled=True, watcher=w))
        self._maybe_progress_all()
        return True

    def request_progress_all(self) -> None:
        """WatchProgressRequest: a watch_id -1 response at the current revision once every
        watcher of the stream is synced (sent at once if they already are; otherwise as soon
        as the last one catches up). Repeated requests while deferred are answered once."""
        if self._closed:
            return
        self._progress_all_pending = True
        self._maybe_progress_all()

    def progress_tick(self) -> None:
        """One tick of the progress_notify timer (etcd sendLoop's progressTicker)."""
        if self._closed:
            return
        cur = self._hub.current_revision
        for w in self._watchers.values():
            if not w.progress_notify:
                continue
            if w.progress_due and w.state == _SYNCED:
                self._push(Outbound(w.id, cur, watcher=w))
            w.progress_due = True

    # --- consuming ---------------------------------------------------------------------------
    def get_nowait(self) -> Outbound | None:
        if self._closed or not self._queue:
            return None
        item = self._queue.popleft()
        self._pending -= 1 + len(item.events)
        if self._n_unsynced and self._pending <= self.low_water:
            self._hub._kick()
        return item

    async def get(self) -> Outbound | None:
        """The next response, in order; None once the stream is closed."""
        while True:
            if self._closed:
                return None
            if self._queue:
                return self.get_nowait()
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Remove every watcher of this stream from the hub and drop what is queued."""
        if self._closed:
            return
        self._closed = True
        for w in self._watchers.values():
            self._hub._remove(w)
        self._watchers.clear()
        self._queue.clear()
        self._pending = 0
        self._hub._streams.discard(self)
        self._ready.set()

    # --- internals ---------------------------------------------------------------------------
    def _has_room(self) -> bool:
        return self._pending <= self.low_water

    def _full(self) -> bool:
        return self._pending >= self.limit

    def _push(self, item: Outbound) -> None:
        if self._closed:
            return
        self._queue.append(item)
        self._pending += 1 + len(item.events)
        if item.events and item.watcher is not None:
            item.watcher.progress_due = False  # elide the next progress notification
        self._ready.set()

    def _refuse(self, cur: int, reason: str) -> None:
        self._push(
            Outbound(INVALID_WATCH_ID, cur, created=True, canceled=True, cancel_reason=reason)
        )

    def _maybe_progress_all(self) -> None:
        if self._progress_all_pending and self._n_unsynced == 0 and not self._closed:
            self._progress_all_pending = False
            self._push(Outbound(INVALID_WATCH_ID, self._hub.current_revision))

    def _compacted(self, w: Watcher, compact_rev: int) -> None:
        self._watchers.pop(w.id, None)
        self._hub._remove(w)
        # etcd sends WatchResponse{WatchID, CompactRevision}: header.revision stays 0.
        self._push(Outbound(w.id, 0, canceled=True, compact_revision=compact_rev, watcher=w))
        self._maybe_progress_all()


class WatchHub:
    """All watchers of one member. Every method runs on the member's event loop."""

    def __init__(
        self,
        store: EventStore,
        *,
        max_request_bytes: int,
        progress_interval: float = DEFAULT_PROGRESS_NOTIFY_INTERVAL,
        stream_buffer: int = DEFAULT_STREAM_BUFFER,
        sync_batch_revs: int = DEFAULT_SYNC_BATCH_REVS,
    ) -> None:
        if stream_buffer < 1 or sync_batch_revs < 1:
            raise ValueError("stream_buffer and sync_batch_revs must be >= 1")
        self.store = store
        self.max_request_bytes = max_request_bytes
        self.fragment_threshold = max_request_bytes + GRPC_OVERHEAD_BYTES
        # --watch-progress-notify-interval in seconds (<= 0 disables progress_notify ticks).
        self.progress_notify_interval = progress_interval
        self.stream_buffer = stream_buffer
        self.sync_batch_revs = sync_batch_revs
        self.current_revision = store.current_revision()
        self._key_watchers: dict[bytes, dict[Watcher, None]] = {}
        # Range watchers grouped by their interval (key, end): one test per distinct range,
        # however many watchers share it (many clients watching one prefix is the usual case).
        self._ranges: dict[tuple[bytes, bytes], dict[Watcher, None]] = {}
        self._n_range = 0
        self._unsynced: dict[Watcher, None] = {}
        self._streams: set[WatchStream] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # --- public ----------------------------------------------------------------------------
    def new_stream(self) -> WatchStream:
        st = WatchStream(self)
        if self._closed:
            st.close()
        else:
            self._streams.add(st)
        return st

    @property
    def synced_count(self) -> int:
        return self._n_range + sum(len(s) for s in self._key_watchers.values())

    @property
    def unsynced_count(self) -> int:
        return len(self._unsynced)

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def notify(self, rev: int, events: Sequence[Event]) -> None:
        """Deliver the events of revision `rev` (called once per revision, in order, after the
        commit that made them). Never blocks: appends to queues or marks watchers unsynced."""
        if rev <= self.current_revision:
            log.warning(
                "watch: notify(%d) at or below current revision %d ignored",
                rev,
                self.current_revision,
            )
            return
        self.current_revision = rev
        if not events:
            return
        kw = self._key_watchers
        ranges = self._ranges
        if not kw and not ranges:
            return
        matched: dict[Watcher, list[Event]] = {}
        for ev in events:
            key = ev.kv.key
            ws = kw.get(key)
            if ws:
                for w in ws:
                    lst = matched.get(w)
                    if lst is None:
                        matched[w] = [ev]
                    else:
                        lst.append(ev)
            if ranges:
                for (lo, hi), group in ranges.items():
                    if key >= lo and (not hi or key < hi):
                        for w in group:
                            lst = matched.get(w)
                            if lst is None:
                                matched[w] = [ev]
                            else:
                                lst.append(ev)
        went_unsynced = False
        for w, evs in matched.items():
            if rev < w.next_rev:
                continue  # start revision in the future
            evs = w.filter(evs)
            if not evs:
                w.next_rev = rev + 1
                continue
            st = w.stream
            if st._full():
                # Slow consumer: stop pushing; catch up from history once the queue drains.
                w.next_rev = rev
                self._to_unsynced(w)
                went_unsynced = True
            else:
                w.next_rev = rev + 1
                st._push(Outbound(w.id, rev, evs, watcher=w))
        if went_unsynced:
            self._kick()

    def sync_once(self) -> bool:
        """One bounded catch-up step: read at most `sync_batch_revs` revisions starting at the
        lowest `next_rev` among unsynced watchers whose stream has room, and feed every such
        watcher that falls in that window. Returns whether anything changed."""
        if not self._unsynced:
            return False
        cur = self.current_revision
        ready = [w for w in self._unsynced if w.stream._has_room()]
        if not ready:
            return False
        low = min(w.next_rev for w in ready)
        batch: Sequence[tuple[int, Sequence[Event]]] | None = None
        end = cur
        if low <= cur:
            end = min(low + self.sync_batch_revs - 1, cur)
            try:
                batch = self.store.read_events(low, end)
            except EtcdError as e:
                if e != ErrCompacted:
                    raise
                batch = None
        # Read after the events: a compaction that committed before our read shows here.
        compact_rev = self.store.compact_revision()
        changed = False
        for w in ready:
            if w.state != _UNSYNCED or not w.stream._has_room():
                continue
            if w.next_rev < compact_rev:
                w.stream._compacted(w, compact_rev)
                changed = True
                continue
            if w.next_rev > end:
                if w.next_rev > cur:
                    self._to_synced(w)
                    changed = True
                continue
            if batch is None:
                continue
            nr = w.next_rev
            evs = [
                ev
                for rev, rev_events in batch
                if rev >= nr
                for ev in rev_events
                if w.matches(ev.kv.key) and w.accepts(ev)
            ]
            w.next_rev = end + 1
            changed = True
            if evs:
                w.stream._push(Outbound(w.id, cur, evs, watcher=w))
            if w.next_rev > cur:
                self._to_synced(w)
        return changed

    def watcher_count(self) -> int:
        return self.synced_count + self.unsynced_count

    def restored(self) -> None:
        """The store was replaced wholesale (a snapshot from the leader was installed): every
        watcher catches up from the new store's history, from where it was."""
        self.current_revision = self.store.current_revision()
        synced = [w for ws in self._key_watchers.values() for w in ws]
        synced += [w for ws in self._ranges.values() for w in ws]
        for w in synced:
            self._to_unsynced(w)
        if self._unsynced:
            self._kick()

    def start(self) -> None:
        """Called by the member on its loop once it runs (the catch-up task starts on demand)."""
        self._closed = False
        if self._unsynced:
            self._kick()

    def stop(self) -> None:
        """Close every stream (their handlers then end) and stop the catch-up task."""
        self._closed = True
        for st in list(self._streams):
            st.close()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()

    async def close(self) -> None:
        """`stop()` and wait for the catch-up task to finish."""
        task = self._task
        self.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- internals ---------------------------------------------------------------------------
    def _kick(self) -> None:
        if self._closed:
            return
        self._wakeup.set()
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (synchronous use): callers drive sync_once() themselves
            self._task = loop.create_task(self._sync_loop(), name="watch-hub-sync")

    async def _sync_loop(self) -> None:
        while not self._closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                while self.sync_once():
                    await asyncio.sleep(0)  # yield to the loop between bounded batches
            except Exception:
                log.exception("watch: catch-up failed; retrying")
                await asyncio.sleep(0.1)
                self._wakeup.set()

    def _add_synced(self, w: Watcher) -> None:
        w.state = _SYNCED
        if w.end is None:
            s = self._key_watchers.get(w.key)
            if s is None:
                self._key_watchers[w.key] = {w: None}
            else:
                s[w] = None
        else:
            iv = (w.key, w.end)
            g = self._ranges.get(iv)
            if g is None:
                self._ranges[iv] = {w: None}
            else:
                g[w] = None
            self._n_range += 1

    def _del_synced(self, w: Watcher) -> None:
        if w.end is None:
            s = self._key_watchers.get(w.key)
            if s is not None:
                s.pop(w, None)
                if not s:
                    del self._key_watchers[w.key]
        else:
            iv = (w.key, w.end)
            g = self._ranges.get(iv)
            if g is not None and w in g:
                del g[w]
                self._n_range -= 1
                if not g:
                    del self._ranges[iv]

    def _add_unsynced(self, w: Watcher) -> None:
        w.state = _UNSYNCED
        self._unsynced[w] = None
        w.stream._n_unsynced += 1

    def _to_unsynced(self, w: Watcher) -> None:
        self._del_synced(w)
        self._add_unsynced(w)

    def _to_synced(self, w: Watcher) -> None:
        del self._unsynced[w]
        w.stream._n_unsynced -= 1
        self._add_synced(w)
        w.stream._maybe_progress_all()

    def _remove(self, w: Watcher) -> None:
        if w.state == _SYNCED:
            self._del_synced(w)
        elif w.state == _UNSYNCED:
            del self._unsynced[w]
            w.stream._n_unsynced -= 1
        w.state = _GONE
