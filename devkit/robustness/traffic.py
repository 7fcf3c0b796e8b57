"""Traffic generator of the robustness runs (issue 6): concurrent etcd clients whose every
request and watch response is recorded for the checkers.

It speaks gRPC directly (``grpc.aio`` channels and the generated stubs), not through
:mod:`conch.client`: a client library that retries could apply a non-idempotent request twice
and hide it from the checker. Here every request is sent once and recorded exactly once:

- ``ok``: the response is recorded (header revision, kvs with mod/create revision, version and
  lease, txn branch and per-op results, deleted counts);
- ``error`` (definite, no effect): only answers that say the server rejected the request
  without applying it (:func:`classify`): ``requested lease not found``, ``lease already
  exists``, INVALID_ARGUMENT, OUT_OF_RANGE (compacted / future revision), auth rejections;
- ``unknown``: everything else -- DEADLINE_EXCEEDED, UNAVAILABLE (even "before sending": a
  refused connection and a connection lost after sending look alike), ``request timed out``,
  ``leader changed``, ``no leader``, CANCELLED, RESOURCE_EXHAUSTED, unexpected exceptions...

Who does what
-------------
- ``clients`` KV clients, client ``i`` pinned to ``endpoints[i % len(endpoints)]``. Each draws
  its requests from ``random.Random`` seeded from the run seed and its index, so the same seed
  gives the same request sequence (kinds, keys, values, lease IDs; a compare-and-set's operand
  is the revision/value the client last saw, so it depends on the answers). Before sending it
  waits (unrecorded) for its channel to be READY; after an unknown outcome it reconnects.
  A shared token bucket caps the total rate at ``max_rate``.
- ``watchers`` watch the whole prefix (prev_kv, progress_notify, ``hasleader`` metadata) from
  ``recorder.initial_revision + 1``. Every response is recorded. After a stream error, an end
  of stream, a cancellation, or a stall (the watch has not reached, within ``stall_timeout``,
  a revision the KV clients saw ``stall_timeout`` ago), a new watch is created on the next
  endpoint from the last reported revision + 1 (``resumes`` = the old watch's id); after a
  cancellation for compaction, from the compact revision the server reported.
- leases: a client grants leases with IDs it picks itself (random positive int63), puts with
  its latest lease, revokes some; none is kept alive. Expiry is recorded as the history
  docstring says: a :class:`LeaseRevoke` with outcome unknown, invoked ``expiry_margin``
  before the TTL runs out -- for leases some put tried to attach keys to (a lease without keys
  expires without any effect on the KV state); a put with a lease whose expiry is due records
  the expiry first. On return every such lease still alive has its expiry recorded (it may
  expire before the final read). An observer asks TimeToLive about expired leases whose grant
  was acknowledged and records :class:`LeaseExpired` ``ok`` when it says -1 (``error`` "lease
  still alive" otherwise: nothing was observed).
- a compactor compacts, every ``compaction_interval``, to the highest revision the clients had
  seen one interval earlier.

At the end the clients stop (in-flight requests finish within their deadline), then the
watchers are given ``watch_catchup_timeout`` to reach the highest revision the clients saw
(:meth:`_Traffic.wait_watchers_caught_up`), then everything is cancelled and every channel
closed.

Client ids in the history: KV clients ``0..clients-1``, watchers ``clients..``, the lease
observer/expiry records ``clients + watchers``, :func:`final_read` ``clients + watchers + 1``.
Values are ``f"c{client}-{n}"``: unique within one run (one :func:`run_traffic` per recorder).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from conch.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from conch.proto.mvccpb import kv_pb2

from .history import (
    KV,
    Compare,
    Delete,
    Event,
    LeaseExpired,
    LeaseGrant,
    LeaseRevoke,
    Put,
    Range,
    Recorder,
    Request,
    Response,
    Txn,
    WatchRequest,
    WatchResponse,
)

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = (
    "get",
    "serializable_get",
    "range",
    "put",
    "delete",
    "txn",
    "put_with_lease",
    "lease_grant",
    "lease_revoke",
)


def _default_weights() -> dict[str, int]:
    # Modelled on etcd's robustness "etcd" traffic: about half reads, half writes; few lease
    # grants (every lease a put used adds an unknown-outcome expiry to the history).
    return {
        "get": 15,
        "serializable_get": 10,
        "range": 10,
        "put": 25,
        "delete": 8,
        "txn": 18,
        "put_with_lease": 6,
        "lease_grant": 3,
        "lease_revoke": 2,
    }


@dataclass
class TrafficConfig:
    clients: int = 6
    key_count: int = 10
    key_prefix: str = "/robust/key/"
    request_timeout: float = 2.0
    max_rate: float = 300.0
    watchers: int = 2
    lease_ttl: int = 2
    compaction_interval: float | None = 4.0
    weights: dict[str, int] = field(default_factory=_default_weights)
    # beyond the issue's list (defaults are fine):
    watch_catchup_timeout: float = 5.0  # at the end, for watchers to reach the last revision
    stall_timeout: float = 4.0  # a watch that far behind the clients is resumed elsewhere
    expiry_margin: float = 0.5  # lease expiry is recorded this long before the TTL runs out
    connect_timeout: float = 1.0  # one unrecorded wait for a READY channel


@dataclass
class TrafficStats:
    requests: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    by_outcome: dict[str, int] = field(default_factory=dict)
    compact_revision: int = 0  # highest compaction acknowledged or of unknown outcome
    watch_resumes: int = 0
    watch_events: int = 0
    compactions: int = 0  # compactions acknowledged
    lease_expiries: int = 0  # expiries recorded (unknown-outcome LeaseRevoke)
    watches: int = 0  # watch records (first ones + resumes)


# ============================================================ errors


_DEFINITE_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
_DEFINITE_MESSAGES = ("requested lease not found", "lease already exists")


def classify(code: grpc.StatusCode | None, details: str | None) -> bool:
    """True when an error status says the request certainly had no effect.

    Conservative: anything not known to be a rejection is "unknown" (that only costs the
    checker some search; calling an applied request "error" would be a false violation).
    FAILED_PRECONDITION counts only for "lease already exists" ("not leader" may come from a
    forwarding layer after the fact)."""
    text = (details or "").lower()
    if any(m in text for m in _DEFINITE_MESSAGES):
        return True
    if code in _DEFINITE_CODES:
        return "timed out" not in text and "leader" not in text
    return False


def prefix_end(prefix: str) -> str:
    """etcd's range end for "every key with this prefix"."""
    b = bytearray(prefix.encode("latin-1"))
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1]).decode("latin-1")
    return "\0"


