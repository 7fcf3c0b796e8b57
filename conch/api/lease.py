"""etcdserverpb.Lease: Grant, Revoke, KeepAlive (stream), TimeToLive, Leases, over the
server façade (which forwards to the leader what only the leader can answer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from conch.api.errors import abort, unary
from conch.api.forward import is_forwarded
from conch.errors import EtcdError
from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from conch.server.server import EtcdServer


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, server: EtcdServer) -> None:
        self._s = server

    @unary
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: Any
    ) -> rpc_pb2.LeaseGrantResponse:
        return await self._s.lease_grant(request)

    @unary
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: Any
    ) -> rpc_pb2.LeaseRevokeResponse:
        return await self._s.lease_revoke(request)

    async def LeaseKeepAlive(
        self,
        request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        forwarded = is_forwarded(context)
        async for req in request_iterator:
            try:
                resp = await self._s.lease_keep_alive(req.ID, forwarded=forwarded)
            except EtcdError as exc:
                await abort(context, exc)
            yield resp

    @unary
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        return await self._s.lease_time_to_live(request, forwarded=is_forwarded(context))

    @unary
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: Any
    ) -> rpc_pb2.LeaseLeasesResponse:
        return await self._s.lease_leases(request)
