"""conch.ha in-process API on etcd and conch: timing validation, the token and its fence,
cancellation when the lease is revoked from outside, the overrun hook, hand-over."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from conch.client import Client, Op
from conch.client.concurrency import Election, Session
from conch.ha import Cancel, FencingToken, TimingError, Timings, leader, run_while_leader
from devkit import harness
from devkit.polling import poll


@pytest.fixture
def client(any_server: harness.ServerProcess) -> Iterator[Client]:
    with Client([any_server.endpoint], timeout=5.0) as c:
        yield c


@pytest.mark.parametrize(
    ("ttl", "grace", "margin", "msg"),
    [
        (0, 1.0, 1.0, "positive whole number"),
        (10, 0.0, 1.0, "grace must be > 0"),
        (10, 1.0, -1.0, "margin must be > 0"),
        (3, 2.0, 1.0, "must be less than the ttl"),
        (6, 2.5, 1.0, "keepalives are sent every ttl/3"),
    ],
)
def test_unsafe_timings_are_refused(ttl: int, grace: float, margin: float, msg: str) -> None:
    with pytest.raises(TimingError, match=msg):
        Timings(ttl, grace, margin)


def test_timings_deadlines() -> None:
    t = Timings(15, 2.0, 1.0)
    assert t.keepalive_period == 5.0
    assert t.stop_at(100.0) == 97.0 and t.kill_at(100.0) == 99.0


def test_run_while_leader_token_and_fence(client: Client) -> None:
    def work(cancel: Cancel, token: FencingToken) -> int:
        assert not cancel.is_set()
        kv = client.get(token.key).kvs[0]
        assert kv.create_revision == token.rev and kv.lease == token.lease_id
        assert kv.value == b"me"
        r = client.txn([token.compare()], [Op.put(b"guarded", b"1")], [])
        assert r.succeeded
        return token.rev

    rev = run_while_leader(client, "rwl", work, proposal="me", ttl=5, grace=0.5, margin=0.5)
    assert rev > 0
    assert client.get(b"rwl/", prefix=True).kvs == []  # resigned and revoked


def test_cancel_when_lease_revoked_and_successor_fenced(client: Client) -> None:
    with leader(client, "rev", proposal="a", ttl=5, grace=0.5, margin=0.5) as lead:
        client.lease_revoke(lead.token.lease_id)
        assert lead.cancel.wait(10), "cancelled once the session sees the lease gone"
        assert lead.cancel.reason is not None
        with Session(client, ttl=5) as s:
            e = Election(s, "rev")
            assert e.campaign("b", timeout=10) > lead.token.rev  # tokens increase
            r = client.txn([lead.token.compare()], [Op.put(b"x", b"stale")], [])
            assert not r.succeeded
            e.resign()


def test_overrun_hook_runs_when_work_ignores_cancel(client: Client) -> None:
    overrun = threading.Event()
    with leader(
        client, "ovr", proposal="a", ttl=5, grace=0.5, margin=0.5, on_overrun=overrun.set
    ) as lead:
        client.lease_revoke(lead.token.lease_id)
        poll(lead.cancel.is_set, 10, "cancel")
        # the work "ignores" cancel: the hook fires by the hard deadline
        assert overrun.wait(10)


def test_context_manager_hands_over(client: Client) -> None:
    order: list[str] = []
    second_in = threading.Event()

    def second() -> None:
        with Client(client.endpoints, timeout=5.0) as c2:
            with leader(c2, "ho", proposal="b", ttl=5, grace=0.5, margin=0.5):
                order.append("b")
                second_in.set()

    with leader(client, "ho", proposal="a", ttl=5, grace=0.5, margin=0.5) as lead:
        order.append("a")
        t = threading.Thread(target=second, daemon=True)
        t.start()
        poll(lambda: len(client.get(b"ho/", prefix=True).kvs) == 2, 10, "b campaigning")
        assert not second_in.is_set() and not lead.cancel.is_set()
    assert second_in.wait(5)
    t.join(10)
    assert order == ["a", "b"]
