"""The traffic generator (devkit/robustness/traffic.py) against real single members of conch and
etcd 3.4: every request kind is issued, watchers see the events, the same seed issues the same
requests, and the checkers pass on what was recorded -- also across a kill -9 and restart."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import defaultdict
from typing import Any

import grpc
import pytest

from devkit.robustness import check_all
from devkit.robustness.history import (
    UNKNOWN,
    History,
    LeaseExpired,
    LeaseGrant,
    LeaseRevoke,
    Operation,
    Put,
    Range,
    Recorder,
    Txn,
)
from devkit.robustness.traffic import (
    KINDS,
    TrafficConfig,
    TrafficStats,
    classify,
    final_read,
    prefix_end,
    run_traffic,
)

ServerFactory = Any


def _run(
    endpoint: str,
    seed: int,
    duration: float,
    config: TrafficConfig,
    during: Any = None,
) -> tuple[Recorder, TrafficStats]:
    rec = Recorder()

    async def main() -> TrafficStats:
        task = asyncio.create_task(during()) if during is not None else None
        stats = await run_traffic([endpoint], rec, seed=seed, duration=duration, config=config)
        if task is not None:
            await task
        await final_read([endpoint], rec, config, timeout=20)
        return stats

    return rec, asyncio.run(main())


def _assert_checks_pass(history: History, stats: TrafficStats) -> None:
    summary = check_all(history, compact_revision=stats.compact_revision, seconds=8)
    text = summary.to_text()
    for r in summary.results:
        assert r.status == "ok", f"{r.name}: {r.status}\n{text}"


def _client_sequence(history: History, client: int) -> list[tuple[Any, ...]]:
    """What a KV client asked, in order, without the answers' influence (CAS operands)."""
    out: list[tuple[Any, ...]] = []
    for op in sorted(history.operations, key=lambda o: (o.invoke, o.id)):
        if op.client != client:
            continue
        req = op.request
        if isinstance(req, Put):
            out.append(("put", req.key, req.value, req.lease))
        elif isinstance(req, Range):
            out.append(("range", req.key, req.end, req.serializable))
        elif isinstance(req, Txn):
            # not the compare's target: "mod" or "value" depends on whether the client has
            # seen the key yet, i.e. on the answers (a flake once in CI)
            out.append(("txn", req.compares[0].key, req.success[0]))
        elif isinstance(req, (LeaseGrant, LeaseRevoke)):
            out.append((req.kind, req.lease))
        else:
            out.append((req.kind, getattr(req, "key", None)))
    return out


@pytest.mark.parametrize("kind", ["conch", "etcd"])
def test_traffic_checks_pass(kind: str, server_factory: ServerFactory) -> None:
    srv = server_factory(kind)
    cfg = TrafficConfig(compaction_interval=1.5)
    rec, stats = _run(srv.endpoint, seed=11, duration=5.0, config=cfg)
    history = rec.history()
    for k in KINDS:
        assert stats.by_kind.get(k, 0) >= 1, (k, stats)
    assert stats.requests > 300, stats
    assert stats.by_outcome.get("ok", 0) > 0.9 * stats.requests, stats
    assert stats.watch_events > 100, stats
    assert stats.compactions >= 1 and stats.compact_revision > 1, stats
    assert stats.lease_expiries >= 1, stats
    # every watcher reached the last revision the clients saw
    last = max(
        op.response.revision
        for op in history.operations
        if op.client < cfg.clients
        and op.status == "ok"
        and op.response is not None
        and op.response.revision is not None
    )
    for j in range(cfg.watchers):
        watches = [w for w in history.watches if w.client == cfg.clients + j]
        assert watches and watches[0].resumes is None
        seen = max(ev.kv.mod_revision for w in watches for r in w.responses for ev in r.events)
        assert seen >= last, (j, seen, last)
    # the final read is the last linearizable range over the prefix
    final = max(
        (op for op in history.operations if isinstance(op.request, Range) and op.request.end),
        key=lambda o: o.invoke,
    )
    assert final.status == "ok" and final.client == cfg.clients + cfg.watchers + 1
    _assert_checks_pass(history, stats)


