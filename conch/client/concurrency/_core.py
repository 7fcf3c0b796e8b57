"""The decision logic of the recipes, shared by the sync and async flavours (sans-IO).

Nothing here performs I/O: the flavours call the client, feed the results in and act on
the decisions that come out. Everything that touches the client's API shape (how a txn
response's range result is read, how a "first/last created" get is spelled) is also here,
so the two flavours cannot drift apart.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from conch.client.concurrency.errors import STMConflict

Key = str | bytes


def to_bytes(k: Key) -> bytes:
    return k.encode() if isinstance(k, str) else bytes(k)


def key_prefix(prefix: Key) -> bytes:
    """Go's NewElection / NewMutex: the prefix used for keys is ``pfx + "/"``."""
    return to_bytes(prefix) + b"/"


def candidate_key(kprefix: bytes, lease_id: int) -> bytes:
    """``fmt.Sprintf("%s%x", pfx+"/", leaseID)``: lowercase hex, no padding."""
    return kprefix + (b"%x" % lease_id)


# ----------------------------------------------------------------------- client API shape


def _client_api() -> tuple[Any, Any]:
    from conch.client import Compare, Op  # late: the concurrency package is imported by it

    return Compare, Op


def first_create_kwargs() -> dict[str, Any]:
    """Go's WithFirstCreate(): prefix, sort by create revision ascending, limit 1."""
    return {"prefix": True, "sort_target": "create", "sort_order": "ascend", "limit": 1}


def last_create_kwargs(max_create_revision: int) -> dict[str, Any]:
    """Go's WithLastCreate() + WithMaxCreateRev(rev)."""
    return {
        "prefix": True,
        "sort_target": "create",
        "sort_order": "descend",
        "limit": 1,
        "max_create_revision": max_create_revision,
    }


def range_kvs(resp: Any) -> list[Any]:
    """The KeyValues of one txn response item that came from a get (range) op."""
    kvs = getattr(resp, "kvs", None)
    if kvs is not None:
        return list(kvs)
    rr = getattr(resp, "response_range", None)
    if rr is not None:
        return list(rr.kvs)
    raise TypeError(f"not a range response: {resp!r}")


def header_revision(result: Any) -> int:
    return int(result.header.revision)


# ----------------------------------------------------------------------- session


class KeepAliveState:
    """When to send keepalives and when the lease must be considered gone.

    ``expires_at`` is the send time (monotonic) of the last acknowledged keepalive (or of
    the grant) plus the TTL the server answered: the server cannot expire the lease
    earlier than that, and it may do so any time after it.
    """

    def __init__(self, ttl: int, sent_at: float) -> None:
        self.ttl = ttl
        self.expires_at = sent_at + ttl
        self.interval = max(ttl / 3.0, 0.05)
        self.next_due = sent_at + self.interval
        self.alive = True

    def on_ack(self, sent_at: float, ttl: int) -> bool:
        """A keepalive sent at ``sent_at`` was answered with ``ttl``; False: lease gone."""
        if ttl <= 0:
            self.alive = False
            return False
        self.ttl = ttl
        self.expires_at = max(self.expires_at, sent_at + ttl)
        self.interval = max(ttl / 3.0, 0.05)
        self.next_due = sent_at + self.interval
        return True

    def on_error(self, now: float) -> bool:
        """A keepalive failed at ``now``; schedule a retry. False: past the deadline."""
        if now >= self.expires_at:
            self.alive = False
            return False
        self.next_due = min(now + min(self.interval, 0.5), self.expires_at)
        return True

    def delay(self, now: float) -> float:
        """Seconds until the next keepalive (never past the deadline)."""
        return max(0.0, min(self.next_due, self.expires_at) - now)

    def expired(self, now: float) -> bool:
        return not self.alive or now >= self.expires_at


# ----------------------------------------------------------------------- waiting (Election / Mutex)


class Wait(enum.Enum):
    ACQUIRED = "acquired"  # no older key left and ours is still there: we lead / hold
    GONE = "gone"  # our key vanished (lease revoked/expired or deleted from outside)
    BLOCKED = "blocked"  # an older key exists: wait for its deletion (or ours)


@dataclass(frozen=True)
class WaitDecision:
    state: Wait
    pred_key: bytes | None = None
    watch_from: int = 0
    header: Any = None


def wait_check_ops(kprefix: bytes, my_key: bytes, my_rev: int) -> tuple[list[Any], list[Any]]:
    """One read-only txn: our own key and the youngest key created before ours."""
    _, Op = _client_api()
    return [], [Op.get(my_key), Op.get(kprefix, **last_create_kwargs(my_rev - 1))]


