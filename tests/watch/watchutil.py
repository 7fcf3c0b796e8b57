"""Helpers for the watch tests: a real KVStore on a real LMDB Backend driving a WatchHub the
way the member does (write txn, commit, then notify), a real grpc.aio server on loopback and
a client stream wrapper. Waiting is always "await something with a deadline", never a sleep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import lmdb

from conch.api.watch import WatchService
from conch.backend import Backend
from conch.mvcc.kvstore import KVStore
from conch.mvcc.watch import Outbound, WatchHub, WatchStream
from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from conch.proto.mvccpb import kv_pb2

T = TypeVar("T")

# The ids etcd 3.4.23 reported in the probe runs, so encoded sizes match byte for byte.
CLUSTER_ID = 3256913188705623977
MEMBER_ID = 10155706036252330830
RAFT_TERM = 2

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE


def run(fn: Callable[[], Awaitable[T]], timeout: float = 120.0) -> T:
    """Run an async test body on a fresh loop with an overall deadline."""

    async def main() -> T:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(main())


def header() -> rpc_pb2.ResponseHeader:
    return rpc_pb2.ResponseHeader(cluster_id=CLUSTER_ID, member_id=MEMBER_ID, raft_term=RAFT_TERM)


class Env:
    """Store + hub. Every write is one LMDB write txn; notify() runs after the commit."""

    def __init__(self, path: Path, **hub_kw: Any) -> None:
        self.backend = Backend(str(path / "member" / "snap" / "db"))
        self.store = KVStore(self.backend)
        hub_kw.setdefault("max_request_bytes", 1536 * 1024)
        self.hub = WatchHub(self.store, **hub_kw)
        self.notify = True  # tests may withhold notifications (store ahead of the hub)

    def _commit(self, fn: Callable[[lmdb.Transaction], list[kv_pb2.Event]]) -> int:
        with self.backend.write() as txn:
            events = fn(txn)
            rev = self.store.current_revision(txn)
        if events and self.notify:
            self.hub.notify(rev, events)
        return rev

    def put(self, key: bytes, value: bytes = b"v") -> int:
        return self._commit(
            lambda txn: self.store.put(txn, rpc_pb2.PutRequest(key=key, value=value))[1]
        )

    def puts(self, kvs: Iterable[tuple[bytes, bytes]]) -> int:
        """Several puts in one request: one revision."""

        def fn(txn: lmdb.Transaction) -> list[kv_pb2.Event]:
            w = self.store.write(txn)
            for k, v in kvs:
                w.put(rpc_pb2.PutRequest(key=k, value=v))
            return w.end()

        return self._commit(fn)

    def delete(self, key: bytes, range_end: bytes = b"") -> int:
        return self._commit(
            lambda txn: self.store.delete_range(
                txn, rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end)
            )[1]
        )

    def compact(self, rev: int) -> None:
        with self.backend.write() as txn:
            self.store.compact(txn, rev)

    def close(self) -> None:
        self.hub.stop()
        self.backend.close()


def drain(stream: WatchStream) -> list[Outbound]:
    out: list[Outbound] = []
    while (item := stream.get_nowait()) is not None:
        out.append(item)
    return out


def event_revs(items: Iterable[Outbound]) -> list[int]:
    return [ev.kv.mod_revision for it in items for ev in it.events]


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `pred` on every loop turn until true (deadline, not a sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def serve(hub: WatchHub) -> AsyncIterator[rpc_pb2_grpc.WatchStub]:
    server = grpc.aio.server()
    rpc_pb2_grpc.add_WatchServicer_to_server(WatchService(hub, header), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # No BDP probing and a 16 KiB stream window: a client that stops reading really stops
    # the server after ~100 KB (with the defaults grpc buffers megabytes on loopback).
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", 16384),
        ],
    )
    try:
        yield rpc_pb2_grpc.WatchStub(channel)
    finally:
        await channel.close()
        await server.stop(None)
        hub.stop()


class Client:
    """One client Watch stream. Responses are read into a queue by a reader task, which can
    be started late to play a slow consumer."""

    def __init__(self, stub: rpc_pb2_grpc.WatchStub, *, read: bool = True) -> None:
        self.call = stub.Watch()
        self.q: asyncio.Queue[rpc_pb2.WatchResponse | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        if read:
            self.start_reading()

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for r in self.call:
                await self.q.put(r)
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        finally:
            self.q.put_nowait(None)

    async def send(self, req: rpc_pb2.WatchRequest) -> None:
        await self.call.write(req)

    async def create(self, key: bytes, **kw: Any) -> None:
        await self.send(
            rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key, **kw))
        )

    async def cancel(self, watch_id: int) -> None:
        await self.send(
            rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id))
        )

    async def progress(self) -> None:
        await self.send(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))

    async def next(self, timeout: float = 10.0) -> rpc_pb2.WatchResponse:
        r = await asyncio.wait_for(self.q.get(), timeout)
        assert r is not None, "stream ended"
        return r

    async def watch(self, key: bytes, **kw: Any) -> int:
        """Create a watch and return its id from the created response."""
        await self.create(key, **kw)
        r = await self.next()
        assert r.created and not r.canceled, r
        return r.watch_id

    async def barrier(self, timeout: float = 10.0) -> list[rpc_pb2.WatchResponse]:
        """Send a progress request and return every response before its answer."""
        await self.progress()
        before: list[rpc_pb2.WatchResponse] = []
        while True:
            r = await self.next(timeout)
            if r.watch_id == -1 and not (r.events or r.created or r.canceled):
                return before
            before.append(r)

    async def events(self, n: int, timeout: float = 30.0) -> list[rpc_pb2.WatchResponse]:
        """Responses until `n` events have arrived in total."""
        got: list[rpc_pb2.WatchResponse] = []
        count = 0
        while count < n:
            r = await self.next(timeout)
            got.append(r)
            count += len(r.events)
        assert count == n, f"{count} events, wanted {n}"
        return got

    async def close(self) -> None:
        self.call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
