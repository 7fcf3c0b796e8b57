"""etcdserverpb.Watch: the bidirectional Watch stream over the WatchHub.

One gRPC call = one `WatchStream` of the hub. A reader task turns WatchRequests into hub
calls (create / cancel / progress); the handler itself drains the stream's ordered outbound
queue and yields WatchResponses, adding prev_kv (looked up at send time, like etcd's sendLoop)
and splitting fragment-enabled responses. A ticker task drives progress_notify.

etcd behaviours matched (server/etcdserver/api/v3rpc/watch.go; checked against etcd 3.4.23
where the version agrees):
- the stream stays open after the client half-closes; it ends when the client cancels it;
- an unknown watch id in a cancel request gets no response;
- duplicate id, empty range (key >= range_end) and negative start_revision give a
  created+canceled response with watch_id -1 and the reason text;
- fragment pieces are cut at `max_request_bytes + 512 KiB` exactly as `sendFragments` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable

import grpc

from conch.errors import EtcdError
from conch.mvcc.watch import Outbound, WatchHub, WatchStream
from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from conch.proto.mvccpb import kv_pb2

log = logging.getLogger(__name__)

_PUT = kv_pb2.Event.PUT


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def split_fragments(resp: rpc_pb2.WatchResponse, limit: int) -> list[rpc_pb2.WatchResponse]:
    """etcd's sendFragments: a response of `limit` bytes or more with >= 2 events becomes
    pieces each holding events while it stays under `limit` (at least one event per piece);
    every piece but the last has fragment=true."""
    n = len(resp.events)
    if n < 2 or resp.ByteSize() < limit:
        return [resp]
    base = rpc_pb2.WatchResponse()
    base.CopyFrom(resp)
    del base.events[:]
    base.fragment = True
    base_size = base.ByteSize()
    # Size of a repeated message field entry: tag (1 byte for field 11) + length + payload.
    entry = []
    for ev in resp.events:
        sz = ev.ByteSize()
        entry.append(1 + _varint_len(sz) + sz)
    pieces: list[rpc_pb2.WatchResponse] = []
    idx = 0
    while True:
        start = idx
        size = base_size
        while idx < n:
            if idx > start and size + entry[idx] >= limit:
                break
            size += entry[idx]
            idx += 1
        piece = rpc_pb2.WatchResponse()
        piece.CopyFrom(base)
        piece.events.extend(resp.events[start:idx])
        piece.fragment = idx < n
        pieces.append(piece)
        if idx >= n:
            return pieces


def is_create_event(ev: kv_pb2.Event) -> bool:
    return ev.type == _PUT and ev.kv.create_revision == ev.kv.mod_revision


class WatchService(rpc_pb2_grpc.WatchServicer):
    """The Watch service. `header()` returns a fresh ResponseHeader with cluster_id,
    member_id and raft_term filled; this class sets its `revision`."""

    def __init__(self, hub: WatchHub, header: Callable[[], rpc_pb2.ResponseHeader]) -> None:
        self._hub = hub
        self._header = header

    async def Watch(
        self,
        request_iterator: AsyncIterator[rpc_pb2.WatchRequest],
        context: grpc.aio.ServicerContext[rpc_pb2.WatchRequest, rpc_pb2.WatchResponse],
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        stream = self._hub.new_stream()
        reader = asyncio.create_task(self._recv(request_iterator, stream))
        ticker: asyncio.Task[None] | None = None
        interval = self._hub.progress_notify_interval
        if interval > 0:
            ticker = asyncio.create_task(self._tick(stream, interval))
        try:
            while True:
                item = await stream.get()
                if item is None:
                    break
                for resp in self._responses(item):
                    yield resp
        finally:
            stream.close()
            for t in (reader, ticker):
                if t is not None:
                    t.cancel()
            for t in (reader, ticker):
                if t is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t

    # --- receiving ---------------------------------------------------------------------------
    async def _recv(
        self, request_iterator: AsyncIterator[rpc_pb2.WatchRequest], stream: WatchStream
    ) -> None:
        try:
            async for req in request_iterator:
                self.handle_request(stream, req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken receive side ends the stream (etcd: errc)
            log.debug("watch stream receive ended: %r", exc)
            stream.close()
        # Plain EOF (client half-close): etcd keeps sending until the client cancels.

    @staticmethod
    def handle_request(stream: WatchStream, req: rpc_pb2.WatchRequest) -> None:
        kind = req.WhichOneof("request_union")
        if kind == "create_request":
            c = req.create_request
            stream.watch(
                c.key,
                c.range_end,
                c.start_revision,
                watch_id=c.watch_id,
                filters=list(c.filters),
                prev_kv=c.prev_kv,
                fragment=c.fragment,
                progress_notify=c.progress_notify,
            )
        elif kind == "cancel_request":
            stream.cancel(req.cancel_request.watch_id)
        elif kind == "progress_request":
            stream.request_progress_all()
        # anything else: ignored, like etcd

    async def _tick(self, stream: WatchStream, interval: float) -> None:
        # etcd: interval + up to 10% jitter, fixed per stream.
        period = interval + random.uniform(0, interval / 10)
        while not stream.closed:
            await asyncio.sleep(period)
            stream.progress_tick()

    # --- sending -----------------------------------------------------------------------------
    def _responses(self, item: Outbound) -> list[rpc_pb2.WatchResponse]:
        header = self._header()
        header.revision = item.revision
        resp = rpc_pb2.WatchResponse(
            header=header,
            watch_id=item.watch_id,
            created=item.created,
            canceled=item.canceled,
            compact_revision=item.compact_revision,
            cancel_reason=item.cancel_reason,
        )
        if not item.events:
            return [resp]
        resp.events.extend(item.events)  # copies: the hub's events are shared
        w = item.watcher
        if w is not None and w.prev_kv:
            self._fill_prev_kv(resp)
        if w is not None and w.fragment:
            return split_fragments(resp, self._hub.fragment_threshold)
        return [resp]

    def _fill_prev_kv(self, resp: rpc_pb2.WatchResponse) -> None:
        store = self._hub.store
        for ev in resp.events:
            if is_create_event(ev):
                continue
            try:
                prev = store.get_prev_kv(ev.kv.key, ev.kv.mod_revision)  # value at rev-1
            except EtcdError:
                prev = None  # compacted: omitted, like etcd
            if prev is not None:
                ev.prev_kv.CopyFrom(prev)
