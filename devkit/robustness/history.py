"""History model for robustness runs: what clients asked, when, and what they were told.

An :class:`Operation` is one client request with its invoke time, its return time and its
outcome:

- ``ok``: the server answered; ``response`` holds what it said (header revision, kvs, ...).
- ``unknown``: the request failed or timed out in a way that does not say whether it took
  effect (deadline exceeded, connection lost, leader changed...). Checkers treat it as possibly
  applied at any point after its invoke, or never. Its return time is kept for reports only.
- ``error``: the server definitely rejected it (e.g. ``lease not found``): no effect.

Times are integers from one clock shared by every client of a run (``time.monotonic_ns`` by
default, or an abstract counter in tests). Real-time order is: A precedes B iff
``A.ret < B.invoke``.

Lease expiry is not a client request, but it deletes keys. A traffic generator that lets a lease
expire records a :class:`LeaseRevoke` with outcome ``unknown`` invoked when the lease's TTL ran
out ("the server may delete its keys at any point from now on"); when a client is told the lease
is gone (TimeToLive says -1, keepalive says TTL 0) it records :class:`LeaseExpired` with outcome
``ok``.

Watches are recorded separately (:class:`WatchRecord`): the create request, then every response
the stream delivered for that watch, with its receive time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Status = Literal["ok", "unknown", "error"]
OK: Final = "ok"
UNKNOWN: Final = "unknown"
ERROR: Final = "error"


@dataclass(frozen=True)
class KV:
    """A key-value as returned by a read. ``None`` fields were not recorded (not checked)."""

    key: str
    value: str
    mod_revision: int
    create_revision: int | None = None
    version: int | None = None
    lease: int | None = None


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Range:
    """Get (``end is None``) or range ``[key, end)`` at the current revision.

    ``serializable`` reads may be served stale by any member: they are not part of the
    linearizability check (only of the "no value nobody wrote" check).
    """

    key: str
    end: str | None = None
    serializable: bool = False
    kind: str = field(default="range", init=False)


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    lease: int = 0
    kind: str = field(default="put", init=False)


@dataclass(frozen=True)
class Delete:
    key: str
    end: str | None = None
    kind: str = field(default="delete", init=False)


CompareTarget = Literal["value", "mod", "create", "version", "lease"]
CompareOp = Literal["=", "!=", "<", ">"]


@dataclass(frozen=True)
class Compare:
    """One Txn compare on a single key (etcd semantics: comparing the value of a missing key is
    always false; other targets of a missing key compare as 0)."""

    key: str
    target: CompareTarget
    op: CompareOp
    operand: str | int


TxnOp = Range | Put | Delete


@dataclass(frozen=True)
class Txn:
    compares: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...] = ()
    kind: str = field(default="txn", init=False)


@dataclass(frozen=True)
class LeaseGrant:
    lease: int
    ttl: int
    kind: str = field(default="lease_grant", init=False)


@dataclass(frozen=True)
class LeaseRevoke:
    lease: int
    kind: str = field(default="lease_revoke", init=False)


@dataclass(frozen=True)
class LeaseExpired:
    """An observation: the client was told the lease no longer exists."""

    lease: int
    kind: str = field(default="lease_expired", init=False)


Request = Range | Put | Delete | Txn | LeaseGrant | LeaseRevoke | LeaseExpired


@dataclass(frozen=True)
class Response:
    """What the server said. ``revision`` is the header revision (for writes, the revision the
    write produced). ``responses`` are a Txn's per-op results in branch order."""

    revision: int | None = None
    kvs: tuple[KV, ...] | None = None
    count: int | None = None
    deleted: int | None = None
    succeeded: bool | None = None
    responses: tuple[Response, ...] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Operation:
    id: int
    client: int
    invoke: int
    ret: int | None
    request: Request
    status: Status = OK
    response: Response | None = None

    @property
    def unknown(self) -> bool:
        return self.status == UNKNOWN

    def describe(self) -> str:
        ret = "…" if self.ret is None else str(self.ret)
        head = f"#{self.id} c{self.client} [{self.invoke}..{ret}] {describe_request(self.request)}"
        if self.status == OK:
            return f"{head} -> {describe_response(self.response)}"
        err = self.response.error if self.response and self.response.error else ""
        return f"{head} -> {self.status.upper()}{' ' + err if err else ''}"


def _kv_text(kv: KV) -> str:
    extra = ""
    if kv.version is not None:
        extra += f" v{kv.version}"
    if kv.lease:
        extra += f" lease={kv.lease}"
    return f"{kv.key}={kv.value!r}@{kv.mod_revision}{extra}"


