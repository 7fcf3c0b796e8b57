"""Sans-IO core shared by ``Client`` (sync) and ``AsyncClient`` (asyncio).

Nothing here touches a socket or a thread: it builds requests (key / prefix / range_end
rules), turns responses into small result objects, maps gRPC statuses to typed errors,
decides whether a failed call may be retried, rotates endpoints, and keeps the state of a
watch (the revision to resume from) and of a lease keepalive. Each client method is a
``Call``: the service and method to invoke, the request, whether it is idempotent, and how
to convert the response. The two clients only perform the I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import grpc

from conch.client import errors as errs
from conch.proto.authpb import auth_pb2
from conch.proto.etcdserverpb import rpc_pb2 as pb
from conch.proto.mvccpb import kv_pb2

T = TypeVar("T")
Key = bytes | str
Value = bytes | str

# --------------------------------------------------------------------------- keys


def to_bytes(v: Key) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)


def prefix_end(prefix: Key) -> bytes:
    """etcd's prefixEnd: increment the last byte below 0xff, dropping trailing 0xff bytes;
    all 0xff (or empty) -> b"\\0" (every key >= prefix)."""
    p = bytearray(to_bytes(prefix))
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"


def key_range(
    key: Key, *, prefix: bool = False, range_end: Key | None = None, from_key: bool = False
) -> tuple[bytes, bytes]:
    """(key, range_end) bytes for the single key, a prefix, [key, range_end) or key onwards."""
    k = to_bytes(key)
    given = sum((prefix, range_end is not None, from_key))
    if given > 1:
        raise ValueError("give at most one of prefix=, range_end=, from_key=")
    if prefix:
        if not k:  # every key
            return b"\0", b"\0"
        return k, prefix_end(k)
    if from_key:
        return (k or b"\0"), b"\0"
    if range_end is not None:
        return k, to_bytes(range_end)
    return k, b""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Header:
    cluster_id: int
    member_id: int
    revision: int
    raft_term: int

    @classmethod
    def of(cls, h: pb.ResponseHeader) -> Header:
        return cls(h.cluster_id, h.member_id, h.revision, h.raft_term)


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def of(cls, kv: kv_pb2.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


@dataclass(frozen=True)
class Event:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    prev_kv: KeyValue | None

    @classmethod
    def of(cls, ev: kv_pb2.Event) -> Event:
        return cls(
            "PUT" if ev.type == kv_pb2.Event.PUT else "DELETE",
            KeyValue.of(ev.kv),
            KeyValue.of(ev.prev_kv) if ev.HasField("prev_kv") else None,
        )


@dataclass(frozen=True)
class GetResult:
    kvs: list[KeyValue]
    header: Header
    more: bool
    count: int
    raw: pb.RangeResponse = field(repr=False, compare=False)

    @classmethod
    def of(cls, r: pb.RangeResponse) -> GetResult:
        return cls([KeyValue.of(kv) for kv in r.kvs], Header.of(r.header), r.more, r.count, r)


@dataclass(frozen=True)
class PutResult:
    header: Header
    prev_kv: KeyValue | None
    raw: pb.PutResponse = field(repr=False, compare=False)

    @classmethod
    def of(cls, r: pb.PutResponse) -> PutResult:
        prev = KeyValue.of(r.prev_kv) if r.HasField("prev_kv") else None
        return cls(Header.of(r.header), prev, r)


@dataclass(frozen=True)
class DeleteResult:
    header: Header
    deleted: int
    prev_kvs: list[KeyValue]
    raw: pb.DeleteRangeResponse = field(repr=False, compare=False)

    @classmethod
    def of(cls, r: pb.DeleteRangeResponse) -> DeleteResult:
        return cls(Header.of(r.header), r.deleted, [KeyValue.of(kv) for kv in r.prev_kvs], r)


@dataclass(frozen=True)
class TxnResult:
    header: Header
    succeeded: bool
    responses: list[GetResult | PutResult | DeleteResult | TxnResult]
    raw: pb.TxnResponse = field(repr=False, compare=False)

    @classmethod
    def of(cls, r: pb.TxnResponse) -> TxnResult:
        out: list[GetResult | PutResult | DeleteResult | TxnResult] = []
        for op in r.responses:
            which = op.WhichOneof("response")
            if which == "response_range":
                out.append(GetResult.of(op.response_range))
            elif which == "response_put":
                out.append(PutResult.of(op.response_put))
            elif which == "response_delete_range":
                out.append(DeleteResult.of(op.response_delete_range))
            elif which == "response_txn":
                out.append(TxnResult.of(op.response_txn))
        return cls(Header.of(r.header), r.succeeded, out, r)


@dataclass(frozen=True)
class WatchResult:
    """One whole WatchResponse: never a part of a revision. No events = progress notify."""

    header: Header
    events: list[Event]
    raw: pb.WatchResponse = field(repr=False, compare=False)

    @property
    def is_progress_notify(self) -> bool:
        return not self.events


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int
    header: Header


@dataclass(frozen=True)
class LeaseTTL:
    id: int
    ttl: int  # -1: the lease does not exist
    granted_ttl: int
    keys: list[bytes]
    header: Header


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool

    @classmethod
    def of(cls, m: pb.Member) -> Member:
        return cls(m.ID, m.name, list(m.peerURLs), list(m.clientURLs), m.isLearner)


@dataclass(frozen=True)
class MemberListResult:
    header: Header
    members: list[Member]
    member: Member | None = None  # MemberAdd: the added member


@dataclass(frozen=True)
class Status:
    header: Header
    version: str
    db_size: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    errors: list[str]
    db_size_in_use: int
    is_learner: bool
    raw: pb.StatusResponse = field(repr=False, compare=False)


@dataclass(frozen=True)
class HashKV:
    header: Header
    hash: int
    compact_revision: int


@dataclass(frozen=True)
class Alarm:
    member_id: int
    alarm: Literal["NONE", "NOSPACE", "CORRUPT"]


# --------------------------------------------------------------------------- requests

SORT_ORDERS = {None: pb.RangeRequest.NONE, "none": pb.RangeRequest.NONE,
               "ascend": pb.RangeRequest.ASCEND, "descend": pb.RangeRequest.DESCEND}  # fmt: skip
SORT_TARGETS = {None: pb.RangeRequest.KEY, "key": pb.RangeRequest.KEY,
                "version": pb.RangeRequest.VERSION, "create": pb.RangeRequest.CREATE,
                "mod": pb.RangeRequest.MOD, "value": pb.RangeRequest.VALUE}  # fmt: skip


def range_request(
    key: Key,
    *,
    prefix: bool = False,
    range_end: Key | None = None,
    from_key: bool = False,
    revision: int = 0,
    limit: int = 0,
    serializable: bool = False,
    keys_only: bool = False,
    count_only: bool = False,
    sort_order: str | None = None,
    sort_target: str | None = None,
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> pb.RangeRequest:
    k, end = key_range(key, prefix=prefix, range_end=range_end, from_key=from_key)
    try:
        order = SORT_ORDERS[sort_order.lower() if sort_order else None]
        target = SORT_TARGETS[sort_target.lower() if sort_target else None]
    except KeyError as e:
        raise ValueError(f"unknown sort option {e.args[0]!r}") from None
    return pb.RangeRequest(
        key=k, range_end=end, revision=revision, limit=limit, serializable=serializable,
        keys_only=keys_only, count_only=count_only, sort_order=order, sort_target=target,
        min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
        min_create_revision=min_create_revision, max_create_revision=max_create_revision,
    )  # fmt: skip


def put_request(
    key: Key,
    value: Value,
    *,
    lease: int = 0,
    prev_kv: bool = False,
    ignore_value: bool = False,
    ignore_lease: bool = False,
) -> pb.PutRequest:
    return pb.PutRequest(
        key=to_bytes(key), value=to_bytes(value), lease=lease, prev_kv=prev_kv,
        ignore_value=ignore_value, ignore_lease=ignore_lease,
    )  # fmt: skip


def delete_request(
    key: Key,
    *,
    prefix: bool = False,
    range_end: Key | None = None,
    from_key: bool = False,
    prev_kv: bool = False,
) -> pb.DeleteRangeRequest:
    k, end = key_range(key, prefix=prefix, range_end=range_end, from_key=from_key)
    return pb.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv)


# --------------------------------------------------------------------------- txn builder

_RESULTS = {
    "==": pb.Compare.EQUAL, "!=": pb.Compare.NOT_EQUAL,
    ">": pb.Compare.GREATER, "<": pb.Compare.LESS,
}  # fmt: skip


class Compare:
    """``Compare.value(k) == b"x"``, ``Compare.version(k) > 0``, ``Compare.create(k) == 0``,
    ``Compare.mod(k) < rev``, ``Compare.lease(k) == lease_id``; each also takes
    ``range_end=`` or ``prefix=True`` (then every key in the range must satisfy it)."""

    __slots__ = ("target", "key", "range_end", "result", "operand")

    def __init__(self, target: str, key: Key, range_end: bytes = b"") -> None:
        self.target = target
        self.key = to_bytes(key)
        self.range_end = range_end
        self.result: str | None = None
        self.operand: int | bytes | None = None

    @classmethod
    def _make(
        cls, target: str, key: Key, range_end: Key | None, prefix: bool
    ) -> Compare:
        k, end = key_range(key, prefix=prefix, range_end=range_end)
        return cls(target, k, end)

    @classmethod
    def value(cls, key: Key, *, range_end: Key | None = None, prefix: bool = False) -> Compare:
        return cls._make("value", key, range_end, prefix)

    @classmethod
    def version(cls, key: Key, *, range_end: Key | None = None, prefix: bool = False) -> Compare:
        return cls._make("version", key, range_end, prefix)

    @classmethod
    def create(cls, key: Key, *, range_end: Key | None = None, prefix: bool = False) -> Compare:
        return cls._make("create", key, range_end, prefix)

    @classmethod
    def mod(cls, key: Key, *, range_end: Key | None = None, prefix: bool = False) -> Compare:
        return cls._make("mod", key, range_end, prefix)

    @classmethod
    def lease(cls, key: Key, *, range_end: Key | None = None, prefix: bool = False) -> Compare:
        return cls._make("lease", key, range_end, prefix)

    def _set(self, op: str, other: object) -> Compare:
        if self.result is not None:
            raise ValueError("compare already has an operator")
        if self.target == "value":
            if not isinstance(other, bytes | str):
                raise TypeError("value compares take bytes or str")
            self.operand = to_bytes(other)
        else:
            if not isinstance(other, int) or isinstance(other, bool):
                raise TypeError(f"{self.target} compares take an int")
            self.operand = other
        self.result = op
        return self

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._set("==", other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._set("!=", other)

    def __gt__(self, other: object) -> Compare:
        return self._set(">", other)

    def __lt__(self, other: object) -> Compare:
        return self._set("<", other)

    __hash__ = None  # type: ignore[assignment]

    def to_proto(self) -> pb.Compare:
        if self.result is None or self.operand is None:
            raise ValueError(f"incomplete compare on {self.key!r}: use ==, !=, > or <")
        c = pb.Compare(key=self.key, range_end=self.range_end, result=_RESULTS[self.result])
        if self.target == "value":
            assert isinstance(self.operand, bytes)
            c.target, c.value = pb.Compare.VALUE, self.operand
        else:
            assert isinstance(self.operand, int)
            if self.target == "version":
                c.target, c.version = pb.Compare.VERSION, self.operand
            elif self.target == "create":
                c.target, c.create_revision = pb.Compare.CREATE, self.operand
            elif self.target == "mod":
                c.target, c.mod_revision = pb.Compare.MOD, self.operand
            else:
                c.target, c.lease = pb.Compare.LEASE, self.operand
        return c

    def __repr__(self) -> str:
        return f"Compare.{self.target}({self.key!r}) {self.result} {self.operand!r}"


class Op:
    """Txn operations: ``Op.get(k, **get_kwargs)``, ``Op.put(k, v, **put_kwargs)``,
    ``Op.delete(k, **delete_kwargs)``, ``Op.txn(compare, success, failure)``."""

    __slots__ = ("request",)

    def __init__(self, request: pb.RequestOp) -> None:
        self.request = request

    @classmethod
    def get(cls, key: Key, **kwargs: Any) -> Op:
        return cls(pb.RequestOp(request_range=range_request(key, **kwargs)))

    @classmethod
    def put(cls, key: Key, value: Value, **kwargs: Any) -> Op:
        return cls(pb.RequestOp(request_put=put_request(key, value, **kwargs)))

    @classmethod
    def delete(cls, key: Key, **kwargs: Any) -> Op:
        return cls(pb.RequestOp(request_delete_range=delete_request(key, **kwargs)))

    @classmethod
    def txn(
        cls,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
    ) -> Op:
        return cls(pb.RequestOp(request_txn=txn_request(compare, success, failure)))

    def __repr__(self) -> str:
        return f"Op({self.request.WhichOneof('request')})"


def txn_request(
    compare: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op]
) -> pb.TxnRequest:
    return pb.TxnRequest(
        compare=[c.to_proto() for c in compare],
        success=[o.request for o in success],
        failure=[o.request for o in failure],
    )


def txn_is_read_only(req: pb.TxnRequest) -> bool:
    for op in (*req.success, *req.failure):
        which = op.WhichOneof("request")
        if which in ("request_put", "request_delete_range"):
            return False
        if which == "request_txn" and not txn_is_read_only(op.request_txn):
            return False
    return True


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class Call(Generic[T]):
    """One unary RPC: ``service``/``method`` of etcdserverpb, the request, whether it may be
    re-sent after an ambiguous failure, and the response -> result conversion."""

    service: str
    method: str
    request: Any
    idempotent: bool
    convert: Callable[[Any], T]
    auth: bool = True  # send the token (Authenticate itself does not)


def _header(r: Any) -> Header:
    return Header.of(r.header)


def get(key: Key, **kw: Any) -> Call[GetResult]:
    return Call("KV", "Range", range_request(key, **kw), True, GetResult.of)


def put(key: Key, value: Value, **kw: Any) -> Call[PutResult]:
    return Call("KV", "Put", put_request(key, value, **kw), False, PutResult.of)


def delete(key: Key, **kw: Any) -> Call[DeleteResult]:
    return Call("KV", "DeleteRange", delete_request(key, **kw), False, DeleteResult.of)


def txn(
    compare: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op]
) -> Call[TxnResult]:
    req = txn_request(compare, success, failure)
    return Call("KV", "Txn", req, txn_is_read_only(req), TxnResult.of)


def compact(revision: int, physical: bool = False) -> Call[Header]:
    req = pb.CompactionRequest(revision=revision, physical=physical)
    return Call("KV", "Compact", req, False, _header)


def lease_grant(ttl: int, lease_id: int = 0) -> Call[Lease]:
    return Call(
        "Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=ttl, ID=lease_id), False,
        lambda r: Lease(r.ID, r.TTL, Header.of(r.header)),
    )  # fmt: skip


def lease_revoke(lease_id: int) -> Call[Header]:
    return Call("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id), False, _header)


def lease_time_to_live(lease_id: int, keys: bool = False) -> Call[LeaseTTL]:
    return Call(
        "Lease", "LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys), True,
        lambda r: LeaseTTL(r.ID, r.TTL, r.grantedTTL, list(r.keys), Header.of(r.header)),
    )  # fmt: skip


def leases() -> Call[list[int]]:
    return Call(
        "Lease", "LeaseLeases", pb.LeaseLeasesRequest(), True, lambda r: [x.ID for x in r.leases]
    )


def _members(r: Any) -> MemberListResult:
    added = None
    if isinstance(r, pb.MemberAddResponse) and r.HasField("member"):
        added = Member.of(r.member)
    return MemberListResult(Header.of(r.header), [Member.of(m) for m in r.members], added)


def member_list() -> Call[MemberListResult]:
    return Call("Cluster", "MemberList", pb.MemberListRequest(), True, _members)


def member_add(peer_urls: Sequence[str], learner: bool = False) -> Call[MemberListResult]:
    req = pb.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner)
    return Call("Cluster", "MemberAdd", req, False, _members)


def member_remove(member_id: int) -> Call[MemberListResult]:
    return Call("Cluster", "MemberRemove", pb.MemberRemoveRequest(ID=member_id), False, _members)


def member_update(member_id: int, peer_urls: Sequence[str]) -> Call[MemberListResult]:
    req = pb.MemberUpdateRequest(ID=member_id, peerURLs=list(peer_urls))
    return Call("Cluster", "MemberUpdate", req, False, _members)


def member_promote(member_id: int) -> Call[MemberListResult]:
    req = pb.MemberPromoteRequest(ID=member_id)
    return Call("Cluster", "MemberPromote", req, False, _members)


def _status(r: pb.StatusResponse) -> Status:
    return Status(
        Header.of(r.header), r.version, r.dbSize, r.leader, r.raftIndex, r.raftTerm,
        r.raftAppliedIndex, list(r.errors), r.dbSizeInUse, r.isLearner, r,
    )  # fmt: skip


def status() -> Call[Status]:
    return Call("Maintenance", "Status", pb.StatusRequest(), True, _status)


def hash_kv(revision: int = 0) -> Call[HashKV]:
    return Call(
        "Maintenance", "HashKV", pb.HashKVRequest(revision=revision), True,
        lambda r: HashKV(Header.of(r.header), r.hash, r.compact_revision),
    )  # fmt: skip


_ALARM_NAMES: dict[int, Literal["NONE", "NOSPACE", "CORRUPT"]] = {
    0: "NONE", 1: "NOSPACE", 2: "CORRUPT"
}  # fmt: skip


def _alarms(r: pb.AlarmResponse) -> list[Alarm]:
    return [Alarm(a.memberID, _ALARM_NAMES.get(a.alarm, "NONE")) for a in r.alarms]


def alarms() -> Call[list[Alarm]]:
    return Call("Maintenance", "Alarm", pb.AlarmRequest(action=pb.AlarmRequest.GET), True, _alarms)


def alarm_disarm(member_id: int = 0, alarm: str = "NOSPACE") -> Call[list[Alarm]]:
    code = {v: k for k, v in _ALARM_NAMES.items()}[alarm.upper()]  # type: ignore[index]
    req = pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=member_id, alarm=code)  # type: ignore[arg-type]
    return Call("Maintenance", "Alarm", req, False, _alarms)


def defragment() -> Call[Header]:
    return Call("Maintenance", "Defragment", pb.DefragmentRequest(), False, _header)


def move_leader(target_id: int) -> Call[Header]:
    req = pb.MoveLeaderRequest(targetID=target_id)
    return Call("Maintenance", "MoveLeader", req, False, _header)


# -- auth


def authenticate(user: str, password: str) -> Call[str]:
    req = pb.AuthenticateRequest(name=user, password=password)
    return Call("Auth", "Authenticate", req, True, lambda r: str(r.token), auth=False)


def _auth_call(method: str, req: Any, idempotent: bool = False) -> Call[Header]:
    return Call("Auth", method, req, idempotent, _header)


def auth_enable() -> Call[Header]:
    return _auth_call("AuthEnable", pb.AuthEnableRequest())


def auth_disable() -> Call[Header]:
    return _auth_call("AuthDisable", pb.AuthDisableRequest())


def user_add(name: str, password: str = "", no_password: bool = False) -> Call[Header]:
    opts = auth_pb2.UserAddOptions(no_password=no_password)
    return _auth_call("UserAdd", pb.AuthUserAddRequest(name=name, password=password, options=opts))


def user_delete(name: str) -> Call[Header]:
    return _auth_call("UserDelete", pb.AuthUserDeleteRequest(name=name))


def user_change_password(name: str, password: str) -> Call[Header]:
    req = pb.AuthUserChangePasswordRequest(name=name, password=password)
    return _auth_call("UserChangePassword", req)


def user_get(name: str) -> Call[list[str]]:
    req = pb.AuthUserGetRequest(name=name)
    return Call("Auth", "UserGet", req, True, lambda r: list(r.roles))


def user_list() -> Call[list[str]]:
    return Call("Auth", "UserList", pb.AuthUserListRequest(), True, lambda r: list(r.users))


def user_grant_role(user: str, role: str) -> Call[Header]:
    return _auth_call("UserGrantRole", pb.AuthUserGrantRoleRequest(user=user, role=role))


def user_revoke_role(user: str, role: str) -> Call[Header]:
    return _auth_call("UserRevokeRole", pb.AuthUserRevokeRoleRequest(name=user, role=role))


def role_add(name: str) -> Call[Header]:
    return _auth_call("RoleAdd", pb.AuthRoleAddRequest(name=name))


def role_delete(name: str) -> Call[Header]:
    return _auth_call("RoleDelete", pb.AuthRoleDeleteRequest(role=name))


def role_list() -> Call[list[str]]:
    return Call("Auth", "RoleList", pb.AuthRoleListRequest(), True, lambda r: list(r.roles))


_PERM_TYPES = {"read": auth_pb2.Permission.READ, "write": auth_pb2.Permission.WRITE,
               "readwrite": auth_pb2.Permission.READWRITE}  # fmt: skip


def role_grant_permission(
    role: str, key: Key, perm: str = "readwrite", *, prefix: bool = False,
    range_end: Key | None = None, from_key: bool = False,
) -> Call[Header]:  # fmt: skip
    k, end = key_range(key, prefix=prefix, range_end=range_end, from_key=from_key)
    p = auth_pb2.Permission(permType=_PERM_TYPES[perm.lower()], key=k, range_end=end)
    return _auth_call("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name=role, perm=p))


def role_revoke_permission(
    role: str, key: Key, *, prefix: bool = False, range_end: Key | None = None,
    from_key: bool = False,
) -> Call[Header]:  # fmt: skip
    k, end = key_range(key, prefix=prefix, range_end=range_end, from_key=from_key)
    req = pb.AuthRoleRevokePermissionRequest(role=role, key=k, range_end=end)
    return _auth_call("RoleRevokePermission", req)


# --------------------------------------------------------------------------- errors / retry

# UNAVAILABLE texts that mean the request never reached a server (safe to re-send anything).
_NOT_SENT_MARKERS = (
    "failed to connect",
    "connection refused",
    "connections to all backends failing",
    "no connection available",
    "there is no address available",
    "dns resolution failed",
    "empty address list",
)


def error_from_rpc(e: grpc.RpcError) -> errs.ClientError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    return errs.from_status(code, details)


def not_sent(err: errs.ClientError) -> bool:
    """True when an UNAVAILABLE error says the request never left the client."""
    if err.code != grpc.StatusCode.UNAVAILABLE or err.message.startswith("etcdserver:"):
        return False
    low = err.message.lower()
    return any(m in low for m in _NOT_SENT_MARKERS)


def should_retry(err: errs.ClientError, idempotent: bool) -> bool:
    """Retry on the next endpoint? Idempotent calls: on any UNAVAILABLE. Mutations (as Go
    clientv3): only when not applied -- "etcdserver: no leader", or never sent at all."""
    if err.code != grpc.StatusCode.UNAVAILABLE:
        return False
    if idempotent:
        return True
    return isinstance(err, errs.NoLeader) or not_sent(err)


class Endpoints:
    """Sticky endpoint selection: calls go to the current endpoint; a retryable failure
    moves to the next one."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        eps = [normalize_endpoint(e) for e in endpoints]
        if not eps:
            raise ValueError("at least one endpoint is required")
        self.all = eps
        self.index = 0

    @property
    def current(self) -> str:
        return self.all[self.index]

    def failed(self, endpoint: str) -> None:
        if self.current == endpoint:
            self.index = (self.index + 1) % len(self.all)

    def order(self) -> list[str]:
        """Endpoints to try for one call: the current one first, then the others in turn."""
        return self.all[self.index :] + self.all[: self.index]