def test_same_seed_same_requests(server_factory: ServerFactory) -> None:
    srv = server_factory("conch")
    cfg = TrafficConfig(clients=3, watchers=0, compaction_interval=None)
    first, _ = _run(srv.endpoint, seed=5, duration=1.5, config=cfg)
    second, _ = _run(srv.endpoint, seed=5, duration=1.5, config=cfg)
    other, _ = _run(srv.endpoint, seed=6, duration=1.5, config=cfg)
    for c in range(cfg.clients):
        a = _client_sequence(first.history(), c)
        b = _client_sequence(second.history(), c)
        n = min(len(a), len(b))
        assert n >= 30, n
        assert a[:n] == b[:n], c
        d = _client_sequence(other.history(), c)
        assert a[: min(n, len(d))] != d[: min(n, len(d))]


def test_member_killed_and_restarted_mid_run(server_factory: ServerFactory) -> None:
    srv = server_factory("conch")
    # a higher rate keeps requests in flight at the moment of the kill
    cfg = TrafficConfig(max_rate=600.0, compaction_interval=2.0)
    restarted = threading.Event()

    async def kill_and_restart() -> None:
        await asyncio.sleep(2.0)
        await asyncio.to_thread(srv.restart, signal.SIGKILL)
        restarted.set()

    started = time.monotonic()
    rec, stats = _run(srv.endpoint, seed=3, duration=6.0, config=cfg, during=kill_and_restart)
    assert restarted.is_set()
    assert time.monotonic() - started < 30
    history = rec.history()
    unknown = [op for op in history.operations if op.status == UNKNOWN]
    assert any(not isinstance(op.request, LeaseRevoke) for op in unknown), stats
    assert stats.watch_resumes >= cfg.watchers, stats
    assert any(w.resumes is not None for w in history.watches)
    _assert_checks_pass(history, stats)


def test_lease_expiry_is_recorded_and_observed(server_factory: ServerFactory) -> None:
    srv = server_factory("conch")
    weights = {"put_with_lease": 5, "lease_grant": 1, "get": 2}
    cfg = TrafficConfig(clients=2, watchers=1, weights=weights, compaction_interval=None)
    rec, stats = _run(srv.endpoint, seed=2, duration=4.5, config=cfg)
    history = rec.history()
    expiries = [
        op
        for op in history.operations
        if isinstance(op.request, LeaseRevoke) and op.client == cfg.clients + cfg.watchers
    ]
    observed = [
        op
        for op in history.operations
        if isinstance(op.request, LeaseExpired) and op.status == "ok"
    ]
    assert expiries and all(op.status == UNKNOWN for op in expiries)
    assert observed, stats
    grants: dict[int, Operation] = {
        op.request.lease: op for op in history.operations if isinstance(op.request, LeaseGrant)
    }
    by_lease: dict[int, list[Operation]] = defaultdict(list)
    for op in expiries:
        by_lease[op.request.lease].append(op)  # type: ignore[union-attr]
    for lease, ops in by_lease.items():
        assert len(ops) == 1  # recorded once
        g = grants[lease]
        # recorded shortly before the TTL ran out (never after the server may expire it)
        assert ops[0].invoke <= g.invoke + cfg.lease_ttl * 10**9
    _assert_checks_pass(history, stats)


def test_classify() -> None:
    c = grpc.StatusCode
    assert classify(c.NOT_FOUND, "etcdserver: requested lease not found")
    assert classify(c.FAILED_PRECONDITION, "etcdserver: lease already exists")
    assert classify(c.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    assert classify(c.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
    for code, text in [
        (c.UNAVAILABLE, "etcdserver: request timed out"),
        (c.UNAVAILABLE, "etcdserver: leader changed"),
        (c.UNAVAILABLE, "etcdserver: no leader"),
        (c.UNAVAILABLE, "failed to connect to all addresses"),
        (c.DEADLINE_EXCEEDED, "Deadline Exceeded"),
        (c.CANCELLED, "etcdserver: request canceled"),
        (c.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
        (c.FAILED_PRECONDITION, "etcdserver: not leader"),
        (c.UNKNOWN, "whatever"),
    ]:
        assert not classify(code, text), (code, text)


def test_prefix_end() -> None:
    assert prefix_end("/robust/key/") == "/robust/key0"
    assert prefix_end("a\xff") == "b"
    assert prefix_end("\xff") == "\0"
