"""Sim clients: concurrent callers of members' façades whose every request is recorded
(invoke and return in virtual nanoseconds, outcome ok / error / unknown) for the checkers.

Each call is bounded by a virtual-time timeout and by its member's life: a timeout, a crash
of the member mid-call or an error that does not say "not applied" is an unknown outcome.
Only errors that certainly had no effect count as `error` (the robustness traffic's rule).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from conch.api.errors import grpc_status
from conch.errors import EtcdError
from conch.proto.etcdserverpb import rpc_pb2
from devkit.robustness.traffic import classify, range_response, txn_response
from devkit.sim.checks import (
    OK,
    UNKNOWN,
    Compare,
    Delete,
    History,
    LeaseExpired,
    LeaseGrant,
    LeaseRevoke,
    Operation,
    Put,
    Range,
    Recorder,
    Response,
    Txn,
)
from devkit.sim.cluster import Cluster, Node

PREFIX = "k/"
PREFIX_END = "k0"
CALL_TIMEOUT_S = 1.5

def definite(exc: EtcdError) -> bool:
    """The robustness traffic's rule (`classify`), for a façade's EtcdError."""
    return classify(grpc_status(exc), exc.message)


def _b(s: str) -> bytes:
    return s.encode("latin-1")


def _on(method: str, req: Any) -> Callable[[Any], Awaitable[Any]]:
    """`server.<method>(req)`, for `Workload.call`."""
    return lambda server: getattr(server, method)(req)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Workload:
    def __init__(self, cluster: Cluster, seed: int, clients: int = 3, ops_per_client: int = 35):
        self.cluster = cluster
        self.seed = seed
        self.clients = clients
        self.ops_per_client = ops_per_client
        self.rec = Recorder(clock=self._now_ns)
        self.extra: list[Operation] = []  # lease expiries allowed from grant on
        self.unexpected: list[str] = []
        self._lease_ids = 0

    def _now_ns(self) -> int:
        return int(asyncio.get_running_loop().time() * 1e9)

    async def call(
        self, node: Node, client: int, request: Any,
        fn: Callable[[Any], Awaitable[Any]], to_response: Callable[[Any], Response | None],
    ) -> tuple[str, Any]:
        """One recorded call on `node`'s façade. Returns (status, raw response or None)."""
        op = self.rec.record_invoke(client, request)
        member, dead = node.member, node.dead
        if member is None or dead is None:
            # the sim knows nothing was sent (a real client could not tell)
            self.rec.record_return(op, error="connection refused", definite=True)
            return "error", None
        task = asyncio.ensure_future(fn(member.server))
        task.add_done_callback(_retrieve)
        done, _ = await asyncio.wait({task, dead}, timeout=CALL_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            self.rec.record_return(op, error="deadline exceeded" if not dead.done()
                                   else "member crashed")
            return UNKNOWN, None
        exc = task.exception()
        if exc is None:
            raw = task.result()
            resp = to_response(raw)
            if resp is None:  # an observation that did not happen: not recorded as such
                self.rec.record_return(op, error="no observation", definite=True)
                return "error", raw
            self.rec.record_return(op, resp)
            return OK, raw
        if isinstance(exc, EtcdError):
            d = definite(exc)
            self.rec.record_return(op, error=exc.message, definite=d)
            return ("error" if d else UNKNOWN), None
        if node.member is member:
            self.unexpected.append(f"m{node.index}: {request} raised {exc!r}")
        self.rec.record_return(op, error=repr(exc))
        return UNKNOWN, None

    async def run_client(self, c: int, stop_at: float) -> None:
        rng = random.Random(f"client-{self.seed}-{c}")
        cl = self.cluster
        loop = asyncio.get_running_loop()
        home = c % len(cl.nodes)
        last_mod: dict[str, int] = {}
        leases: list[int] = []
        for n in range(self.ops_per_client):
            if loop.time() >= stop_at:
                return
            await asyncio.sleep(rng.random() * 0.06)
            idx = home if rng.random() < 0.7 else rng.randrange(len(cl.nodes))
            node = cl.nodes[idx]
            if node.member is None:  # reconnect to a live member
                alive = cl.alive()
                if not alive:
                    await asyncio.sleep(0.1)
                    continue
                node = rng.choice(alive)
            assert node.member is not None
            if not node.member.raft.lead:  # as a client waiting for a ready channel
                await asyncio.sleep(0.1)
                continue
            key = f"{PREFIX}{rng.randrange(8)}"
            r = rng.random()
            if r < 0.40:
                value = f"c{c}-{n}"
                status, raw = await self.call(
                    node, c, Put(key, value),
                    _on("put", rpc_pb2.PutRequest(key=_b(key), value=_b(value))),
                    lambda p: Response(revision=p.header.revision))
            elif r < 0.60:
                ser = rng.random() < 0.2
                status, raw = await self.call(
                    node, c, Range(key, serializable=ser),
                    _on("range", rpc_pb2.RangeRequest(key=_b(key), serializable=ser)),
                    lambda p: range_response(p, p.header.revision))
                if status == OK and raw.kvs:
                    last_mod[key] = raw.kvs[0].mod_revision
            elif r < 0.72:
                mod = last_mod.get(key, 0)
                value = f"c{c}-{n}"
                treq = rpc_pb2.TxnRequest(
                    compare=[rpc_pb2.Compare(key=_b(key), target=rpc_pb2.Compare.MOD,
                                             result=rpc_pb2.Compare.EQUAL, mod_revision=mod)],
                    success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
                        key=_b(key), value=_b(value)))],
                    failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=_b(key)))],
                )
                status, raw = await self.call(
                    node, c, Txn((Compare(key, "mod", "=", mod),), (Put(key, value),),
                                 (Range(key),)),
                    _on("txn", treq), txn_response)
            elif r < 0.78:
                status, raw = await self.call(
                    node, c, Delete(key),
                    _on("delete_range", rpc_pb2.DeleteRangeRequest(key=_b(key))),
                    lambda p: Response(revision=p.header.revision, deleted=p.deleted))
            else:
                await self._lease_op(rng, node, c, n, leases)

    async def _lease_op(self, rng: random.Random, node: Node, c: int, n: int,
                        leases: list[int]) -> None:
        r = rng.random()
        if not leases or r < 0.3:
            self._lease_ids += 1
            lid = (c + 1) * 1000 + self._lease_ids
            ttl = rng.choice((2, 3, 5))
            t0 = self._now_ns()
            status, _ = await self.call(
                node, c, LeaseGrant(lid, ttl),
                lambda s: s.lease_grant(rpc_pb2.LeaseGrantRequest(ID=lid, TTL=ttl)),
                lambda p: Response(revision=p.header.revision))
            if status == OK:  # an unknown grant may still apply late: never used again
                leases.append(lid)
            if status != "error":
                # the lease may expire at any time from now on (its leader's clock may jump)
                self.extra.append(Operation(-1, c, t0, None, LeaseRevoke(lid), UNKNOWN))
            return
        lid = rng.choice(leases)
        if r < 0.6:
            key = f"{PREFIX}l{rng.randrange(3)}"
            value = f"c{c}-{n}"
            await self.call(
                node, c, Put(key, value, lease=lid),
                lambda s: s.put(rpc_pb2.PutRequest(key=_b(key), value=_b(value), lease=lid)),
                lambda p: Response(revision=p.header.revision))
        elif r < 0.8:
            await self.call(
                node, c, LeaseExpired(lid), lambda s: s.lease_keep_alive(lid),
                lambda p: Response() if p.TTL <= 0 else None)
        elif r < 0.9:
            await self.call(
                node, c, LeaseExpired(lid),
                lambda s: s.lease_time_to_live(rpc_pb2.LeaseTimeToLiveRequest(ID=lid)),
                lambda p: Response() if p.TTL == -1 else None)
        else:
            status, _ = await self.call(
                node, c, LeaseRevoke(lid),
                lambda s: s.lease_revoke(rpc_pb2.LeaseRevokeRequest(ID=lid)),
                lambda p: Response(revision=p.header.revision))
            if status == OK:
                leases.remove(lid)

    async def run(self, duration: float) -> None:
        stop_at = asyncio.get_running_loop().time() + duration
        await asyncio.gather(*(self.run_client(c, stop_at) for c in range(self.clients)))

    async def final_read(self, node: Node) -> str:
        status, _ = await self.call(
            node, 99, Range(PREFIX, PREFIX_END),
            lambda s: s.range(rpc_pb2.RangeRequest(key=_b(PREFIX), range_end=_b(PREFIX_END))),
            lambda p: range_response(p, p.header.revision))
        return status

    def history(self) -> History:
        h = self.rec.history()
        base = 1 + max((op.id for op in h.operations), default=0)
        for i, op in enumerate(self.extra):
            h.operations.append(Operation(base + i, op.client, op.invoke, None, op.request,
                                          UNKNOWN))
        h.operations.sort(key=lambda o: (o.invoke, o.id))
        return h