def describe_request(req: Request | TxnOp) -> str:
    if isinstance(req, Range):
        rng = req.key if req.end is None else f"[{req.key},{req.end})"
        return f"{'sget' if req.serializable else 'get'}({rng})"
    if isinstance(req, Put):
        return f"put({req.key}, {req.value!r}{f', lease={req.lease}' if req.lease else ''})"
    if isinstance(req, Delete):
        return f"delete({req.key if req.end is None else f'[{req.key},{req.end})'})"
    if isinstance(req, Txn):
        cmp = " && ".join(f"{c.target}({c.key}){c.op}{c.operand!r}" for c in req.compares)
        succ = "; ".join(describe_request(o) for o in req.success)
        fail = "; ".join(describe_request(o) for o in req.failure)
        return f"txn(if {cmp or 'true'} then {succ or '-'} else {fail or '-'})"
    if isinstance(req, LeaseGrant):
        return f"lease_grant({req.lease}, ttl={req.ttl})"
    if isinstance(req, LeaseRevoke):
        return f"lease_revoke({req.lease})"
    return f"lease_expired({req.lease})"


def describe_response(resp: Response | None) -> str:
    if resp is None:
        return "ok"
    parts = [f"rev={resp.revision}"]
    if resp.kvs is not None:
        parts.append("[" + ", ".join(_kv_text(kv) for kv in resp.kvs) + "]")
    if resp.deleted is not None:
        parts.append(f"deleted={resp.deleted}")
    if resp.succeeded is not None:
        parts.append("succeeded" if resp.succeeded else "failed-compare")
    if resp.responses:
        parts.append("{" + "; ".join(describe_response(r) for r in resp.responses) + "}")
    if resp.error:
        parts.append(f"error={resp.error}")
    return " ".join(parts)


# ---------------------------------------------------------------- watches


@dataclass(frozen=True)
class Event:
    type: Literal["put", "delete"]
    kv: KV  # for deletes: key and mod_revision (the deletion revision); value ""
    prev_kv: KV | None = None


@dataclass(frozen=True)
class WatchRequest:
    key: str
    end: str | None = None
    start_revision: int = 0
    prev_kv: bool = False
    progress_notify: bool = False
    filters: tuple[Literal["noput", "nodelete"], ...] = ()


@dataclass(frozen=True)
class WatchResponse:
    time: int
    revision: int  # header revision
    events: tuple[Event, ...] = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    fragment: bool = False

    @property
    def is_progress_notify(self) -> bool:
        return not self.events and not self.created and not self.canceled and not self.fragment


@dataclass
class WatchRecord:
    """One watch (one create request on some stream) and every response it got.

    ``resumes`` is the id of the watch this one continues after a disconnect, if any.
    """

    id: int
    client: int
    invoke: int
    request: WatchRequest
    responses: list[WatchResponse] = field(default_factory=list)
    resumes: int | None = None


@dataclass
class History:
    operations: list[Operation] = field(default_factory=list)
    watches: list[WatchRecord] = field(default_factory=list)
    initial_revision: int = 1

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {OK: 0, UNKNOWN: 0, ERROR: 0}
        for op in self.operations:
            out[op.status] += 1
        return out

    # -------------------------------------------------- JSON lines

    def to_jsonl(self) -> str:
        lines = [json.dumps({"type": "meta", "initial_revision": self.initial_revision})]
        for op in self.operations:
            lines.append(json.dumps({"type": "op", **_encode(op)}))
        for w in self.watches:
            lines.append(json.dumps({"type": "watch", **_encode(w)}))
        return "\n".join(lines) + "\n"

    def write_jsonl(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_jsonl())

    @classmethod
    def from_jsonl(cls, text: str) -> History:
        hist = cls()
        for line in text.splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            kind = d.pop("type")
            if kind == "meta":
                hist.initial_revision = int(d["initial_revision"])
            elif kind == "op":
                hist.operations.append(_decode_op(d))
            elif kind == "watch":
                hist.watches.append(_decode_watch(d))
        return hist


# ---------------------------------------------------------------- JSON encoding

_REQUEST_TYPES: dict[str, Any] = {
    "range": Range,
    "put": Put,
    "delete": Delete,
    "txn": Txn,
    "lease_grant": LeaseGrant,
    "lease_revoke": LeaseRevoke,
    "lease_expired": LeaseExpired,
}


