"""Membership policy: what etcd checks before it proposes a member change, and how it names
new members (etcd's `etcdserver/server.go` AddMember/RemoveMember/UpdateMember/PromoteMember
plus `api/membership`'s ID computation).

The checks here run on the member that receives the request, against the membership it has
applied; the apply stage checks the change again at its point in the log (`Applier`), since
two changes may race. A promotion is decided by the leader: only it knows how far a learner's
log has caught up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

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
from conch.proto.etcdserverpb import rpc_pb2
from conch.raft.types import ConfChange, ConfChangeType
from conch.server.config import compute_member_id
from conch.server.membership import MemberInfo
from conch.server.ports import PeerTransport

if TYPE_CHECKING:
    from conch.server.server import EtcdServer


def valid_peer_urls(urls: list[str]) -> bool:
    """etcd's types.NewURLs: http(s)://host:port, nothing after."""
    for url in urls:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            return False
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            return False
    return bool(urls)


def learner_ready(match: int | None, leader_match: int | None) -> bool:
    """etcd's rule: a learner may be promoted once its match index is at least 90% of the
    leader's."""
    if match is None or leader_match is None:
        return False
    return match >= leader_match * 0.9


class ClusterOps:
    def __init__(self, server: EtcdServer) -> None:
        self._s = server
        self.transport: PeerTransport | None = None  # set by the member when it has peers

    def _header(self) -> rpc_pb2.ResponseHeader:
        s = self._s
        # etcd's cluster server fills no revision in its headers.
        return rpc_pb2.ResponseHeader(
            cluster_id=s.cluster_id, member_id=s.member_id, raft_term=s.term
        )

    def _members(self) -> list[rpc_pb2.Member]:
        return [x.to_proto() for x in self._s.membership.sorted()]

    def started_voters(self) -> set[int]:
        """Voters this member can currently reach (itself included): etcd's "started"
        members for --strict-reconfig-check."""
        s, t = self._s, self.transport
        return {
            v for v in s.membership.voters()
            if v == s.member_id or (t is not None and t.active_since(v) is not None)
        }

    async def member_list(self, req: rpc_pb2.MemberListRequest) -> rpc_pb2.MemberListResponse:
        if req.linearizable:
            await self._s.read_barrier()
        return rpc_pb2.MemberListResponse(header=self._header(), members=self._members())

    async def member_add(self, req: rpc_pb2.MemberAddRequest) -> rpc_pb2.MemberAddResponse:
        s = self._s
        urls = list(req.peerURLs)
        if not valid_peer_urls(urls):
            raise err(ErrMemberBadURLs)
        existing = s.membership.sorted()
        if any(set(urls) & set(x.peer_urls) for x in existing):
            raise err(ErrPeerURLExist)
        if req.isLearner:
            if sum(x.is_learner for x in existing) >= s.cfg.max_learners:
                raise err(ErrTooManyLearners)
        elif s.cfg.strict_reconfig_check:
            # Adding a voter raises the quorum: the members up now must still reach it.
            voters = len(s.membership.voters()) + 1
            if len(self.started_voters()) < voters // 2 + 1:
                raise err(ErrMemberNotEnoughStarted)
        # etcd: sha1(sorted peer URLs + cluster token + unix time), so a re-added URL gets a
        # new ID.
        now_s = s.clock.wall_ms() // 1000
        new_id = compute_member_id(urls, s.cfg.initial_cluster_token + str(now_s))
        if new_id in s.membership.members or new_id in s.membership.removed:
            raise err(ErrMemberExist)
        info = MemberInfo(new_id, urls, is_learner=req.isLearner)
        kind = (ConfChangeType.ConfChangeAddLearnerNode if req.isLearner
                else ConfChangeType.ConfChangeAddNode)
        await s.propose_conf_change(ConfChange(kind, new_id, info.to_json()))
        return rpc_pb2.MemberAddResponse(
            header=self._header(), member=info.to_proto(), members=self._members()
        )

    async def member_remove(
        self, req: rpc_pb2.MemberRemoveRequest
    ) -> rpc_pb2.MemberRemoveResponse:
        s = self._s
        target = s.membership.members.get(req.ID)
        if target is None:
            raise err(ErrMemberNotFound)
        if s.cfg.strict_reconfig_check and not target.is_learner:
            voters = len(s.membership.voters()) - 1
            still_up = len(self.started_voters() - {req.ID})
            if still_up < voters // 2 + 1:
                raise err(ErrMemberNotEnoughStarted)
        await s.propose_conf_change(ConfChange(ConfChangeType.ConfChangeRemoveNode, req.ID))
        return rpc_pb2.MemberRemoveResponse(header=self._header(), members=self._members())

    async def member_update(
        self, req: rpc_pb2.MemberUpdateRequest
    ) -> rpc_pb2.MemberUpdateResponse:
        s = self._s
        urls = list(req.peerURLs)
        if not valid_peer_urls(urls):
            raise err(ErrMemberBadURLs)
        target = s.membership.members.get(req.ID)
        if target is None:
            raise err(ErrMemberNotFound)
        if any(set(urls) & set(x.peer_urls) for x in s.membership.sorted() if x.id != req.ID):
            raise err(ErrPeerURLExist)
        info = MemberInfo(req.ID, urls, target.name, target.client_urls, target.is_learner)
        await s.propose_conf_change(
            ConfChange(ConfChangeType.ConfChangeUpdateNode, req.ID, info.to_json())
        )
        return rpc_pb2.MemberUpdateResponse(header=self._header(), members=self._members())

    async def member_promote(
        self, req: rpc_pb2.MemberPromoteRequest, *, forwarded: bool = False
    ) -> rpc_pb2.MemberPromoteResponse:
        s = self._s
        target = s.membership.members.get(req.ID)
        if target is None:
            raise err(ErrMemberNotFound)
        if not target.is_learner:
            raise err(ErrMemberNotLearner)
        if not s.is_leader:
            # Only the leader knows how far the learner has caught up.
            if forwarded:
                raise err(ErrNotLeader)
            url = await s.leader_client_url()
            resp: rpc_pb2.MemberPromoteResponse = await s.leader().member_promote(url, req)
            # The leader's view: this member may not have applied the change yet.
            return rpc_pb2.MemberPromoteResponse(header=self._header(), members=resp.members)
        progress = s.raft.node.status().progress
        match = progress.get(req.ID)
        mine = progress.get(s.member_id)
        if not learner_ready(match[0] if match else None, mine[0] if mine else None):
            raise err(ErrLearnerNotReady)
        info = MemberInfo(req.ID, target.peer_urls, target.name, target.client_urls, False)
        await s.propose_conf_change(
            ConfChange(ConfChangeType.ConfChangeAddNode, req.ID, info.to_json())
        )
        return rpc_pb2.MemberPromoteResponse(header=self._header(), members=self._members())
