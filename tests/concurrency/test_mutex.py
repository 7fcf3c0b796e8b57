"""Mutex: exclusion in create-revision order, try_lock, is_owner fencing, idempotent
unlock, session expiry while waiting."""

from __future__ import annotations

import pytest

from conch.client import Client, Op
from conch.client.concurrency import Locked, Mutex, Session, SessionExpired, WaitTimeout
from devkit.polling import poll
from tests.concurrency._threads import Bg
from tests.concurrency.conftest import MakeClient


def n_keys(client: Client, prefix: str) -> int:
    return len(client.get(prefix + "/", prefix=True).kvs)


def test_exclusion_and_handover(client: Client) -> None:
    s1, s2 = Session(client, ttl=10), Session(client, ttl=10)
    try:
        m1, m2 = Mutex(s1, "/lk"), Mutex(s2, "/lk")
        rev1 = m1.lock()
        assert m1.key == b"/lk/" + format(s1.lease_id, "x").encode()
        assert client.get(m1.key).kvs[0].create_revision == rev1
        w = Bg(lambda: m2.lock(timeout=20))
        poll(lambda: n_keys(client, "/lk") == 2, 5, "waiter's key")
        assert not w.finished.is_set()
        m1.unlock()
        rev2 = w.join(10)
        assert rev2 > rev1
        assert client.txn([m2.is_owner()], [], []).succeeded
        assert not client.txn([m1.is_owner()], [], []).succeeded
        m2.unlock()
        m2.unlock()  # idempotent
        assert n_keys(client, "/lk") == 0
    finally:
        s1.close()
        s2.close()


def test_try_lock(client: Client) -> None:
    s1, s2 = Session(client, ttl=10), Session(client, ttl=10)
    try:
        m1, m2 = Mutex(s1, "/try"), Mutex(s2, "/try")
        m1.try_lock()
        with pytest.raises(Locked):
            m2.try_lock()
        assert m2.key is None and n_keys(client, "/try") == 1  # its key was removed
        m1.unlock()
        m2.try_lock()
        m2.unlock()
    finally:
        s1.close()
        s2.close()


def test_is_owner_fences_writes(client: Client) -> None:
    with Session(client, ttl=10) as s:
        m = Mutex(s, "/fence")
        with m:
            r = client.txn([m.is_owner()], [Op.put("/data", "1")], [])
            assert r.succeeded
            guard = m.is_owner()
        assert not client.txn([guard], [Op.put("/data", "2")], []).succeeded
        assert client.get("/data").kvs[0].value == b"1"


def test_lock_timeout_removes_key(client: Client) -> None:
    s1, s2 = Session(client, ttl=10), Session(client, ttl=10)
    try:
        Mutex(s1, "/lto").lock()
        m2 = Mutex(s2, "/lto")
        with pytest.raises(WaitTimeout):
            m2.lock(timeout=0.5)
        assert n_keys(client, "/lto") == 1 and m2.key is None
    finally:
        s1.close()
        s2.close()


def test_session_expiry_during_lock_wait(client: Client, make_client: MakeClient) -> None:
    other = make_client()
    s1, s2 = Session(client, ttl=10), Session(client, ttl=30)
    try:
        Mutex(s1, "/lexp").lock()
        m2 = Mutex(s2, "/lexp")
        w = Bg(lambda: m2.lock(timeout=20))
        poll(lambda: n_keys(client, "/lexp") == 2, 5, "waiter's key")
        other.lease_revoke(s2.lease_id)
        with pytest.raises(SessionExpired):
            w.join(5)
    finally:
        s1.close()
        s2.close()
