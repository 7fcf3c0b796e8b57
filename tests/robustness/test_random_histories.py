"""Randomized: histories generated from a sequential reference model with random concurrency
windows and timed-out writes must pass every checker; one mutated response must fail."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from robustutil import random_history

from conch.robustness import check_all, linearizability, set_check, watch
from conch.robustness.history import (
    OK,
    History,
    Operation,
    Put,
    Range,
    WatchRecord,
)

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
    else:  # swap two event responses: revision goes backwards
        k1, k2 = with_events[0], with_events[-1]
        responses[k1], responses[k2] = responses[k2], responses[k1]
    nw = WatchRecord(w.id, w.client, w.invoke, w.request, responses, w.resumes)
    return History(h.operations, [nw if x is w else x for x in h.watches], h.initial_revision)


KINDS = ["bogus_value", "mod_shift", "future_header", "dup_revision", "dup_event", "swap_events"]


@pytest.mark.parametrize("seed", range(60))
def test_mutated_histories_fail(seed: int) -> None:
    rng = random.Random(seed)
    h = random_history(seed, n=60, width=30)
    kind = KINDS[seed % len(KINDS)]
    bad = mutate(h, rng, kind)
    if kind in ("dup_event", "swap_events"):
        r = watch.check(bad)
    else:
        r = linearizability.check(bad, seconds=5)
    assert r.status == "violation", f"{kind}: {r.to_text()}"
    if kind == "bogus_value":
        assert set_check.check(bad).status == "violation"
    assert check_all(bad, seconds=5).status == "violation"
