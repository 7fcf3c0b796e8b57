"""Start-up recovery: open (or create) the WAL, the newest snapshot and the backend, and
reconcile them, as etcd's `etcdserver/bootstrap.go` does.

`recover()` returns a plain `Recovered` value: who this member is, the open WAL and backend,
and raft's storage loaded with the snapshot, the entries after it and the hard state. It
refuses (StartupError) every state from which a member cannot serve correctly: a WAL corrupt
before its tail, a backend behind the newest snapshot with the snapshot's database missing,
a backend ahead of the WAL.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from conch.backend import Backend
from conch.proto.etcdserverpb import etcdserver_pb2
from conch.proto.raftpb import raft_pb2
from conch.raft import MemoryStorage
from conch.raft.codec import entry_from_pb, entry_to_pb, hard_state_from_pb
from conch.raft.types import ConfChange, ConfChangeType, Entry, EntryType, Snapshot
from conch.server import snap as snapfile
from conch.server.config import Config, compute_member_id
from conch.server.membership import MemberInfo
from conch.server.storage import remove_stale_snapshot_dbs
from conch.wal import (
    WAL,
    CorruptWALError,
    UnexpectedEOFError,
    WalSnapshot,
    repair,
    valid_snapshot_entries,
)
from conch.wal import exists as wal_exists

log = logging.getLogger("conch.member")


class StartupError(Exception):
    """The member refuses to start; the message says why."""


@dataclass
class JoinInfo:
    """What an existing cluster told a member joining it (--initial-cluster-state existing)."""

    cluster_id: int
    member_id: int
    members: list[MemberInfo]


@dataclass
class Recovered:
    member_id: int
    cluster_id: int
    wal: WAL
    backend: Backend
    raft_storage: MemoryStorage
    #: index of the newest raft snapshot (the log is compacted up to here)
    snap_index: int
    #: the backend's applied index (at or past snap_index)
    consistent_index: int
    #: True when this start created the data dir's WAL (a new member)
    fresh: bool


def snap_dir(cfg: Config) -> str:
    return os.path.join(cfg.member_dir, "snap")


def recover(
    cfg: Config,
    join: JoinInfo | None = None,
    *,
    open_backend: Callable[[str], Backend] = Backend,
) -> Recovered:
    member_id = join.member_id if join else cfg.member_id()
    cluster_id = join.cluster_id if join else cfg.cluster_id()
    os.makedirs(cfg.member_dir, exist_ok=True)
    wal_dir = cfg.wal_path
    snap: Snapshot | None = None
    if wal_exists(wal_dir):
        try:
            valid = [(w.index, w.term) for w in valid_snapshot_entries(wal_dir)]
        except CorruptWALError as exc:
            raise StartupError(
                f"WAL in {wal_dir} is corrupt before its tail, refusing to start: {exc}"
            ) from exc
        snap = snapfile.load_newest(snap_dir(cfg), valid)
    _recover_backend_from_snapshot(cfg, snap, open_backend)
    remove_stale_snapshot_dbs(snap_dir(cfg))
    backend = open_backend(cfg.backend_path)
    storage = MemoryStorage()
    snap_index = 0
    fresh = not wal_exists(wal_dir)
    if fresh:
        if join is not None:
            # Joining: an empty log; the leader sends everything (entries or a snapshot).
            meta = etcdserver_pb2.Metadata(NodeID=member_id, ClusterID=cluster_id)
            wal = WAL.create(wal_dir, meta.SerializeToString())
        elif cfg.initial_cluster_state != "new":
            raise StartupError("--initial-cluster-state existing needs the cluster to join")
        else:
            wal = _bootstrap_new_cluster(cfg, wal_dir, member_id, cluster_id, storage)
    else:
        walsnap = WalSnapshot()
        if snap is not None:
            walsnap = WalSnapshot(snap.metadata.index, snap.metadata.term)
        wal, raw_meta, hard_pb, entries_pb = _open_wal(wal_dir, walsnap)
        got = etcdserver_pb2.Metadata.FromString(raw_meta)
        # As in etcd, after the first start the data dir says who this member is; the
        # --initial-cluster* flags no longer matter (peers refuse a wrong cluster ID).
        if got.ClusterID != cluster_id or got.NodeID != member_id:
            log.info(
                "data dir %s belongs to member %x of cluster %x (the --initial-cluster "
                "flags would give %x of %x); using the data dir's",
                cfg.data_dir, got.NodeID, got.ClusterID, member_id, cluster_id,
            )
            member_id, cluster_id = got.NodeID, got.ClusterID
        if snap is not None:
            storage.apply_snapshot(snap)
            snap_index = snap.metadata.index
        storage.append([entry_from_pb(e) for e in entries_pb])
        storage.set_hard_state(hard_state_from_pb(hard_pb))
    ci = backend.consistent_index()
    if snap is not None and ci < snap.metadata.index:
        raise StartupError(
            f"backend consistent index {ci} is behind the newest snapshot "
            f"{snap.metadata.index} and the snapshot's database is missing; refusing to start"
        )
    last = storage.last_index()
    if ci > last:
        raise StartupError(
            f"backend consistent index {ci} is ahead of the WAL's last index {last}: "
            "the WAL lost entries the store had applied; refusing to start"
        )
    return Recovered(member_id, cluster_id, wal, backend, storage, snap_index, ci, fresh)


def _bootstrap_new_cluster(
    cfg: Config, wal_dir: str, member_id: int, cluster_id: int, storage: MemoryStorage
) -> WAL:
    """A new cluster: the WAL starts with one ConfChangeAddNode per initial member at term 1,
    committed, as etcd's raft bootstrap does; every member writes the same."""
    meta = etcdserver_pb2.Metadata(NodeID=member_id, ClusterID=cluster_id)
    wal = WAL.create(wal_dir, meta.SerializeToString())
    members = sorted(
        (compute_member_id(urls, cfg.initial_cluster_token), urls)
        for urls in cfg.initial_cluster_map().values()
    )
    entries = []
    for i, (mid, urls) in enumerate(members, start=1):
        cc = ConfChange(
            ConfChangeType.ConfChangeAddNode, mid, MemberInfo(mid, list(urls)).to_json(), id=0
        )
        entries.append(Entry(1, i, EntryType.EntryConfChange, cc.marshal()))
    hard = raft_pb2.HardState(term=1, vote=0, commit=len(entries))
    wal.save(hard, [entry_to_pb(e) for e in entries], True)
    storage.append(entries)
    storage.set_hard_state(hard_state_from_pb(hard))
    return wal


