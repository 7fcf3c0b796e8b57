"""etcdserverpb.Cluster: membership changes through raft conf changes, with etcd's checks."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import grpc

from conch.api.errors import from_rpc_error, unary
from conch.api.forward import FORWARDED, LeaderChannel, is_forwarded
from conch.errors import (
    ErrLearnerNotReady,
    ErrMemberBadURLs,
    ErrMemberExist,
    ErrMemberNotEnoughStarted,
    ErrMemberNotFound,
    ErrMemberNotLearner,
    ErrNotLeader,
    ErrPeerURLExist,
    ErrTooManyLearners,
    err,
)
from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from conch.raft.types import ConfChange, ConfChangeType
from conch.server.config import compute_member_id
from conch.server.membership import MemberInfo

if TYPE_CHECKING:
    from conch.server.member import Member


def _valid_peer_urls(urls: list[str]) -> bool:
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            return False
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            return False
    return bool(urls)


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, member: Member) -> None:
        self._m = member
        self._leader = LeaderChannel(member)

    def _header(self) -> rpc_pb2.ResponseHeader:
        m = self._m
        # etcd's cluster server fills no revision in its headers.
        return rpc_pb2.ResponseHeader(
            cluster_id=m.cluster_id, member_id=m.member_id, raft_term=m.term
        )

    def _members(self) -> list[rpc_pb2.Member]:
        return [x.to_proto() for x in self._m.membership.sorted()]

    @unary
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        m = self._m
        if request.linearizable:
            await m.read_barrier()
        return rpc_pb2.MemberListResponse(header=self._header(), members=self._members())

    @unary
    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        m = self._m
        urls = list(request.peerURLs)
        if not _valid_peer_urls(urls):
            raise err(ErrMemberBadURLs)
        existing = m.membership.sorted()
        if any(set(urls) & set(x.peer_urls) for x in existing):
            raise err(ErrPeerURLExist)
        if request.isLearner:
            if sum(x.is_learner for x in existing) >= m.cfg.max_learners:
                raise err(ErrTooManyLearners)
        elif m.cfg.strict_reconfig_check:
            # Adding a voter raises the quorum: the members up now must still reach it.
            voters = len(m.membership.voters()) + 1
            if len(m.started_voters()) < voters // 2 + 1:
                raise err(ErrMemberNotEnoughStarted)
        # etcd: sha1(sorted peer URLs + cluster token + unix time), so a re-added URL gets a
        # new ID.
        new_id = compute_member_id(urls, m.cfg.initial_cluster_token + str(int(time.time())))
        if new_id in m.membership.members or new_id in m.membership.removed:
            raise err(ErrMemberExist)
        info = MemberInfo(new_id, urls, is_learner=request.isLearner)
        kind = (ConfChangeType.ConfChangeAddLearnerNode if request.isLearner
                else ConfChangeType.ConfChangeAddNode)
        await m.propose_conf_change(ConfChange(kind, new_id, info.to_json()))
        return rpc_pb2.MemberAddResponse(
            header=self._header(), member=info.to_proto(), members=self._members()
        )

    @unary
    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        m = self._m
        target = m.membership.members.get(request.ID)
        if target is None:
            raise err(ErrMemberNotFound)
        if m.cfg.strict_reconfig_check and not target.is_learner:
            started = m.started_voters()
            voters = len(m.membership.voters()) - 1
            still_up = len(started - {request.ID})
            if still_up < voters // 2 + 1:
                raise err(ErrMemberNotEnoughStarted)
        await m.propose_conf_change(ConfChange(ConfChangeType.ConfChangeRemoveNode, request.ID))
        return rpc_pb2.MemberRemoveResponse(header=self._header(), members=self._members())

    @unary
    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        m = self._m
        urls = list(request.peerURLs)
        if not _valid_peer_urls(urls):
            raise err(ErrMemberBadURLs)
        target = m.membership.members.get(request.ID)
        if target is None:
            raise err(ErrMemberNotFound)
        if any(set(urls) & set(x.peer_urls) for x in m.membership.sorted() if x.id != request.ID):
            raise err(ErrPeerURLExist)
        info = MemberInfo(request.ID, urls, target.name, target.client_urls, target.is_learner)
        await m.propose_conf_change(
            ConfChange(ConfChangeType.ConfChangeUpdateNode, request.ID, info.to_json())
        )
        return rpc_pb2.MemberUpdateResponse(header=self._header(), members=self._members())

    @unary
    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        m = self._m
        target = m.membership.members.get(request.ID)
        if target is None:
            raise err(ErrMemberNotFound)
        if not target.is_learner:
            raise err(ErrMemberNotLearner)
        if not m.is_leader:
            # Only the leader knows how far the learner has caught up.
            if is_forwarded(context):
                raise err(ErrNotLeader)
            try:
                stub = await self._leader.cluster()
                resp = await stub.MemberPromote(request, metadata=(FORWARDED,), timeout=10)
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None
            # The leader's view: this member may not have applied the change yet.
            return rpc_pb2.MemberPromoteResponse(header=self._header(), members=resp.members)
        if not m.learner_ready(request.ID):
            raise err(ErrLearnerNotReady)
        info = MemberInfo(request.ID, target.peer_urls, target.name, target.client_urls, False)
        await m.propose_conf_change(
            ConfChange(ConfChangeType.ConfChangeAddNode, request.ID, info.to_json())
        )
        return rpc_pb2.MemberPromoteResponse(header=self._header(), members=self._members())
