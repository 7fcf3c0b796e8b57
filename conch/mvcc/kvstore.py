"""The multi-version KV store on LMDB: etcd's `server/storage/mvcc` semantics.

Layout (see `keys.py`): `key` holds history exactly as etcd's bbolt bucket does, `index`
is the on-disk replacement of etcd's in-memory treeIndex, `latest` holds the current value
of every live key, `meta` holds the current revision and the compact revisions.

Every read takes the revision numbers from `meta` inside the same LMDB transaction it reads
the data with, so it sees a consistent snapshot. Nothing about revisions is cached in
memory: the apply thread may abort a transaction, and readers run on other threads.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

import crc32c
import lmdb

from conch import failpoints
from conch.backend import schema
from conch.backend.schema import META_CURRENT_REV, META_FINISHED_COMPACT, META_SCHEDULED_COMPACT
from conch.errors import (
    ErrCompacted,
    ErrFutureRev,
    ErrInvalidSortOption,
    ErrKeyNotFound,
    ErrLeaseNotFound,
    ErrRequestTooLarge,
    err,
)
from conch.mvcc import keys as K
from conch.mvcc.gosort import go_sort
from conch.proto.etcdserverpb.rpc_pb2 import (
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    TxnResponse,
)
from conch.proto.mvccpb.kv_pb2 import Event, KeyValue

if TYPE_CHECKING:
    from conch.backend import Backend

# meta keys. `scheduledCompactRev` / `finishedCompactRev` use etcd's names and encoding.

_U64 = struct.Struct(">Q")

PUT = Event.PUT
DELETE = Event.DELETE

# RangeRequest enums
SORT_NONE, SORT_ASCEND, SORT_DESCEND = 0, 1, 2
TARGET_KEY, TARGET_VERSION, TARGET_CREATE, TARGET_MOD, TARGET_VALUE = 0, 1, 2, 3, 4


class LeaseHooks(Protocol):
    """What the store needs from the lessor."""

    def exists(self, lease_id: int) -> bool: ...

    def attach(self, lease_id: int, key: bytes) -> None: ...

    def detach(self, lease_id: int, key: bytes) -> None: ...


class NoLeases:
    """Default hooks before a lessor is installed: no lease exists."""

    def exists(self, lease_id: int) -> bool:
        return False

    def attach(self, lease_id: int, key: bytes) -> None:
        pass

    def detach(self, lease_id: int, key: bytes) -> None:
        pass


def range_end_bound(range_end: bytes) -> bytes | None:
    """etcd's mkGteRange: `\\0` means "no upper bound" (None). Empty stays empty (single key)."""
    if range_end == b"\x00":
        return None
    return range_end


def _check_key(key: bytes) -> None:
    if not K.key_fits(key):
        raise err(ErrRequestTooLarge)