def _s(b: bytes) -> str:
    return b.decode("latin-1")


def _b(s: str) -> bytes:
    return s.encode("latin-1")


def _kv(kv: Any) -> KV:
    return KV(
        key=_s(kv.key),
        value=_s(kv.value),
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
        version=kv.version,
        lease=kv.lease,
    )


def range_response(r: Any, rev: int) -> Response:
    return Response(revision=rev, kvs=tuple(_kv(kv) for kv in r.kvs), count=r.count)


def txn_response(r: Any) -> Response:
    rev = r.header.revision
    subs: list[Response] = []
    for op in r.responses:
        which = op.WhichOneof("response")
        if which == "response_range":
            subs.append(range_response(op.response_range, rev))
        elif which == "response_put":
            subs.append(Response(revision=rev))
        elif which == "response_delete_range":
            subs.append(Response(revision=rev, deleted=op.response_delete_range.deleted))
        else:
            raise ValueError(f"unexpected txn response op {which}")
    return Response(revision=rev, succeeded=r.succeeded, responses=tuple(subs))


def _channel(endpoint: str) -> grpc.aio.Channel:
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme) :]
    return grpc.aio.insecure_channel(
        endpoint.rstrip("/"),
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.enable_retries", 0),
        ],
    )


class _Conn:
    """One channel to one endpoint, recreated on demand."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.ch: grpc.aio.Channel | None = None
        self.kv: rpc_pb2_grpc.KVStub
        self.lease: rpc_pb2_grpc.LeaseStub
        self.watch: rpc_pb2_grpc.WatchStub

    def open(self) -> None:
        if self.ch is None:
            self.ch = _channel(self.endpoint)
            self.kv = rpc_pb2_grpc.KVStub(self.ch)
            self.lease = rpc_pb2_grpc.LeaseStub(self.ch)
            self.watch = rpc_pb2_grpc.WatchStub(self.ch)

    async def ready(self, timeout: float) -> bool:
        self.open()
        assert self.ch is not None
        if self.ch.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return True
        try:
            await asyncio.wait_for(self.ch.channel_ready(), timeout)
            return True
        except (TimeoutError, grpc.aio.UsageError):
            return False

    async def close(self) -> None:
        ch, self.ch = self.ch, None
        if ch is not None:
            with contextlib.suppress(Exception):
                await ch.close(grace=None)


class _Bucket:
    """Total rate ceiling shared by every coroutine of the run (one event loop: no lock)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()

    async def take(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        t = max(now, self.next)
        self.next = t + self.interval
        if t > now:
            await asyncio.sleep(t - now)


@dataclass
class _Lease:
    id: int
    ttl: int
    grant_invoke: int  # recorder clock
    grant: str = "pending"  # pending / ok / unknown / error
    used: bool = False  # some put tried to attach a key
    expiry_recorded: bool = False
    revoked: bool = False  # a revoke was acknowledged
    checks: int = 0


@dataclass
class _Planned:
    kind: str
    key: str
    value: str
    lease: int
    draw: float


# ============================================================ the run


class _Traffic:
    def __init__(
        self, endpoints: Sequence[str], recorder: Recorder, seed: int, config: TrafficConfig
    ):
        if not endpoints:
            raise ValueError("no endpoints")
        self.endpoints = list(endpoints)
        self.rec = recorder
        self.seed = seed
        self.cfg = config
        self.keys = [f"{config.key_prefix}{i}" for i in range(config.key_count)]
        self.prefix_end = prefix_end(config.key_prefix)
        unknown = set(config.weights) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown request kinds in weights: {sorted(unknown)}")
        self.kinds = [k for k in KINDS if config.weights.get(k, 0) > 0]
        self.weights = [config.weights[k] for k in self.kinds]
        self.stats = TrafficStats(by_kind={k: 0 for k in self.kinds}, by_outcome={})
        self.bucket = _Bucket(config.max_rate)
        self.clients_stop = asyncio.Event()
        self.watch_stop = asyncio.Event()
        self.leases: dict[int, _Lease] = {}
        self.max_rev = 0
        self._rev_t: list[float] = []  # monotonic seconds when max_rev grew
        self._rev_v: list[int] = []
        self.watch_progress: dict[int, int] = {}  # watcher index -> highest revision reported
        self.lease_client = config.clients + config.watchers
        self.conns: list[_Conn] = []

    # -------------------------------------------------------- bookkeeping

    def _saw(self, rev: int | None) -> None:
        if rev is not None and rev > self.max_rev:
            self.max_rev = rev
            self._rev_t.append(time.monotonic())
            self._rev_v.append(rev)

    def rev_at(self, t: float) -> int:
        """The highest revision the clients had seen at monotonic time ``t``."""
        i = bisect.bisect_right(self._rev_t, t)
        return self._rev_v[i - 1] if i else 0

    def _count(self, kind: str, status: str) -> None:
        self.stats.requests += 1
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        self.stats.by_outcome[status] = self.stats.by_outcome.get(status, 0) + 1

    def _conn(self, endpoint: str) -> _Conn:
        c = _Conn(endpoint)
        self.conns.append(c)
        return c

    async def call(
        self,
        client: int,
        kind: str,
        request: Request,
        send: Callable[[float], Awaitable[Any]],
        convert: Callable[[Any], Response],
    ) -> tuple[str, Response | None]:
        """Record, send once, classify, record the outcome."""
        op = self.rec.record_invoke(client, request)
        try:
            pb = await send(self.cfg.request_timeout)
            resp = convert(pb)
        except asyncio.CancelledError:
            self.rec.record_return(op, error="cancelled")
            self._count(kind, "unknown")
            raise
        except grpc.aio.AioRpcError as e:
            definite = classify(e.code(), e.details())
            self.rec.record_return(op, error=f"{e.code().name}: {e.details()}", definite=definite)
            status = "error" if definite else "unknown"
            self._count(kind, status)
            return status, None
        except Exception as e:  # noqa: BLE001 - anything else: we cannot know
            log.warning("traffic: %s failed unexpectedly: %r", kind, e)
            self.rec.record_return(op, error=repr(e))
            self._count(kind, "unknown")
            return "unknown", None
        self.rec.record_return(op, resp)
        self._count(kind, "ok")
        self._saw(resp.revision)
        return "ok", resp

    # -------------------------------------------------------- leases

    def _record_expiry(self, le: _Lease) -> None:
        le.expiry_recorded = True
        op = self.rec.record_invoke(self.lease_client, LeaseRevoke(le.id))
        self.rec.record_return(op, error="lease TTL ran out: the server may expire it from now on")
        self.stats.lease_expiries += 1

    def _expiry_due(self, le: _Lease, now_ns: int) -> bool:
        return now_ns >= le.grant_invoke + int((le.ttl - self.cfg.expiry_margin) * 1e9)

    def _maybe_expire(self, le: _Lease, now_ns: int, force: bool = False) -> None:
        if le.expiry_recorded or le.revoked or le.grant == "error" or not le.used:
            return
        if force or self._expiry_due(le, now_ns):
            self._record_expiry(le)

    async def _lease_reaper(self) -> None:
        """Records expiries on time (ticks well within ``expiry_margin``)."""
        while True:
            now = self.rec.now()
            for le in list(self.leases.values()):
                self._maybe_expire(le, now)
            await asyncio.sleep(0.02)

    async def _lease_observer(self) -> None:
        """TimeToLive on expired leases whose grant was acknowledged -> LeaseExpired."""
        conns = [self._conn(ep) for ep in self.endpoints]
        turn = 0
        while not self.clients_stop.is_set():
            now = self.rec.now()
            due = [
                le
                for le in self.leases.values()
                if le.expiry_recorded
                and le.grant == "ok"
                and le.checks < 3
                and now >= le.grant_invoke + int((le.ttl + 1.5 + le.checks) * 1e9)
            ]
            for le in due:
                if self.clients_stop.is_set():
                    return
                conn = conns[turn % len(conns)]
                turn += 1
                if not await conn.ready(self.cfg.connect_timeout):
                    continue
                le.checks += 1
                await self.bucket.take()
                lid = le.id

                async def send(t: float, conn: _Conn = conn, lid: int = lid) -> Any:
                    return await conn.lease.LeaseTimeToLive(
                        rpc_pb2.LeaseTimeToLiveRequest(ID=lid), timeout=t
                    )

                status = await self._observe(LeaseExpired(lid), send)
                if status == "ok":
                    le.checks = 99
                elif status == "unknown":
                    await conn.close()
            await asyncio.sleep(0.1)

    async def _observe(self, req: LeaseExpired, send: Callable[[float], Awaitable[Any]]) -> str:
        op = self.rec.record_invoke(self.lease_client, req)
        try:
            r = await send(self.cfg.request_timeout)
        except asyncio.CancelledError:
            self.rec.record_return(op, error="cancelled")
            self._count("lease_ttl", "unknown")
            raise
        except grpc.aio.AioRpcError as e:
            self.rec.record_return(op, error=f"{e.code().name}: {e.details()}")
            self._count("lease_ttl", "unknown")
            return "unknown"
        # etcd answers TTL -1 with grantedTTL 0 for a lease it does not know, but also TTL -1
        # with the granted TTL for a lease past its expiry that nobody revoked yet (remaining
        # time truncated to seconds), which a new leader may still extend: not "gone".
        if r.TTL == -1 and r.grantedTTL == 0:
            # no revision: TimeToLive is not a KV read, its header need not be linearizable
            self.rec.record_return(op, Response())
            self._count("lease_ttl", "ok")
            return "ok"
        self.rec.record_return(op, error=f"lease still alive (TTL {r.TTL})", definite=True)
        self._count("lease_ttl", "error")
        return "error"

    # -------------------------------------------------------- KV clients

    def plan(self, rng: random.Random, client: int, n: int, my_leases: list[int]) -> _Planned:
        """The next request of a client: depends only on its RNG and its own past choices.
        Always draws the same number of random numbers."""
        kind = rng.choices(self.kinds, self.weights)[0]
        key = self.keys[rng.randrange(len(self.keys))]
        draw = rng.random()
        new_lease = rng.randrange(1, 2**63)
        lease = 0
        if kind == "put_with_lease":
            if my_leases:
                lease = my_leases[-1]
            else:
                kind = "lease_grant"
        if kind == "lease_revoke":
            if my_leases:
                lease = my_leases[-1 - int(draw * min(3, len(my_leases)))]
            else:
                kind = "lease_grant"
        if kind == "lease_grant":
            lease = new_lease
        return _Planned(kind, key, f"c{client}-{n}", lease, draw)

    async def _client(self, i: int) -> None:
        rng = random.Random(f"conch-traffic/{self.seed}/client/{i}")
        conn = self._conn(self.endpoints[i % len(self.endpoints)])
        seen: dict[str, tuple[int, str]] = {}  # key -> (mod_revision, value); (0, "") absent
        my_leases: list[int] = []
        n = 0
        while not self.clients_stop.is_set():
            p = self.plan(rng, i, n, my_leases)
            n += 1
            if p.kind == "lease_grant":
                my_leases.append(p.lease)
            elif p.kind == "lease_revoke":
                my_leases.remove(p.lease)
            await self.bucket.take()
            while not self.clients_stop.is_set():
                if await conn.ready(self.cfg.connect_timeout):
                    break
            if self.clients_stop.is_set():
                break
            status = await self._issue(i, conn, p, seen)
            if status == "unknown":
                await conn.close()  # reconnect

    async def _issue(
        self, i: int, conn: _Conn, p: _Planned, seen: dict[str, tuple[int, str]]
    ) -> str:
        key, kvk = p.key, _b(p.key)
        if p.kind in ("get", "serializable_get"):
            ser = p.kind == "serializable_get"
            status, resp = await self.call(
                i,
                p.kind,
                Range(key, serializable=ser),
                lambda t: conn.kv.Range(rpc_pb2.RangeRequest(key=kvk, serializable=ser), timeout=t),
                lambda r: range_response(r, r.header.revision),
            )
            if resp is not None and not ser:
                _remember(seen, [key], resp.kvs or ())
            return status
        if p.kind == "range":
            start, end = self.cfg.key_prefix, self.prefix_end
            status, resp = await self.call(
                i,
                p.kind,
                Range(start, end),
                lambda t: conn.kv.Range(
                    rpc_pb2.RangeRequest(key=_b(start), range_end=_b(end)), timeout=t
                ),
                lambda r: range_response(r, r.header.revision),
            )
            if resp is not None:
                _remember(seen, self.keys, resp.kvs or ())
            return status
        if p.kind in ("put", "put_with_lease"):
            lease = p.lease if p.kind == "put_with_lease" else 0
            if lease:
                le = self.leases.get(lease)
                if le is not None:
                    le.used = True
                    self._maybe_expire(le, self.rec.now())  # due already: record it first
            status, resp = await self.call(
                i,
                p.kind,
                Put(key, p.value, lease),
                lambda t: conn.kv.Put(
                    rpc_pb2.PutRequest(key=kvk, value=_b(p.value), lease=lease), timeout=t
                ),
                lambda r: Response(revision=r.header.revision),
            )
            if resp is not None and resp.revision is not None:
                seen[key] = (resp.revision, p.value)
            return status
        if p.kind == "delete":
            status, resp = await self.call(
                i,
                p.kind,
                Delete(key),
                lambda t: conn.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=kvk), timeout=t),
                lambda r: Response(revision=r.header.revision, deleted=r.deleted),
            )
            if resp is not None:
                seen[key] = (0, "")
            return status
        if p.kind == "txn":
            return await self._cas(i, conn, p, seen)
        if p.kind == "lease_grant":
            gl = _Lease(p.lease, self.cfg.lease_ttl, self.rec.now())
            self.leases[gl.id] = gl

            def grant_resp(r: Any) -> Response:
                if r.error or r.ID != gl.id:
                    raise ValueError(f"lease grant answered ID={r.ID} error={r.error!r}")
                return Response(revision=r.header.revision)

            status, _ = await self.call(
                i,
                p.kind,
                LeaseGrant(gl.id, gl.ttl),
                lambda t: conn.lease.LeaseGrant(
                    rpc_pb2.LeaseGrantRequest(TTL=gl.ttl, ID=gl.id), timeout=t
                ),
                grant_resp,
            )
            gl.grant = status
            return status
        if p.kind == "lease_revoke":
            lid = p.lease
            status, _ = await self.call(
                i,
                p.kind,
                LeaseRevoke(lid),
                lambda t: conn.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lid), timeout=t),
                lambda r: Response(revision=r.header.revision),
            )
            le = self.leases.get(lid)
            if status == "ok" and le is not None:
                le.revoked = True
            return status
        raise ValueError(f"unknown request kind {p.kind}")

    async def _cas(self, i: int, conn: _Conn, p: _Planned, seen: dict[str, tuple[int, str]]) -> str:
        key, kvk = p.key, _b(p.key)
        mod, value = seen.get(key, (0, ""))
        cmp: Compare
        if mod == 0 or p.draw < 0.6:
            cmp = Compare(key, "mod", "=", mod)
            pcmp = rpc_pb2.Compare(
                key=kvk,
                target=rpc_pb2.Compare.MOD,
                result=rpc_pb2.Compare.EQUAL,
                mod_revision=mod,
            )
        else:
            cmp = Compare(key, "value", "=", value)
            pcmp = rpc_pb2.Compare(
                key=kvk,
                target=rpc_pb2.Compare.VALUE,
                result=rpc_pb2.Compare.EQUAL,
                value=_b(value),
            )
        req = rpc_pb2.TxnRequest(
            compare=[pcmp],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=kvk, value=_b(p.value)))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=kvk))],
        )
        status, resp = await self.call(
            i,
            p.kind,
            Txn((cmp,), (Put(key, p.value),), (Range(key),)),
            lambda t: conn.kv.Txn(req, timeout=t),
            txn_response,
        )
        if resp is not None and resp.revision is not None:
            if resp.succeeded:
                seen[key] = (resp.revision, p.value)
            elif resp.responses:
                _remember(seen, [key], resp.responses[0].kvs or ())
        return status

    # -------------------------------------------------------- compaction

    async def _compactor(self, interval: float) -> None:
        conns = [self._conn(ep) for ep in self.endpoints]
        turn = 0
        done = 0
        while True:
            await asyncio.sleep(interval)
            target = self.rev_at(time.monotonic() - interval)
            if target <= max(done, self.stats.compact_revision, 1):
                continue
            conn = conns[turn % len(conns)]
            turn += 1
            if not await conn.ready(self.cfg.connect_timeout):
                continue
            try:
                await conn.kv.Compact(
                    rpc_pb2.CompactionRequest(revision=target), timeout=self.cfg.request_timeout
                )
                done = target
                self.stats.compactions += 1
            except grpc.aio.AioRpcError as e:
                if not classify(e.code(), e.details()):
                    await conn.close()  # outcome unknown: it may have compacted
                else:
                    continue
            self.stats.compact_revision = max(self.stats.compact_revision, target)

    # -------------------------------------------------------- watchers

    async def _watcher(self, j: int) -> None:
        client = self.cfg.clients + j
        ep = j % len(self.endpoints)
        first = self.rec.initial_revision + 1
        start = first
        prev: int | None = None
        self.watch_progress[j] = 0
        while not self.watch_stop.is_set():
            conn = self._conn(self.endpoints[ep])
            try:
                if not await conn.ready(self.cfg.connect_timeout):
                    ep = (ep + 1) % len(self.endpoints)
                    continue
                wid, nxt, rotate = await self._watch_once(conn, client, j, start, prev)
            finally:
                await conn.close()
            prev, start = wid, nxt
            if self.watch_stop.is_set():
                break
            self.stats.watch_resumes += 1
            if rotate:
                ep = (ep + 1) % len(self.endpoints)

    async def _watch_once(
        self, conn: _Conn, client: int, j: int, start: int, prev: int | None
    ) -> tuple[int, int, bool]:
        """One watch on one stream until it ends. Returns (its id, where to resume, rotate?)."""
        req = WatchRequest(
            self.cfg.key_prefix,
            self.prefix_end,
            start_revision=start,
            prev_kv=True,
            progress_notify=True,
        )
        create = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=_b(req.key),
                range_end=_b(self.prefix_end),
                start_revision=start,
                prev_kv=True,
                progress_notify=True,
            )
        )
        wid = self.rec.record_watch(client, req, resumes=prev)
        self.stats.watches += 1
        last = start - 1  # highest revision this watch reported
        call = conn.watch.Watch(metadata=(("hasleader", "true"),))
        stopped_by_us = False
        since = time.monotonic()

        async def watchdog() -> None:
            nonlocal stopped_by_us
            while True:
                await asyncio.sleep(0.1)
                now = time.monotonic()
                stalled = now - since > self.cfg.stall_timeout and last < self.rev_at(
                    now - self.cfg.stall_timeout
                )
                if self.watch_stop.is_set() or stalled:
                    if stalled:
                        log.info("traffic: watch %d stalled at %d, resuming elsewhere", wid, last)
                    stopped_by_us = True
                    call.cancel()
                    return

        dog = asyncio.create_task(watchdog())
        resume, rotate = max(start, last + 1), True
        try:
            await call.write(create)
            while True:
                r = await call.read()
                if r is grpc.aio.EOF:
                    break
                events = tuple(_event(ev) for ev in r.events)
                self.rec.record_watch_response(
                    wid,
                    WatchResponse(
                        time=self.rec.now(),
                        revision=r.header.revision,
                        events=events,
                        created=r.created,
                        canceled=r.canceled,
                        compact_revision=r.compact_revision,
                        fragment=r.fragment,
                    ),
                )
                self.stats.watch_events += len(events)
                for ev in events:
                    last = max(last, ev.kv.mod_revision)
                if not events and not r.created and not r.canceled and not r.fragment:
                    last = max(last, r.header.revision)  # progress notification
                self.watch_progress[j] = max(self.watch_progress[j], last)
                if r.canceled:
                    if r.compact_revision:
                        resume, rotate = max(r.compact_revision, last + 1), False
                        return wid, resume, rotate
                    break
        except asyncio.CancelledError:
            if not stopped_by_us:
                raise
        except grpc.aio.AioRpcError as e:
            if not stopped_by_us:
                log.info("traffic: watch %d ended: %s %s", wid, e.code().name, e.details())
        except Exception as e:  # noqa: BLE001 - e.g. a write on a call that just ended
            log.info("traffic: watch %d ended: %r", wid, e)
        finally:
            dog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dog
            call.cancel()
        return wid, max(start, last + 1), rotate

    async def wait_watchers_caught_up(self, timeout: float) -> bool:
        """Until every watcher reported the highest revision the clients saw (or timeout)."""
        target = self.max_rev
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(v >= target for v in self.watch_progress.values()):
                return True
            await asyncio.sleep(0.05)
        return False

    # -------------------------------------------------------- run

    async def run(self, duration: float, stop: asyncio.Event | None) -> TrafficStats:
        cfg = self.cfg
        clients = [asyncio.create_task(self._client(i)) for i in range(cfg.clients)]
        watchers = [asyncio.create_task(self._watcher(j)) for j in range(cfg.watchers)]
        helpers = [
            asyncio.create_task(self._lease_reaper()),
            asyncio.create_task(self._lease_observer()),
        ]
        if cfg.compaction_interval:
            helpers.append(asyncio.create_task(self._compactor(cfg.compaction_interval)))
        every = [*clients, *watchers, *helpers]
        try:
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(asyncio.sleep(duration))]
            if stop is not None:
                waiters.append(asyncio.ensure_future(stop.wait()))
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            self.clients_stop.set()
            grace = cfg.request_timeout + cfg.connect_timeout + 1.0
            if clients:
                _, late = await asyncio.wait(clients, timeout=grace)
                for t in late:
                    t.cancel()
            for t in helpers:
                t.cancel()
            await asyncio.gather(*clients, *helpers, return_exceptions=True)
            self._raise_failures(clients)
            now = self.rec.now()
            for le in self.leases.values():
                self._maybe_expire(le, now, force=True)
            if watchers:
                caught = await self.wait_watchers_caught_up(cfg.watch_catchup_timeout)
                if not caught:
                    log.warning(
                        "traffic: watchers did not reach revision %d: %s",
                        self.max_rev,
                        self.watch_progress,
                    )
            self.watch_stop.set()
            if watchers:
                _, late = await asyncio.wait(watchers, timeout=cfg.request_timeout + 2.0)
                for t in late:
                    t.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                self._raise_failures(watchers)
        finally:
            self.clients_stop.set()
            self.watch_stop.set()
            for t in every:
                t.cancel()
            await asyncio.gather(*every, return_exceptions=True)
            for c in self.conns:
                await c.close()
        return self.stats

    @staticmethod
    def _raise_failures(tasks: list[asyncio.Task[Any]]) -> None:
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise RuntimeError("traffic task failed") from t.exception()


