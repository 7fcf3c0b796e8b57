"""`GrpcLeaderClient`: the façade's `LeaderClient` over the leader's gRPC client URL.

A follower passes on what only the leader can answer: lease keepalives and TTLs (only the
leader's lessor keeps time) and learner promotion (only the leader knows how far a learner
is). etcd forwards these over its peer HTTP API; conch calls the leader's own client URL
(published through the log as the member's attributes), marking the call as forwarded so a
member that is no longer leader answers "not leader" instead of forwarding again.

Keepalives from every client stream share **one** keepalive stream to the leader: the leader
answers a stream's requests in order, so responses are matched to requests first-in
first-out. One stream instead of one per client stream keeps a follower's cost per renewal
at one message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import grpc

from conch.api.errors import from_rpc_error
from conch.errors import ErrNoLeader, err
from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

FORWARDED = ("conch-forwarded", "1")
_CALL_TIMEOUT_S = 5.0
_PROMOTE_TIMEOUT_S = 10.0


def is_forwarded(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    md = context.invocation_metadata() or ()
    return any(k == FORWARDED[0] for k, _ in md)


def _target(url: str) -> str:
    return url.split("://", 1)[-1]


class _KeepAliveStream:
    """One LeaseKeepAlive stream to the leader, shared by every forwarded renewal."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._call: Any = rpc_pb2_grpc.LeaseStub(channel).LeaseKeepAlive(metadata=(FORWARDED,))
        self._waiting: collections.deque[asyncio.Future[int]] = collections.deque()
        self._write_lock = asyncio.Lock()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.broken = False

    async def renew(self, lease_id: int) -> int:
        if self.broken:
            raise err(ErrNoLeader)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        async with self._write_lock:
            # Queued and written under one lock: the order of the queue is the order on
            # the wire, which is the order of the answers.
            self._waiting.append(fut)
            try:
                await self._call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
            except (grpc.RpcError, asyncio.InvalidStateError):
                self._break()
        return await fut

    async def _read(self) -> None:
        try:
            while True:
                resp = await self._call.read()
                if resp is grpc.aio.EOF:
                    break
                if self._waiting:
                    fut = self._waiting.popleft()
                    if not fut.done():
                        fut.set_result(int(resp.TTL))
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        finally:
            self._break()

    def _break(self) -> None:
        self.broken = True
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(err(ErrNoLeader))

    def close(self) -> None:
        self._break()
        self._call.cancel()
        self._reader.cancel()


class GrpcLeaderClient:
    """One channel (and one shared keepalive stream) to the current leader's client URL,
    replaced when the leader's URL changes."""

    def __init__(self) -> None:
        self._url = ""
        self._channel: grpc.aio.Channel | None = None
        self._keepalive: _KeepAliveStream | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _channel_for(self, url: str) -> grpc.aio.Channel:
        if url != self._url or self._channel is None:
            self._drop()
            self._channel = grpc.aio.insecure_channel(_target(url))
            self._url = url
        return self._channel

    def _drop(self) -> None:
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        if self._channel is not None:
            task = asyncio.get_running_loop().create_task(self._channel.close())
            self._closing.add(task)  # keep a reference until it is done
            task.add_done_callback(self._closing.discard)
            self._channel = None

    async def lease_renew(self, client_url: str, lease_id: int) -> int:
        channel = self._channel_for(client_url)
        if self._keepalive is None or self._keepalive.broken:
            if self._keepalive is not None:
                self._keepalive.close()
            self._keepalive = _KeepAliveStream(channel)
        return await self._keepalive.renew(lease_id)

    async def lease_time_to_live(
        self, client_url: str, req: rpc_pb2.LeaseTimeToLiveRequest
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        stub = rpc_pb2_grpc.LeaseStub(self._channel_for(client_url))
        resp: rpc_pb2.LeaseTimeToLiveResponse = await _forward(
            stub.LeaseTimeToLive, req, _CALL_TIMEOUT_S
        )
        return resp

    async def member_promote(
        self, client_url: str, req: rpc_pb2.MemberPromoteRequest
    ) -> rpc_pb2.MemberPromoteResponse:
        stub = rpc_pb2_grpc.ClusterStub(self._channel_for(client_url))
        resp: rpc_pb2.MemberPromoteResponse = await _forward(
            stub.MemberPromote, req, _PROMOTE_TIMEOUT_S
        )
        return resp

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task


async def _forward(method: Any, req: Any, timeout_s: float) -> Any:
    """A unary call marked as forwarded; the leader's error comes back as its EtcdError."""
    try:
        return await method(req, metadata=(FORWARDED,), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