def _recover_backend_from_snapshot(
    cfg: Config, snap: Snapshot | None, open_backend: Callable[[str], Backend]
) -> None:
    """A crash while installing a snapshot from the leader leaves the received database
    beside an older backend: install it now (etcd's RecoverSnapshotBackend)."""
    if snap is None:
        return
    received = os.path.join(snap_dir(cfg), f"{snap.metadata.index:016x}.snap.db")
    if not os.path.exists(received):
        return
    if os.path.exists(cfg.backend_path):
        b = open_backend(cfg.backend_path)
        ci = b.consistent_index()
        b.close()
        if ci >= snap.metadata.index:
            os.unlink(received)
            return
    log.warning("installing the snapshot database %s left by an interrupted install", received)
    os.replace(received, cfg.backend_path)
    lock = cfg.backend_path + "-lock"
    if os.path.exists(lock):
        os.unlink(lock)


def _open_wal(
    wal_dir: str, snap: WalSnapshot
) -> tuple[WAL, bytes, raft_pb2.HardState, list[raft_pb2.Entry]]:
    for attempt in (1, 2):
        w = WAL.open(wal_dir, snap)
        try:
            meta, hard, entries = w.read_all()
            return w, meta, hard, entries
        except UnexpectedEOFError as exc:
            w.close()
            if attempt == 2 or not repair(wal_dir):
                raise StartupError(f"cannot repair WAL in {wal_dir}: {exc}") from exc
            log.warning("repaired torn WAL tail in %s: %s", wal_dir, exc)
        except CorruptWALError as exc:
            w.close()
            raise StartupError(
                f"WAL in {wal_dir} is corrupt before its tail, refusing to start: {exc}"
            ) from exc
    raise AssertionError("unreachable")
