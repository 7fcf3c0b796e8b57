"""Raft snapshot files: `member/snap/<term>-<index>.snap`, etcd's format.

Each file is a `snappb.snapshot{crc, data}` whose data is a marshalled `raftpb.Snapshot`
(metadata: index, term, conf state; conch keeps the state machine itself in the backend, so
the data part is empty). A file that fails its CRC is renamed `*.broken`, as etcd does. The
WAL records which snapshots were completed; only those are loaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable

import crc32c

from conch.proto.raftpb import raft_pb2
from conch.proto.snappb import snap_pb2
from conch.raft.codec import snapshot_from_pb, snapshot_to_pb
from conch.raft.types import Snapshot

log = logging.getLogger("conch.snap")

SUFFIX = ".snap"


def snap_name(term: int, index: int) -> str:
    return f"{term:016x}-{index:016x}{SUFFIX}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(snap_dir: str, snap: Snapshot) -> str:
    """Write the snapshot file durably (temp file, fsync, rename, fsync dir)."""
    os.makedirs(snap_dir, exist_ok=True)
    data = snapshot_to_pb(snap).SerializeToString()
    rec = snap_pb2.snapshot(crc=crc32c.crc32c(data), data=data).SerializeToString()
    path = os.path.join(snap_dir, snap_name(snap.metadata.term, snap.metadata.index))
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(rec)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(snap_dir)
    return path


def _read(path: str) -> Snapshot | None:
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        rec = snap_pb2.snapshot.FromString(raw)
    except Exception:
        rec = None
    if rec is None or not rec.HasField("data") or crc32c.crc32c(rec.data) != rec.crc:
        log.error("snapshot file %s is corrupt; renaming it to .broken", path)
        with contextlib.suppress(OSError):
            os.replace(path, path + ".broken")
        return None
    return snapshot_from_pb(raft_pb2.Snapshot.FromString(rec.data))


def load_newest(snap_dir: str, valid: Iterable[tuple[int, int]]) -> Snapshot | None:
    """The newest readable snapshot whose (index, term) the WAL recorded as complete."""
    wanted = set(valid)
    try:
        names = sorted((n for n in os.listdir(snap_dir) if n.endswith(SUFFIX)), reverse=True)
    except FileNotFoundError:
        return None
    for name in names:
        try:
            term_hex, index_hex = name[: -len(SUFFIX)].split("-")
            key = (int(index_hex, 16), int(term_hex, 16))
        except ValueError:
            continue
        if key not in wanted:
            continue
        snap = _read(os.path.join(snap_dir, name))
        if snap is not None:
            return snap
    return None


def purge(snap_dir: str, keep: int) -> None:
    """Keep the newest `keep` snapshot files (0 keeps all), as --max-snapshots."""
    if keep <= 0:
        return
    names = sorted(n for n in os.listdir(snap_dir) if n.endswith(SUFFIX))
    for name in names[:-keep]:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(snap_dir, name))
