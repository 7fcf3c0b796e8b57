"""etcdserverpb.Lease: Grant, Revoke, KeepAlive (stream), TimeToLive, Leases."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from conch.api.errors import abort, from_rpc_error, unary
from conch.api.forward import FORWARDED, LeaderChannel, is_forwarded
from conch.errors import ErrLeaseTTLTooLarge, ErrNoLeader, ErrNotLeader, EtcdError, err
from conch.lease import MAX_LEASE_TTL
from conch.proto.etcdserverpb import raft_internal_pb2, rpc_pb2, rpc_pb2_grpc

if TYPE_CHECKING:
    from conch.server.member import Member

IRR = raft_internal_pb2.InternalRaftRequest


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, member: Member) -> None:
        self._m = member
        self._leader = LeaderChannel(member)

    @unary
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        m = self._m
        if request.TTL > MAX_LEASE_TTL:
            raise err(ErrLeaseTTLTooLarge)
        await m.check_space()
        if request.ID == 0:
            # The ID is fixed before the proposal so that every member applies the same one.
            request.ID = m.ids.next_lease_id()
        resp: rpc_pb2.LeaseGrantResponse = await m.propose_request("lease_grant", request)
        return resp

    @unary
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        resp: rpc_pb2.LeaseRevokeResponse = await self._m.propose_request("lease_revoke", request)
        return resp

    async def LeaseKeepAlive(
        self,
        request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        m = self._m
        forwarded = is_forwarded(context)
        upstream: Any = None  # a stream to the leader, opened when this member is a follower
        upstream_lead = 0
        try:
            async for req in request_iterator:
                # The header is taken before the renewal, as in etcd, so its revision never
                # runs ahead of the point of renewal.
                header = m.header()
                if m.is_leader:
                    # A new leader first applies what it committed: it may not know a lease
                    # granted under its predecessor yet (etcd#6978).
                    if m.applied_index < m.committed_index:
                        await m.wait_applied(m.committed_index)
                    ttl = m.lessor.renew(req.ID, time.monotonic())
                    yield rpc_pb2.LeaseKeepAliveResponse(header=header, ID=req.ID, TTL=ttl)
                    continue
                if forwarded:
                    await abort(context, err(ErrNotLeader))
                try:
                    if upstream is None or upstream_lead != m.lead:
                        if upstream is not None:
                            upstream.cancel()
                        stub = await self._leader.lease()
                        upstream = stub.LeaseKeepAlive(metadata=(FORWARDED,))
                        upstream_lead = m.lead
                    await upstream.write(req)
                    resp = await upstream.read()
                except EtcdError as exc:
                    await abort(context, exc)
                except grpc.RpcError:
                    upstream = None
                    await abort(context, err(ErrNoLeader))
                if resp is grpc.aio.EOF:
                    upstream = None
                    await abort(context, err(ErrNoLeader))
                yield rpc_pb2.LeaseKeepAliveResponse(header=header, ID=resp.ID, TTL=resp.TTL)
        finally:
            if upstream is not None:
                upstream.cancel()

    @unary
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        m = self._m
        if not m.is_leader:
            # Only the leader's lessor keeps time: ask it (etcd does the same).
            if is_forwarded(context):
                raise err(ErrNotLeader)
            try:
                stub = await self._leader.lease()
                resp: rpc_pb2.LeaseTimeToLiveResponse = await stub.LeaseTimeToLive(
                    request, metadata=(FORWARDED,), timeout=5
                )
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None
            resp.header.CopyFrom(m.header())
            return resp
        await m.read_barrier()
        ttl, granted, keys = m.lessor.time_to_live(request.ID, time.monotonic(), request.keys)
        return rpc_pb2.LeaseTimeToLiveResponse(
            header=m.header(), ID=request.ID, TTL=ttl, grantedTTL=granted, keys=keys
        )

    @unary
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        m = self._m
        await m.read_barrier()
        return rpc_pb2.LeaseLeasesResponse(
            header=m.header(),
            leases=[rpc_pb2.LeaseStatus(ID=i) for i in m.lessor.leases()],
        )

