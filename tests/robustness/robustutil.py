"""Helpers for the checker tests: a history builder and a random history generator driven by a
sequential reference model of etcd's KV semantics."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from devkit.robustness.history import (
    KV,
    OK,
    UNKNOWN,
    Compare,
    Delete,
    Event,
    History,
    LeaseRevoke,
    Operation,
    Put,
    Range,
    Request,
    Response,
    Txn,
    WatchRecord,
    WatchRequest,
    WatchResponse,
)


class B:
    """Build a history by hand: ``b.op(client, invoke, ret, request, response)``."""

    def __init__(self) -> None:
        self.h = History()
        self._id = 0

    def op(
        self,
        client: int,
        invoke: int,
        ret: int | None,
        req: Request,
        resp: Response | None = None,
        status: str = OK,
    ) -> Operation:
        op = Operation(self._id, client, invoke, ret, req, status, resp)  # type: ignore[arg-type]
        self._id += 1
        self.h.operations.append(op)
        return op

    def put(self, c: int, t0: int, t1: int, key: str, value: str, rev: int, lease: int = 0) -> None:
        self.op(c, t0, t1, Put(key, value, lease), Response(revision=rev))

    def get(self, c: int, t0: int, t1: int, key: str, rev: int, *kvs: KV) -> None:
        self.op(c, t0, t1, Range(key), Response(revision=rev, kvs=tuple(kvs), count=len(kvs)))

    def unknown(self, c: int, t0: int, req: Request) -> None:
        self.op(c, t0, t0 + 1, req, Response(error="deadline exceeded"), UNKNOWN)

    def watch(self, req: WatchRequest, *responses: WatchResponse, wid: int | None = None,
              resumes: int | None = None) -> WatchRecord:
        w = WatchRecord(wid if wid is not None else 1000 + len(self.h.watches), 9, 0, req,
                        list(responses), resumes)
        self.h.watches.append(w)
        return w


def ev_put(key: str, value: str, rev: int, version: int | None = None,
           create: int | None = None, prev: KV | None = None) -> Event:
    return Event("put", KV(key, value, rev, create, version), prev)


def ev_del(key: str, rev: int, prev: KV | None = None) -> Event:
    return Event("delete", KV(key, "", rev), prev)


def wresp(t: int, rev: int, *events: Event, fragment: bool = False,
          created: bool = False) -> WatchResponse:
    return WatchResponse(t, rev, tuple(events), created=created, fragment=fragment)


# ------------------------------------------------------------------ reference model


@dataclass
class Ref:
    rev: int = 1
    kv: dict[str, KV] = field(default_factory=dict)
    revoked: set[int] = field(default_factory=set)
    log: list[tuple[int, list[Event]]] = field(default_factory=list)

    def _put(self, key: str, value: str, lease: int, rev: int, evs: list[Event]) -> None:
        prev = self.kv.get(key)
        kv = KV(key, value, rev, prev.create_revision if prev else rev,
                (prev.version or 0) + 1 if prev else 1, lease)
        self.kv[key] = kv
        evs.append(Event("put", kv, prev))

    def _delete(self, key: str, rev: int, evs: list[Event]) -> int:
        prev = self.kv.pop(key, None)
        if prev is None:
            return 0
        evs.append(Event("delete", KV(key, "", rev), prev))
        return 1

    def _range(self, r: Range) -> Response:
        if r.end is None:
            kvs = [self.kv[r.key]] if r.key in self.kv else []
        else:
            kvs = [self.kv[k] for k in sorted(self.kv) if r.key <= k < r.end]
        return Response(revision=self.rev, kvs=tuple(kvs), count=len(kvs))

    def _cmp(self, c: Compare) -> bool:
        kv = self.kv.get(c.key)
        if kv is None:
            if c.target == "value":
                return False
            have: str | int = 0
        else:
            fields: dict[str, str | int | None] = {
                "value": kv.value, "mod": kv.mod_revision, "create": kv.create_revision,
                "version": kv.version, "lease": kv.lease}
            have = fields[c.target] or 0
        return {"=": have == c.operand, "!=": have != c.operand}.get(
            c.op, have < c.operand if c.op == "<" else have > c.operand)  # type: ignore[operator]

    def apply(self, req: Request) -> Response:
        new = self.rev + 1
        evs: list[Event] = []
        if isinstance(req, Range):
            return self._range(req)
        if isinstance(req, Put):
            if req.lease in self.revoked:
                return Response(error="lease not found")
            self._put(req.key, req.value, req.lease, new, evs)
            resp = Response(revision=new)
        elif isinstance(req, Delete):
            d = self._delete(req.key, new, evs)
            resp = Response(revision=new if d else self.rev, deleted=d)
        elif isinstance(req, LeaseRevoke):
            self.revoked.add(req.lease)
            for k in sorted(k for k, v in self.kv.items() if v.lease == req.lease):
                self._delete(k, new, evs)
            resp = Response(revision=new if evs else self.rev)
        elif isinstance(req, Txn):
            ok = all(self._cmp(c) for c in req.compares)
            subs = []
            for o in req.success if ok else req.failure:
                if isinstance(o, Put):
                    self._put(o.key, o.value, o.lease, new, evs)
                    subs.append(Response(revision=new))
                elif isinstance(o, Delete):
                    subs.append(Response(revision=new, deleted=self._delete(o.key, new, evs)))
                else:
                    subs.append(self._range(o))
            resp = Response(revision=new if evs else self.rev, succeeded=ok,
                            responses=tuple(subs))
        else:
            return Response(revision=self.rev)
        if evs:
            self.rev = new
            self.log.append((new, evs))
            if isinstance(req, Txn):
                resp = replace(resp, responses=tuple(
                    replace(s, revision=new) for s in resp.responses or ()))
        return resp


KEYS = ["a", "b", "c"]


def random_history(seed: int, n: int = 40, width: int = 25, p_unknown: float = 0.1,
                   watchers: int = 2, keys: list[str] = KEYS) -> History:
    """Linearizable by construction: op i takes effect at time 10*i+5 in the reference model;
    its invoke/return are drawn around that point, so windows overlap up to ``width``."""
    rng = random.Random(seed)
    ref = Ref()
    ops: list[Operation] = []
    vid = 0
    lease_ids = [101, 102]
    for i in range(n):
        t = 10 * i + 5
        key = rng.choice(keys)
        roll = rng.random()
        vid += 1
        value = f"v{vid}"
        req: Request
        if roll < 0.3:
            req = Range(key) if rng.random() < 0.7 else Range("a", "z")
        elif roll < 0.55:
            req = Put(key, value)
        elif roll < 0.65:
            req = Put(key, value, lease=rng.choice(lease_ids))
        elif roll < 0.72:
            req = Delete(key)
        elif roll < 0.88:
            cur = ref.kv.get(key)
            if rng.random() < 0.5:
                mod = cur.mod_revision if cur and rng.random() < 0.7 else rng.randint(0, ref.rev)
                cmp = Compare(key, "mod", "=", mod)
            else:
                val = cur.value if cur and rng.random() < 0.7 else "nope"
                cmp = Compare(key, "value", "=", val)
            other = rng.choice(keys)
            req = Txn((cmp,), (Put(key, value),), (Range(other),))
        elif roll < 0.96:
            other = rng.choice([k for k in keys if k != key])
            req = Txn((), (Put(key, value), Put(other, value + "'")))  # multi-key, one revision
        else:
            req = LeaseRevoke(rng.choice(lease_ids))
        invoke = t - rng.randint(1, width)
        ret = t + rng.randint(1, width)
        is_write = not isinstance(req, Range)
        if is_write and rng.random() < p_unknown:
            if rng.random() < 0.5:
                ref.apply(req)  # took effect, client never heard
            ops.append(Operation(i, i % 5, invoke, ret, req, UNKNOWN,
                                 Response(error="deadline exceeded")))
            continue
        resp = ref.apply(req)
        status = OK if resp.error is None else "error"
        ops.append(Operation(i, i % 5, invoke, ret, req, status, resp))  # type: ignore[arg-type]
    t_end = 10 * n + 100
    final = ref.apply(Range("a", "z"))
    ops.append(Operation(n, 0, t_end, t_end + 1, Range("a", "z"), OK, final))
    hist = History(sorted(ops, key=lambda o: o.invoke))
    for w in range(watchers):
        start = rng.randint(1, max(1, ref.rev))
        responses = []
        tt = 0
        for rev, evs in ref.log:
            if rev < start:
                continue
            tt += 1
            responses.append(WatchResponse(tt, rev, tuple(evs)))
            if rng.random() < 0.2:
                tt += 1
                responses.append(WatchResponse(tt, rev))  # progress notify
        hist.watches.append(WatchRecord(w, 50 + w, 0,
                                        WatchRequest("a", "z", start, prev_kv=True), responses))
    return hist
