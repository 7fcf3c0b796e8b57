"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from conch.api.errors import unary
from conch.mvcc import check_delete_range, check_put, check_range, check_txn
from conch.proto.etcdserverpb import raft_internal_pb2, rpc_pb2, rpc_pb2_grpc

if TYPE_CHECKING:
    from conch.server.member import Member

IRR = raft_internal_pb2.InternalRaftRequest


def txn_is_read_only(req: rpc_pb2.TxnRequest) -> bool:
    for ops in (req.success, req.failure):
        for op in ops:
            kind = op.WhichOneof("request")
            if kind in ("request_put", "request_delete_range"):
                return False
            if kind == "request_txn" and not txn_is_read_only(op.request_txn):
                return False
    return True


def txn_is_serializable(req: rpc_pb2.TxnRequest) -> bool:
    for ops in (req.success, req.failure):
        for op in ops:
            kind = op.WhichOneof("request")
            if kind == "request_range" and not op.request_range.serializable:
                return False
            if kind == "request_txn" and not txn_is_serializable(op.request_txn):
                return False
    return True


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, member: Member) -> None:
        self._m = member

    @unary
    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        m = self._m
        check_range(request)
        if not request.serializable:
            m.check_not_learner()
            await m.read_barrier()
        resp = m.store.range(request)
        m.fill_header(resp.header)
        m.metrics.range_total += 1
        return resp

    @unary
    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        m = self._m
        m.check_not_learner()
        check_put(request)
        await m.check_space()
        resp: rpc_pb2.PutResponse = await m.propose_request("put", request)
        m.metrics.put_total += 1
        return resp

    @unary
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        m = self._m
        m.check_not_learner()
        check_delete_range(request)
        resp: rpc_pb2.DeleteRangeResponse = await m.propose_request("delete_range", request)
        m.metrics.delete_total += 1
        return resp

    @unary
    async def Txn(
        self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.TxnResponse:
        m = self._m
        m.check_not_learner()
        check_txn(request, m.cfg.max_txn_ops)
        m.metrics.txn_total += 1
        if txn_is_read_only(request):
            if not txn_is_serializable(request):
                await m.read_barrier()
            resp, _ = m.store.txn(None, request)
            m.fill_header(resp.header)
            return resp
        await m.check_space()
        txn_resp: rpc_pb2.TxnResponse = await m.propose_request("txn", request)
        return txn_resp

    @unary
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        resp: rpc_pb2.CompactionResponse = await self._m.propose_request("compaction", request)
        return resp
