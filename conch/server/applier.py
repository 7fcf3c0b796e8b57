"""The applier: turns committed log entries into store changes, deterministically.

Every member applies the same entries in the same order to the same starting state, so the
applier must not read clocks or randomness that affect persisted state (lease expiry is
in-memory timing only; lease IDs and TTLs are fixed at proposal time). One call to
`apply_batch` is one LMDB write transaction that also records `consistent_index`, which makes
replay after a crash idempotent: entries at or below it are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from conch import failpoints
from conch.backend import META_CONSISTENT_INDEX, Backend, schema
from conch.errors import (
    Code,
    ErrMemberExist,
    ErrMemberNotFound,
    ErrPeerURLExist,
    EtcdError,
    err,
)
from conch.lease import Lessor
from conch.mvcc import KVStore
from conch.proto.etcdserverpb import raft_internal_pb2, rpc_pb2
from conch.proto.membershippb import membership_pb2
from conch.proto.mvccpb import kv_pb2
from conch.raft.types import ConfChange, ConfChangeType
from conch.server.membership import MemberInfo, Membership

InternalRaftRequest = raft_internal_pb2.InternalRaftRequest
# (response, watch events, revision of the events)
_Result = tuple[Any, list[kv_pb2.Event], int]



@dataclass(slots=True)
class Applied:
    """What one applied batch produced: results by request ID and watch events by revision."""

    last_index: int
    results: list[tuple[int, Any]] = field(default_factory=list)  # (request id, response|error)
    events: list[tuple[int, list[kv_pb2.Event]]] = field(default_factory=list)
    alarms_changed: bool = False
    compacted: bool = False  # the batch ran a compaction (for the compaction failpoints)
    size_in_use: int = 0  # backend bytes in use after the batch (for the quota check)


#: request kinds with a handler; anything else (auth, cluster version, downgrade, v2) is a
#: no-op with an empty response, so a log written by a newer member still replays
_NOOP_KINDS = frozenset({"header", "ID"})


class Applier:
    """Applies InternalRaftRequests by kind (`_HANDLERS`), inside the caller's transaction.

    `now` is the lessor's clock: lease expiry is in-memory timing, never persisted, so it may
    differ between members without breaking determinism of the store."""

    def __init__(
        self,
        backend: Backend,
        store: KVStore,
        lessor: Lessor,
        membership: Membership,
        now: Callable[[], float],
    ) -> None:
        self.backend = backend
        self._store = store
        self._lessor = lessor
        self._now = now
        self.membership = membership
        self.alarms: set[tuple[int, int]] = set()  # (member id, alarm type)
        self._load_alarms()

    def reload(self, membership: Membership) -> None:
        """The backend was replaced (snapshot install): forget what was read from the old."""
        self.membership = membership
        self.alarms = set()
        self._load_alarms()

    def _load_alarms(self) -> None:
        with self.backend.read() as txn:
            cur = txn.cursor(db=self.backend.db(schema.ALARM))
            for key, _ in cur:
                am = rpc_pb2.AlarmMember.FromString(bytes(key))
                self.alarms.add((am.memberID, am.alarm))

    def consistent_index(self) -> int:
        return self.backend.consistent_index()

    def apply_batch(self, entries: Sequence[tuple[int, InternalRaftRequest | bytes]]) -> Applied:
        """Apply (index, request) pairs in order in one write transaction.

        Entries at or below the stored consistent index are skipped (already applied)."""
        applied = Applied(last_index=0)
        with self.backend.write() as txn:
            ci = self.backend.get_meta_u64(txn, META_CONSISTENT_INDEX)
            last = ci
            for index, item in entries:
                if index <= ci:
                    continue
                assert index > last, f"entry {index} applied after {last}"
                last = index
                if isinstance(item, bytes):
                    if not item:  # empty entry (e.g. a new leader's no-op)
                        continue
                    req = InternalRaftRequest.FromString(item)
                else:
                    req = item
                rid = req.header.ID or req.ID
                try:
                    resp, events, rev = self._apply_one(txn, req, applied)
                except EtcdError as exc:
                    applied.results.append((rid, exc))
                    continue
                if events:
                    applied.events.append((rev, events))
                applied.results.append((rid, resp))
            if last > ci:
                self.backend.put_meta_u64(txn, META_CONSISTENT_INDEX, last)
            if applied.compacted:
                failpoints.hit("compactBeforeCommitBatch")
        if applied.compacted:
            failpoints.hit("compactAfterCommitScheduledCompact")
            failpoints.hit("compactAfterCommitBatch")
        applied.last_index = last
        applied.size_in_use = self.backend.size_in_use()
        return applied

    def _apply_one(self, txn: Any, req: InternalRaftRequest, applied: Applied) -> _Result:
        for field_desc, value in req.ListFields():
            handler = _HANDLERS.get(field_desc.name)
            if handler is not None:
                return handler(self, txn, value, applied)
            if field_desc.name not in _NOOP_KINDS:
                break
        return raft_internal_pb2.EmptyResponse(), [], 0

    # --- one handler per request kind -------------------------------------------------------
    def _put(self, txn: Any, r: rpc_pb2.PutRequest, applied: Applied) -> _Result:
        resp, events = self._store.put(txn, r)
        return resp, events, resp.header.revision

    def _delete_range(self, txn: Any, r: rpc_pb2.DeleteRangeRequest, applied: Applied) -> _Result:
        resp, events = self._store.delete_range(txn, r)
        return resp, events, resp.header.revision

    def _txn(self, txn: Any, r: rpc_pb2.TxnRequest, applied: Applied) -> _Result:
        resp, events = self._store.txn(txn, r)
        return resp, events, self._store.current_revision(txn)

    def _compaction(self, txn: Any, r: rpc_pb2.CompactionRequest, applied: Applied) -> _Result:
        self._store.compact(txn, r.revision)
        applied.compacted = True
        resp = rpc_pb2.CompactionResponse()
        resp.header.revision = self._store.current_revision(txn)
        return resp, [], 0

    def _lease_grant(self, txn: Any, g: rpc_pb2.LeaseGrantRequest, applied: Applied) -> _Result:
        lease_id, ttl = self._lessor.grant(txn, g.ID, g.TTL, self._now())
        resp = rpc_pb2.LeaseGrantResponse(ID=lease_id, TTL=ttl)
        resp.header.revision = self._store.current_revision(txn)
        return resp, [], 0

    def _lease_revoke(self, txn: Any, r: rpc_pb2.LeaseRevokeRequest, applied: Applied) -> _Result:
        events = self._lessor.revoke(txn, r.ID)
        rev = self._store.current_revision(txn)
        resp = rpc_pb2.LeaseRevokeResponse()
        resp.header.revision = rev
        return resp, events, rev

    def _member_attr_set(
        self, txn: Any, a: membership_pb2.ClusterMemberAttrSetRequest, applied: Applied
    ) -> _Result:
        self.membership.set_attributes(
            txn, a.member_ID, a.member_attributes.name, list(a.member_attributes.client_urls)
        )
        return raft_internal_pb2.EmptyResponse(), [], 0

    def _alarm(self, txn: Any, req: rpc_pb2.AlarmRequest, applied: Applied) -> _Result:
        return self._apply_alarm(txn, req, applied), [], 0

    def apply_conf_change(self, index: int, cc: ConfChange) -> EtcdError | None:
        """Record a membership change (etcd's member JSON in the ConfChange context) in the
        same transaction as the consistent index.

        The change is validated against the membership at this point of the log, as etcd's
        ValidateConfigurationChange does: two concurrent MemberAdds with one peer URL must
        not both take effect. A rejected change is remembered (so a replay after a restart
        rejects it again without re-validating against a newer membership) and returned;
        the caller then applies a no-op change to raft."""
        rejected_key = schema.META_REJECTED_CONF_CHANGE_PREFIX + b"%016x" % index
        meta = self.backend.db(schema.META)
        with self.backend.write() as txn:
            ci = self.backend.get_meta_u64(txn, META_CONSISTENT_INDEX)
            if index <= ci:  # replay: the outcome was decided when it first applied
                raw = txn.get(rejected_key, db=meta)
                return None if raw is None else EtcdError(Code.FAILED_PRECONDITION,
                                                          bytes(raw).decode())
            problem = self._invalid_conf_change(cc)
            if problem is not None:
                txn.put(rejected_key, problem.message.encode(), db=meta)
            else:
                self._record_conf_change(txn, cc)
            self.backend.put_meta_u64(txn, META_CONSISTENT_INDEX, index)
        return problem

    def _invalid_conf_change(self, cc: ConfChange) -> EtcdError | None:
        members = self.membership.members
        t = cc.type
        if cc.node_id in self.membership.removed:
            return err(ErrMemberNotFound)
        if t in (ConfChangeType.ConfChangeAddNode, ConfChangeType.ConfChangeAddLearnerNode):
            m = MemberInfo.from_json(cc.context) if cc.context else MemberInfo(cc.node_id, [])
            existing = members.get(cc.node_id)
            promoting = (
                t == ConfChangeType.ConfChangeAddNode
                and existing is not None
                and existing.is_learner
            )
            if existing is not None and not promoting:
                return err(ErrMemberExist)
            if not promoting and any(
                set(m.peer_urls) & set(o.peer_urls) for o in members.values()
            ):
                return err(ErrPeerURLExist)
        elif t in (ConfChangeType.ConfChangeRemoveNode, ConfChangeType.ConfChangeUpdateNode):
            if cc.node_id not in members:
                return err(ErrMemberNotFound)
            if t == ConfChangeType.ConfChangeUpdateNode and cc.context:
                m = MemberInfo.from_json(cc.context)
                if any(
                    set(m.peer_urls) & set(o.peer_urls)
                    for o in members.values()
                    if o.id != cc.node_id
                ):
                    return err(ErrPeerURLExist)
        return None

    def _record_conf_change(self, txn: Any, cc: ConfChange) -> None:
        t = cc.type
        if t in (ConfChangeType.ConfChangeAddNode, ConfChangeType.ConfChangeAddLearnerNode):
            m = MemberInfo.from_json(cc.context) if cc.context else MemberInfo(cc.node_id, [])
            m.is_learner = t == ConfChangeType.ConfChangeAddLearnerNode
            if m.id in self.membership.members and not m.is_learner:
                self.membership.promote(txn, m.id)
            else:
                self.membership.add(txn, m)
        elif t == ConfChangeType.ConfChangeRemoveNode:
            self.membership.remove(txn, cc.node_id)
        elif t == ConfChangeType.ConfChangeUpdateNode and cc.context:
            m = MemberInfo.from_json(cc.context)
            self.membership.update_peer_urls(txn, m.id, m.peer_urls)

    def _apply_alarm(self, txn: Any, req: rpc_pb2.AlarmRequest, applied: Applied) -> Any:
        db = self.backend.db(schema.ALARM)
        resp = rpc_pb2.AlarmResponse()
        A = rpc_pb2.AlarmRequest
        if req.action == A.ACTIVATE and req.alarm != rpc_pb2.NONE:
            key = rpc_pb2.AlarmMember(memberID=req.memberID, alarm=req.alarm)
            txn.put(key.SerializeToString(deterministic=True), b"", db=db)
            self.alarms.add((req.memberID, req.alarm))
            resp.alarms.append(key)
            applied.alarms_changed = True
        elif req.action == A.DEACTIVATE:
            for mid, alarm in sorted(self.alarms):
                if (req.memberID in (0, mid)) and req.alarm in (rpc_pb2.NONE, alarm):
                    key = rpc_pb2.AlarmMember(memberID=mid, alarm=alarm)  # type: ignore[arg-type]
                    txn.delete(key.SerializeToString(deterministic=True), db=db)
                    self.alarms.discard((mid, alarm))
                    resp.alarms.append(key)
                    applied.alarms_changed = True
        else:
            for mid, alarm in sorted(self.alarms):
                resp.alarms.append(rpc_pb2.AlarmMember(memberID=mid, alarm=alarm))  # type: ignore[arg-type]
        resp.header.revision = self._store.current_revision(txn)
        return resp


_HANDLERS: dict[str, Callable[[Applier, Any, Any, Applied], _Result]] = {
    "put": Applier._put,
    "delete_range": Applier._delete_range,
    "txn": Applier._txn,
    "compaction": Applier._compaction,
    "lease_grant": Applier._lease_grant,
    "lease_revoke": Applier._lease_revoke,
    "alarm": Applier._alarm,
    "cluster_member_attr_set": Applier._member_attr_set,
}
