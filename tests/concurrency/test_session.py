"""Session: lease granted and kept alive at TTL/3, expires_at, done on loss, orphan, close."""

from __future__ import annotations

import time

import pytest

from conch.client import Client
from conch.client.concurrency import Session, SessionExpired
from devkit.polling import poll
from tests.concurrency.conftest import MakeClient


def test_grant_keepalive_and_expires_at(client: Client) -> None:
    t0 = time.monotonic()
    with Session(client, ttl=3) as s:
        assert s.lease_id > 0
        assert t0 <= s.expires_at - 3 <= time.monotonic()
        first = s.expires_at
        # keepalives (every ~1 s) push the deadline forward and keep the lease alive past
        # its first expiry
        poll(lambda: s.expires_at > first + 2.5, 10, "expires_at to advance")
        poll(lambda: time.monotonic() > first + 0.5, 10, "the first deadline to pass")
        assert client.lease_time_to_live(s.lease_id).ttl > 0
        assert not s.done.is_set() and not s.expired()
        assert s.expires_at > time.monotonic()
    assert s.done.is_set()


def test_done_when_lease_revoked_elsewhere(client: Client, make_client: MakeClient) -> None:
    other = make_client()
    s = Session(client, ttl=3)
    other.lease_revoke(s.lease_id)
    poll(s.done.is_set, 5, "done after the lease was revoked")
    assert s.expired()
    s.close()  # revoking a lease already gone is fine
    s.close()


def test_close_revokes_and_is_idempotent(client: Client) -> None:
    s = Session(client, ttl=30)
    client.put("/sess/k", "v", lease=s.lease_id)
    s.close()
    assert s.done.is_set()
    assert client.get("/sess/k").kvs == []
    assert client.lease_time_to_live(s.lease_id).ttl == -1
    s.close()


def test_orphan_keeps_lease_until_ttl(client: Client) -> None:
    s = Session(client, ttl=30)
    s.orphan()
    assert s.done.is_set()
    assert client.lease_time_to_live(s.lease_id).ttl > 0
    client.lease_revoke(s.lease_id)


def test_adopt_existing_lease(client: Client) -> None:
    lease = client.lease_grant(20)
    with Session(client, lease_id=lease.id) as s:
        assert s.lease_id == lease.id
        assert s.ttl > 0
    assert client.lease_time_to_live(lease.id).ttl == -1
    with pytest.raises(SessionExpired):
        Session(client, lease_id=lease.id)


def test_bad_ttl(client: Client) -> None:
    with pytest.raises(ValueError):
        Session(client, ttl=0)
