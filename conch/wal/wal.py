"""etcd-format write-ahead log (``server/storage/wal`` semantics, own implementation).

Directory layout: segment files ``%016x-%016x.wal`` (sequence number, raft index of the first
entry the segment may hold).  The first segment, ``0000000000000000-0000000000000000.wal``, starts
with CRC(0), Metadata and an empty Snapshot(0, 0); every later one starts with CRC(previous
segment's last CRC), Metadata and the current HardState.  Frames and CRCs: see
:mod:`conch.wal.frame`.

Life cycle: :meth:`WAL.create` returns a WAL ready to append.  :meth:`WAL.open` returns a WAL in
read mode; :meth:`WAL.read_all` reads it and switches it to append mode.  Startup::

    w = WAL.open(dir, snap)
    try:
        md, hs, ents = w.read_all()
    except UnexpectedEOFError:       # torn tail in the last segment
        repair(dir)                  # copy to <name>.broken, truncate, fsync
        w = WAL.open(dir, snap); md, hs, ents = w.read_all()
    # CorruptWALError (anything else): refuse to start, show str(exc)

If ``read_all`` raises, the WAL has already released its files; ``close()`` is then a no-op.

Not thread-safe: one thread (the WAL writer) must own a WAL object.  Segment files are
``flock``-ed while this WAL holds them (like etcd), so a second process cannot open the same WAL
for appending.

Segments are preallocated to ``segment_size`` (``posix_fallocate``, as etcd's
``fileutil.Preallocate``): an append then rewrites blocks the file already owns, so its
``fdatasync`` need not journal a size change (measured here: ~0.10 ms instead of ~0.17 ms).  The
space after the last record is zeros, which the reader treats as the end of the log.  A segment
is cut once the data written to it reaches ``segment_size`` after a ``save``; the cut truncates
it to its data.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from conch.proto.etcdserverpb import etcdserver_pb2
from conch.proto.raftpb.raft_pb2 import ConfState, Entry, HardState
from conch.proto.walpb import record_pb2
from conch.wal.errors import (
    CorruptWALError,
    MetadataConflictError,
    SnapshotMismatchError,
    SnapshotNotFoundError,
    UnexpectedEOFError,
    WALError,
)
from conch.wal.frame import (
    CRC_TYPE,
    ENTRY_TYPE,
    METADATA_TYPE,
    SNAPSHOT_TYPE,
    STATE_TYPE,
    SegmentScan,
    append_frame,
    crc_update,
    scan_segment,
)

SEGMENT_SIZE_BYTES = 64 * 1000 * 1000

_WAL_NAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")

__all__ = [
    "SEGMENT_SIZE_BYTES",
    "WAL",
    "WalSnapshot",
    "exists",
    "encode_metadata",
    "decode_metadata",
    "purge",
    "repair",
    "valid_snapshot_entries",
    "wal_name",
]


@dataclass(frozen=True)
class WalSnapshot:
    """A walpb.Snapshot: the raft index/term of a snapshot (and its ConfState, if known)."""

    index: int = 0
    term: int = 0
    conf_state: ConfState | None = None

    def marshal(self) -> bytes:
        s = record_pb2.Snapshot(index=self.index, term=self.term)
        if self.conf_state is not None:
            s.conf_state.CopyFrom(self.conf_state)
        return s.SerializeToString()

    @classmethod
    def unmarshal(cls, data: bytes) -> WalSnapshot:
        s = record_pb2.Snapshot.FromString(data)
        cs: ConfState | None = None
        if s.HasField("conf_state"):
            cs = ConfState()
            cs.CopyFrom(s.conf_state)
        return cls(s.index, s.term, cs)


def encode_metadata(node_id: int, cluster_id: int) -> bytes:
    """Marshal etcdserverpb.Metadata{NodeID, ClusterID}, the metadata etcd stores in its WAL."""
    return etcdserver_pb2.Metadata(NodeID=node_id, ClusterID=cluster_id).SerializeToString()


def decode_metadata(data: bytes) -> tuple[int, int]:
    """(NodeID, ClusterID) from metadata written by :func:`encode_metadata` (or etcd)."""
    m = etcdserver_pb2.Metadata.FromString(data)
    return m.NodeID, m.ClusterID


def wal_name(seq: int, index: int) -> str:
    return f"{seq:016x}-{index:016x}.wal"


def _parse_wal_name(name: str) -> tuple[int, int] | None:
    m = _WAL_NAME_RE.match(name)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


def _wal_names(dirpath: str) -> list[tuple[str, int, int]]:
    """(name, seq, index) of every segment in ``dirpath``, sorted by sequence."""
    out: list[tuple[str, int, int]] = []
    for name in os.listdir(dirpath):
        parsed = _parse_wal_name(name)
        if parsed is not None:
            out.append((name, parsed[0], parsed[1]))
    out.sort(key=lambda t: t[1])
    return out


def exists(dirpath: str) -> bool:
    """True if ``dirpath`` holds at least one WAL segment."""
    try:
        return bool(_wal_names(dirpath))
    except (FileNotFoundError, NotADirectoryError):
        return False


def _is_empty_state(st: HardState) -> bool:
    return st.term == 0 and st.vote == 0 and st.commit == 0


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _preallocate(fd: int, size: int) -> None:
    """Give the file ``size`` bytes of zeros up front; where the file system cannot, it simply
    grows with each write (correct, only slower to fsync)."""
    try:
        if os.fstat(fd).st_size < size:
            os.posix_fallocate(fd, 0, size)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    if n != len(data):  # regular files only write short on ENOSPC-like conditions
        view = memoryview(data)
        while n < len(data):
            n += os.write(fd, view[n:])


def _read_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    off = 0
    while off < size:
        chunk = os.pread(fd, min(size - off, 1 << 30), off)
        if not chunk:
            break
        chunks.append(chunk)
        off += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _lock(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise WALError(f"wal: {path!r} is locked by another WAL (process or object)") from None


class _Segment:
    __slots__ = ("path", "seq", "index", "fd")

    def __init__(self, path: str, seq: int, index: int, fd: int) -> None:
        self.path = path
        self.seq = seq
        self.index = index
        self.fd = fd


class WAL:
    """A segmented etcd-format WAL.  See the module docstring for the life cycle."""

    def __init__(self, dirpath: str, segment_size: int) -> None:
        self._dir = dirpath
        self._segment_size = segment_size
        self._segments: list[_Segment] = []  # held (open + flocked), oldest first; last = tail
        self._start = WalSnapshot()
        self._reading = False
        self._closed = False
        self._metadata = b""
        self._state = HardState()
        self._crc = 0
        self._tail_off = 0
        self._enti = 0  # index of the last entry written (or read)

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, dirpath: str, metadata: bytes,
               segment_size: int = SEGMENT_SIZE_BYTES) -> WAL:
        """Create a new WAL in ``dirpath`` (built in ``<dirpath>.tmp``, renamed atomically)."""
        if exists(dirpath):
            raise FileExistsError(f"wal: {dirpath!r} already holds a WAL")
        dirpath = os.path.normpath(dirpath)
        tmp = dirpath + ".tmp"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        w = cls(dirpath, segment_size)
        try:
            name = wal_name(0, 0)
            fd = os.open(os.path.join(tmp, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            seg = _Segment(os.path.join(tmp, name), 0, 0, fd)
            w._segments.append(seg)
            _lock(fd, seg.path)
            w._metadata = metadata
            parts: list[bytes] = []
            n = append_frame(parts, CRC_TYPE, 0, None)
            w._crc = crc_update(0, metadata)
            n += append_frame(parts, METADATA_TYPE, w._crc, metadata)
            snap = WalSnapshot().marshal()
            w._crc = crc_update(w._crc, snap)
            n += append_frame(parts, SNAPSHOT_TYPE, w._crc, snap)
            _write_all(fd, b"".join(parts))
            w._tail_off = n
            _preallocate(fd, segment_size)
            os.fdatasync(fd)
            _fsync_dir(tmp)
            if os.path.exists(dirpath):
                shutil.rmtree(dirpath)  # a directory without segments (etcd does the same)
            os.rename(tmp, dirpath)
            _fsync_dir(os.path.dirname(os.path.abspath(dirpath)))
            seg.path = os.path.join(dirpath, name)
        except BaseException:
            w._release_all()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return w

    @classmethod
    def open(cls, dirpath: str, snap: WalSnapshot = WalSnapshot(0, 0),
             segment_size: int = SEGMENT_SIZE_BYTES) -> WAL:
        """Open an existing WAL for reading from ``snap``; ``read_all`` then enables appending.

        Only the segments that may hold records after ``snap`` are opened (and locked).
        """
        names = _wal_names(dirpath)
        if not names:
            raise FileNotFoundError(f"wal: no WAL segments in {dirpath!r}")
        first = -1
        for i in range(len(names) - 1, -1, -1):
            if names[i][2] <= snap.index:
                first = i
                break
        if first < 0:
            raise SnapshotNotFoundError(
                f"wal: no segment in {dirpath!r} can hold snapshot index {snap.index} "
                f"(first segment starts at {names[0][2]})")
        for k in range(first + 1, len(names)):
            if names[k][1] != names[k - 1][1] + 1:
                raise CorruptWALError(os.path.join(dirpath, names[k][0]), 0,
                                      f"segment sequence jumps from {names[k - 1][1]} to "
                                      f"{names[k][1]} (missing segment)")
        w = cls(dirpath, segment_size)
        w._start = snap
        w._reading = True
        try:
            for name, seq, index in names[first:]:
                path = os.path.join(dirpath, name)
                fd = os.open(path, os.O_RDWR)
                w._segments.append(_Segment(path, seq, index, fd))
                _lock(fd, path)
        except BaseException:
            w._release_all()
            raise
        return w

    # ------------------------------------------------------------------ reading

    def read_all(self) -> tuple[bytes, HardState, list[Entry]]:
        """Read every record after the start snapshot; switch the WAL to append mode.

        Returns (metadata, last HardState, entries with index > snapshot index).  An entry whose
        index is at or below that of an earlier one truncates the log there (a later leader
        overwrote uncommitted entries).  Entries above ``HardState.commit`` may still be
        overwritten later; do not apply them.

        Raises :class:`UnexpectedEOFError` (torn tail of the last segment: run ``repair``),
        :class:`CorruptWALError` / :class:`CRCMismatchError`, :class:`MetadataConflictError`,
        :class:`SnapshotMismatchError`, :class:`SnapshotNotFoundError`.  On any error the WAL
        releases its files.
        """
        if not self._reading:
            raise WALError("wal: read_all called on a WAL that is not in read mode")
        try:
            return self._read_all()
        except BaseException:
            self._release_all()
            self._closed = True
            raise

    def _read_all(self) -> tuple[bytes, HardState, list[Entry]]:
        start_index = self._start.index
        start_term = self._start.term
        metadata: bytes | None = None
        state = HardState()
        ents: list[Entry] = []
        match = False
        crc = 0
        enti = 0
        scan = SegmentScan()
        last = len(self._segments) - 1
        from_string = Entry.FromString
        for i, seg in enumerate(self._segments):
            scan = scan_segment(_read_fd(seg.fd), seg.path, crc, i == last)
            for rtype, data, roff in scan.records:
                if rtype == ENTRY_TYPE:
                    try:
                        e = from_string(data)
                    except DecodeError as exc:  # the CRC matched: written that way
                        raise CorruptWALError(seg.path, roff, f"undecodable entry: {exc}") from exc
                    idx = e.Index
                    if idx > start_index:
                        pos = idx - start_index - 1
                        n = len(ents)
                        if pos == n:
                            ents.append(e)
                        elif pos < n:
                            del ents[pos:]
                            ents.append(e)
                        else:
                            raise CorruptWALError(
                                seg.path, roff, f"entry index gap: entry {idx} after "
                                f"{start_index + n} (snapshot index {start_index})")
                    enti = idx
                elif rtype == STATE_TYPE:
                    try:
                        state = HardState.FromString(data)
                    except DecodeError as exc:
                        raise CorruptWALError(seg.path, roff, f"undecodable HardState: {exc}") \
                            from exc
                elif rtype == METADATA_TYPE:
                    if metadata is not None and metadata != data:
                        raise MetadataConflictError(
                            f"wal: conflicting metadata found in {seg.path!r}")
                    metadata = data
                elif rtype == SNAPSHOT_TYPE:
                    try:
                        snap = record_pb2.Snapshot.FromString(data)
                    except DecodeError as exc:
                        raise CorruptWALError(seg.path, roff, f"undecodable Snapshot: {exc}") \
                            from exc
                    if snap.index == start_index:
                        if snap.term != start_term:
                            raise SnapshotMismatchError(
                                f"wal: snapshot mismatch at index {start_index}: WAL has term "
                                f"{snap.term}, expected {start_term}")
                        match = True
                elif rtype == CRC_TYPE:
                    pass  # checked and applied by scan_segment
                else:
                    raise CorruptWALError(seg.path, roff, f"unexpected record type {rtype}")
            if scan.error is not None:
                raise scan.error
            crc = scan.crc
        if not match:
            raise SnapshotNotFoundError(
                f"wal: snapshot (index {start_index}, term {start_term}) not found in "
                f"{self._dir!r}")

        # Switch to append mode at the end of the last valid record; anything after it is
        # zeros (scan_segment reported anything else): drop them.
        # A preallocated tail keeps its zeros; anything else is cut back and preallocated.
        tail = self._segments[-1]
        size = os.fstat(tail.fd).st_size
        if size != scan.valid_end and size < self._segment_size:
            os.ftruncate(tail.fd, scan.valid_end)
        if size < self._segment_size:
            _preallocate(tail.fd, self._segment_size)
            os.fdatasync(tail.fd)
        os.lseek(tail.fd, scan.valid_end, os.SEEK_SET)
        self._tail_off = scan.valid_end
        self._crc = crc
        self._metadata = metadata if metadata is not None else b""
        self._state = state
        # The log goes on after the snapshot it was opened at even when no entry follows it
        # (as after save_snapshot).
        self._enti = max(enti, start_index)
        self._reading = False
        self._start = WalSnapshot()
        return self._metadata, state, ents

    # ------------------------------------------------------------------ writing

    def _check_append(self) -> None:
        if self._closed:
            raise WALError("wal: WAL is closed")
        if self._reading:
            raise WALError("wal: read_all must be called before appending")

    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool = True) -> None:
        """Append ``entries`` then ``hard_state`` (skipped if None or empty) in one write.

        With ``sync`` the write is made durable with one ``fdatasync``.  Cuts a new segment when
        the tail has reached ``segment_size``.
        """
        self._check_append()
        save_state = hard_state is not None and not _is_empty_state(hard_state)
        if not entries and not save_state:
            return
        if entries:
            # Raft may overwrite a suffix (a new leader's log wins) but never leave a gap.
            first = entries[0].Index
            assert first <= self._enti + 1, f"WAL gap: entry {first} after {self._enti}"
            assert entries[-1].Index == first + len(entries) - 1, "WAL entries not contiguous"
        if save_state:
            assert hard_state is not None
            # A term never goes back, nor does a commit index within a term's log.
            assert hard_state.term >= self._state.term, (
                f"WAL term back from {self._state.term} to {hard_state.term}"
            )
            assert hard_state.commit >= self._state.commit, (
                f"WAL commit index back from {self._state.commit} to {hard_state.commit}"
            )
        parts: list[bytes] = []
        crc = self._crc
        n = 0
        for e in entries:
            data = e.SerializeToString()
            crc = crc_update(crc, data)
            n += append_frame(parts, ENTRY_TYPE, crc, data)
        if save_state:
            assert hard_state is not None
            data = hard_state.SerializeToString()
            crc = crc_update(crc, data)
            n += append_frame(parts, STATE_TYPE, crc, data)
        tail = self._segments[-1]
        _write_all(tail.fd, b"".join(parts))
        self._crc = crc
        self._tail_off += n
        if entries:
            self._enti = entries[-1].Index
        if save_state:
            assert hard_state is not None
            st = HardState()
            st.CopyFrom(hard_state)
            self._state = st
        if self._tail_off >= self._segment_size:
            self._cut()
        elif sync:
            os.fdatasync(tail.fd)

    def save_snapshot(self, snap: WalSnapshot) -> None:
        """Append a Snapshot record and fsync."""
        self._check_append()
        data = snap.marshal()
        self._crc = crc_update(self._crc, data)
        parts: list[bytes] = []
        n = append_frame(parts, SNAPSHOT_TYPE, self._crc, data)
        tail = self._segments[-1]
        _write_all(tail.fd, b"".join(parts))
        self._tail_off += n
        if self._enti < snap.index:
            self._enti = snap.index
        os.fdatasync(tail.fd)

    def sync(self) -> None:
        """fdatasync the tail segment (for callers that saved with ``sync=False``)."""
        self._check_append()
        os.fdatasync(self._segments[-1].fd)

    def _cut(self) -> None:
        """Close the tail segment and start ``seq+1``-``enti+1`` with CRC, Metadata, HardState.

        The new segment is written as ``<dir>/0.tmp``, fsynced, renamed into place, and the
        directory is fsynced.
        """
        old = self._segments[-1]
        os.ftruncate(old.fd, self._tail_off)
        os.fdatasync(old.fd)
        seq = old.seq + 1
        index = self._enti + 1
        tmp = os.path.join(self._dir, "0.tmp")
        if os.path.exists(tmp):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _lock(fd, tmp)
            parts: list[bytes] = []
            crc = self._crc
            n = append_frame(parts, CRC_TYPE, crc, None)
            crc = crc_update(crc, self._metadata)
            n += append_frame(parts, METADATA_TYPE, crc, self._metadata)
            if not _is_empty_state(self._state):
                data = self._state.SerializeToString()
                crc = crc_update(crc, data)
                n += append_frame(parts, STATE_TYPE, crc, data)
            _write_all(fd, b"".join(parts))
            _preallocate(fd, self._segment_size)
            os.fdatasync(fd)
            path = os.path.join(self._dir, wal_name(seq, index))
            os.rename(tmp, path)
            _fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            raise
        self._segments.append(_Segment(path, seq, index, fd))
        self._crc = crc
        self._tail_off = n

    # ------------------------------------------------------------------ segments / closing

    def release_lock_to(self, index: int) -> None:
        """Release (close and unlock) segments that hold only entries before ``index``.

        Like etcd: keeps the last segment whose first index is below ``index`` (it may hold
        entries at or after ``index``) and every later one.  Released segments can then be
        deleted by :func:`purge`.
        """
        segs = self._segments
        smaller = len(segs) - 1
        for i, seg in enumerate(segs):
            if seg.index >= index:
                smaller = i - 1
                break
        if smaller <= 0:
            return
        for seg in segs[:smaller]:
            os.close(seg.fd)
        del segs[:smaller]

    @property
    def dir(self) -> str:
        return self._dir

    @property
    def tail_path(self) -> str:
        return self._segments[-1].path

    @property
    def last_index(self) -> int:
        """Index of the last entry saved (or read by ``read_all``)."""
        return self._enti

    def _release_all(self) -> None:
        for seg in self._segments:
            try:
                os.close(seg.fd)
            except OSError:
                pass
        self._segments = []

    def close(self) -> None:
        """Cut the tail's preallocated zeros, fdatasync it (if appending) and release every
        segment.  Idempotent.  (A WAL left by a crash keeps its zeros; the reader stops there.)"""
        if self._closed:
            return
        self._closed = True
        try:
            if self._segments and not self._reading:
                tail = self._segments[-1].fd
                if os.fstat(tail).st_size > self._tail_off:
                    os.ftruncate(tail, self._tail_off)
                os.fdatasync(tail)
        finally:
            self._release_all()

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair(dirpath: str) -> bool:
    """Repair a torn tail in the last segment.

    If the last segment ends in a torn frame (what ``read_all`` reports as
    :class:`UnexpectedEOFError`), copy it to ``<name>.broken``, truncate it at the end of the
    last valid record, fsync, and return True.  Return False if there is nothing to repair.
    Raise :class:`CorruptWALError` if the last segment is damaged in a way that is not a torn
    tail (such damage is never repaired), and :class:`WALError` if the segment is locked.
    """
    names = _wal_names(dirpath)
    if not names:
        return False
    path = os.path.join(dirpath, names[-1][0])
    fd = os.open(path, os.O_RDWR)
    try:
        _lock(fd, path)
        buf = _read_fd(fd)
        # The last segment decodes on its own: its leading CRC record resets the rolling CRC.
        scan = scan_segment(buf, path, 0, True)
        if scan.error is None:
            return False
        if not isinstance(scan.error, UnexpectedEOFError):
            raise scan.error
        broken = path + ".broken"
        bfd = os.open(broken, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(bfd, buf)
            os.fsync(bfd)
        finally:
            os.close(bfd)
        os.ftruncate(fd, scan.valid_end)
        os.fsync(fd)
        _fsync_dir(dirpath)
        return True
    finally:
        os.close(fd)


def valid_snapshot_entries(dirpath: str) -> list[WalSnapshot]:
    """Snapshot records in the whole WAL whose index is <= the last HardState.commit.

    (etcd ``ValidSnapshotEntries``, used at startup to pick the newest usable ``.snap``.)
    Read-only; does not lock.  A torn tail simply ends the scan.
    """
    names = _wal_names(dirpath)
    snaps: list[WalSnapshot] = []
    state = HardState()
    crc = 0
    for i, (name, _seq, _index) in enumerate(names):
        path = os.path.join(dirpath, name)
        with open(path, "rb") as f:
            buf = f.read()
        scan = scan_segment(buf, path, crc, i == len(names) - 1)
        for rtype, data, _roff in scan.records:
            if rtype == SNAPSHOT_TYPE:
                snaps.append(WalSnapshot.unmarshal(data))
            elif rtype == STATE_TYPE:
                state = HardState.FromString(data)
        if scan.error is not None and not isinstance(scan.error, UnexpectedEOFError):
            raise scan.error
        crc = scan.crc
    return [s for s in snaps if s.index <= state.commit]


def purge(dirpath: str, max_files: int) -> list[str]:
    """Delete the oldest segments so that at most ``max_files`` remain, skipping (and stopping
    at) any segment still held by a WAL (see :meth:`WAL.release_lock_to`).  Returns the
    removed paths.  ``max_files <= 0`` keeps everything."""
    removed: list[str] = []
    if max_files <= 0:
        return removed
    names = _wal_names(dirpath)
    for name, _seq, _index in names[: max(0, len(names) - max_files)]:
        path = os.path.join(dirpath, name)
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                break
            os.unlink(path)
            removed.append(path)
        finally:
            os.close(fd)
    if removed:
        _fsync_dir(dirpath)
    return removed
