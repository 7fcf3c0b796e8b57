"""Interop with etcdctl (Go's concurrency package): one election, one lock.

The etcdctl children are started here and signalled by their own pid only. SIGTERM makes
etcdctl resign / unlock (its signal handler), i.e. it is killed the ordinary way.
"""

from __future__ import annotations

from conch.client import Client
from conch.client.concurrency import Election, Mutex, Session
from devkit.polling import poll
from tests.concurrency._threads import Bg, collect
from tests.concurrency.conftest import StartCtl


def _keys(client: Client, prefix: str) -> list[bytes]:
    return [kv.key for kv in client.get(prefix + "/", prefix=True).kvs]


def test_python_campaigns_behind_etcdctl_elect(client: Client, etcdctl_proc: StartCtl) -> None:
    ctl = etcdctl_proc("elect", "ielect", "from-etcdctl")
    poll(lambda: "from-etcdctl" in ctl.lines, 10, "etcdctl to be elected")
    etcdctl_key = ctl.lines[0].encode()
    assert etcdctl_key.startswith(b"ielect/")
    with Session(client, ttl=10) as s:
        e = Election(s, "ielect")
        assert e.leader().value == b"from-etcdctl"
        w = Bg(lambda: e.campaign("from-python", timeout=20))
        poll(lambda: len(_keys(client, "ielect")) == 2, 5, "python's candidate key")
        assert not w.finished.is_set()
        assert e.leader().key == etcdctl_key
        ctl.stop()  # SIGTERM to the pid we started: etcdctl resigns
        w.join(10)
        assert e.leader().value == b"from-python"
        assert _keys(client, "ielect") == [e.key]
        e.resign()


def test_etcdctl_observes_python_leader(client: Client, etcdctl_proc: StartCtl) -> None:
    with Session(client, ttl=10) as s:
        e = Election(s, "iobs")
        e.campaign("py-1")
        ctl = etcdctl_proc("elect", "-l", "iobs")
        poll(lambda: "py-1" in ctl.lines, 10, "etcdctl to observe the python leader")
        assert ctl.lines[ctl.lines.index("py-1") - 1].encode() == e.key
        e.proclaim("py-2")
        poll(lambda: "py-2" in ctl.lines, 10, "etcdctl to observe the proclaimed value")
        ctl.stop()


def test_python_observes_etcdctl_leader(client: Client, etcdctl_proc: StartCtl) -> None:
    with Session(client, ttl=10) as s:
        e = Election(s, "iobs2")
        seen: list[bytes | None] = []
        obs = e.observe()
        reader = Bg(lambda: collect(obs, seen))
        poll(lambda: seen == [None], 5, "no leader yet")
        ctl = etcdctl_proc("elect", "iobs2", "go-leader")
        poll(lambda: seen[-1:] == [b"go-leader"], 10, "the etcdctl leader")
        # etcdctl only installs its resign-on-SIGTERM path once it printed its key
        poll(lambda: "go-leader" in ctl.lines, 10, "etcdctl to report its election")
        ctl.stop()
        poll(lambda: seen[-1:] == [None], 10, "no leader after etcdctl resigned")
        obs.close()
        reader.join(10)


def test_mutex_and_etcdctl_lock_exclude_each_other(client: Client, etcdctl_proc: StartCtl) -> None:
    with Session(client, ttl=10) as s:
        m = Mutex(s, "ilock")
        m.lock()
        ctl = etcdctl_proc("lock", "ilock")
        poll(lambda: len(_keys(client, "ilock")) == 2, 10, "etcdctl's waiter key")
        waiter_key = [k for k in _keys(client, "ilock") if k != m.key][0]
        assert ctl.lines == []  # still waiting: we hold the lock
        m.unlock()
        poll(lambda: ctl.lines[:1] == [waiter_key.decode()], 10, "etcdctl to get the lock")
        # now python waits behind etcdctl
        w = Bg(lambda: m.lock(timeout=20))
        poll(lambda: len(_keys(client, "ilock")) == 2, 5, "python's waiter key")
        assert not w.finished.is_set()
        # etcdctl's key is still the first created: the owner
        by_create = client.get("ilock/", prefix=True, sort_target="create", sort_order="ascend")
        assert [kv.key for kv in by_create.kvs][0] == waiter_key
        ctl.stop()  # SIGTERM: etcdctl unlocks
        w.join(10)
        assert client.txn([m.is_owner()], [], []).succeeded
        assert _keys(client, "ilock") == [m.key]
        m.unlock()