class KVStore:
    """etcd's MVCC store. See docs/design/store.md."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._bind_handles()
        backend.add_reopen_listener(self._bind_handles)
        self.lease_hooks: LeaseHooks = NoLeases()

    def _bind_handles(self) -> None:
        """(Re)fetch the LMDB handles; called again after the backend was defragmented."""
        backend = self.backend
        self.env: lmdb.Environment = backend.env
        self._key = backend.db(schema.KEY)
        self._index = backend.db(schema.INDEX)
        self._latest = backend.db(schema.LATEST)
        self._meta = backend.db(schema.META)

    # --- revisions --------------------------------------------------------------------
    def _cur(self, txn: lmdb.Transaction) -> int:
        raw = _get(txn, META_CURRENT_REV, db=self._meta)
        return 1 if raw is None else int(_U64.unpack(raw)[0])

    def _compact(self, txn: lmdb.Transaction) -> int:
        """etcd's compactMainRev: -1 until the first compaction."""
        raw = _get(txn, META_FINISHED_COMPACT, db=self._meta)
        return -1 if raw is None else K.rev_main(raw)

    def current_revision(self, txn: lmdb.Transaction | None = None) -> int:
        if txn is not None:
            return self._cur(txn)
        with self.backend.read() as t:
            return self._cur(t)

    def compact_revision(self, txn: lmdb.Transaction | None = None) -> int:
        """The last compaction's revision, or -1 if the store was never compacted (etcd's
        compactMainRev; HashKV reports it as is)."""
        if txn is not None:
            return self._compact(txn)
        with self.backend.read() as t:
            return self._compact(t)

    def revisions(self, txn: lmdb.Transaction | None = None) -> tuple[int, int]:
        """(current, compact) from one snapshot."""
        if txn is not None:
            return self._cur(txn), self._compact(txn)
        with self.backend.read() as t:
            return self._cur(t), self._compact(t)

    # --- reads ------------------------------------------------------------------------
    def range(self, req: RangeRequest, txn: lmdb.Transaction | None = None) -> RangeResponse:
        """A Range at the latest committed state (or in `txn` if given). header.revision is
        the current store revision, also for historical reads."""
        if txn is not None:
            return self._range(txn, req, self._cur(txn), self._compact(txn))
        with self.backend.read() as t:
            return self._range(t, req, self._cur(t), self._compact(t))

    def _range(
        self, txn: lmdb.Transaction, req: RangeRequest, cur: int, compact: int
    ) -> RangeResponse:
        resp = RangeResponse()
        self._range_into(txn, req, cur, compact, resp)
        return resp

    def _range_into(
        self,
        txn: lmdb.Transaction,
        req: RangeRequest,
        cur: int,
        compact: int,
        resp: RangeResponse,
    ) -> None:
        """applierV3backend.Range + storeTxnRead.rangeKeys. `cur` is the revision the
        `latest` DB reflects (the write's own revision inside a write with changes)."""
        rev = req.revision
        if rev > cur:
            raise err(ErrFutureRev)
        if rev <= 0:
            rev = cur
        if rev < compact:
            raise err(ErrCompacted)
        sort_order = int(req.sort_order)
        sort_target = int(req.sort_target)
        if sort_order not in (0, 1, 2) or sort_target not in (0, 1, 2, 3, 4):
            raise err(ErrInvalidSortOption)

        resp.header.revision = cur
        key = req.key
        end: bytes | None = range_end_bound(req.range_end)

        if req.count_only:
            resp.count = self._count(txn, key, end, rev, rev == cur)
            return

        filtered = bool(
            req.min_mod_revision
            or req.max_mod_revision
            or req.min_create_revision
            or req.max_create_revision
        )
        r_limit = req.limit
        limit = r_limit
        if sort_order != SORT_NONE or filtered:
            limit = 0
        if limit > 0:
            limit += 1
        elif limit < 0:
            limit = 0

        vals, total = self._fetch(txn, key, end, rev, rev == cur, limit)
        resp.count = total
        if sort_target != TARGET_KEY and sort_order == SORT_NONE:
            sort_order = SORT_ASCEND
        needs_sort = sort_order != SORT_NONE and not (
            sort_target == TARGET_KEY and sort_order == SORT_ASCEND
        )
        kvs_field = resp.kvs
        if not filtered and not needs_sort:
            n = len(vals)
            if r_limit > 0 and n > r_limit:
                n = r_limit
                resp.more = True
            keys_only = req.keys_only
            for i in range(n):
                kv = kvs_field.add()
                kv.MergeFromString(vals[i])
                if keys_only:
                    kv.value = b""
            return

        kvs = [KeyValue.FromString(v) for v in vals]
        if req.max_mod_revision:
            mx = req.max_mod_revision
            kvs = [kv for kv in kvs if not kv.mod_revision > mx]
        if req.min_mod_revision:
            mn = req.min_mod_revision
            kvs = [kv for kv in kvs if not kv.mod_revision < mn]
        if req.max_create_revision:
            mx = req.max_create_revision
            kvs = [kv for kv in kvs if not kv.create_revision > mx]
        if req.min_create_revision:
            mn = req.min_create_revision
            kvs = [kv for kv in kvs if not kv.create_revision < mn]
        if sort_order != SORT_NONE:
            _sort_kvs(kvs, sort_target, sort_order == SORT_DESCEND)
        if r_limit > 0 and len(kvs) > r_limit:
            del kvs[r_limit:]
            resp.more = True
        if req.keys_only:
            for kv in kvs:
                kv.value = b""
        kvs_field.extend(kvs)

    def _fetch(
        self,
        txn: lmdb.Transaction,
        key: bytes,
        end: bytes | None,
        rev: int,
        at_latest: bool,
        limit: int,
    ) -> tuple[list[bytes], int]:
        """Marshalled KeyValues of the keys in [key, end) at `rev` (at most `limit` if
        limit > 0) and the total number of such keys."""
        if at_latest:
            return self._fetch_latest(txn, key, end, limit)
        revkeys, total = self._index_scan(txn, key, end, rev, limit, want=True)
        kdb = self._key
        out = []
        for rk in revkeys:
            v = _get(txn, rk, db=kdb)
            if v is not None:
                out.append(v)
        return out, total

    def _fetch_latest(
        self, txn: lmdb.Transaction, key: bytes, end: bytes | None, limit: int
    ) -> tuple[list[bytes], int]:
        """Live values in [key, end) from `latest` (at most `limit` if > 0) and the total."""
        if end == b"":
            if len(key) > K.LMDB_MAX_KEY:
                return [], 0
            v = _get(txn, key, db=self._latest)
            return ([], 0) if v is None else ([v], 1)
        out: list[bytes] = []
        if end is not None and key >= end:
            return out, 0
        total = 0
        with _cursor(txn, db=self._latest) as cur:
            if not _seek_ge(cur, key):
                return out, 0
            for k, v in cur.iternext(keys=True, values=True):
                if end is not None and k >= end:
                    return out, total
                total += 1
                out.append(v)
                if limit and total >= limit:
                    break
            else:
                return out, total
            # past the limit: only count the rest
            if not cur.next():
                return out, total
            for k in cur.iternext(keys=True, values=False):
                if end is not None and k >= end:
                    break
                total += 1
        return out, total

    def _count(
        self, txn: lmdb.Transaction, key: bytes, end: bytes | None, rev: int, at_latest: bool
    ) -> int:
        if not at_latest:
            return self._index_scan(txn, key, end, rev, 0, want=False)[1]
        if end == b"":
            if len(key) > K.LMDB_MAX_KEY:
                return 0
            return 0 if _get(txn, key, db=self._latest) is None else 1
        if end is not None and key >= end:
            return 0
        n = 0
        with _cursor(txn, db=self._latest) as cur:
            if not _seek_ge(cur, key):
                return 0
            if end is None:
                for _ in cur.iternext(keys=True, values=False):
                    n += 1
            else:
                for k in cur.iternext(keys=True, values=False):
                    if k >= end:
                        break
                    n += 1
        return n

    def _index_scan(
        self,
        txn: lmdb.Transaction,
        key: bytes,
        end: bytes | None,
        rev: int,
        limit: int,
        want: bool,
    ) -> tuple[list[bytes], int]:
        """For each user key in [key, end) (single key if end == b""), the newest revision
        at or below `rev` unless it is a tombstone. Returns the `key`-bucket keys of the
        first `limit` such revisions (all if limit == 0; none unless `want`) and the total.
        """
        start = K.escape(key)
        if end == b"":
            stop: bytes | None = None
            single = True
        else:
            single = False
            stop = None if end is None else K.escape(end)
            if stop is not None and start >= stop:
                return [], 0
        bound = K.idx_key(b"", rev + 1, 0)  # appended to a key prefix
        out: list[bytes] = []
        total = 0
        with _cursor(txn, db=self._index) as cur:
            ok = _seek_ge(cur, start)
            while ok:
                ik = cur.key()
                prefix = ik[:-16]
                if single:
                    if prefix != start:
                        break
                else:
                    if stop is not None and prefix >= stop:
                        break
                # newest entry of `prefix` at or below rev
                if cur.set_range(prefix + bound):
                    found = cur.prev()
                else:
                    found = cur.last()
                if found:
                    ck = cur.key()
                    if ck[:-16] == prefix:
                        flag = cur.value()
                        if flag != K.IDX_TOMBSTONE:
                            total += 1
                            if want and (limit == 0 or len(out) < limit):
                                out.append(K.idx_to_rev_key(ck, False))
                if single:
                    break
                ok = cur.set_range(prefix + K.IDX_REV_MAX)
        return out, total

    def _kv_at(self, txn: lmdb.Transaction, key: bytes, rev: int) -> bytes | None:
        """Marshalled KeyValue of `key` at `rev` (None if absent / deleted / compacted)."""
        if not K.key_fits(key):
            return None
        rks, _ = self._index_scan(txn, key, b"", rev, 1, want=True)
        if not rks:
            return None
        v: bytes | None = _get(txn, rks[0], db=self._key)
        return v

    def get_prev_kv(
        self, key: bytes, rev: int, txn: lmdb.Transaction | None = None
    ) -> KeyValue | None:
        """The key's KeyValue at rev-1 (a watch event's prev_kv); None if it did not exist
        then or that history was compacted away."""
        if txn is None:
            with self.backend.read() as t:
                v = self._kv_at(t, key, rev - 1)
        else:
            v = self._kv_at(txn, key, rev - 1)
        return None if v is None else KeyValue.FromString(v)

    def read_events(
        self, start_rev: int, end_rev: int, txn: lmdb.Transaction | None = None
    ) -> list[tuple[int, list[Event]]]:
        """Events with start_rev <= main revision <= end_rev, grouped by revision in order.
        DELETE events carry key + mod_revision only (etcd's kvsToEvents)."""
        if txn is None:
            with self.backend.read() as t:
                return self._read_events(t, start_rev, end_rev)
        return self._read_events(txn, start_rev, end_rev)

    def _read_events(
        self, txn: lmdb.Transaction, start_rev: int, end_rev: int
    ) -> list[tuple[int, list[Event]]]:
        out: list[tuple[int, list[Event]]] = []
        if end_rev < start_rev:
            return out
        start_rev = max(start_rev, 0)
        stop = K.main_prefix(end_rev + 1)
        group: list[Event] = []
        group_rev = -1
        with _cursor(txn, db=self._key) as cur:
            if not cur.set_range(K.main_prefix(start_rev)):
                return out
            for k, v in cur.iternext(keys=True, values=True):
                if k >= stop:
                    break
                main = K.rev_main(k)
                if main != group_rev:
                    if group:
                        out.append((group_rev, group))
                    group = []
                    group_rev = main
                ev = Event()
                ev.kv.MergeFromString(v)
                if len(k) == K.REV_LEN + 1:
                    ev.type = DELETE
                    ev.kv.mod_revision = main
                group.append(ev)
        if group:
            out.append((group_rev, group))
        return out

    def iter_live(self, txn: lmdb.Transaction | None = None) -> Iterator[KeyValue]:
        """Every live KeyValue in key order (the lessor rebuilds lease -> keys from it)."""
        if txn is None:
            with self.backend.read() as t:
                yield from self._iter_live(t)
        else:
            yield from self._iter_live(txn)

    def _iter_live(self, txn: lmdb.Transaction) -> Iterator[KeyValue]:
        with _cursor(txn, db=self._latest) as cur:
            for v in cur.iternext(keys=False, values=True):
                yield KeyValue.FromString(v)

    # --- writes -----------------------------------------------------------------------
    def write(self, txn: lmdb.Transaction) -> KVWrite:
        """One request's worth of changes (one revision). Call `end()` before commit."""
        return KVWrite(self, txn)

    def put(self, txn: lmdb.Transaction, req: PutRequest) -> tuple[PutResponse, list[Event]]:
        w = KVWrite(self, txn)
        resp = w.put(req)
        return resp, w.end()

    def delete_range(
        self, txn: lmdb.Transaction, req: DeleteRangeRequest
    ) -> tuple[DeleteRangeResponse, list[Event]]:
        w = KVWrite(self, txn)
        resp = w.delete_range(req)
        return resp, w.end()

    def txn(self, txn: lmdb.Transaction | None, req: TxnRequest) -> tuple[TxnResponse, list[Event]]:
        """Apply a Txn. With `txn=None` the request must be read-only (`is_txn_readonly`)
        and runs in its own read transaction."""
        from conch.mvcc.txn import apply_txn

        if txn is None:
            with self.backend.read() as t:
                return apply_txn(self, t, req, readonly=True)
        return apply_txn(self, txn, req, readonly=False)

    # --- compaction -------------------------------------------------------------------
    def compact(self, txn: lmdb.Transaction, rev: int) -> int:
        """Physically compact history at `rev` inside `txn`; returns rows removed.

        For every key the newest revision at or below `rev` survives unless it is a
        tombstone; everything above `rev` survives; everything else is removed from `key`
        and `index` (etcd's keyIndex.compact + scheduleCompaction)."""
        cur = self._cur(txn)
        compact = self._compact(txn)
        if rev <= compact:
            raise err(ErrCompacted)
        if rev > cur:
            raise err(ErrFutureRev)
        meta = self._meta
        txn.put(META_SCHEDULED_COMPACT, K.rev_bytes_meta(rev), db=meta)
        failpoints.hit("compactBeforeCommitScheduledCompact")
        rows: list[tuple[bytes, bytes]] = []  # (rev key, user key)
        newest: dict[bytes, bytes] = {}
        stop = K.main_prefix(rev + 1)
        with _cursor(txn, db=self._key) as c:
            if c.first():
                kv_key = K.kv_key_from_bytes
                for k, v in c.iternext(keys=True, values=True):
                    if k >= stop:
                        break
                    uk = kv_key(v)
                    rows.append((k, uk))
                    newest[uk] = k
        removed = 0
        kdb, idb = self._key, self._index
        keep_from = K.main_prefix(rev)
        for k, uk in rows:
            if k >= keep_from:
                # Revision `rev` itself stays whole, tombstones included: a watch from the
                # compact revision must still get its events (etcd #18089, fix #18274).
                continue
            nk = newest[uk]
            if nk == k and len(k) == K.REV_LEN:
                continue  # the surviving live version
            main, sub, tomb = K.parse_rev_key(k)
            txn.delete(k, db=kdb)
            txn.delete(K.idx_key(K.escape(uk), main, sub), db=idb)
            removed += 1
        failpoints.hit("compactBeforeSetFinishedCompact")
        txn.put(META_FINISHED_COMPACT, K.rev_bytes_meta(rev), db=meta)
        failpoints.hit("compactAfterSetFinishedCompact")
        return removed

    # --- hash -------------------------------------------------------------------------
    def hash_kv(self, rev: int = 0) -> tuple[int, int, int]:
        """etcd's HashByRev: CRC-32C over b"key" then every (rev key, value) of the `key`
        bucket with main <= rev, in bucket order. Rows at or below the compact revision
        (compaction survivors) count only if they are in kvindex.Keep(rev), i.e. still
        their key's newest live version at `rev` - or all of them if Keep(rev) is empty
        (no key live at `rev`). Returns (hash, compact_rev, hash_rev); compact_rev is -1
        before any compaction. rev 0 = current."""
        with self.backend.read() as txn:
            cur = self._cur(txn)
            compact = self._compact(txn)
            if rev > 0 and rev < compact:
                raise err(ErrCompacted)
            if rev > 0 and rev > cur:
                raise err(ErrFutureRev)
            if rev <= 0:
                rev = cur
            crc = crc32c.crc32c
            h = crc(schema.KEY)
            stop = K.main_prefix(rev + 1)
            lower = K.main_prefix(compact + 1) if compact >= 0 else b""
            with _cursor(txn, db=self._key) as c:
                if not c.first():
                    return h, compact, rev
                it = c.iternext(keys=True, values=True)
                old: list[tuple[bytes, bytes]] = []
                pending: tuple[bytes, bytes] | None = None
                for k, v in it:
                    if k >= lower:
                        pending = (k, v)
                        break
                    if k >= stop:
                        break
                    old.append((k, v))
                if old:
                    h = self._hash_old(txn, h, old, compact, rev)
                if pending is not None:
                    for k, v in itertools.chain((pending,), it):
                        if k >= stop:
                            break
                        h = crc(v, crc(k, h))
            return h, compact, rev

    def _hash_old(
        self,
        txn: lmdb.Transaction,
        h: int,
        old: list[tuple[bytes, bytes]],
        compact: int,
        rev: int,
    ) -> int:
        kept = []
        for k, v in old:
            tomb = len(k) == K.REV_LEN + 1
            uk = K.kv_key_from_bytes(v)
            # etcd's keyIndex.keep after #18274: a tombstone at exactly `rev` is kept.
            kept.append(
                (tomb and K.rev_main(k) == rev)
                or (not tomb and not self._changed_between(txn, uk, compact, rev))
            )
        keep_nonempty = any(kept) or self._any_live_at(txn, rev)
        crc = crc32c.crc32c
        for (k, v), ok in zip(old, kept, strict=True):
            if ok or not keep_nonempty:
                h = crc(v, crc(k, h))
        return h

    def _changed_between(self, txn: lmdb.Transaction, key: bytes, lo: int, hi: int) -> bool:
        """Whether `key` has a revision with lo < main <= hi."""
        if hi <= lo:
            return False
        pre = K.escape(key)
        with _cursor(txn, db=self._index) as c:
            if not c.set_range(K.idx_key(pre, lo + 1, 0)):
                return False
            ik = c.key()
            return ik[:-16] == pre and K.idx_rev(ik)[0] <= hi

    def _any_live_at(self, txn: lmdb.Transaction, rev: int) -> bool:
        if rev == self._cur(txn):
            with _cursor(txn, db=self._latest) as c:
                return bool(c.first())
        return self._index_scan(txn, b"\x00", None, rev, 1, want=True)[1] > 0


