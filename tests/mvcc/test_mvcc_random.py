"""Randomized differential test against a tiny reference model (fixed seed)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from conch.errors import ErrCompacted, ErrFutureRev, EtcdError
from conch.mvcc import check_txn
from conch.proto.etcdserverpb import rpc_pb2 as pb
from conch.proto.mvccpb.kv_pb2 import Event
from tests.mvcc.mvcc_helpers import Harness

KV = tuple[bytes, bytes, int, int, int, int]  # key, value, create, mod, version, lease
PUT, DELETE = Event.PUT, Event.DELETE
C = pb.Compare


@dataclass
class Model:
    rev: int = 1
    compact: int = -1
    hist: dict[bytes, list[tuple[int, KV | None]]] = field(default_factory=dict)
    events: dict[int, list[tuple[int, bytes, KV | None]]] = field(default_factory=dict)

    def at(self, key: bytes, rev: int) -> KV | None:
        cur = None
        for r, v in self.hist.get(key, []):
            if r > rev:
                break
            cur = v
        return cur

    def live(self, rev: int) -> dict[bytes, KV]:
        out = {}
        for k in self.hist:
            v = self.at(k, rev)
            if v is not None:
                out[k] = v
        return out

    def in_range(self, key: bytes, end: bytes, rev: int) -> list[KV]:
        live = self.live(rev)
        if end == b"":
            return [live[key]] if key in live else []
        return [live[k] for k in sorted(live) if k >= key and (end == b"\x00" or k < end)]


class Writer:
    """One request in the model: changes share revision model.rev+1."""

    def __init__(self, m: Model) -> None:
        self.m = m
        self.changes: list[tuple[int, bytes, KV | None]] = []
        self.state = m.live(m.rev)

    def put(self, key: bytes, value: bytes, lease: int) -> None:
        rev = self.m.rev + 1
        old = self.state.get(key)
        new = (key, value, old[2] if old else rev, rev, old[4] + 1 if old else 1, lease)
        self.state[key] = new
        self.changes.append((PUT, key, new))

    def delete(self, key: bytes, end: bytes) -> int:
        if end == b"":
            ks = [key] if key in self.state else []
        else:
            ks = [k for k in sorted(self.state) if k >= key and (end == b"\x00" or k < end)]
        for k in ks:
            del self.state[k]
            self.changes.append((DELETE, k, None))
        return len(ks)

    def commit(self) -> None:
        if not self.changes:
            return
        self.m.rev += 1
        for _, k, v in self.changes:
            self.m.hist.setdefault(k, []).append((self.m.rev, v))
        self.m.events[self.m.rev] = self.changes


def tup(kv: object) -> KV:
    return (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)  # type: ignore[attr-defined]


KEYS = [b"a", b"a\x00", b"ab", b"b", b"b\x00\x00", b"c", b"\x00", b"\xff"]


def rkey(rnd: random.Random) -> bytes:
    return rnd.choice(KEYS)


def rend(rnd: random.Random) -> bytes:
    return rnd.choice([b"", b"", b"\x00", rkey(rnd), b"b", b"z"])


def check_range(h: Harness, m: Model, rnd: random.Random) -> None:
    key = rkey(rnd)
    end = rend(rnd)
    if end not in (b"", b"\x00") and end <= key:
        end = b""
    rev = rnd.choice([0, m.rev, rnd.randint(max(m.compact, 1), m.rev), m.rev + 1, 1])
    limit = rnd.choice([0, 0, 1, 2, 5])
    target = rnd.randint(0, 4)
    order = rnd.randint(0, 2)
    mn = rnd.choice([0, 0, 0, rnd.randint(1, m.rev)])
    req = pb.RangeRequest(
        key=key,
        range_end=end,
        revision=rev,
        limit=limit,
        sort_order=order,  # type: ignore[arg-type]  # protoc stub: enum fields take plain ints too
        sort_target=target,  # type: ignore[arg-type]  # protoc stub: enum fields take plain ints too
        min_mod_revision=mn,
        keys_only=rnd.random() < 0.2,
    )
    eff = m.rev if rev <= 0 else rev
    try:
        resp = h.store.range(req)
    except EtcdError as e:
        if rev > m.rev:
            assert e == ErrFutureRev
        else:
            assert e == ErrCompacted and eff < m.compact
        return
    assert rev <= m.rev and eff >= m.compact
    assert resp.header.revision == m.rev
    want = m.in_range(key, end, eff)
    assert resp.count == len(want)
    got = [tup(x) for x in resp.kvs]
    idx = {KEYS.index(x[0]) if x[0] in KEYS else -1 for x in got}
    assert len(idx) == len(got)
    filtered = [x for x in want if not (mn and x[3] < mn)]
    fetch_limited = limit > 0 and order == 0 and not mn
    if fetch_limited:
        filtered = filtered[: limit + 1]
    if req.keys_only:
        filtered = [(x[0], b"", x[2], x[3], x[4], x[5]) for x in filtered]
    col = {0: 0, 1: 4, 2: 2, 3: 3, 4: 1}[target]
    eff_order = 1 if (order == 0 and target != 0) else order
    if eff_order == 0:
        expect = filtered[:limit] if limit else filtered
        assert got == expect
    else:
        vals = sorted(x[col] for x in filtered)
        if eff_order == 2:
            vals.reverse()
        if limit:
            vals = vals[:limit]
        assert [x[col] for x in got] == vals
        assert set(got) <= set(filtered)
    assert resp.more == (limit > 0 and len(filtered) > limit)


def test_random_against_model(h: Harness) -> None:
    rnd = random.Random(20240611)
    m = Model()
    for step in range(3000):
        x = rnd.random()
        if x < 0.40:
            key, lease = rkey(rnd), rnd.choice([0, 0, 1, 2])
            value = rnd.choice([b"", b"v%d" % step])
            w = Writer(m)
            with h.backend.write() as t:
                resp, evs = h.store.put(t, pb.PutRequest(key=key, value=value, lease=lease))
            w.put(key, value, lease)
            w.commit()
            assert resp.header.revision == m.rev
            assert [(e.type, tup(e.kv)) for e in evs] == [(PUT, m.live(m.rev)[key])]
        elif x < 0.55:
            key, end = rkey(rnd), rend(rnd)
            w = Writer(m)
            n = w.delete(key, end)
            with h.backend.write() as t:
                dresp, evs = h.store.delete_range(
                    t, pb.DeleteRangeRequest(key=key, range_end=end, prev_kv=True)
                )
            before = m.rev
            w.commit()
            assert dresp.deleted == n and len(dresp.prev_kvs) == n
            assert m.rev == before + (1 if n else 0) == h.rev()
            assert [(e.type, e.kv.key, e.kv.mod_revision) for e in evs] == [
                (DELETE, k, m.rev) for _, k, _ in w.changes
            ]
        elif x < 0.70:
            k1, k2 = rkey(rnd), rkey(rnd)
            cmp = C(
                key=k1,
                target=C.VERSION,
                result=rnd.randint(0, 3),  # type: ignore[arg-type]  # protoc stub: enum takes int
                version=rnd.randint(0, 2),
            )
            succ = [
                pb.RequestOp(request_put=pb.PutRequest(key=k1, value=b"s%d" % step)),
                pb.RequestOp(request_range=pb.RangeRequest(key=b"\x00", range_end=b"\x00")),
                pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k2)),
            ]
            fail = [pb.RequestOp(request_put=pb.PutRequest(key=k2, value=b"f%d" % step))]
            req = pb.TxnRequest(compare=[cmp], success=succ, failure=fail)
            try:
                check_txn(req)
            except EtcdError:
                continue
            cur = m.live(m.rev).get(k1)
            ver = cur[4] if cur else 0
            res, want = cmp.result, cmp.version
            ok = [ver == want, ver > want, ver < want, ver != want][res]
            w = Writer(m)
            seen: list[KV] = []
            if ok:
                w.put(k1, b"s%d" % step, 0)
                seen = sorted(w.state.values())  # what the range after the put sees
                w.delete(k2, b"")
            else:
                w.put(k2, b"f%d" % step, 0)
            with h.backend.write() as t:
                tresp, evs = h.store.txn(t, req)
            w.commit()
            assert tresp.succeeded == ok and tresp.header.revision == m.rev == h.rev()
            if ok:
                got = [tup(x) for x in tresp.responses[1].response_range.kvs]
                assert got == seen
            assert [(e.type, e.kv.key) for e in evs] == [(t_, k) for t_, k, _ in w.changes]
        elif x < 0.73 and m.rev > 2:
            rev = rnd.randint(max(m.compact, 1), m.rev)
            if rev <= m.compact:
                continue
            with h.backend.write() as t:
                h.store.compact(t, rev)
            m.compact = rev
        else:
            check_range(h, m, rnd)
        if step % 250 == 0:
            lo = max(m.compact + 1, 1)
            got_ev = h.store.read_events(lo, m.rev)
            want_ev = [(r, m.events[r]) for r in sorted(m.events) if lo <= r <= m.rev]
            assert [(r, [(e.type, e.kv.key) for e in g]) for r, g in got_ev] == [
                (r, [(t_, k) for t_, k, _ in g]) for r, g in want_ev
            ]
            for r, g in got_ev[-20:]:
                for e in g:
                    prev = h.store.get_prev_kv(e.kv.key, r)
                    if r - 1 >= m.compact:
                        want_prev = m.at(e.kv.key, r - 1)
                        assert (tup(prev) if prev else None) == want_prev
            assert sorted(tup(x) for x in h.store.iter_live()) == sorted(m.live(m.rev).values())
    assert m.rev > 1000 and m.compact > 0
    assert h.rev() == m.rev and h.store.compact_revision() == m.compact
