"""Leases, cluster/maintenance calls, failover and deadlines (etcd 3.4 and conch)."""

from __future__ import annotations

import threading
import time

import pytest

from conch.client import Client
from conch.client import errors as errs
from devkit.harness import free_port
from devkit.polling import poll


def test_lease_grant_ttl_keepalive_revoke(client: Client) -> None:
    lease = client.lease_grant(30)
    assert lease.id > 0 and lease.ttl == 30
    client.put("lk", "v", lease=lease.id)
    info = client.lease_time_to_live(lease.id, keys=True)
    assert info.id == lease.id and info.granted_ttl == 30 and 0 < info.ttl <= 30
    assert info.keys == [b"lk"]
    assert lease.id in client.leases()
    assert client.lease_keep_alive_once(lease.id) == 30
    client.lease_revoke(lease.id)
    assert client.get("lk").kvs == []
    assert client.lease_time_to_live(lease.id).ttl == -1
    assert client.lease_keep_alive_once(lease.id) == 0  # gone: TTL 0, not an error
    assert lease.id not in client.leases()


def test_keepalive_stream_and_gone(client: Client) -> None:
    lease = client.lease_grant(3)
    before = set(threading.enumerate())
    ka = client.lease_keep_alive(lease.id)
    assert ka.get(timeout=10) == 3
    t0 = time.monotonic()
    # keeps it alive past its TTL (requests every TTL/3)
    n = 1
    while time.monotonic() - t0 < 4.5:
        assert ka.get(timeout=10) == 3
        n += 1
    assert n >= 3 and ka.last_ack_sent_at is not None
    assert client.lease_time_to_live(lease.id).ttl > 0
    client.lease_revoke(lease.id)
    poll(lambda: ka.gone, 10, "keepalive sees TTL 0")
    assert ka.done.wait(10)
    poll(lambda: not ka.alive, 10, "keepalive thread exits")
    assert 0 in list(ka)  # the TTL 0 answer is delivered, then iteration ends
    ka.close()
    leaked = [t for t in set(threading.enumerate()) - before if t.name.startswith("conch-")]
    assert leaked == []


def test_keepalive_close(client: Client) -> None:
    lease = client.lease_grant(30)
    ka = client.lease_keep_alive(lease.id)
    assert ka.get(timeout=10) == 30
    ka.close()
    assert not ka.alive and not ka.gone


def test_lease_expiry(client: Client) -> None:
    lease = client.lease_grant(2)
    client.put("exp", "v", lease=lease.id)
    w = client.watch("exp")
    poll(lambda: client.lease_time_to_live(lease.id).ttl == -1, 15, "lease expiry")
    assert client.get("exp").kvs == []
    assert [e.type for e in w.get(timeout=10).events] == ["DELETE"]
    w.cancel()


def test_member_list_status_hash_kv(any_server, client: Client) -> None:  # type: ignore[no-untyped-def]
    ml = client.member_list()
    assert len(ml.members) == 1
    m = ml.members[0]
    assert m.id == ml.header.member_id and any_server.client_url in m.client_urls
    st = client.status()
    assert st.leader == m.id and st.version and st.raft_term >= 1 and st.db_size > 0
    assert st.header.revision >= 1 and not st.is_learner
    st2 = client.status(endpoint=any_server.endpoint)
    assert st2.leader == st.leader
    client.put("h", "1")
    h1 = client.hash_kv()
    assert h1.hash == client.hash_kv().hash  # stable
    rev = client.put("h", "2").header.revision
    assert client.hash_kv(rev - 1).hash == h1.hash
    assert client.hash_kv().hash != h1.hash
    assert client.alarms() == []


def test_failover_dead_first_endpoint(any_server) -> None:  # type: ignore[no-untyped-def]
    dead = f"127.0.0.1:{free_port()}"
    with Client([dead, any_server.endpoint], timeout=10) as c:
        assert c.put("fo", "1").header.revision > 0  # a mutation: never sent to the dead port
        assert c.get("fo").kvs[0].value == b"1"
        assert c.status().version
        w = c.watch("fo")
        c.put("fo", "2")
        assert w.get(timeout=10).events[0].kv.value == b"2"
        w.cancel()
        assert c.lease_keep_alive_once(c.lease_grant(10).id) == 10


def test_deadline_when_every_endpoint_is_dead() -> None:
    with Client([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], timeout=1.0) as c:
        t0 = time.monotonic()
        with pytest.raises(errs.Unavailable):
            c.get("x")
        with pytest.raises(errs.Unavailable):
            c.put("x", "y")
        assert time.monotonic() - t0 < 5
        with pytest.raises(errs.ClientError):
            c.watch("x", timeout=0.5)


def test_per_call_timeout(client: Client) -> None:
    with pytest.raises(errs.DeadlineExceeded):
        # a watch-free way to make a call wait: a linearizable read with a tiny deadline
        for _ in range(200):
            client.get("x", timeout=0.000001)
