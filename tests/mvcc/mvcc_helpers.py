"""Helpers for the MVCC store tests: a real LMDB Backend in tmp_path."""

from __future__ import annotations

from pathlib import Path

from conch.backend import Backend
from conch.mvcc import KVStore
from conch.proto.etcdserverpb import rpc_pb2 as pb
from conch.proto.mvccpb.kv_pb2 import Event, KeyValue


class Leases:
    """A minimal lessor stand-in: a set of lease ids and the lease -> keys map the store's
    hooks maintain."""

    def __init__(self, ids: tuple[int, ...] = ()) -> None:
        self.ids = set(ids)
        self.keys: dict[int, set[bytes]] = {}
        self.log: list[tuple[str, int, bytes]] = []

    def exists(self, lease_id: int) -> bool:
        return lease_id in self.ids

    def attach(self, lease_id: int, key: bytes) -> None:
        self.log.append(("attach", lease_id, key))
        self.keys.setdefault(lease_id, set()).add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        self.log.append(("detach", lease_id, key))
        self.keys.get(lease_id, set()).discard(key)


class Harness:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.backend = Backend(str(path / "member" / "snap" / "db"), map_size=1 << 30)
        self.store = KVStore(self.backend)
        self.leases = Leases((1, 2, 3))
        self.store.lease_hooks = self.leases

    def reopen(self) -> None:
        self.backend.close()
        self.backend = Backend(str(self.path / "member" / "snap" / "db"), map_size=1 << 30)
        self.store = KVStore(self.backend)
        self.store.lease_hooks = self.leases

    # --- convenience --------------------------------------------------------------------
    def put(self, key: bytes, value: bytes = b"", **kw: object) -> pb.PutResponse:
        with self.backend.write() as t:
            resp, _ = self.store.put(t, pb.PutRequest(key=key, value=value, **kw))  # type: ignore[arg-type]
        return resp

    def put_ev(self, key: bytes, value: bytes = b"", **kw: object) -> list[Event]:
        with self.backend.write() as t:
            _, evs = self.store.put(t, pb.PutRequest(key=key, value=value, **kw))  # type: ignore[arg-type]
        return evs

    def delete(
        self, key: bytes, range_end: bytes = b"", prev_kv: bool = False
    ) -> tuple[pb.DeleteRangeResponse, list[Event]]:
        with self.backend.write() as t:
            return self.store.delete_range(
                t, pb.DeleteRangeRequest(key=key, range_end=range_end, prev_kv=prev_kv)
            )

    def txn(self, req: pb.TxnRequest) -> tuple[pb.TxnResponse, list[Event]]:
        with self.backend.write() as t:
            return self.store.txn(t, req)

    def get(self, key: bytes, **kw: object) -> pb.RangeResponse:
        return self.store.range(pb.RangeRequest(key=key, **kw))  # type: ignore[arg-type]

    def keys(self, key: bytes = b"\x00", range_end: bytes = b"\x00", **kw: object) -> list[bytes]:
        return [kv.key for kv in self.get(key, range_end=range_end, **kw).kvs]

    def rev(self) -> int:
        return self.store.current_revision()

    def compact(self, rev: int) -> int:
        with self.backend.write() as t:
            return self.store.compact(t, rev)


def kv(key: bytes, value: bytes, create: int, mod: int, version: int, lease: int = 0) -> KeyValue:
    return KeyValue(
        key=key, value=value, create_revision=create, mod_revision=mod, version=version, lease=lease
    )
