"""etcdserverpb.Cluster over the server façade (membership policy is `ClusterOps`')."""

from __future__ import annotations

from typing import Any

import grpc

from conch.api.errors import unary
from conch.api.forward import is_forwarded
from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from conch.server.server import EtcdServer


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, server: EtcdServer) -> None:
        self._ops = server.cluster

    @unary
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: Any
    ) -> rpc_pb2.MemberListResponse:
        return await self._ops.member_list(request)

    @unary
    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: Any
    ) -> rpc_pb2.MemberAddResponse:
        return await self._ops.member_add(request)

    @unary
    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: Any
    ) -> rpc_pb2.MemberRemoveResponse:
        return await self._ops.member_remove(request)

    @unary
    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: Any
    ) -> rpc_pb2.MemberUpdateResponse:
        return await self._ops.member_update(request)

    @unary
    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rpc_pb2.MemberPromoteResponse:
        return await self._ops.member_promote(request, forwarded=is_forwarded(context))
