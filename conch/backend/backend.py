"""The LMDB backend: one environment, etcd's bucket names as named databases.

The store's durability comes from the WAL, not from this file: every change reaches the
WAL (fsync) before it is applied here, and the applied raft index (`consistent_index`)
is committed in the same LMDB transaction as the data it produced. Commits are therefore
made without fsync (LMDB's NOSYNC: the pages reach the OS page cache, which survives
`kill -9` of the process) and `sync()` forces them to disk before anything that needs
them durable independently of the WAL (WAL segment release, snapshots, shutdown).
Replay after a crash starts at `consistent_index + 1`, so it is idempotent.

Layout mirrors etcd's `member/snap/db`: the environment is the single file `db` (plus
LMDB's `db-lock`) with named databases for etcd's buckets.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import lmdb

from conch import failpoints
from conch.backend.schema import BUCKETS, META, META_CONSISTENT_INDEX

DEFAULT_MAP_SIZE = 64 * 1024**3  # address space only; the file grows as it is used

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")



class Backend:
    """An LMDB environment holding conch's buckets. Thread-safe as LMDB is: one writer at a
    time (callers serialise writes on the apply thread), any number of concurrent readers."""

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._map_size = map_size
        self._sync_lock = threading.Lock()
        self._reopen_listeners: list[Callable[[], None]] = []
        self._open()

    def _open(self) -> None:
        self._env = lmdb.open(
            self.path,
            subdir=False,
            map_size=self._map_size,
            max_dbs=len(BUCKETS) + 4,
            sync=False,
            metasync=False,
            readahead=False,
            max_readers=512,
            lock=True,
        )
        self._dbs: dict[bytes, lmdb._Database] = {}
        with self._env.begin(write=True) as txn:
            for name in BUCKETS:
                self._dbs[name] = self._env.open_db(name, txn=txn)

    def add_reopen_listener(self, fn: Callable[[], None]) -> None:
        """`fn` runs after `swap_in` reopened the environment (handles must be re-fetched)."""
        self._reopen_listeners.append(fn)

    @property
    def env(self) -> lmdb.Environment:
        return self._env

    def db(self, name: bytes) -> lmdb._Database:
        return self._dbs[name]

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction, committed on normal exit and aborted on an exception."""
        txn = self._env.begin(write=True)
        try:
            yield txn
        except BaseException:
            txn.abort()
            raise
        else:
            failpoints.hit("beforeCommit")
            txn.commit()
            failpoints.hit("afterCommit")

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read-only snapshot of the last committed state."""
        txn = self._env.begin(write=False, buffers=False)
        try:
            yield txn
        finally:
            txn.abort()

    def sync(self) -> None:
        """Force every committed transaction to disk (fsync)."""
        with self._sync_lock:
            self._env.sync(True)

    def close(self) -> None:
        self.sync()
        self._env.close()

    # --- meta bucket ------------------------------------------------------------------
    def get_meta_u64(self, txn: lmdb.Transaction, name: bytes) -> int:
        raw = txn.get(name, db=self._dbs[META])
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def put_meta_u64(self, txn: lmdb.Transaction, name: bytes, value: int) -> None:
        txn.put(name, _U64.pack(value), db=self._dbs[META])

    def get_meta_i64(self, txn: lmdb.Transaction, name: bytes) -> int:
        raw = txn.get(name, db=self._dbs[META])
        return 0 if raw is None else int(_I64.unpack(raw)[0])

    def put_meta_i64(self, txn: lmdb.Transaction, name: bytes, value: int) -> None:
        txn.put(name, _I64.pack(value), db=self._dbs[META])

    @staticmethod
    def read_consistent_index(path: str) -> int:
        """The consistent index stored in a backend file that is not open (e.g. a copy)."""
        env = lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=len(BUCKETS) + 4)
        try:
            with env.begin() as txn:
                meta = env.open_db(META, txn=txn, create=False)
                raw = txn.get(META_CONSISTENT_INDEX, db=meta)
            return 0 if raw is None else int(_U64.unpack(raw)[0])
        finally:
            env.close()

    def consistent_index(self) -> int:
        with self.read() as txn:
            return self.get_meta_u64(txn, META_CONSISTENT_INDEX)

    # --- sizes (Status.dbSize / dbSizeInUse) -------------------------------------------
    def size(self) -> int:
        """Bytes the file takes on disk."""
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def size_in_use(self) -> int:
        """Bytes of pages in use (last used page + 1, times the page size)."""
        info = self._env.info()
        stat = self._env.stat()
        return int((info["last_pgno"] + 1) * stat["psize"])

    def copy_compacted(self) -> str:
        """Write a compacted copy of the environment next to it; returns its path.

        Safe beside concurrent readers; the caller keeps writers out so that the copy is
        the final state."""
        tmp = self.path + ".defrag.tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)
        self._env.copy(tmp, compact=True)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def swap_in(self, tmp: str, failpoint: str | None = None) -> None:
        """Replace the environment with the copy at `tmp` (etcd's Defragment).

        The caller guarantees that no transaction is open: every handle from `db()` and
        `env` becomes invalid, which is why listeners are told to re-fetch them. `failpoint`
        is hit with the environment closed, just before the rename."""
        self._env.sync(True)
        self._env.close()
        if failpoint is not None:
            failpoints.hit(failpoint)
        os.replace(tmp, self.path)
        lock = self.path + "-lock"
        if os.path.exists(lock):
            os.unlink(lock)
        self._open()
        for fn in self._reopen_listeners:
            fn()

    def defragment(self) -> None:
        """Compact the file in place. Callers must hold off readers and writers."""
        self.swap_in(self.copy_compacted())