def _get(txn: lmdb.Transaction, key: bytes, db: lmdb._Database) -> bytes | None:
    """txn.get typed as bytes (conch opens transactions with buffers=False)."""
    return cast("bytes | None", txn.get(key, db=db))


def _cursor(txn: lmdb.Transaction, db: lmdb._Database) -> Any:
    """A cursor whose keys/values are bytes (typed loosely: buffers=False)."""
    return txn.cursor(db=db)


def _seek_ge(cur: Any, key: bytes) -> bool:
    """Position at the first entry >= `key`; works for keys longer than LMDB's limit
    (which cannot be stored, but may be asked for)."""
    if len(key) <= K.LMDB_MAX_KEY:
        return bool(cur.set_range(key))
    if not cur.set_range(key[: K.LMDB_MAX_KEY]):
        return False
    while cur.key() < key:
        if not cur.next():
            return False
    return True


def _sort_kvs(kvs: list[KeyValue], target: int, descend: bool) -> None:
    """etcd's kvSortBy* with sort.Sort / sort.Reverse (Go's unstable pdqsort)."""
    items: list[tuple[Any, KeyValue]]
    if target == TARGET_KEY:
        items = [(kv.key, kv) for kv in kvs]
    elif target == TARGET_VERSION:
        items = [(kv.version, kv) for kv in kvs]
    elif target == TARGET_CREATE:
        items = [(kv.create_revision, kv) for kv in kvs]
    elif target == TARGET_MOD:
        items = [(kv.mod_revision, kv) for kv in kvs]
    elif target == TARGET_VALUE:
        items = [(kv.value, kv) for kv in kvs]
    else:
        raise err(ErrInvalidSortOption)
    if descend:
        go_sort(items, lambda a, b: bool(b[0] < a[0]))
    else:
        go_sort(items, lambda a, b: bool(a[0] < b[0]))
    kvs[:] = [kv for _, kv in items]


