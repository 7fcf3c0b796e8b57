"""Election: Go's key layout, create-revision order, resign hand-over, proclaim, leader,
observe (with "no leader"), timeouts and session expiry while campaigning."""

from __future__ import annotations

import functools

import pytest

from conch.client import Client
from conch.client.concurrency import (
    Election,
    NoLeader,
    NotLeader,
    Session,
    SessionExpired,
    WaitTimeout,
)
from devkit.polling import poll
from tests.concurrency._threads import Bg, collect
from tests.concurrency.conftest import MakeClient


def keys_under(client: Client, prefix: str) -> list[bytes]:
    return [kv.key for kv in client.get(prefix + "/", prefix=True).kvs]


def test_key_layout_and_token(client: Client) -> None:
    with Session(client, ttl=10) as s:
        e = Election(s, "/el")
        rev = e.campaign("v1")
        assert e.key == b"/el/" + format(s.lease_id, "x").encode()
        kv = client.get(e.key).kvs[0]
        assert (kv.value, kv.lease, kv.create_revision) == (b"v1", s.lease_id, rev)
        assert e.rev == rev and e.header.revision >= rev
        assert client.txn([e.is_leader()], [], []).succeeded
        # campaigning again reuses the key and updates the value (Go)
        assert e.campaign("v2") == rev
        assert e.leader().value == b"v2"
        e.resign()
        assert e.key is None
        assert not client.txn([e.is_leader()], [], []).succeeded


def test_order_follows_create_revision_and_resign_hands_over(client: Client) -> None:
    sessions = [Session(client, ttl=10) for _ in range(3)]
    try:
        els = [Election(s, "/order") for s in sessions]
        els[0].campaign("c0")
        waiters = []
        for i in (1, 2):
            waiters.append(Bg(functools.partial(els[i].campaign, f"c{i}", timeout=20)))

            def queued(i: int = i) -> bool:
                return len(keys_under(client, "/order")) == i + 1

            poll(queued, 5, f"candidate {i} key")
        assert els[0].leader().value == b"c0"
        assert not any(w.finished.is_set() for w in waiters)
        els[0].resign()
        waiters[0].join(10)
        assert els[1].leader().value == b"c1"
        assert not waiters[1].finished.is_set()
        els[1].resign()
        waiters[1].join(10)
        assert els[2].leader().value == b"c2"
        els[2].resign()
        els[2].resign()  # idempotent
        with pytest.raises(NoLeader):
            els[2].leader()
    finally:
        for s in sessions:
            s.close()


def test_proclaim_and_not_leader(client: Client, make_client: MakeClient) -> None:
    with Session(client, ttl=10) as s:
        e = Election(s, "/procl")
        with pytest.raises(NotLeader):
            e.proclaim("x")
        e.campaign("a")
        e.proclaim("b")
        assert e.leader().value == b"b"
        assert e.key is not None  # set by campaign()
        make_client().delete(e.key)  # leadership lost behind our back
        with pytest.raises(NotLeader):
            e.proclaim("c")
        assert client.get("/procl/", prefix=True).kvs == []


def test_observe_reports_changes_and_no_leader(client: Client) -> None:
    s1, s2 = Session(client, ttl=10), Session(client, ttl=10)
    try:
        e1, e2 = Election(s1, "/obs"), Election(s2, "/obs")
        seen: list[bytes | None] = []
        obs = e1.observe()
        reader = Bg(lambda: collect(obs, seen))
        poll(lambda: seen == [None], 5, "initial 'no leader'")
        e1.campaign("one")
        poll(lambda: seen[-1:] == [b"one"], 5, "first leader")
        w = Bg(lambda: e2.campaign("two", timeout=20))
        poll(lambda: len(keys_under(client, "/obs")) == 2, 5, "second candidate")
        e1.proclaim("one-b")
        poll(lambda: seen[-1:] == [b"one-b"], 5, "proclaimed value")
        e1.resign()
        w.join(10)
        poll(lambda: seen[-1:] == [b"two"], 5, "hand-over")
        e2.resign()
        poll(lambda: seen[-1:] == [None], 5, "'no leader' after the last resign")
        assert seen == [None, b"one", b"one-b", b"two", None]
        obs.close()
        reader.join(10)
    finally:
        s1.close()
        s2.close()


def test_campaign_timeout_removes_key(client: Client) -> None:
    s1, s2 = Session(client, ttl=10), Session(client, ttl=10)
    try:
        Election(s1, "/to").campaign("a")
        e2 = Election(s2, "/to")
        with pytest.raises(WaitTimeout):
            e2.campaign("b", timeout=0.5)
        assert keys_under(client, "/to") == [b"/to/" + format(s1.lease_id, "x").encode()]
        assert e2.key is None
    finally:
        s1.close()
        s2.close()


def test_session_expiry_during_campaign(client: Client, make_client: MakeClient) -> None:
    other = make_client()
    s1, s2 = Session(client, ttl=10), Session(client, ttl=30)
    try:
        Election(s1, "/exp").campaign("leader")
        e2 = Election(s2, "/exp")
        w = Bg(lambda: e2.campaign("waiter", timeout=20))
        poll(lambda: len(keys_under(client, "/exp")) == 2, 5, "waiter's key")
        other.lease_revoke(s2.lease_id)
        with pytest.raises(SessionExpired):
            w.join(5)
        # and not a phantom leader once the real leader goes away (etcd #19597)
        s1.close()
        assert keys_under(client, "/exp") == []
    finally:
        s1.close()
        s2.close()


def test_campaign_on_ended_session(client: Client) -> None:
    s = Session(client, ttl=10)
    s.close()
    with pytest.raises(SessionExpired):
        Election(s, "/ended").campaign("x")
