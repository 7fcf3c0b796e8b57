"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact, over the server façade."""

from __future__ import annotations

from typing import Any

from conch.api.errors import unary
from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from conch.server.server import EtcdServer


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, server: EtcdServer) -> None:
        self._s = server

    @unary
    async def Range(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        return await self._s.range(request)

    @unary
    async def Put(self, request: rpc_pb2.PutRequest, context: Any) -> rpc_pb2.PutResponse:
        return await self._s.put(request)

    @unary
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: Any
    ) -> rpc_pb2.DeleteRangeResponse:
        return await self._s.delete_range(request)

    @unary
    async def Txn(self, request: rpc_pb2.TxnRequest, context: Any) -> rpc_pb2.TxnResponse:
        return await self._s.txn(request)

    @unary
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: Any
    ) -> rpc_pb2.CompactionResponse:
        return await self._s.compact(request)
