"""Randomized: histories generated from a sequential reference model with random concurrency
windows and timed-out writes must pass every checker; one mutated response must fail."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from devkit.robustness import check_all, linearizability, set_check, watch
from devkit.robustness.history import (
    OK,
    Delete,
    History,
    Operation,
    Put,
    Range,
    Txn,
    WatchRecord,
)
from devkit.robustness.watch import build_log
from tests.robustness.robustutil import random_history

SEEDS = range(120)


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_histories_pass(seed: int) -> None:
    h = random_history(seed, n=60, width=30 if seed % 2 else 12)
    s = check_all(h, seconds=5)
    assert s.ok, s.to_text()
    assert "skipped" not in s.results[0].summary  # the full model ran too


@pytest.mark.parametrize("seed", range(4))
def test_larger_generated_histories_pass(seed: int) -> None:
    h = random_history(1000 + seed, n=400, width=40, p_unknown=0.05)
    s = check_all(h, seconds=10)
    assert s.ok, s.to_text()
    assert "skipped" not in s.results[0].summary


def _reads(h: History) -> list[int]:
    return [i for i, op in enumerate(h.operations)
            if op.status == OK and isinstance(op.request, Range) and op.response is not None
            and op.response.kvs]


def _puts(h: History) -> list[int]:
    return [i for i, op in enumerate(h.operations)
            if op.status == OK and isinstance(op.request, Put) and op.response is not None
            and op.response.revision]


def _set(h: History, i: int, op: Operation) -> History:
    ops = list(h.operations)
    ops[i] = op
    return History(ops, h.watches, h.initial_revision)


def mutate(h: History, rng: random.Random, kind: str) -> History:
    if kind in ("bogus_value", "mod_shift", "future_header"):
        i = rng.choice(_reads(h))
        op = h.operations[i]
        assert op.response is not None and op.response.kvs
        kvs = list(op.response.kvs)
        j = rng.randrange(len(kvs))
        if kind == "bogus_value":
            kvs[j] = replace(kvs[j], value="bogus")
            resp = replace(op.response, kvs=tuple(kvs))
        elif kind == "mod_shift":
            kvs[j] = replace(kvs[j], mod_revision=kvs[j].mod_revision + 1000)
            resp = replace(op.response, kvs=tuple(kvs))
        else:
            resp = replace(op.response, revision=(op.response.revision or 0) + 1000)
        return _set(h, i, replace(op, response=resp))
    if kind == "stale_read":
        return _stale_read(h, rng)
    if kind == "lost_write":
        return _lost_write(h, rng)
    if kind == "dup_revision":
        i, j = rng.sample(_puts(h), 2)
        a, b = h.operations[i], h.operations[j]
        assert a.response is not None and b.response is not None
        return _set(h, i, replace(a, response=replace(a.response, revision=b.response.revision)))
    # watch mutations
    w = rng.choice([w for w in h.watches if sum(len(r.events) for r in w.responses) >= 2])
    responses = list(w.responses)
    with_events = [k for k, r in enumerate(responses) if r.events]
    if kind == "dup_event":
        k = rng.choice(with_events)
        responses.insert(k + 1, responses[k])
    elif kind == "drop_event":
        # drop a response whose revision an acknowledged write fully determines (so the
        # reference log still knows it), followed by a later event: a gap
        complete = build_log(h).complete
        k = rng.choice([k for k in with_events[:-1]
                        if responses[k].events[0].kv.mod_revision in complete])
        del responses[k]
    else:  # swap two event responses: revision goes backwards
        k1, k2 = with_events[0], with_events[-1]
        responses[k1], responses[k2] = responses[k2], responses[k1]
    nw = WatchRecord(w.id, w.client, w.invoke, w.request, responses, w.resumes)
    return History(h.operations, [nw if x is w else x for x in h.watches], h.initial_revision)


def _acked_puts(h: History, key: str) -> list[Operation]:
    return [op for op in h.operations if op.status == OK and isinstance(op.request, Put)
            and op.request.key == key and op.response is not None]


def _stale_read(h: History, rng: random.Random) -> History:
    """A read returns the value of an acknowledged put older than another acknowledged put of
    the same key that returned before the read was invoked: never linearizable."""
    cands = []
    for i in _reads(h):
        op = h.operations[i]
        req = op.request
        assert isinstance(req, Range) and op.ret is not None
        if req.end is not None or op.response is None or not op.response.kvs:
            continue
        puts = _acked_puts(h, req.key)
        for p in puts:
            if p.ret is not None and p.ret < op.invoke:
                older = [q for q in puts if q.response and p.response
                         and (q.response.revision or 0) < (p.response.revision or 0)]
                if older:
                    cands.append((i, rng.choice(older)))
    i, q = rng.choice(cands)
    op = h.operations[i]
    assert op.response is not None and op.response.kvs and q.response is not None
    assert isinstance(q.request, Put) and q.response.revision is not None
    kv = replace(op.response.kvs[0], value=q.request.value, mod_revision=q.response.revision,
                 create_revision=None, version=None, lease=None)
    return _set(h, i, replace(op, response=replace(op.response, kvs=(kv,))))


def _may_vanish(h: History, key: str) -> bool:
    """Some put of the key used a lease, or some delete of it had an unknown outcome."""
    for op in h.operations:
        req = op.request
        subs = (*req.success, *req.failure) if isinstance(req, Txn) else (req,)
        for o in subs:
            if isinstance(o, Put) and o.key == key and o.lease:
                return True
            if isinstance(o, Delete) and o.key == key and op.status != OK:
                return True
    return False


def _lost_write(h: History, rng: random.Random) -> History:
    """The final read loses a key whose last write was an acknowledged put without lease and
    nothing could have deleted it afterwards."""
    i = len(h.operations) - 1
    fin = h.operations[i]
    assert fin.response is not None and fin.response.kvs
    cands = []
    for j, kv in enumerate(fin.response.kvs):
        w = next((op for op in _acked_puts(h, kv.key)
                  if op.response and op.response.revision == kv.mod_revision), None)
        if w is not None and isinstance(w.request, Put) and not _may_vanish(h, kv.key):
            cands.append(j)
    j = rng.choice(cands)
    kvs = fin.response.kvs[:j] + fin.response.kvs[j + 1:]
    return _set(h, i, replace(fin, response=replace(fin.response, kvs=kvs, count=len(kvs))))


KINDS = ["bogus_value", "mod_shift", "future_header", "dup_revision", "stale_read",
         "lost_write", "dup_event", "swap_events", "drop_event"]


@pytest.mark.parametrize("seed", range(90))
def test_mutated_histories_fail(seed: int) -> None:
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    for attempt in range(20):  # some histories offer no candidate for a mutation kind
        keys = ["a", "b", "c", "d", "e", "f", "g", "h"] if kind == "lost_write" else ["a", "b", "c"]
        h = random_history(seed * 100 + attempt, n=60, width=30, keys=keys)
        try:
            bad = mutate(h, rng, kind)
            break
        except (IndexError, ValueError, AssertionError):
            continue
    else:
        pytest.fail(f"no history offered a {kind} mutation")
    if kind in ("dup_event", "swap_events", "drop_event"):
        r = watch.check(bad)
    else:
        r = linearizability.check(bad, seconds=5)
    assert r.status == "violation", f"{kind}: {r.to_text()}"
    if kind in ("bogus_value", "lost_write"):
        assert set_check.check(bad).status == "violation", set_check.check(bad).to_text()
    assert check_all(bad, seconds=5).status == "violation"
