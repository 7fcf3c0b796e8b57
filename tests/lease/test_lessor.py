"""Lessor tests against the real LMDB Backend and the real MVCC KVStore.

Times are plain numbers (monotonic seconds) passed in; nothing sleeps."""

from __future__ import annotations

import random
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conch.backend import Backend
from conch.errors import (
    ErrLeaseExist,
    ErrLeaseNotFound,
    ErrLeaseTTLTooLarge,
    EtcdError,
)
from conch.lease import MAX_LEASE_TTL, Lessor, new_lease_id
from conch.mvcc import KVStore
from conch.proto.etcdserverpb import rpc_pb2
from conch.proto.leasepb import lease_pb2
from conch.proto.mvccpb import kv_pb2


@dataclass
class Env:
    path: str
    backend: Backend
    store: KVStore
    lessor: Lessor

    # --- helpers: each call is one committed apply-thread transaction ---
    def grant(self, lease_id: int, ttl: int, now: float = 0.0) -> tuple[int, int]:
        with self.backend.write() as txn:
            return self.lessor.grant(txn, lease_id, ttl, now)

    def revoke(self, lease_id: int) -> list[kv_pb2.Event]:
        with self.backend.write() as txn:
            return self.lessor.revoke(txn, lease_id)

    def put(self, key: bytes, value: bytes = b"v", lease: int = 0) -> list[kv_pb2.Event]:
        with self.backend.write() as txn:
            w = self.store.write(txn)
            w.put(rpc_pb2.PutRequest(key=key, value=value, lease=lease))
            return w.end()

    def delete(self, key: bytes) -> list[kv_pb2.Event]:
        with self.backend.write() as txn:
            w = self.store.write(txn)
            w.delete_range(rpc_pb2.DeleteRangeRequest(key=key))
            return w.end()

    def expire(self, now: float, limit: int = 1000) -> list[int]:
        """What the member does: ask for expired leases and revoke each one."""
        ids = self.lessor.expired(now, limit)
        for lid in ids:
            self.revoke(lid)
        return ids

    def keys(self) -> list[bytes]:
        resp = self.store.range(rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00"))
        return [kv.key for kv in resp.kvs]

    def bucket(self) -> dict[bytes, bytes]:
        with self.backend.read() as txn:
            return {bytes(k): bytes(v) for k, v in txn.cursor(db=self.backend.db(b"lease"))}


def open_env(path: str, min_ttl: int = 2, revoke_rate: int = 1000) -> Env:
    backend = Backend(path)
    store = KVStore(backend)
    lessor = Lessor(backend, store, min_ttl=min_ttl, revoke_rate=revoke_rate)
    return Env(path, backend, store, lessor)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = open_env(str(tmp_path / "member" / "snap" / "db"))
    yield e
    e.backend.close()


def raises(proto: EtcdError) -> Any:
    return pytest.raises(EtcdError, match=proto.message)


# --- grant ---------------------------------------------------------------------------------
def test_lessor_is_the_store_hooks(env: Env) -> None:
    assert env.store.lease_hooks is env.lessor


def test_grant_given_id_persists(env: Env) -> None:
    assert env.grant(7, 30) == (7, 30)
    assert env.lessor.exists(7)
    assert env.lessor.leases() == [7]
    info = env.lessor.lookup(7)
    assert info is not None and info.id == 7 and info.ttl == 30 and info.keys == ()
    raw = env.bucket()[struct.pack(">Q", 7)]
    lpb = lease_pb2.Lease()
    lpb.ParseFromString(raw)
    assert (lpb.ID, lpb.TTL, lpb.RemainingTTL) == (7, 30, 0)
    assert env.lessor.lookup(8) is None


def test_grant_raises_ttl_to_minimum(tmp_path: Path) -> None:
    e = open_env(str(tmp_path / "db"))
    try:
        assert e.grant(1, 1) == (1, 2)
        assert e.grant(2, 0) == (2, 2)
        assert e.grant(3, -5) == (3, 2)
        assert e.grant(4, 2) == (4, 2)
    finally:
        e.backend.close()
    e = open_env(str(tmp_path / "db2"), min_ttl=5)
    try:
        assert e.grant(1, 3) == (1, 5)
        assert e.grant(2, 6) == (2, 6)
    finally:
        e.backend.close()


def test_grant_ttl_too_large(env: Env) -> None:
    with raises(ErrLeaseTTLTooLarge):
        env.grant(1, MAX_LEASE_TTL + 1)
    assert not env.lessor.exists(1)
    assert env.bucket() == {}
    assert env.grant(2, MAX_LEASE_TTL) == (2, MAX_LEASE_TTL)


def test_grant_existing_id(env: Env) -> None:
    env.grant(5, 10)
    with raises(ErrLeaseExist):
        env.grant(5, 20)
    assert env.lessor.time_to_live(5, 0.0, False)[1] == 10


def test_grant_zero_id_is_not_found(env: Env) -> None:
    with raises(ErrLeaseNotFound):
        env.grant(0, 10)


def test_new_lease_id_positive_int64_and_deterministic() -> None:
    ids = [new_lease_id(random.Random(42)) for _ in range(3)]
    assert ids[0] == ids[1] == ids[2]
    rng = random.Random(1)
    for _ in range(1000):
        lid = new_lease_id(rng)
        assert 0 < lid < 2**63

    class ZeroFirst(random.Random):
        calls = 0

        def getrandbits(self, k: int, /) -> int:
            self.calls += 1
            return 0 if self.calls == 1 else 99

    assert new_lease_id(ZeroFirst()) == 99


# --- revoke --------------------------------------------------------------------------------
def test_revoke_deletes_attached_keys_in_one_revision(env: Env) -> None:
    env.grant(1, 10)
    env.grant(2, 10)
    env.put(b"c", lease=1)
    env.put(b"a", lease=1)
    env.put(b"b", lease=1)
    env.put(b"other", lease=2)
    env.put(b"plain")
    rev = env.store.current_revision()
    assert env.lessor.time_to_live(1, 0.0, True)[2] == [b"a", b"b", b"c"]

    events = env.revoke(1)

    assert env.store.current_revision() == rev + 1
    assert [e.type for e in events] == [kv_pb2.Event.DELETE] * 3
    assert [e.kv.key for e in events] == [b"a", b"b", b"c"]  # key order
    assert {e.kv.mod_revision for e in events} == {rev + 1}
    assert env.keys() == [b"other", b"plain"]
    assert not env.lessor.exists(1)
    assert env.lessor.lookup(1) is None
    assert env.lessor.leases() == [2]
    assert struct.pack(">Q", 1) not in env.bucket()
    assert struct.pack(">Q", 2) in env.bucket()
    assert env.lessor.time_to_live(1, 0.0, True) == (-1, 0, [])
    # the revoked lease is usable again as a fresh ID
    assert env.grant(1, 4) == (1, 4)


def test_revoke_without_keys_makes_no_revision(env: Env) -> None:
    env.put(b"x")
    rev = env.store.current_revision()
    env.grant(3, 10)
    assert env.revoke(3) == []
    assert env.store.current_revision() == rev
    assert not env.lessor.exists(3)
    assert env.bucket() == {}


def test_revoke_unknown(env: Env) -> None:
    with raises(ErrLeaseNotFound):
        env.revoke(12345)
    env.grant(1, 10)
    env.revoke(1)
    with raises(ErrLeaseNotFound):
        env.revoke(1)


def test_put_with_unknown_lease_is_refused_by_store(env: Env) -> None:
    with raises(ErrLeaseNotFound):
        env.put(b"k", lease=99)
    assert env.keys() == []


# --- attach / detach through the store -----------------------------------------------------
def test_reattach_and_detach_on_put(env: Env) -> None:
    env.grant(1, 10)
    env.grant(2, 10)
    env.put(b"k", lease=1)
    assert env.lessor.lease_of(b"k") == 1
    env.put(b"k", b"v2", lease=2)  # moves to lease 2
    assert env.lessor.time_to_live(1, 0.0, True)[2] == []
    assert env.lessor.time_to_live(2, 0.0, True)[2] == [b"k"]
    assert env.lessor.lease_of(b"k") == 2

    # revoking the old lease leaves the key alone
    rev = env.store.current_revision()
    assert env.revoke(1) == []
    assert env.store.current_revision() == rev
    assert env.keys() == [b"k"]

    env.put(b"k", b"v3")  # lease 0: detached
    assert env.lessor.time_to_live(2, 0.0, True)[2] == []
    assert env.lessor.lease_of(b"k") == 0
    assert env.revoke(2) == []
    assert env.keys() == [b"k"]


def test_detach_on_delete(env: Env) -> None:
    env.grant(1, 10)
    env.put(b"a", lease=1)
    env.put(b"b", lease=1)
    env.delete(b"a")
    assert env.lessor.time_to_live(1, 0.0, True)[2] == [b"b"]
    events = env.revoke(1)
    assert [e.kv.key for e in events] == [b"b"]
    assert env.keys() == []


def test_detach_unknown_is_noop(env: Env) -> None:
    env.lessor.detach(77, b"nope")
    env.grant(1, 10)
    env.lessor.detach(1, b"nope")
    assert env.lessor.time_to_live(1, 0.0, True) == (10, 10, [])


# --- renew / time_to_live ------------------------------------------------------------------
def test_renew_unknown_is_zero(env: Env) -> None:
    env.lessor.promote(0.0)
    assert env.lessor.renew(42, 1.0) == 0


def test_time_to_live_unknown_is_minus_one(env: Env) -> None:
    assert env.lessor.time_to_live(42, 0.0, True) == (-1, 0, [])
    env.lessor.promote(0.0)
    assert env.lessor.time_to_live(42, 0.0, False) == (-1, 0, [])


def test_time_to_live_truncates_like_etcd(env: Env) -> None:
    env.lessor.promote(0.0)
    env.grant(1, 10, now=100.0)
    assert env.lessor.time_to_live(1, 100.0, False) == (10, 10, [])
    assert env.lessor.time_to_live(1, 100.001, False)[0] == 9
    assert env.lessor.time_to_live(1, 100.5, False)[0] == 9
    assert env.lessor.time_to_live(1, 101.0, False)[0] == 9
    assert env.lessor.time_to_live(1, 109.9, False)[0] == 0
    # expired, not yet revoked: 0, never negative (-1 would mean "not found")
    assert env.lessor.time_to_live(1, 110.0, False)[0] == 0
    assert env.lessor.time_to_live(1, 125.0, False) == (0, 10, [])


def test_time_to_live_keys(env: Env) -> None:
    env.grant(1, 10)
    for k in (b"z", b"m", b"a"):
        env.put(k, lease=1)
    assert env.lessor.time_to_live(1, 0.0, True)[2] == [b"a", b"m", b"z"]
    assert env.lessor.time_to_live(1, 0.0, False)[2] == []
    info = env.lessor.lookup(1)
    assert info is not None and info.keys == (b"a", b"m", b"z")


def test_renew_restarts_clock_at_full_ttl(env: Env) -> None:
    env.lessor.promote(0.0)
    env.grant(1, 10, now=0.0)
    assert env.lessor.renew(1, 7.0) == 10
    assert env.lessor.time_to_live(1, 7.0, False)[0] == 10
    assert env.lessor.expired(12.0) == []
    assert env.lessor.expired(17.0) == [1]
    info = env.lessor.lookup(1)
    assert info is not None and info.expiry == 17.0 and info.remaining(15.0) == 2.0


def test_renew_expired_lease_is_zero_and_does_not_revive(env: Env) -> None:
    env.lessor.promote(0.0)
    env.grant(1, 10, now=0.0)
    assert env.lessor.renew(1, 10.0) == 0  # expiry <= now: expired
    assert env.lessor.renew(1, 11.0) == 0
    assert env.lessor.expired(11.0) == [1]
    env.revoke(1)
    assert env.lessor.renew(1, 11.0) == 0


# --- expiry --------------------------------------------------------------------------------
def test_expired_order_and_limit(env: Env) -> None:
    env.lessor.promote(0.0)
    ttls = {1: 50, 2: 10, 3: 30, 4: 20, 5: 40, 6: 100}
    for lid, ttl in ttls.items():
        env.grant(lid, ttl, now=0.0)
    assert env.lessor.leases() == [2, 4, 3, 5, 1, 6]  # soonest expiry first
    assert env.expire(9.99) == []
    assert env.expire(10.0) == [2]
    assert env.expire(60.0, limit=2) == [4, 3]
    assert env.expire(60.0, limit=10) == [5, 1]
    assert env.expire(60.0) == []
    assert env.lessor.leases() == [6]


def test_expired_reports_again_if_revoke_was_lost(env: Env) -> None:
    env.lessor.promote(0.0)
    env.grant(1, 10, now=0.0)
    env.grant(2, 10, now=0.0)
    assert env.lessor.expired(10.0) == [1, 2]
    env.revoke(2)  # 1's revoke proposal got lost
    assert env.lessor.expired(12.9) == []
    assert env.lessor.expired(13.0) == [1]
    assert env.lessor.expired(13.0) == []


def test_expired_skips_revoked_and_renewed(env: Env) -> None:
    env.lessor.promote(0.0)
    for lid in (1, 2, 3):
        env.grant(lid, 10, now=0.0)
    env.revoke(1)
    assert env.lessor.renew(2, 5.0) == 10
    assert env.expire(10.0) == [3]
    assert env.expire(15.0) == [2]


def test_nothing_expires_before_promote(env: Env) -> None:
    env.grant(1, 10, now=0.0)
    assert env.lessor.expired(1e9) == []
    assert env.lessor.time_to_live(1, 1e9, False) == (10, 10, [])
    assert env.lessor.renew(1, 1e9) == 10
    info = env.lessor.lookup(1)
    assert info is not None and info.expiry is None and info.remaining(5.0) is None


def test_promote_resets_clocks(env: Env) -> None:
    env.lessor.promote(0.0)
    env.grant(1, 10, now=0.0)
    env.grant(2, 20, now=0.0)
    assert env.lessor.time_to_live(1, 8.0, False)[0] == 2
    env.lessor.promote(8.0)
    assert env.lessor.time_to_live(1, 8.0, False)[0] == 10
    assert env.lessor.time_to_live(2, 8.0, False)[0] == 20
    assert env.expire(17.9) == []
    assert env.expire(18.0) == [1]
    assert env.expire(28.0) == [2]


def test_promote_extend(env: Env) -> None:
    env.grant(1, 10)
    env.lessor.promote(100.0, extend=1.5)
    assert env.lessor.expired(111.0) == []
    assert env.lessor.expired(111.5) == [1]


def test_demote_stops_clocks(env: Env) -> None:
    env.lessor.promote(0.0)
    env.grant(1, 10, now=0.0)
    env.lessor.demote()
    assert env.lessor.expired(100.0) == []
    env.lessor.promote(100.0)
    assert env.lessor.expired(109.0) == []
    assert env.lessor.expired(110.0) == [1]


def test_promote_spreads_expiry_pileup(tmp_path: Path) -> None:
    e = open_env(str(tmp_path / "db"), revoke_rate=8)  # at most 6 expiries per second
    try:
        for lid in range(1, 21):
            e.grant(lid, 10)
        e.lessor.promote(0.0)
        expiries = sorted(
            info.expiry
            for lid in range(1, 21)
            if (info := e.lessor.lookup(lid)) is not None and info.expiry is not None
        )
        assert expiries[:6] == [10.0] * 6
        assert expiries[6] > 10.0
        for second in range(10, 20):
            assert sum(1 for x in expiries if second <= x < second + 1) <= 7
        total: list[int] = []
        now = 10.0
        while len(total) < 20:
            total += e.expire(now)
            now += 0.25
        assert sorted(total) == list(range(1, 21))
    finally:
        e.backend.close()


def test_heap_stays_bounded_under_keepalives(env: Env) -> None:
    env.lessor.promote(0.0)
    env.grant(1, 10, now=0.0)
    env.grant(2, 10, now=0.0)
    t = 0.0
    for _ in range(5000):
        t += 0.01
        assert env.lessor.renew(1, t) == 10
    assert len(env.lessor._heap) <= 2 * 2 + 64 + 1
    assert env.lessor.expired(t + 9.99) == [2]
    assert env.lessor.expired(t + 10.0) == [1]


def test_renew_concurrent_with_apply(env: Env) -> None:
    env.lessor.promote(0.0)
    env.grant(1, 10, now=0.0)
    stop = threading.Event()
    results: list[int] = []

    def keepalive() -> None:
        t = 0.0
        while not stop.is_set():
            t += 0.001
            results.append(env.lessor.renew(1, t))

    th = threading.Thread(target=keepalive)
    th.start()
    try:
        for i in range(2, 200):
            env.grant(i, 10, now=0.0)
            env.put(b"k%d" % i, lease=i)
            if i % 2:
                env.revoke(i)
    finally:
        stop.set()
        th.join()
    assert results and set(results) == {10}
    assert len(env.lessor.leases()) == 1 + 99


# --- persistence ---------------------------------------------------------------------------
def test_leases_survive_reopen_and_keys_are_rebuilt(tmp_path: Path) -> None:
    path = str(tmp_path / "member" / "snap" / "db")
    e = open_env(path)
    e.lessor.promote(0.0)
    e.grant(1, 10, now=0.0)
    e.grant(2, 60, now=0.0)
    e.grant(-3, 5, now=0.0)  # etcd accepts negative IDs; stored as uint64 big-endian
    e.grant(4, 7, now=0.0)
    e.put(b"a", lease=1)
    e.put(b"b", lease=2)
    e.put(b"c", lease=1)
    e.put(b"d", lease=-3)
    e.put(b"e")
    e.revoke(4)
    e.backend.close()

    e = open_env(path)
    try:
        lessor = e.lessor
        assert sorted(lessor.leases()) == [-3, 1, 2]
        assert lessor.time_to_live(1, 0.0, True) == (10, 10, [b"a", b"c"])
        assert lessor.time_to_live(2, 0.0, True) == (60, 60, [b"b"])
        assert lessor.time_to_live(-3, 0.0, True) == (5, 5, [b"d"])
        assert lessor.time_to_live(4, 0.0, True) == (-1, 0, [])
        assert lessor.lease_of(b"e") == 0
        # clocks are stopped until promote, which restarts them at full TTL
        assert lessor.expired(1000.0) == []
        lessor.promote(1000.0)
        assert e.expire(1005.0) == [-3]
        assert lessor.expired(1010.0) == [1]
        rev = e.store.current_revision()
        events = e.revoke(1)
        assert [ev.kv.key for ev in events] == [b"a", b"c"]
        assert e.store.current_revision() == rev + 1
        assert e.keys() == [b"b", b"e"]
    finally:
        e.backend.close()


def test_reopen_raises_stored_ttl_to_new_minimum(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    e = open_env(path)
    e.grant(1, 3)
    e.backend.close()
    e = open_env(path, min_ttl=5)
    try:
        assert e.lessor.time_to_live(1, 0.0, False) == (5, 5, [])
    finally:
        e.backend.close()


def test_recover_after_aborted_transaction(env: Env) -> None:
    env.lessor.promote(0.0)
    env.grant(1, 10, now=0.0)
    assert env.lessor.renew(1, 4.0) == 10

    class Boom(Exception):
        pass

    with pytest.raises(Boom), env.backend.write() as txn:
        env.lessor.grant(txn, 2, 10, 4.0)
        raise Boom  # the batch transaction aborts after the grant was applied
    assert env.lessor.exists(2)  # memory ran ahead of disk ...
    env.lessor.recover(now=5.0)
    assert not env.lessor.exists(2)  # ... until recover()
    assert env.lessor.time_to_live(1, 5.0, False)[0] == 9  # surviving clock kept
    assert env.lessor.expired(14.0) == [1]


def test_revoke_failure_in_child_txn_leaves_lease_and_keys(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The applier runs each request in a nested transaction; a revoke that fails midway
    (here: injected in the store's end()) must leave disk and memory as they were."""
    env.grant(1, 10)
    env.put(b"a", lease=1)
    env.put(b"b", lease=1)
    rev = env.store.current_revision()

    from conch.mvcc import KVWrite

    def boom(self: KVWrite) -> list[kv_pb2.Event]:
        raise RuntimeError("injected")

    monkeypatch.setattr(KVWrite, "end", boom)
    with env.backend.write() as txn:
        child = env.backend.env.begin(write=True, parent=txn)
        with pytest.raises(RuntimeError, match="injected"):
            env.lessor.revoke(child, 1)
        child.abort()
    monkeypatch.undo()

    assert env.store.current_revision() == rev
    assert env.keys() == [b"a", b"b"]
    assert env.lessor.time_to_live(1, 0.0, True) == (10, 10, [b"a", b"b"])
    assert [e.kv.key for e in env.revoke(1)] == [b"a", b"b"]
    assert env.store.current_revision() == rev + 1


def test_renew_is_not_persisted(env: Env) -> None:
    env.lessor.promote(0.0)
    env.grant(1, 10, now=0.0)
    before = env.bucket()
    env.lessor.renew(1, 5.0)
    assert env.bucket() == before
