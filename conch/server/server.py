"""The server façade: every operation the API layer needs, as plain request -> response calls.

This is the one interface `conch/api` talks to (etcd's `EtcdServer` as the v3rpc handlers see
it): protobuf requests in, protobuf responses out, `EtcdError` for every refusal. No gRPC, no
sockets: the gRPC servicers, the JSON gateway and the HTTP endpoints are thin translations
over it. Membership policy lives in `ClusterOps` (`self.cluster`) and maintenance in
`Maintenance` (`self.maintenance`); both are parts of the façade.

What belongs here rather than in a handler: which requests go through raft and which are
served locally (a read-only txn is served like a range, linearizable unless every range in it
is serializable), the learner and quota checks, and forwarding to the leader what only the
leader can answer (lease keepalives and TTLs, learner promotion).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from conch import ETCD_COMPAT_VERSION
from conch.errors import (
    ErrLeaseTTLTooLarge,
    ErrNoLeader,
    ErrNoSpace,
    ErrNotLeader,
    ErrNotSupportedForLearner,
    ErrRequestTooLarge,
    ErrStopped,
    ErrTimeout,
    EtcdError,
    err,
)
from conch.lease import MAX_LEASE_TTL, Lessor
from conch.mvcc import KVStore, check_delete_range, check_put, check_range, check_txn
from conch.mvcc.watch import WatchHub
from conch.proto.etcdserverpb import raft_internal_pb2, rpc_pb2
from conch.raft.types import ConfChange
from conch.server.applying import ApplyStage
from conch.server.config import Config
from conch.server.idgen import IdGenerator
from conch.server.metrics import Metrics
from conch.server.ports import Clock, LeaderClient
from conch.server.raftnode import RaftNode
from conch.server.read_index import LinearizableReads
from conch.server.wait import WaitRegistry

if TYPE_CHECKING:
    from conch.server.cluster_ops import ClusterOps
    from conch.server.maintenance import Maintenance
    from conch.server.membership import Membership

InternalRaftRequest = raft_internal_pb2.InternalRaftRequest

# A follower waits this long at most for the leader to publish its client URLs (it does so
# through the log right after it starts) before it gives up forwarding with "no leader".
_PUBLISH_WAIT_S = 2.0
_PUBLISH_POLL_S = 0.05
# A keepalive of an expired lease waits for its revoke to apply, checking this often.
_REVOKE_POLL_S = 0.01


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


class EtcdServer:
    def __init__(
        self,
        *,
        cfg: Config,
        member_id: int,
        cluster_id: int,
        ids: IdGenerator,
        clock: Clock,
        raft: RaftNode,
        apply_stage: ApplyStage,
        reads: LinearizableReads,
        waits: WaitRegistry,
        cc_waits: WaitRegistry,
        store: KVStore,
        lessor: Lessor,
        hub: WatchHub,
        metrics: Metrics,
    ) -> None:
        self.cfg = cfg
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.ids = ids
        self.clock = clock
        self.raft = raft
        self.apply_stage = apply_stage
        self.reads = reads
        self.waits = waits
        self.cc_waits = cc_waits
        self.store = store
        self.lessor = lessor
        self.hub = hub
        self.metrics = metrics
        self.request_timeout_s = waits.timeout_s
        #: calls to the leader; set by whoever serves clients (the API layer implements it)
        self.leader_client: LeaderClient | None = None
        self.stopping = False
        # set by the member once they exist (they need the façade themselves)
        self.cluster: ClusterOps
        self.maintenance: Maintenance

    # --- state -----------------------------------------------------------------------------
    @property
    def lead(self) -> int:
        return self.raft.lead

    @property
    def term(self) -> int:
        return self.raft.term

    @property
    def is_leader(self) -> bool:
        return self.raft.is_leader

    @property
    def committed_index(self) -> int:
        return self.raft.committed_index

    @property
    def applied_index(self) -> int:
        return self.apply_stage.applied_index

    @property
    def revision(self) -> int:
        return self.apply_stage.revision

    @property
    def is_learner(self) -> bool:
        return self.apply_stage.is_learner

    @property
    def leader_changes(self) -> int:
        return self.raft.leader_changes

    @property
    def membership(self) -> Membership:
        return self.apply_stage.membership

    def version(self) -> str:
        return ETCD_COMPAT_VERSION

    def header(self, revision: int = 0) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=revision or self.revision,
            raft_term=self.term,
        )

    def fill_header(self, h: rpc_pb2.ResponseHeader) -> None:
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = self.term
        if not h.revision:
            h.revision = self.revision

    # --- proposing -------------------------------------------------------------------------
    def propose(self, req: InternalRaftRequest) -> asyncio.Future[Any]:
        """Log `req` through raft and apply it; the future resolves to its response (or to
        the EtcdError it produced)."""
        if self.stopping:
            raise err(ErrStopped)
        rid = self.ids.next()
        req.header.ID = rid
        data = req.SerializeToString()
        if len(data) > self.cfg.max_request_bytes:
            raise err(ErrRequestTooLarge)
        fut = self.waits.register(rid, self.clock.monotonic(), self.raft.leader_changes)
        self.raft.propose(rid, data)
        return fut

    async def propose_request(self, field: str, request: Any) -> Any:
        """Propose a client request as `InternalRaftRequest.<field>`; its response with the
        header filled in."""
        irr = InternalRaftRequest()
        getattr(irr, field).CopyFrom(request)
        resp = await self.propose(irr)
        self.fill_header(resp.header)
        return resp

    async def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a membership change and wait until this member has applied it."""
        if self.stopping:
            raise err(ErrStopped)
        cc.id = self.ids.next()
        fut = self.cc_waits.register(cc.id, self.clock.monotonic(), self.raft.leader_changes)
        try:
            self.raft.propose_conf_change(cc)
        except EtcdError:
            self.cc_waits.trigger(cc.id, None)
            raise
        try:
            await asyncio.wait_for(fut, self.request_timeout_s)
        except TimeoutError:
            raise err(ErrTimeout) from None
        finally:
            self.cc_waits.trigger(cc.id, None)  # forget it, whatever happened

    # --- checks ----------------------------------------------------------------------------
    def check_not_learner(self) -> None:
        """A learner serves only Status and serializable Range (etcd's
        isRPCSupportedForLearner)."""
        if self.apply_stage.is_learner:
            raise err(ErrNotSupportedForLearner)

    async def check_space(self) -> None:
        """Writes fail with NOSPACE while the alarm is active (etcd's quota check). Crossing
        the quota raises the alarm first and waits for it to apply, as etcd does."""
        if any(alarm == rpc_pb2.NOSPACE for _, alarm in self.apply_stage.applier.alarms):
            raise err(ErrNoSpace)
        if self.apply_stage.size_in_use > self.cfg.quota_bytes:
            await self.propose(
                InternalRaftRequest(
                    alarm=rpc_pb2.AlarmRequest(
                        action=rpc_pb2.AlarmRequest.ACTIVATE,
                        memberID=self.member_id,
                        alarm=rpc_pb2.NOSPACE,
                    )
                )
            )
            raise err(ErrNoSpace)

    async def read_barrier(self) -> None:
        """Linearizable read point: what any member committed before this call is applied
        here when it returns."""
        await self.reads.barrier()

    # --- KV --------------------------------------------------------------------------------
    async def range(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        check_range(req)
        if not req.serializable:
            self.check_not_learner()
            await self.reads.barrier()
        resp = self.store.range(req)
        self.fill_header(resp.header)
        self.metrics.range_total += 1
        return resp

    async def put(self, req: rpc_pb2.PutRequest) -> rpc_pb2.PutResponse:
        self.check_not_learner()
        check_put(req)
        await self.check_space()
        resp: rpc_pb2.PutResponse = await self.propose_request("put", req)
        self.metrics.put_total += 1
        return resp

    async def delete_range(self, req: rpc_pb2.DeleteRangeRequest) -> rpc_pb2.DeleteRangeResponse:
        self.check_not_learner()
        check_delete_range(req)
        resp: rpc_pb2.DeleteRangeResponse = await self.propose_request("delete_range", req)
        self.metrics.delete_total += 1
        return resp

    async def txn(self, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        self.check_not_learner()
        check_txn(req, self.cfg.max_txn_ops)
        self.metrics.txn_total += 1
        if txn_is_read_only(req):
            if not txn_is_serializable(req):
                await self.reads.barrier()
            resp, _ = self.store.txn(None, req)
            self.fill_header(resp.header)
            return resp
        await self.check_space()
        txn_resp: rpc_pb2.TxnResponse = await self.propose_request("txn", req)
        return txn_resp

    async def compact(self, req: rpc_pb2.CompactionRequest) -> rpc_pb2.CompactionResponse:
        resp: rpc_pb2.CompactionResponse = await self.propose_request("compaction", req)
        return resp

    # --- leases ----------------------------------------------------------------------------
    async def lease_grant(self, req: rpc_pb2.LeaseGrantRequest) -> rpc_pb2.LeaseGrantResponse:
        if req.TTL > MAX_LEASE_TTL:
            raise err(ErrLeaseTTLTooLarge)
        await self.check_space()
        if req.ID == 0:
            # The ID is fixed before the proposal so that every member applies the same one.
            req.ID = self.ids.next_lease_id()
        resp: rpc_pb2.LeaseGrantResponse = await self.propose_request("lease_grant", req)
        return resp

    async def lease_revoke(self, req: rpc_pb2.LeaseRevokeRequest) -> rpc_pb2.LeaseRevokeResponse:
        resp: rpc_pb2.LeaseRevokeResponse = await self.propose_request("lease_revoke", req)
        return resp

    async def lease_keep_alive(
        self, lease_id: int, *, forwarded: bool = False
    ) -> rpc_pb2.LeaseKeepAliveResponse:
        """One keepalive: renew on the leader (TTL 0 for a lease it does not know), or pass
        it on to the leader. `forwarded`: the call came from another member, so a member that
        is not the leader refuses instead of forwarding again."""
        # The header is taken before the renewal, as in etcd, so its revision never runs
        # ahead of the point of renewal.
        header = self.header()
        deadline = self.clock.monotonic() + self.request_timeout_s
        while True:
            if not self.is_leader:
                if forwarded:
                    raise err(ErrNotLeader)
                url = await self.leader_client_url()
                ttl = await self.leader().lease_renew(url, lease_id)
                break
            # A new leader first applies what it committed: it may not know a lease granted
            # under its predecessor yet (etcd#6978).
            if self.applied_index < self.committed_index:
                await self.reads.wait_applied(self.committed_index)
            ttl = self.lessor.renew(lease_id, self.clock.monotonic())
            if ttl > 0 or not self.lessor.exists(lease_id):
                break
            # Expired, its revoke proposed but not applied yet. Like etcd's lessor.Renew,
            # answer only once the revoke applied: if it is lost (this member stops leading
            # first), the next leader may keep the lease alive, and a client told "gone"
            # would have been told wrong. A leader change sends the renewal on (above).
            if self.clock.monotonic() >= deadline:
                raise err(ErrTimeout)
            await self.clock.sleep(_REVOKE_POLL_S)
        return rpc_pb2.LeaseKeepAliveResponse(header=header, ID=lease_id, TTL=ttl)

    async def lease_time_to_live(
        self, req: rpc_pb2.LeaseTimeToLiveRequest, *, forwarded: bool = False
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        if not self.is_leader:
            # Only the leader's lessor keeps time: ask it (etcd does the same).
            if forwarded:
                raise err(ErrNotLeader)
            url = await self.leader_client_url()
            resp: rpc_pb2.LeaseTimeToLiveResponse = await self.leader().lease_time_to_live(
                url, req
            )
            resp.header.CopyFrom(self.header())
            return resp
        await self.reads.barrier()
        ttl, granted, keys = self.lessor.time_to_live(req.ID, self.clock.monotonic(), req.keys)
        return rpc_pb2.LeaseTimeToLiveResponse(
            header=self.header(), ID=req.ID, TTL=ttl, grantedTTL=granted, keys=keys
        )

    async def lease_leases(self, req: rpc_pb2.LeaseLeasesRequest) -> rpc_pb2.LeaseLeasesResponse:
        await self.reads.barrier()
        return rpc_pb2.LeaseLeasesResponse(
            header=self.header(),
            leases=[rpc_pb2.LeaseStatus(ID=i) for i in self.lessor.leases()],
        )

    # --- the leader ------------------------------------------------------------------------
    def leader(self) -> LeaderClient:
        """The calls this member can make to the leader."""
        if self.leader_client is None:
            raise err(ErrNoLeader)  # nobody can reach other members' client URLs
        return self.leader_client

    async def leader_client_url(self) -> str:
        """The current leader's client URL, for a call only the leader can answer."""
        deadline = self.clock.monotonic() + _PUBLISH_WAIT_S
        while True:
            lead = self.raft.lead
            if not lead:
                raise err(ErrNoLeader)
            if lead == self.member_id:
                raise err(ErrNotLeader)  # callers handle the leader case themselves
            info = self.membership.members.get(lead)
            # Right after start the leader may not have published its client URLs yet.
            if info is not None and info.client_urls:
                return info.client_urls[0]
            if self.clock.monotonic() >= deadline:
                raise err(ErrNoLeader)
            await self.clock.sleep(_PUBLISH_POLL_S)

    # --- auth ------------------------------------------------------------------------------
    async def auth_status(self, req: rpc_pb2.AuthStatusRequest) -> rpc_pb2.AuthStatusResponse:
        return rpc_pb2.AuthStatusResponse(header=self.header(), enabled=False)