def wait_decide(result: Any, my_rev: int) -> WaitDecision:
    own = range_kvs(result.responses[0])
    pred = range_kvs(result.responses[1])
    if not own or int(own[0].create_revision) != my_rev:
        return WaitDecision(Wait.GONE, header=result.header)
    if not pred:
        return WaitDecision(Wait.ACQUIRED, header=result.header)
    return WaitDecision(
        Wait.BLOCKED,
        pred_key=bytes(pred[0].key),
        watch_from=header_revision(result) + 1,
        header=result.header,
    )


def wakes_waiter(events: Iterable[Any], pred_key: bytes, my_key: bytes) -> bool:
    """True when a watch batch deleted the predecessor or our own key: re-check."""
    for ev in events:
        if _is_delete(ev) and bytes(ev.kv.key) in (pred_key, my_key):
            return True
    return False


def _is_delete(ev: Any) -> bool:
    t = ev.type
    return t == "DELETE" or t == 1 or getattr(t, "name", None) == "DELETE"


TxnParts = tuple[list[Any], list[Any], list[Any]]


def acquire_txn(
    my_key: bytes, value: bytes, lease_id: int, kprefix: bytes, with_owner: bool
) -> TxnParts:
    """Put-if-absent of our key (Go's Campaign / tryAcquire); else read it back.

    Responses: [put-or-get of our key] (+ [first-created key of the prefix] with_owner).
    """
    Compare, Op = _client_api()
    compare = [Compare.create(my_key) == 0]
    success: list[Any] = [Op.put(my_key, value, lease=lease_id)]
    failure: list[Any] = [Op.get(my_key)]
    if with_owner:
        success.append(Op.get(kprefix, **first_create_kwargs()))
        failure.append(Op.get(kprefix, **first_create_kwargs()))
    return compare, success, failure


@dataclass(frozen=True)
class Acquired:
    rev: int  # create revision of our key
    existing_value: bytes | None  # the value when the key already existed (reused)
    owner_rev: int | None  # create revision of the first-created key (with_owner)
    header: Any


def acquire_result(result: Any, with_owner: bool) -> Acquired:
    if result.succeeded:
        rev = header_revision(result)
        existing = None
    else:
        kvs = range_kvs(result.responses[0])
        if not kvs:  # deleted between compare and get cannot happen inside one txn
            raise RuntimeError("txn else branch without our key")
        rev = int(kvs[0].create_revision)
        existing = bytes(kvs[0].value)
    owner_rev = None
    if with_owner:
        owners = range_kvs(result.responses[1])
        owner_rev = int(owners[0].create_revision) if owners else None
    return Acquired(rev, existing, owner_rev, result.header)


def guarded_delete_txn(my_key: bytes, my_rev: int) -> TxnParts:
    Compare, Op = _client_api()
    return [Compare.create(my_key) == my_rev], [Op.delete(my_key)], []


def guarded_put_txn(my_key: bytes, my_rev: int, value: bytes, lease_id: int) -> TxnParts:
    Compare, Op = _client_api()
    return [Compare.create(my_key) == my_rev], [Op.put(my_key, value, lease=lease_id)], []


# ----------------------------------------------------------------------- observe


class LeaderTracker:
    """The candidates under an election prefix, kept from a snapshot plus watch events.

    ``changes`` yields the leader (first-created key) after each revision whose events
    changed it: a new key, a new value of the same key, or ``None`` for "no leader".
    """

    _UNSET: Any = object()

    def __init__(self) -> None:
        self.keys: dict[bytes, Any] = {}
        self._reported: Any = self._UNSET

    def reset(self, kvs: Iterable[Any]) -> list[Any]:
        self.keys = {bytes(kv.key): kv for kv in kvs}
        return self._report()

    def apply(self, events: Sequence[Any]) -> list[Any]:
        """Apply one watch batch; returns the leader states to emit (per revision)."""
        out: list[Any] = []
        i = 0
        while i < len(events):
            rev = int(events[i].kv.mod_revision)
            while i < len(events) and int(events[i].kv.mod_revision) == rev:
                ev = events[i]
                k = bytes(ev.kv.key)
                if _is_delete(ev):
                    self.keys.pop(k, None)
                else:
                    self.keys[k] = ev.kv
                i += 1
            out.extend(self._report())
        return out

    def leader(self) -> Any:
        if not self.keys:
            return None
        return min(self.keys.values(), key=lambda kv: int(kv.create_revision))

    def _report(self) -> list[Any]:
        lead = self.leader()
        ident = (
            None
            if lead is None
            else (bytes(lead.key), int(lead.create_revision), int(lead.mod_revision))
        )
        if self._reported is not self._UNSET and ident == self._reported:
            return []
        self._reported = ident
        return [lead]


