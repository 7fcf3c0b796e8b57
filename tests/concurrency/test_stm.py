"""STM: Go's four isolation levels; concurrent transfers keep the total constant for the
levels that guard reads; ReadCommitted's documented lost update; prefetch, rev, delete."""

from __future__ import annotations

import functools
import random

import pytest

from conch.client import Client
from conch.client.concurrency import (
    STM,
    Isolation,
    ReadCommitted,
    Serializable,
    SerializableSnapshot,
    STMConflict,
    stm,
)
from tests.concurrency._threads import Bg
from tests.concurrency.conftest import MakeClient

ACCOUNTS = [f"/acct/{i}" for i in range(4)]


@pytest.mark.parametrize(
    "iso", [Isolation.SerializableSnapshot, Isolation.Serializable, Isolation.RepeatableReads]
)
def test_concurrent_transfers_keep_total(make_client: MakeClient, iso: Isolation) -> None:
    setup = make_client()
    for k in ACCOUNTS:
        setup.put(k, "100")

    def worker(seed: int) -> int:
        c = make_client()
        rnd = random.Random(seed)
        attempts = 0
        for _ in range(10):
            src, dst = rnd.sample(ACCOUNTS, 2)
            amount = rnd.randint(1, 20)

            def transfer(s: STM, src: str = src, dst: str = dst, amount: int = amount) -> None:
                nonlocal attempts
                attempts += 1
                a = int(s.get(src) or 0)
                b = int(s.get(dst) or 0)
                s.put(src, str(a - amount))
                s.put(dst, str(b + amount))

            stm(c, transfer, iso, max_attempts=200)
        return attempts

    workers = [Bg(functools.partial(worker, seed)) for seed in range(4)]
    attempts = sum(w.join(120) for w in workers)
    total = sum(int(setup.get(k).kvs[0].value) for k in ACCOUNTS)
    assert total == 400
    assert attempts >= 40


def _lost_update_attempts(client: Client, other: Client, iso: Isolation) -> tuple[int, bytes]:
    client.put("/x", "0")
    calls = 0

    def incr(s: STM) -> None:
        nonlocal calls
        calls += 1
        v = int(s.get("/x") or 0)
        if calls == 1:
            other.put("/x", "100")  # a concurrent writer between our read and commit
        s.put("/x", str(v + 1))

    stm(client, incr, iso, max_attempts=5)
    return calls, client.get("/x").kvs[0].value


def test_read_committed_has_no_guard_others_retry(client: Client, make_client: MakeClient) -> None:
    other = make_client()
    # ReadCommitted commits at once over the concurrent write (a lost update, as in Go)
    assert _lost_update_attempts(client, other, ReadCommitted) == (1, b"1")
    for iso in (Isolation.RepeatableReads, Serializable, SerializableSnapshot):
        assert _lost_update_attempts(client, other, iso) == (2, b"101"), iso


def test_snapshot_guards_blind_writes(client: Client, make_client: MakeClient) -> None:
    """SerializableSnapshot also fails when a key it only wrote changed since its first read;
    Serializable does not guard blind writes."""
    other = make_client()
    for iso, expected in ((SerializableSnapshot, 2), (Serializable, 1)):
        client.put("/r", "r")
        client.put("/w", "0")
        calls = 0

        def fn(s: STM) -> None:
            nonlocal calls
            calls += 1
            s.get("/r")
            if calls == 1:
                other.put("/w", "other")
            s.put("/w", "mine")

        stm(client, fn, iso, max_attempts=5)
        assert calls == expected, iso
        assert client.get("/w").kvs[0].value == b"mine"


def test_get_rev_delete_prefetch(client: Client) -> None:
    client.put("/p/a", "1")
    client.put("/p/b", "2")
    mod_a = client.get("/p/a").kvs[0].mod_revision

    def fn(s: STM) -> None:
        assert s.get("/p/a") == b"1"
        assert s.get("/p/missing") is None
        assert s.rev("/p/a") == mod_a
        assert s.rev("/p/missing") == 0
        s.delete("/p/b")
        assert s.get("/p/b") is None  # own writes are visible
        s.put("/p/c", "3")

    r = stm(client, fn, prefetch=["/p/a", "/p/b"])
    assert r.succeeded
    assert [kv.key for kv in client.get("/p/", prefix=True).kvs] == [b"/p/a", b"/p/c"]


def test_max_attempts(client: Client, make_client: MakeClient) -> None:
    other = make_client()
    client.put("/busy", "0")
    n = 0

    def fn(s: STM) -> None:
        nonlocal n
        n += 1
        s.get("/busy")
        other.put("/busy", str(n))  # always conflicts
        s.put("/busy", "mine")

    with pytest.raises(STMConflict):
        stm(client, fn, max_attempts=3)
    assert n == 3


def test_apply_error_aborts(client: Client) -> None:
    def fn(s: STM) -> None:
        s.put("/never", "x")
        raise KeyError("abort")

    with pytest.raises(KeyError):
        stm(client, fn)
    assert client.get("/never").kvs == []