class KVWrite:
    """One request's changes: every change shares main revision `rev()+1` with increasing
    sub revisions. Ranges see the changes made so far. `end()` bumps the revision iff
    something changed and returns the events."""

    __slots__ = ("store", "txn", "begin_rev", "compact_rev", "events", "_hooks")

    def __init__(self, store: KVStore, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn
        self.begin_rev = store._cur(txn)
        self.compact_rev = store._compact(txn)
        self.events: list[Event] = []
        self._hooks = store.lease_hooks

    def rev(self) -> int:
        """The revision before this write (etcd's TxnWrite.Rev())."""
        return self.begin_rev

    def changed(self) -> bool:
        return bool(self.events)

    def _read_rev(self) -> int:
        return self.begin_rev + 1 if self.events else self.begin_rev

    # -- range -------------------------------------------------------------------------
    def range(self, req: RangeRequest) -> RangeResponse:
        resp = RangeResponse()
        self.store._range_into(self.txn, req, self._read_rev(), self.compact_rev, resp)
        return resp

    def range_into(self, req: RangeRequest, resp: RangeResponse) -> None:
        self.store._range_into(self.txn, req, self._read_rev(), self.compact_rev, resp)

    # -- put ---------------------------------------------------------------------------
    def put(self, req: PutRequest) -> PutResponse:
        """applierV3backend.Put: lease must exist, ignore_* need the key."""
        lease = req.lease
        if lease and not self._hooks.exists(lease):
            raise err(ErrLeaseNotFound)
        resp = PutResponse()
        self.put_into(req, resp)
        return resp

    def put_into(self, req: PutRequest, resp: PutResponse) -> None:
        """Put without the lease-existence check (done by the caller)."""
        key = req.key
        _check_key(key)
        old_raw = _get(self.txn, key, db=self.store._latest)
        old: KeyValue | None = None
        if old_raw is not None:
            old = KeyValue.FromString(old_raw)
        value = req.value
        lease = req.lease
        if req.ignore_value or req.ignore_lease:
            if old is None:
                raise err(ErrKeyNotFound)
            if req.ignore_value:
                value = old.value
            if req.ignore_lease:
                lease = old.lease
        if req.prev_kv and old is not None:
            resp.prev_kv.CopyFrom(old)
        resp.header.revision = self.put_kv(key, value, lease, old)

    def put_kv(self, key: bytes, value: bytes, lease: int, old: KeyValue | None) -> int:
        """Write a new version of `key` (`old` = its current KeyValue or None)."""
        rev = self.begin_rev + 1
        sub = len(self.events)
        ev = Event()
        kv = ev.kv
        kv.key = key
        if old is not None:
            kv.create_revision = old.create_revision
            kv.version = old.version + 1
        else:
            kv.create_revision = rev
            kv.version = 1
        kv.mod_revision = rev
        if value:
            kv.value = value
        if lease:
            kv.lease = lease
        data = kv.SerializeToString()
        txn = self.txn
        st = self.store
        txn.put(K.rev_key(rev, sub), data, db=st._key, append=True)
        txn.put(K.idx_key(K.escape(key), rev, sub), K.IDX_PUT, db=st._index)
        txn.put(key, data, db=st._latest)
        self.events.append(ev)
        old_lease = old.lease if old is not None else 0
        if old_lease:
            self._hooks.detach(old_lease, key)
        if lease:
            self._hooks.attach(lease, key)
        return rev

    # -- delete ------------------------------------------------------------------------
    def delete_range(self, req: DeleteRangeRequest) -> DeleteRangeResponse:
        resp = DeleteRangeResponse()
        self.delete_range_into(req, resp)
        return resp

    def delete_range_into(self, req: DeleteRangeRequest, resp: DeleteRangeResponse) -> None:
        end = range_end_bound(req.range_end)
        vals, _ = self.store._fetch_latest(self.txn, req.key, end, 0)
        if req.prev_kv:
            pk = resp.prev_kvs
            for v in vals:
                pk.add().MergeFromString(v)
        for v in vals:
            self._delete(KeyValue.FromString(v))
        resp.deleted = len(vals)
        resp.header.revision = self.begin_rev + 1 if self.events else self.begin_rev

    def delete_key(self, key: bytes) -> bool:
        """Delete one key if live (the lessor's revoke path). Returns whether it was."""
        if len(key) > K.LMDB_MAX_KEY:
            return False
        v = _get(self.txn, key, db=self.store._latest)
        if v is None:
            return False
        self._delete(KeyValue.FromString(v))
        return True

    def _delete(self, old: KeyValue) -> None:
        rev = self.begin_rev + 1
        sub = len(self.events)
        key = old.key
        ev = Event(type=DELETE)
        kv = ev.kv
        kv.key = key
        tomb = kv.SerializeToString()  # etcd stores KeyValue{Key} for a tombstone
        kv.mod_revision = rev
        txn = self.txn
        st = self.store
        txn.put(K.tomb_key(rev, sub), tomb, db=st._key, append=True)
        txn.put(K.idx_key(K.escape(key), rev, sub), K.IDX_TOMBSTONE, db=st._index)
        txn.delete(key, db=st._latest)
        self.events.append(ev)
        if old.lease:
            self._hooks.detach(old.lease, key)

    # -- end ---------------------------------------------------------------------------
    def end(self) -> list[Event]:
        if self.events:
            self.txn.put(META_CURRENT_REV, _U64.pack(self.begin_rev + 1), db=self.store._meta)
        return self.events