def normalize_endpoint(ep: str) -> str:
    for scheme in ("http://", "https://", "unix://"):
        if ep.startswith(scheme) and scheme != "unix://":
            ep = ep[len(scheme) :]
    return ep.rstrip("/")


def channel_options() -> list[tuple[str, Any]]:
    """gRPC channel options: short reconnect backoff (a restarted member is found again
    quickly), etcd's unbounded message sizes."""
    return [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.max_receive_message_length", 2**31 - 1),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.enable_retries", 0),
    ]


def tls_credentials(
    ca_cert: str | bytes | None, cert_cert: str | bytes | None, cert_key: str | bytes | None
) -> grpc.ChannelCredentials | None:
    """ssl_channel_credentials from file paths (str) or PEM bytes; None = plaintext."""
    if ca_cert is None and cert_cert is None and cert_key is None:
        return None
    if (cert_cert is None) != (cert_key is None):
        raise ValueError("cert_cert and cert_key must be given together")

    def load(v: str | bytes | None) -> bytes | None:
        if v is None or isinstance(v, bytes):
            return v
        with open(v, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(
        root_certificates=load(ca_cert), private_key=load(cert_key),
        certificate_chain=load(cert_cert),
    )  # fmt: skip


# --------------------------------------------------------------------------- watch state


@dataclass
class WatchSpec:
    key: bytes
    range_end: bytes
    start_revision: int
    prev_kv: bool
    no_put: bool
    no_delete: bool
    progress_notify: bool


def watch_spec(
    key: Key,
    *,
    prefix: bool = False,
    range_end: Key | None = None,
    from_key: bool = False,
    start_revision: int = 0,
    prev_kv: bool = False,
    no_put: bool = False,
    no_delete: bool = False,
    progress_notify: bool = False,
) -> WatchSpec:
    k, end = key_range(key, prefix=prefix, range_end=range_end, from_key=from_key)
    return WatchSpec(k or b"\0", end, start_revision, prev_kv, no_put, no_delete, progress_notify)


class WatchState:
    """The protocol of one watch across reconnects.

    ``create_request()`` gives the request for the next stream: the original one first, then
    one starting at ``next_revision`` (last delivered revision + 1, or the creation header's
    revision + 1 when nothing was delivered), so a resumed watch neither skips nor repeats a
    revision. ``on_response()`` returns what to deliver (a WatchResult, or a ClientError that
    ends the watch, or None for control messages).
    """

    def __init__(self, spec: WatchSpec) -> None:
        self.spec = spec
        self.next_revision = spec.start_revision  # 0 = "from now" until created
        self.created = False
        self.watch_id: int | None = None
        self.done = False

    def create_request(self) -> pb.WatchRequest:
        s = self.spec
        filters = []
        if s.no_put:
            filters.append(pb.WatchCreateRequest.NOPUT)
        if s.no_delete:
            filters.append(pb.WatchCreateRequest.NODELETE)
        self.watch_id = None
        return pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=s.key, range_end=s.range_end, start_revision=self.next_revision,
                progress_notify=s.progress_notify, filters=filters, prev_kv=s.prev_kv,
            )
        )  # fmt: skip

    def cancel_request(self) -> pb.WatchRequest | None:
        if self.watch_id is None:
            return None
        return pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=self.watch_id))

    def on_response(self, r: pb.WatchResponse) -> WatchResult | errs.ClientError | None:
        if r.created:
            self.created = True
            self.watch_id = r.watch_id
            if self.next_revision == 0:
                self.next_revision = r.header.revision + 1
            if not r.canceled:
                return None
        if r.canceled:
            self.done = True
            if r.compact_revision:
                return errs.Compacted(compact_revision=r.compact_revision)
            reason = r.cancel_reason or "etcdserver: watch canceled"
            if reason == errs.Compacted().message:
                return errs.Compacted(compact_revision=r.compact_revision)
            return errs.from_status(grpc.StatusCode.CANCELLED, reason)
        if r.compact_revision:  # defensive: compaction without cancel
            self.done = True
            return errs.Compacted(compact_revision=r.compact_revision)
        if r.events:
            self.next_revision = r.events[-1].kv.mod_revision + 1
        elif r.watch_id == -1 or r.header.revision >= self.next_revision:
            # progress notification: everything up to header.revision was delivered
            self.next_revision = max(self.next_revision, r.header.revision + 1)
        events = [Event.of(e) for e in r.events]
        return WatchResult(Header.of(r.header), events, r)

    def merge_fragment(self, parts: list[pb.WatchResponse]) -> pb.WatchResponse:
        """Join a fragmented response (fragment=True on all but the last) into one."""
        merged = pb.WatchResponse()
        merged.CopyFrom(parts[-1])
        del merged.events[:]
        for p in parts:
            merged.events.extend(p.events)
        merged.fragment = False
        return merged


# --------------------------------------------------------------------------- keepalive state


@dataclass
class KeepAliveState:
    """Lease keepalive bookkeeping: when to send next (TTL/3), the send time of the last
    acknowledged request (for callers computing a safe local deadline), and whether the
    lease is gone (TTL <= 0 answered)."""

    lease_id: int
    ttl: int = 0
    sent_at: list[float] = dataclasses.field(default_factory=list)
    last_ack_sent_at: float | None = None
    gone: bool = False

    def request(self, now: float) -> pb.LeaseKeepAliveRequest:
        self.sent_at.append(now)
        return pb.LeaseKeepAliveRequest(ID=self.lease_id)

    def on_response(self, r: pb.LeaseKeepAliveResponse) -> int:
        if self.sent_at:
            self.last_ack_sent_at = self.sent_at.pop(0)
        self.ttl = r.TTL
        if r.TTL <= 0:
            self.gone = True
        return r.TTL

    def interval(self) -> float:
        return max(self.ttl / 3.0, 0.5) if self.ttl > 0 else 0.5