# ----------------------------------------------------------------------- STM


class Isolation(enum.IntEnum):
    """Go's isolation levels, same numeric values."""

    SerializableSnapshot = 0
    Serializable = 1
    RepeatableReads = 2
    ReadCommitted = 3


@dataclass
class _Read:
    kvs: list[Any]
    rev: int  # store revision the read was served at


class STMCore:
    """Go's stm / stmSerializable bookkeeping: read set, write set, commit guards."""

    def __init__(
        self, isolation: Isolation, prefetch: Sequence[Key], max_attempts: int | None
    ) -> None:
        self.isolation = Isolation(isolation)
        self.prefetch_keys = [to_bytes(k) for k in prefetch]
        self.max_attempts = max_attempts
        self.attempts = 0
        self.rset: dict[bytes, _Read] = {}
        self.wset: dict[bytes, tuple[bytes | None, dict[str, Any]]] = {}
        self.prefetched: dict[bytes, _Read] = {}
        self.get_kwargs: dict[str, Any] = self._base_get_kwargs()

    @property
    def serializable(self) -> bool:
        return self.isolation in (Isolation.SerializableSnapshot, Isolation.Serializable)

    def _base_get_kwargs(self) -> dict[str, Any]:
        if self.serializable:
            return {}
        return {"serializable": True}

    def start_attempt(self) -> None:
        if self.max_attempts is not None and self.attempts >= self.max_attempts:
            raise STMConflict(f"stm: no commit after {self.attempts} attempts")
        self.attempts += 1
        self.rset = {}
        self.wset = {}

    # reads
    def written(self, key: bytes) -> tuple[bool, bytes | None]:
        if key in self.wset:
            return True, self.wset[key][0]
        return False, None

    def begin_get(self, keys: Sequence[bytes]) -> tuple[bool, list[bytes], list[Any]]:
        """(first read?, keys to fetch, their get ops); prefetched values are used first."""
        first_read = not self.rset
        if self.serializable:
            for k in keys:
                if k in self.prefetched:
                    self.rset[k] = self.prefetched.pop(k)
        _, Op = _client_api()
        missing = [k for k in dict.fromkeys(keys) if k not in self.rset]
        return first_read, missing, [Op.get(k, **self.get_kwargs) for k in missing]

    def end_get(
        self, first_read: bool, keys: Sequence[bytes], missing: Sequence[bytes], result: Any
    ) -> _Read:
        """Record a fetch (``result`` None when nothing was fetched); the read of keys[0]."""
        if result is not None:
            rev = header_revision(result)
            for k, resp in zip(missing, result.responses, strict=True):
                self.rset[k] = _Read(range_kvs(resp), rev)
        r = self.rset[keys[0]]
        if first_read and self.serializable:
            # the transaction's base revision is defined by its first read
            self.get_kwargs = {"revision": r.rev, "serializable": True}
        return r

    # writes
    def put(self, key: bytes, value: bytes, kwargs: dict[str, Any]) -> None:
        self.wset[key] = (value, kwargs)

    def delete(self, key: bytes) -> None:
        self.wset[key] = (None, {})

    # commit
    def commit_txn(self) -> tuple[list[Any], list[Any], list[Any], list[bytes]]:
        Compare, Op = _client_api()
        compares: list[Any] = []
        if self.isolation != Isolation.ReadCommitted:
            for k, r in self.rset.items():
                compares.append(Compare.mod(k) == (int(r.kvs[0].mod_revision) if r.kvs else 0))
        if self.isolation == Isolation.SerializableSnapshot and self.rset:
            first = min(r.rev for r in self.rset.values())
            for k in self.wset:
                compares.append(Compare.mod(k) < first + 1)
        success = [
            Op.delete(k) if v is None else Op.put(k, v, **kw) for k, (v, kw) in self.wset.items()
        ]
        else_keys: list[bytes] = list(self.rset) if self.serializable else []
        failure = [Op.get(k) for k in else_keys]
        return compares, success, failure, else_keys

    def commit_result(self, result: Any, else_keys: list[bytes]) -> bool:
        if result.succeeded:
            return True
        if self.serializable:
            rev = header_revision(result)
            self.prefetched = {
                k: _Read(range_kvs(resp), rev)
                for k, resp in zip(else_keys, result.responses, strict=True)
            }
            self.get_kwargs = self._base_get_kwargs()
        return False