def _remember(seen: dict[str, tuple[int, str]], keys: list[str], kvs: Sequence[KV]) -> None:
    got = {kv.key: kv for kv in kvs}
    for k in keys:
        kv = got.get(k)
        seen[k] = (kv.mod_revision, kv.value) if kv is not None else (0, "")


def _event(ev: Any) -> Event:
    kv = ev.kv
    prev = _kv(ev.prev_kv) if ev.HasField("prev_kv") else None
    if ev.type == kv_pb2.Event.DELETE:
        return Event("delete", KV(_s(kv.key), "", kv.mod_revision), prev)
    return Event("put", _kv(kv), prev)


# ============================================================ public API


async def run_traffic(
    endpoints: list[str],
    recorder: Recorder,
    *,
    seed: int,
    duration: float,
    config: TrafficConfig | None = None,
    stop: asyncio.Event | None = None,
) -> TrafficStats:
    """Run the traffic for ``duration`` seconds (or until ``stop`` is set); see the module
    docstring. Returns within about duration + request_timeout + connect_timeout +
    watch_catchup_timeout + request_timeout + 3 s, with nothing left running."""
    t = _Traffic(endpoints, recorder, seed, config or TrafficConfig())
    return await t.run(duration, stop)


async def final_read(
    endpoints: list[str],
    recorder: Recorder,
    config: TrafficConfig | None = None,
    timeout: float = 30.0,
) -> None:
    """One linearizable range over the whole prefix, recorded; retried (a new operation each
    try, on the next endpoint) until one succeeds. Raises TimeoutError after ``timeout``."""
    cfg = config or TrafficConfig()
    client = cfg.clients + cfg.watchers + 1
    start, end = cfg.key_prefix, prefix_end(cfg.key_prefix)
    deadline = time.monotonic() + timeout
    attempt = 0
    last_error = "no attempt"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"final read did not succeed within {timeout}s: {last_error}")
        conn = _Conn(endpoints[attempt % len(endpoints)])
        attempt += 1
        try:
            if not await conn.ready(min(left, 2.0)):
                last_error = f"{conn.endpoint}: not connected"
                continue
            op = recorder.record_invoke(client, Range(start, end))
            try:
                r = await conn.kv.Range(
                    rpc_pb2.RangeRequest(key=_b(start), range_end=_b(end)),
                    timeout=max(0.1, min(left, max(cfg.request_timeout, 5.0))),
                )
            except grpc.aio.AioRpcError as e:
                last_error = f"{conn.endpoint}: {e.code().name}: {e.details()}"
                recorder.record_return(
                    op, error=last_error, definite=classify(e.code(), e.details())
                )
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            recorder.record_return(op, range_response(r, r.header.revision))
            return
        finally:
            await conn.close()


__all__ = [
    "KINDS",
    "TrafficConfig",
    "TrafficStats",
    "classify",
    "final_read",
    "prefix_end",
    "run_traffic",
]
