"""etcdserverpb.Maintenance (and the Auth status probe) over the server façade."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from conch.api.errors import abort, unary
from conch.errors import EtcdError
from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from conch.server.server import EtcdServer


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, server: EtcdServer) -> None:
        self._ops = server.maintenance

    @unary
    async def Status(self, request: rpc_pb2.StatusRequest, context: Any) -> rpc_pb2.StatusResponse:
        return await self._ops.status(request)

    @unary
    async def HashKV(self, request: rpc_pb2.HashKVRequest, context: Any) -> rpc_pb2.HashKVResponse:
        return await self._ops.hash_kv(request)

    @unary
    async def Hash(self, request: rpc_pb2.HashRequest, context: Any) -> rpc_pb2.HashResponse:
        return await self._ops.hash(request)

    @unary
    async def Alarm(self, request: rpc_pb2.AlarmRequest, context: Any) -> rpc_pb2.AlarmResponse:
        return await self._ops.alarm(request)

    @unary
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: Any
    ) -> rpc_pb2.DefragmentResponse:
        return await self._ops.defragment(request)

    @unary
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: Any
    ) -> rpc_pb2.MoveLeaderResponse:
        return await self._ops.move_leader(request)

    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        try:
            async for chunk in self._ops.snapshot(request):
                yield chunk
        except EtcdError as exc:
            await abort(context, exc)


class AuthService(rpc_pb2_grpc.AuthServicer):
    """Auth is not implemented yet; AuthStatus answers so that clients can probe it."""

    def __init__(self, server: EtcdServer) -> None:
        self._s = server

    @unary
    async def AuthStatus(
        self, request: rpc_pb2.AuthStatusRequest, context: Any
    ) -> rpc_pb2.AuthStatusResponse:
        return await self._s.auth_status(request)