def _encode(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _encode(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, (list, tuple)):
        return [_encode(x) for x in obj]
    return obj


def _kv(d: dict[str, Any] | None) -> KV | None:
    return None if d is None else KV(**d)


def _request(d: dict[str, Any]) -> Request:
    d = dict(d)
    kind = d.pop("kind")
    if kind == "txn":
        return Txn(
            compares=tuple(Compare(**c) for c in d["compares"]),
            success=tuple(_request(o) for o in d["success"]),  # type: ignore[misc]
            failure=tuple(_request(o) for o in d["failure"]),  # type: ignore[misc]
        )
    cls = _REQUEST_TYPES[kind]
    req: Request = cls(**d)
    return req


def _response(d: dict[str, Any] | None) -> Response | None:
    if d is None:
        return None
    kvs = d.get("kvs")
    subs = d.get("responses")
    return Response(
        revision=d.get("revision"),
        kvs=None if kvs is None else tuple(KV(**k) for k in kvs),
        count=d.get("count"),
        deleted=d.get("deleted"),
        succeeded=d.get("succeeded"),
        responses=None if subs is None else tuple(r for r in map(_response, subs) if r),
        error=d.get("error"),
    )


def _decode_op(d: dict[str, Any]) -> Operation:
    return Operation(
        id=d["id"],
        client=d["client"],
        invoke=d["invoke"],
        ret=d["ret"],
        request=_request(d["request"]),
        status=d["status"],
        response=_response(d["response"]),
    )


def _event(d: dict[str, Any]) -> Event:
    kv = _kv(d["kv"])
    assert kv is not None
    return Event(type=d["type"], kv=kv, prev_kv=_kv(d.get("prev_kv")))


def _decode_watch(d: dict[str, Any]) -> WatchRecord:
    req = dict(d["request"])
    req["filters"] = tuple(req.get("filters", ()))
    responses = []
    for r in d["responses"]:
        r = dict(r)
        r["events"] = tuple(_event(e) for e in r.get("events", ()))
        responses.append(WatchResponse(**r))
    return WatchRecord(
        id=d["id"],
        client=d["client"],
        invoke=d["invoke"],
        request=WatchRequest(**req),
        responses=responses,
        resumes=d.get("resumes"),
    )


# ---------------------------------------------------------------- recorder


class Recorder:
    """Thread-safe recorder that traffic generators call around every request.

    ``op = rec.record_invoke(client, Put("k", "v"))`` before sending;
    ``rec.record_return(op, Response(revision=7))`` on success,
    ``rec.record_return(op, error="deadline exceeded")`` when the outcome is unknown, or
    ``rec.record_return(op, error="lease not found", definite=True)`` for a sure rejection.
    Operations never returned are reported as ``unknown``.
    """

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns, initial_revision: int = 1):
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[int, int, Request]] = {}
        self._done: list[Operation] = []
        self._watches: dict[int, WatchRecord] = {}
        self._next = 0
        self.initial_revision = initial_revision

    def now(self) -> int:
        return self._clock()

    def record_invoke(self, client: int, request: Request) -> int:
        t = self._clock()
        with self._lock:
            op_id = self._next
            self._next += 1
            self._pending[op_id] = (client, t, request)
        return op_id

    def record_return(
        self,
        op_id: int,
        response: Response | None = None,
        *,
        error: str | None = None,
        definite: bool = False,
    ) -> Operation:
        t = self._clock()
        with self._lock:
            client, invoke, req = self._pending.pop(op_id)
            if error is None:
                status: Status = OK
                resp = response if response is not None else Response()
            else:
                status = ERROR if definite else UNKNOWN
                resp = Response(error=error)
            op = Operation(op_id, client, invoke, t, req, status, resp)
            self._done.append(op)
        return op

    def record_watch(self, client: int, request: WatchRequest, resumes: int | None = None) -> int:
        t = self._clock()
        with self._lock:
            wid = self._next
            self._next += 1
            self._watches[wid] = WatchRecord(wid, client, t, request, resumes=resumes)
        return wid

    def record_watch_response(self, watch_id: int, response: WatchResponse) -> None:
        with self._lock:
            self._watches[watch_id].responses.append(response)

    def history(self) -> History:
        with self._lock:
            ops = list(self._done)
            for op_id, (client, invoke, req) in self._pending.items():
                ops.append(Operation(op_id, client, invoke, None, req, UNKNOWN, None))
            ops.sort(key=lambda o: (o.invoke, o.id))
            return History(ops, list(self._watches.values()), self.initial_revision)


def iter_ops(ops: Iterable[TxnOp]) -> Iterator[TxnOp]:
    yield from ops


def request_keys(req: Request | TxnOp) -> set[str]:
    """Single keys a request names (range ends are handled by callers)."""
    if isinstance(req, (Range, Put, Delete)):
        return {req.key}
    if isinstance(req, Txn):
        keys = {c.key for c in req.compares}
        for o in (*req.success, *req.failure):
            keys |= request_keys(o)
        return keys
    return set()


def in_range(key: str, start: str, end: str | None) -> bool:
    if end is None:
        return key == start
    if end == "\0":  # etcd's "from key" convention
        return key >= start
    return start <= key < end
